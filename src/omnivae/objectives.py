"""Training objectives as objects, separate from the models they train.

An objective is called as ``objective(model, x, mask, kl_weight)`` and returns an
:class:`ObjectiveOutput`: the loss to minimise (a scalar) and named terms (tensors, never
synchronised to the host inside the step). ``kl_weight`` is the schedule factor the
trainer declares for the step (beta warm-up); the objective's own ``beta`` is fixed.

The model only has to offer the :class:`MultimodalModel` protocol: per-modality experts,
its aggregator, its prior and the log-likelihood of data under a latent sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution

from omnivae.distributions import GaussianExperts, SubsetMixture, kl_divergence
from omnivae.errors import UserError
from omnivae.functional import log_mean_exp
from omnivae.stages import Stage

__all__ = [
    "MultimodalModel",
    "ObjectiveOutput",
    "Objective",
    "ELBO",
    "MixtureELBO",
    "SubsampledELBO",
    "StratifiedIWAE",
    "MVTCAE",
    "random_subsets",
    "expert_kl",
    "check_beta",
    "importance_bound",
]


class MultimodalModel(Protocol):
    """What the generic objectives need of a model (every :class:`~omnivae.models.MultimodalVAE`)."""

    @property
    def num_modalities(self) -> int: ...

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts: ...

    def aggregate(self, experts: GaussianExperts, mask: Tensor) -> SubsetMixture: ...

    def prior(self) -> Distribution: ...

    def log_likelihood(
        self, x: dict[str, Tensor], z: Tensor, mask: Tensor, decode_terms: list[list[bool]] | None = None
    ) -> Tensor: ...


@dataclass
class ObjectiveOutput:
    """The loss and its named terms (per-batch means, as tensors)."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class for objectives; subclasses implement ``__call__``.

    ``model`` is typed by each subclass: the generic objectives need a
    :class:`MultimodalModel`, a method's own objective its own model class.
    """

    def __call__(self, model: Any, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        raise NotImplementedError

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        """The training schedule for ``epochs`` (``--epochs``): by default one stage that
        trains every parameter with this objective. Two-stage methods override it."""
        return (Stage("train", self, epochs),)

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def check_beta(beta: float) -> None:
    """The one check of an objective's ``beta``, the weight of its KL (or rate) term.

    Raises:
        UserError: for a negative or NaN ``beta``.
    """
    if not beta >= 0:
        raise UserError(f"beta must be >= 0, got {beta}", parameter="beta")


class ELBO(Objective):
    """The beta-weighted ELBO of one joint posterior (Qiu et al. 2025, Eq. 3; Higgins et al. 2017).

    L = E_q[log p(X | z)] - beta * KL(q(z | X) || p(z)), reconstructing only the observed
    modalities of each row. When the posterior is a mixture over subsets, one component is
    drawn per row and the KL is that component's closed-form KL: an unbiased estimate of
    the mixture ELBO of :class:`MixtureELBO`. For a one-component posterior it is exact.

    Args:
        beta: Weight of the KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask)
        component = posterior.sample_component()
        z = component.rsample()
        rec = model.log_likelihood(x, z, mask)
        kl = kl_divergence(component, model.prior())
        loss = -(rec - self.beta * kl_weight * kl).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": kl.mean()})


class MixtureELBO(ELBO):
    """The mixture ELBO of MoPoE-VAE and MWB-VAE (Sutter et al. 2021, Eq. 9; Qiu et al. 2025, Remark 3).

    L = E_q[log p(X | z)] - beta * sum_k w_k KL(q_k(z | X_k) || p(z)), where q is the
    uniform mixture over subsets X_k of the barycenters q_k. The sum over the 2^M - 1
    subsets is estimated without bias by one subset drawn per row, so a step costs O(M)
    per row, as for a single barycenter.
    """


def random_subsets(mask: Tensor, count: int, min_size: int, max_size: int) -> Tensor:
    """``count`` random subsets per row of sizes uniform in [min_size, max_size]: ``[M, count, B]``.

    Members are drawn among all modalities and then intersected with ``mask [M, B]``.
    """
    num_modalities, batch = mask.shape
    device = mask.device
    size = torch.randint(min_size, max_size + 1, (count, batch), device=device)
    scores = torch.rand(num_modalities, count, batch, device=device)
    rank = scores.argsort(0).argsort(0)
    return (rank < size.unsqueeze(0)) & mask.unsqueeze(1)


class SubsampledELBO(Objective):
    """MVAE's sub-sampled training objective (Wu & Goodman 2018, Sec. 3.1, Eq. 6).

    The sum of the ELBOs of the joint posterior, of each unimodal posterior and of
    ``num_random_subsets`` random subsets of size 2..M-1 per row. Each term reconstructs
    the modalities in its subset. All terms share one encoder pass and one decoder call
    per modality (terms fold into the batch).

    Args:
        beta: Weight of the KL terms.
        num_random_subsets: The k random subsets (0 for two modalities).
    """

    def __init__(self, beta: float = 1.0, num_random_subsets: int = 0) -> None:
        check_beta(beta)
        if num_random_subsets < 0:
            raise UserError(f"num_random_subsets must be >= 0, got {num_random_subsets}", parameter="num_random_subsets")
        self.beta = beta
        self.num_random_subsets = num_random_subsets

    def decode_table(self, num_modalities: int) -> list[list[bool]]:
        """Which modalities each term may reconstruct, known before the step: ``[T][M]``."""
        table = [[True] * num_modalities]
        if num_modalities > 1:
            table += [[i == j for j in range(num_modalities)] for i in range(num_modalities)]
        if self.num_random_subsets and num_modalities > 2:
            table += [[True] * num_modalities for _ in range(self.num_random_subsets)]
        return table

    def term_masks(self, mask: Tensor) -> Tensor:
        """Masks ``[M, T, B]`` of the terms: joint, each modality, then random subsets."""
        num_modalities = mask.shape[0]
        eye = torch.eye(num_modalities, dtype=torch.bool, device=mask.device)
        singles = eye.unsqueeze(-1) & mask.unsqueeze(1)
        terms = [mask.unsqueeze(1), singles] if num_modalities > 1 else [mask.unsqueeze(1)]
        if self.num_random_subsets and num_modalities > 2:
            terms.append(random_subsets(mask, self.num_random_subsets, 2, num_modalities - 1))
        return torch.cat(terms, dim=1)

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        masks = self.term_masks(mask)  # [M, T, B]
        num_terms = masks.shape[1]
        posterior = model.aggregate(experts.expand_samples(torch.Size([num_terms])), masks)
        component = posterior.sample_component()
        z = component.rsample()  # [T, B, D]
        rec = model.log_likelihood(x, z, masks, self.decode_table(mask.shape[0]))  # [T, B]
        kl = kl_divergence(component, model.prior())  # [T, B]
        valid = masks.any(0)
        zero = torch.zeros((), dtype=rec.dtype, device=rec.device)
        elbo = torch.where(valid, rec - self.beta * kl_weight * kl, zero)
        loss = -elbo.sum(0).mean()
        return ObjectiveOutput(loss, {"rec": -rec[0].mean(), "kl": kl[0].mean()})


class StratifiedIWAE(Objective):
    """MMVAE's stratified importance-weighted bound, optionally with DReG gradients.

    For each mixture component r (for MoE, each observed modality) draw K samples
    z ~ q_r and weight them by log w = log p(X | z) + beta * (log p(z) - log q(z | X)),
    where q is the whole mixture; the bound is the mean over components of the
    log-mean-exp over K (Shi et al. 2019, Eq. 4, the "looser" stratified IWAE). With
    ``dreg`` the doubly reparameterised gradient estimator (Tucker et al. 2019) is used:
    q's density is evaluated with detached parameters and the sample path gets the
    squared normalised weights. Works with any aggregator (a one-component posterior gives
    the ordinary IWAE).

    Args:
        num_samples: K importance samples per component.
        dreg: Use the DReG estimator.
        beta: Weight of log p(z) - log q(z | X) (1 is the bound itself).
    """

    def __init__(self, num_samples: int = 1, dreg: bool = False, beta: float = 1.0) -> None:
        check_beta(beta)
        if num_samples < 1:
            raise UserError(
                f"the number of importance samples K must be >= 1, got {num_samples}", parameter="num_samples"
            )
        self.num_samples = num_samples
        self.dreg = dreg
        self.beta = beta

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask)
        z, log_weights = posterior.stratified_rsample(self.num_samples)  # [C, K, B, D], [C, B]
        num_components, k, batch, dim = z.shape
        density = model.aggregate(experts.detach(), mask) if self.dreg else posterior
        log_q = density.log_prob(z)  # [C, K, B]
        log_p = model.prior().log_prob(z)
        rec = model.log_likelihood(x, z.reshape(num_components * k, batch, dim), mask)
        rec = rec.reshape(num_components, k, batch)
        log_w = rec + self.beta * kl_weight * (log_p - log_q)
        bound = importance_bound(log_w, torch.isfinite(log_weights), self.dreg, (z,))
        terms = {"rec": -rec.mean(), "kl": (log_q - log_p).mean()}
        return ObjectiveOutput(-bound.mean(), terms)


def importance_bound(log_w: Tensor, valid: Tensor, dreg: bool = False, paths: Sequence[Tensor] = ()) -> Tensor:
    """The stratified importance-weighted bound of each row, optionally with DReG gradients.

    bound_b = (1 / |C_b|) sum_{c in C_b} log (1/K) sum_k exp(log_w[c, k, b]), C_b the valid
    components of row b (Shi et al. 2019, Eq. 4). With ``dreg`` the value is unchanged
    and the gradient is the doubly reparameterised one (Tucker et al. 2019, Eq. 5-6): the
    caller evaluates q's density with detached parameters, the surrogate weights each
    log_w by w~_ck = softmax_k(log_w), and each reparameterised sample in ``paths`` gets its
    gradient scaled once more by w~_ck, so that the encoder's path carries w~_ck^2.
    :class:`StratifiedIWAE` and MMVAE+'s objective (whose paths are z and the w_m) share it.

    Args:
        log_w: Log importance weights ``[C, K, B]``.
        valid: ``[C, B]``; invalid components count neither in the bound nor in gradients.
        dreg: Use the DReG estimator.
        paths: The reparameterised samples behind ``log_w``, shaped ``[..., C, K, B, E]``.

    Returns:
        ``[B]``.

    Example:
        >>> log_w = torch.zeros(2, 3, 4)
        >>> importance_bound(log_w, torch.ones(2, 4, dtype=torch.bool)).shape
        torch.Size([4])
    """
    zero = torch.zeros((), dtype=log_w.dtype, device=log_w.device)
    log_w = torch.where(valid.unsqueeze(1), log_w, zero)
    per_component = log_mean_exp(log_w, dim=1)  # [C, B]
    if dreg:
        normalised = torch.softmax(log_w, dim=1).detach()  # [C, K, B]
        for path in paths:
            if path.requires_grad:
                path.register_hook(lambda grad: grad * normalised.unsqueeze(-1))
        surrogate = (normalised * log_w).sum(1)
        # The value stays the bound (comparable with plain IWAE); only the gradient is DReG's.
        per_component = per_component.detach() + (surrogate - surrogate.detach())
    count = valid.sum(0).clamp_min(1)
    return torch.where(valid, per_component, zero).sum(0) / count


def expert_kl(posterior: Distribution, experts: GaussianExperts, mask: Tensor) -> Tensor:
    """Sum over observed modalities of KL(q(z | X) || q(z | x_m)): ``[*B]``.

    The KL terms of JMVAE-kl (Suzuki et al. 2016; the L_uni of the JNF paper, Eq. 7) and
    of MVTCAE's conditional information bottlenecks (Hwang et al. 2021), in closed form.

    Args:
        posterior: q(z | X), batch ``[*B]``.
        experts: The unimodal posteriors ``[M, *B, D]``.
        mask: ``[M, *B]``; unobserved modalities add nothing and get zero gradient.
    """
    total = torch.zeros(posterior.batch_shape, dtype=experts.loc.dtype, device=experts.loc.device)
    zero = torch.zeros((), dtype=total.dtype, device=total.device)
    for index in range(experts.num_modalities):
        kl = kl_divergence(posterior, experts.select(index))
        total = total + torch.where(mask[index], kl, zero)
    return total


class MVTCAE(Objective):
    """The objective of the multi-view total correlation autoencoder (MVTCAE; Hwang et al. 2021).

    L = ((M - alpha) / M) sum_m w_m log p(x_m | z)
        - a beta [(alpha / M) sum_m KL(q(z | X) || q(z | x_m)) + (1 - alpha) KL(q(z | X) || p(z))],

    z ~ q(z | X), with q(z | X) the model's aggregated posterior (the product of the
    unimodal experts for the ``mvtcae`` recipe) and a the trainer's KL warm-up factor;
    the formula as written in the peer protocols (Sec. 3, "MVTCAE").
    The alpha/M-weighted terms are the conditional variational information bottlenecks
    MVTCAE adds to the ELBO (JNF paper, Sec. 2.5); alpha = 0 gives the beta-ELBO.

    Missing modalities: M is the number of **observed** modalities of each row, and the
    sums run over them, so a row is scored as an MVTCAE over its own views (a row with
    one view gets ((1 - alpha) rec - a beta KL(q || p)), the unimodal ELBO scaled by
    1 - alpha, since q(z | X) is then that view's posterior). A mixture posterior (an
    aggregator swap such as ``moe``) contributes one drawn component per row, as in
    :class:`ELBO`.

    The ``mvtcae`` recipe's q(z | X) is the product of the observed experts without a
    N(0, I) expert, as in MultiVae (peer protocols, Sec. 3): the prior enters once, through
    (1 - alpha) KL(q || p). The original code multiplies N(0, I) into the full-set product;
    ``--aggregator`` swaps the aggregation as for any model.

    Args:
        beta: Weight of the bracket. Hwang et al. (2021) use 2.5 on PolyMNIST, as does
            every model of the JNF paper's PolyMNIST comparison; the configuration's
            default stays 1 for all methods, so pass ``--beta 2.5`` to match.
        tc_ratio: alpha in [0, 1] (5/6 in Hwang et al. 2021 on PolyMNIST).
    """

    def __init__(self, beta: float = 1.0, tc_ratio: float = 5 / 6) -> None:
        check_beta(beta)
        if not 0 <= tc_ratio <= 1:
            raise UserError(f"tc_ratio (MVTCAE's alpha) must lie in [0, 1], got {tc_ratio}", parameter="tc_ratio")
        self.beta = beta
        self.tc_ratio = tc_ratio

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask).sample_component()
        z = posterior.rsample()
        rec = model.log_likelihood(x, z, mask)
        kl = kl_divergence(posterior, model.prior())
        kl_unimodal = expert_kl(posterior, experts, mask)
        count = mask.sum(0).to(rec.dtype).clamp_min(1)
        alpha = self.tc_ratio
        bracket = (alpha / count) * kl_unimodal + (1 - alpha) * kl
        objective = ((count - alpha) / count) * rec - self.beta * kl_weight * bracket
        terms = {"rec": -rec.mean(), "kl": kl.mean(), "kl_unimodal": kl_unimodal.mean()}
        return ObjectiveOutput(-objective.mean(), terms)
