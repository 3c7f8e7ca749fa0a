"""Heads: the Gaussian encoder and the likelihoods that turn decoder outputs into distributions.

An encoder is a body followed by :class:`GaussianEncoder`'s linear heads; it returns the
posterior parameters ``(loc, scale, cov_factor)`` that aggregators combine. A decoder is
a body followed by a likelihood head; :class:`Decoder` returns a
:class:`torch.distributions.Distribution` with ``batch_shape [N]`` and ``event_shape``
the modality's shape, so ``log_prob(x)`` is ``[N]`` and ``mean`` is the reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    Laplace,
    Normal,
    OneHotCategorical,
)

from omnivae.errors import UserError, unknown_name
from omnivae.nn.precision import full_precision, network_autocast

__all__ = [
    "COVARIANCES",
    "soft_clamp",
    "GaussianEncoder",
    "LikelihoodHead",
    "GaussianHead",
    "LaplaceHead",
    "BernoulliHead",
    "CategoricalHead",
    "Decoder",
]

COVARIANCES = ("diag", "lowrank")


def soft_clamp(x: Tensor, low: float, high: float) -> Tensor:
    r"""Smoothly clamps ``x`` to ``[low, high]``, close to the identity in between.

    ``high - softplus(high - (low + softplus(x - low)))``. Unlike a hard clamp, the
    gradient never vanishes exactly, so a saturated unit can still recover; unlike a
    scaled tanh, values well inside the interval pass through unchanged. Written as
    nested softplus rather than a difference of two, which would cancel catastrophically
    for huge ``x``.

    Example:
        >>> soft_clamp(torch.tensor([-1e9, 1e9]), -12.0, 8.0)
        tensor([-12.,   8.])
    """
    return high - F.softplus(high - (low + F.softplus(x - low)))


class GaussianEncoder(nn.Module):
    r"""A body followed by linear heads for a Gaussian posterior ``q(z | x)``.

    The covariance is ``diag(scale^2)`` or, with ``covariance="lowrank"``,
    ``diag(scale^2) + F F^T`` with ``F`` of shape ``[D, rank]`` (a
    :class:`torch.distributions.LowRankMultivariateNormal`). The network predicts the
    log-variance, soft-clamped to ``[-12, 8]`` so that ``scale = exp(logvar / 2)`` stays
    in about ``[0.0025, 55]`` whatever the inputs: products and barycenters of experts
    divide by variances, and an expert with a vanishing variance would dominate them.

    References:
        | Auto-Encoding Variational Bayes (Kingma et al., 2014)
        | https://arxiv.org/abs/1312.6114

    Arguments:
        body: Maps ``[B, *shape]`` inputs to ``[B, body_features]``.
        body_features: The body's output width.
        latent_dim: The latent dimension ``D``.
        covariance: ``"diag"`` or ``"lowrank"``.
        rank: The rank of ``F`` when ``covariance="lowrank"``.

    Example:
        >>> from omnivae.nn import MLP
        >>> encoder = GaussianEncoder(MLP(784, (), 256, final_activation=True), 256, 20)
        >>> loc, scale, factor = encoder(torch.rand(8, 1, 28, 28))
        >>> loc.shape, scale.shape, factor
        (torch.Size([8, 20]), torch.Size([8, 20]), None)
    """

    logvar_min: float = -12.0
    logvar_max: float = 8.0

    def __init__(
        self,
        body: nn.Module,
        body_features: int,
        latent_dim: int,
        covariance: Literal["diag", "lowrank"] = "diag",
        rank: int = 1,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise unknown_name("covariance", covariance, COVARIANCES)
        if rank < 1:
            raise UserError(f"the low-rank covariance needs rank >= 1, not {rank}")
        self.body = body
        self.latent_dim = latent_dim
        self.covariance = covariance
        self.rank = rank
        self.loc = nn.Linear(body_features, latent_dim)
        self.logvar = nn.Linear(body_features, latent_dim)
        self.factor = nn.Linear(body_features, latent_dim * rank) if covariance == "lowrank" else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""
        Arguments:
            x: The inputs, ``[B, *shape]``.

        Returns:
            ``loc [B, D]``, ``scale [B, D]`` (a standard deviation) and ``cov_factor
            [B, D, rank]``, or ``None`` for a diagonal covariance.
        """
        with network_autocast(x.device):
            h = self.body(x)
            loc = full_precision(self.loc(h))
            raw_logvar = full_precision(self.logvar(h))
            raw_factor = None if self.factor is None else full_precision(self.factor(h))
        logvar = soft_clamp(raw_logvar, self.logvar_min, self.logvar_max)
        scale = torch.exp(0.5 * logvar)
        factor = None if raw_factor is None else raw_factor.unflatten(-1, (self.latent_dim, self.rank))
        return loc, scale, factor


class LikelihoodHead(nn.Module):
    r"""Base class: wraps raw decoder outputs ``[N, *event_shape]`` into a distribution.

    Subclasses implement :meth:`forward`; the returned distribution has
    ``batch_shape [N]`` and ``event_shape`` equal to ``event_shape``.

    Arguments:
        event_shape: The modality's per-sample shape.
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)

    def forward(self, raw: Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob(self, raw: Tensor, target: Tensor) -> Tensor:
        r"""``log p(target | raw)`` summed over the event: raw outputs ``[C, B, *event_shape]``
        against ``target [B, *event_shape]``, broadcast over ``C`` rather than copied: ``[C, B]``.

        The same numbers as ``self(raw).log_prob(target)``; subclasses override it with
        closed forms that make fewer full-size temporaries (what an importance-weighted
        objective's decode of ``K x M`` latent copies spends its time allocating).
        """
        return self(raw).log_prob(target)

    def _event_sum(self, per_feature: Tensor) -> Tensor:
        return per_feature.flatten(-len(self.event_shape)).sum(-1)


class GaussianHead(LikelihoodHead):
    r"""A Gaussian likelihood ``N(x | loc, scale^2)`` per feature.

    The scale is fixed, or with ``learn_scale=True`` a learnable per-feature log-scale
    initialised at ``log(scale)`` and soft-clamped to ``[-7, 5]``. With
    ``sigmoid_loc=True`` the location is ``sigmoid(raw)``: image data lie in ``[0, 1]``,
    so the mean, shown as the reconstruction, should too.

    Arguments:
        event_shape: The modality's per-sample shape.
        scale: The standard deviation (or its initial value).
        learn_scale: Whether the per-feature log-scale is a parameter.
        sigmoid_loc: Whether to squash the location into ``[0, 1]``.

    Example:
        >>> head = GaussianHead((10,), scale=1.0)
        >>> head(torch.zeros(4, 10)).log_prob(torch.zeros(4, 10)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        scale: float = 1.0,
        learn_scale: bool = False,
        sigmoid_loc: bool = False,
    ) -> None:
        super().__init__(event_shape)
        if scale <= 0:
            raise ValueError(f"scale must be positive, not {scale}")
        self.scale = float(scale)
        self.sigmoid_loc = sigmoid_loc
        self.log_scale = (
            nn.Parameter(torch.full(self.event_shape, math.log(scale))) if learn_scale else None
        )

    def forward(self, raw: Tensor) -> Distribution:
        loc = torch.sigmoid(raw) if self.sigmoid_loc else raw
        if self.log_scale is None:
            scale: Tensor | float = self.scale
        else:
            scale = soft_clamp(self.log_scale, -7.0, 5.0).exp().to(loc.dtype).expand_as(loc)
        return Independent(Normal(loc, scale, validate_args=False), len(self.event_shape))

    def log_prob(self, raw: Tensor, target: Tensor) -> Tensor:
        loc = torch.sigmoid(raw) if self.sigmoid_loc else raw
        half_log_two_pi = 0.5 * math.log(2 * math.pi)
        if self.log_scale is None:
            squared = self._event_sum((target - loc).square())
            features = math.prod(self.event_shape)
            return squared * (-0.5 / self.scale**2) - features * (math.log(self.scale) + half_log_two_pi)
        log_scale = soft_clamp(self.log_scale, -7.0, 5.0).to(loc.dtype)
        standardised = (target - loc) * torch.exp(-log_scale)
        return -0.5 * self._event_sum(standardised.square()) - (log_scale.sum() + log_scale.numel() * half_log_two_pi)


class LaplaceHead(LikelihoodHead):
    r"""A Laplace likelihood ``Laplace(x | loc, scale)`` per feature with a fixed scale.

    The default scale 0.75 is the image likelihood of MMVAE and MMVAE+; its heavier
    tails than a Gaussian's give sharper reconstructions. With ``sigmoid_loc=True`` the
    location is ``sigmoid(raw)``, since image data lie in ``[0, 1]``.

    References:
        | Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative
        | Models (Shi et al., 2019)
        | https://arxiv.org/abs/1911.03393

    Arguments:
        event_shape: The modality's per-sample shape.
        scale: The Laplace scale ``b``.
        sigmoid_loc: Whether to squash the location into ``[0, 1]``.

    Example:
        >>> head = LaplaceHead((3, 28, 28), sigmoid_loc=True)
        >>> head(torch.zeros(4, 3, 28, 28)).mean.unique()
        tensor([0.5000])
    """

    def __init__(
        self, event_shape: Sequence[int], scale: float = 0.75, sigmoid_loc: bool = False
    ) -> None:
        super().__init__(event_shape)
        if scale <= 0:
            raise ValueError(f"scale must be positive, not {scale}")
        self.scale = float(scale)
        self.sigmoid_loc = sigmoid_loc

    def forward(self, raw: Tensor) -> Distribution:
        loc = torch.sigmoid(raw) if self.sigmoid_loc else raw
        return Independent(Laplace(loc, self.scale, validate_args=False), len(self.event_shape))

    def log_prob(self, raw: Tensor, target: Tensor) -> Tensor:
        # -|x - loc| / b - log 2b per feature; torch's Laplace builds log(2b) at full size.
        if self.sigmoid_loc:
            absolute = _SigmoidAbsoluteError.apply(raw, target, len(self.event_shape))
        else:
            absolute = self._event_sum((target - raw).abs())
        return absolute * (-1.0 / self.scale) - math.prod(self.event_shape) * math.log(2 * self.scale)


class _SigmoidAbsoluteError(torch.autograd.Function):
    r"""``sum_event |target - sigmoid(raw)|`` for ``raw [C, B, *event]`` and ``target [B, *event]``.

    Autograd through sigmoid, subtraction and abs keeps two full-size tensors per decode
    (the sigmoid's output and the difference); this keeps one, the derivative
    ``d/d raw = sign(loc - target) * loc * (1 - loc)``, computed while the forward values
    are at hand, in five passes over memory where the unfused form takes about ten. For
    MMVAE's K x M decoded copies that is the largest saved tensor of the step.
    """

    @staticmethod
    def forward(ctx: Any, raw: Tensor, target: Tensor, event_dims: int) -> Tensor:
        loc = torch.sigmoid(raw)
        excess = loc - target
        total = torch.linalg.vector_norm(excess.flatten(-event_dims), 1, dim=-1)
        sign = excess.sign_()  # d|loc - target| / d loc, in place: the difference is not needed again
        ctx.event_dims = event_dims
        ctx.target_shape = target.shape
        # sigmoid_backward(g, loc) = g * loc * (1 - loc) in one pass over memory.
        raw_derivative = torch.ops.aten.sigmoid_backward(sign, loc) if ctx.needs_input_grad[0] else None
        target_derivative = sign.neg() if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(raw_derivative, target_derivative)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        raw_derivative, target_derivative = ctx.saved_tensors
        grad = grad_total.reshape(*grad_total.shape, *([1] * ctx.event_dims))
        grad_raw = grad * raw_derivative if raw_derivative is not None else None
        grad_target = None
        if target_derivative is not None:
            grad_target = (grad * target_derivative).sum_to_size(ctx.target_shape)
        return grad_raw, grad_target, None


class BernoulliHead(LikelihoodHead):
    r"""A Bernoulli likelihood with logits ``raw``; the mean is ``sigmoid(raw)``.

    Argument validation is off so that targets anywhere in ``[0, 1]`` (grey-level images
    used as binary) are scored by the cross-entropy rather than rejected.

    Example:
        >>> head = BernoulliHead((784,))
        >>> head(torch.zeros(2, 784)).log_prob(torch.full((2, 784), 0.3)).shape
        torch.Size([2])
    """

    def forward(self, raw: Tensor) -> Distribution:
        base = Bernoulli(logits=raw, validate_args=False)
        return Independent(base, len(self.event_shape), validate_args=False)

    def log_prob(self, raw: Tensor, target: Tensor) -> Tensor:
        # x * logit - softplus(logit), the negated cross-entropy with logits, broadcast over C.
        return self._event_sum(target * raw - F.softplus(raw))


class CategoricalHead(LikelihoodHead):
    r"""A one-hot categorical likelihood along the last axis of the event shape.

    For ``event_shape (L, K)`` (say ``L = 8`` characters over ``K = 71`` letters), each of
    the ``L`` positions is an independent :class:`~torch.distributions.OneHotCategorical`
    over ``K`` classes with logits ``raw``; the mean is the probabilities, each row
    summing to one.

    Example:
        >>> head = CategoricalHead((8, 71))
        >>> probs = head(torch.randn(2, 8, 71)).mean
        >>> probs.shape, torch.allclose(probs.sum(-1), torch.ones(2, 8))
        (torch.Size([2, 8, 71]), True)
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__(event_shape)
        if len(self.event_shape) < 1:
            raise ValueError("a categorical likelihood needs at least one axis (the classes)")

    def forward(self, raw: Tensor) -> Distribution:
        base = OneHotCategorical(logits=raw, validate_args=False)
        return Independent(base, len(self.event_shape) - 1, validate_args=False)

    def log_prob(self, raw: Tensor, target: Tensor) -> Tensor:
        return self._event_sum(target * torch.log_softmax(raw, dim=-1))


class Decoder(nn.Module):
    r"""A body followed by a likelihood head: ``p(x | z)`` as a distribution.

    Arguments:
        body: Maps latents ``[N, D]`` to raw outputs ``[N, *event_shape]``.
        head: Wraps the raw outputs into a distribution.

    Example:
        >>> from omnivae.nn import ConvDecoder28
        >>> decoder = Decoder(ConvDecoder28(20, 3), LaplaceHead((3, 28, 28), sigmoid_loc=True))
        >>> px = decoder(torch.randn(8, 20))
        >>> px.batch_shape, px.event_shape
        (torch.Size([8]), torch.Size([3, 28, 28]))
    """

    def __init__(self, body: nn.Module, head: LikelihoodHead) -> None:
        super().__init__()
        self.body = body
        self.head = head

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.head.event_shape

    def forward(self, z: Tensor) -> Distribution:
        r"""
        Arguments:
            z: Latents ``[N, D]``; callers fold any extra leading dimensions into ``N``.

        Returns:
            The likelihood with ``batch_shape [N]`` and ``event_shape`` the modality's shape.
        """
        with network_autocast(z.device):
            raw = self.body(z)
        return self.head(full_precision(raw))

    def log_prob(self, z: Tensor, target: Tensor) -> Tensor:
        r"""``log p(target | z)`` for ``z [C * B, D]`` (C latent copies of each of B rows,
        copy-major) against ``target [B, *event_shape]``, without repeating the target C
        times: ``[C * B]``, equal to ``self(z).log_prob(target.repeat(C, ...))``."""
        with network_autocast(z.device):
            raw = self.body(z)
        raw = full_precision(raw)
        batch = target.shape[0]
        copies = raw.shape[0] // batch
        return self.head.log_prob(raw.reshape(copies, batch, *raw.shape[1:]), target).reshape(-1)
