"""Aggregators: from unimodal posteriors and a mask to one joint posterior.

Every aggregator is ``(experts, mask) -> SubsetMixture`` (a torch ``Distribution`` with
``rsample``, ``log_prob`` and ``mean``), so any model can swap its aggregation by name.
In the barycentric view (Qiu et al. 2025, Lemma 1) each is the barycenter of the
unimodal posteriors under some divergence, or a mixture of such barycenters over subsets:

========================  ==============================  ==========================
name                      barycenter of a subset          subsets mixed
========================  ==============================  ==========================
``poe``                   product of experts (reverse KL)  the observed set
``moe``                   (a single expert)               singletons (forward KL)
``mopoe``                 product of experts              all non-empty subsets
``wb``                    2-Wasserstein barycenter        the observed set
``mwb``                   2-Wasserstein barycenter        all non-empty subsets
========================  ==============================  ==========================

Barycentric weights (:class:`BarycentricWeights`) are a component of ``poe``, ``mopoe``,
``wb`` and ``mwb``: uniform (the default, and exactly the unweighted aggregators), fixed per
modality, learned per modality (:class:`LearnedWeights`) or per sample from the experts'
parameters (:class:`AttentionWeights`). They are renormalised over the observed members of
each subset, and their gradient flows through the closed forms.

Masked modalities drop out of every barycenter through ``torch.where`` and receive
exactly zero gradient. ``infer`` gives the posterior used to represent or condition on
an observed set; for subset mixtures it is the barycenter of the whole observed set, as
MoPoE's evaluation does (Sutter et al. 2021, Sec. 4), and ``inference="mixture"`` keeps the
mixture instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from omnivae.distributions import GaussianExperts, SubsetMixture, SubsetMode, diagonal_normal
from omnivae.errors import UserError, unknown_name
from omnivae.functional import bures_wasserstein_barycenter, poe, wasserstein_barycenter

__all__ = [
    "Aggregator",
    "ProductOfExperts",
    "WassersteinBarycenter",
    "MixtureOfExperts",
    "MixtureOfProductsOfExperts",
    "MixtureOfBarycenters",
    "PriorDividedProduct",
    "BarycentricWeights",
    "FixedWeights",
    "LearnedWeights",
    "AttentionWeights",
    "WEIGHTS",
    "WEIGHTED_AGGREGATORS",
    "build_weights",
    "AGGREGATORS",
    "build_aggregator",
]

Covariance = Literal["diag", "full"]


class BarycentricWeights(nn.Module):
    """Unnormalised barycentric weights lambda ``[M, *B]`` of the experts given their mask.

    The aggregators renormalise them over the observed members of each subset
    (:func:`~omnivae.functional.normalize_weights`), so a masked expert gets weight zero,
    and, because it is replaced before any arithmetic, zero gradient.
    """

    def forward(self, experts: GaussianExperts, mask: Tensor) -> Tensor:
        raise NotImplementedError


class FixedWeights(BarycentricWeights):
    """Given weights per modality ``[M]`` (non-negative, not all zero); not trained."""

    weights: Tensor

    def __init__(self, weights: Tensor | Sequence[float]) -> None:
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.get_default_dtype())
        if w.dim() != 1 or not bool((w >= 0).all()) or not bool(w.sum() > 0) or not bool(torch.isfinite(w).all()):
            raise UserError(f"weights must be non-negative finite numbers, one per modality, not all zero; got {w.tolist()}",
                            parameter="weights")
        self.register_buffer("weights", w)

    def forward(self, experts: GaussianExperts, mask: Tensor) -> Tensor:
        if self.weights.shape[0] != mask.shape[0]:
            raise UserError(f"weights has {self.weights.shape[0]} entries for {mask.shape[0]} modalities", parameter="weights")
        return self.weights


class LearnedWeights(BarycentricWeights):
    """Learned weights per modality: lambda = softmax(theta), theta ``[M]`` initialised to 0 (uniform).

    Renormalising a softmax over the observed members gives the softmax over them.
    """

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, experts: GaussianExperts, mask: Tensor) -> Tensor:
        return torch.softmax(self.logits, 0)


class AttentionWeights(BarycentricWeights):
    """Weights per sample: a small MLP scores each expert's (mu_m, log sigma_m), softmax over the observed.

    The same MLP scores every member, so the weights are permutation-equivariant over the
    modalities: they depend on what an expert says, not on which modality it is. The last
    layer starts at zero, so training starts from uniform weights.

    Args:
        latent_dim: D, the size of mu_m and sigma_m.
        hidden: Width of the MLP's hidden layer.
    """

    def __init__(self, latent_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(2 * latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        last = self.score[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, experts: GaussianExperts, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1)
        zero = torch.zeros((), dtype=experts.loc.dtype, device=experts.loc.device)
        # Masked experts are replaced before the MLP, so they receive exactly zero gradient.
        loc = torch.where(m, experts.loc, zero)
        log_scale = torch.where(m, experts.scale, torch.ones_like(zero)).log()
        score = self.score(torch.cat([loc, log_scale], -1)).squeeze(-1)  # [M, *B]
        score = torch.where(mask, score, zero)
        top = torch.where(mask, score, torch.full_like(score, -torch.inf)).amax(0, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # rows with nothing observed
        return torch.where(mask, (score - top).exp(), zero)


WEIGHTS = ("uniform", "learned", "attention")
"""The kinds of barycentric weights by name; a comma-separated list of numbers gives fixed weights."""


def build_weights(kind: str, num_modalities: int, latent_dim: int) -> BarycentricWeights | None:
    """Weights by name (``uniform`` gives None: the unweighted aggregator), or fixed from ``"0.5,1,..."``."""
    if kind == "uniform":
        return None
    if kind == "learned":
        return LearnedWeights(num_modalities)
    if kind == "attention":
        return AttentionWeights(latent_dim)
    try:
        values = [float(v) for v in kind.split(",")]
    except ValueError:
        raise UserError(
            f"unknown aggregator_weights {kind!r}; choose from {', '.join(WEIGHTS)} or give one number per modality",
            parameter="aggregator_weights",
        ) from None
    if len(values) != num_modalities:
        raise UserError(f"aggregator_weights gives {len(values)} numbers for {num_modalities} modalities",
                        parameter="aggregator_weights")
    return FixedWeights(values)


def _as_weights(weights: Tensor | Sequence[float] | BarycentricWeights | None) -> BarycentricWeights | None:
    if weights is None or isinstance(weights, BarycentricWeights):
        return weights
    return FixedWeights(weights)


class Aggregator(nn.Module):
    """Base class: ``forward(experts, mask)`` returns the training posterior.

    Subclasses set ``subsets`` and implement :meth:`combine`, the barycenter of the experts
    selected by a mask. ``forward`` wraps it in a :class:`SubsetMixture`.
    """

    subsets: SubsetMode = "full"
    inference: Literal["barycenter", "mixture"] = "barycenter"

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        raise NotImplementedError

    def forward(self, experts: GaussianExperts, mask: Tensor) -> SubsetMixture:
        """The aggregated posterior of ``experts [M, *B, D]`` given ``mask [M, *B]``."""
        return SubsetMixture(experts, mask, self.combine, self.subsets)

    def infer(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        """The posterior for an observed set at inference time (representation, generation)."""
        posterior = self(experts, mask)
        if self.subsets == "full" or self.inference == "mixture":
            return posterior
        return posterior.full_component()


class ProductOfExperts(Aggregator):
    """Product of Gaussian experts (MVAE; Wu & Goodman 2018, Eq. 5).

    The reverse-KL barycenter of the unimodal posteriors (Qiu et al. 2025, Theorem 1).

    Args:
        prior_expert: Include N(0, I) as an expert, as MVAE does (Wu & Goodman 2018, Sec. 3).
        weights: Barycentric weights (:class:`BarycentricWeights`, or numbers per modality);
            None is the plain product. See :func:`~omnivae.functional.poe`.

    Example:
        >>> experts = GaussianExperts(torch.zeros(2, 4, 3), torch.ones(2, 4, 3))
        >>> q = ProductOfExperts()(experts, torch.ones(2, 4, dtype=torch.bool))
        >>> q.rsample().shape
        torch.Size([4, 3])
    """

    def __init__(self, prior_expert: bool = True, weights: Tensor | Sequence[float] | BarycentricWeights | None = None) -> None:
        super().__init__()
        self.prior_expert = prior_expert
        self.weights = _as_weights(weights)

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        if not experts.is_diagonal:
            raise UserError("the product of experts needs diagonal covariances; use covariance='diag'", parameter="covariance")
        lam = None if self.weights is None else self.weights(experts, mask)
        loc, var = poe(experts.loc, experts.var, mask, prior_expert=self.prior_expert, weights=lam)
        return diagonal_normal(loc, var.sqrt())


class WassersteinBarycenter(Aggregator):
    """2-Wasserstein barycenter of the unimodal posteriors (WB-VAE; Qiu et al. 2025).

    With diagonal experts it is the closed form of Remark 2 (Eq. 7): weighted averages of
    the means and of the standard deviations. With full or low-rank-plus-diagonal experts
    (``experts.cov_factor`` set) it solves the Bures-Wasserstein fixed point of Eq. 6.

    Args:
        weights: Barycentric weights lambda_m: a :class:`BarycentricWeights` (fixed, learned
            or per sample) or numbers per modality ``[M]``; uniform over the observed when None.
        iters: Fixed-point iterations for full covariances. From the commuting-case start
            of :func:`~omnivae.functional.bures_wasserstein_barycenter`, 8 iterations
            reach float32 precision for rank-2-plus-diagonal experts (relative error
            1.9e-6 against 200 iterations; M=5, D=32), so 10 is the default.
    """

    def __init__(self, weights: Tensor | Sequence[float] | BarycentricWeights | None = None, iters: int = 10) -> None:
        super().__init__()
        self.weights = _as_weights(weights)
        self.iters = iters

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        lam = None if self.weights is None else self.weights(experts, mask)
        if experts.is_diagonal:
            loc, std = wasserstein_barycenter(experts.loc, experts.scale, lam, mask)
            return diagonal_normal(loc, std)
        loc, cov = bures_wasserstein_barycenter(
            experts.loc, experts.covariance(), lam, mask, iters=self.iters, tol=None
        )
        return MultivariateNormal(loc, covariance_matrix=cov, validate_args=False)


class MixtureOfExperts(Aggregator):
    """Uniform mixture of the observed unimodal posteriors (MMVAE; Shi et al. 2019, Eq. 2).

    The forward-KL barycenter (Qiu et al. 2025, Theorem 1). Sampling picks one observed
    modality per row and reparameterises inside that component.
    """

    subsets = "singletons"

    def __init__(self, inference: Literal["barycenter", "mixture"] = "mixture") -> None:
        super().__init__()
        self.inference = inference
        self._single = WassersteinBarycenter()

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        # A component holds one expert, whose barycenter (under any divergence) is itself;
        # for a whole observed set (inference="barycenter") this gives the W2 barycenter.
        return self._single.combine(experts, mask)


class MixtureOfProductsOfExperts(ProductOfExperts):
    """Mixture over all non-empty subsets of products of experts (MoPoE; Sutter et al. 2021, Eq. 7).

    Args:
        prior_expert: Include N(0, I) in every subset's product. Off by default: the paper
            defines each subset posterior as the product of its unimodal posteriors.
        inference: ``"barycenter"`` conditions on an observed set with its PoE (as MoPoE's
            evaluation); ``"mixture"`` keeps the mixture over its subsets.
        weights: Barycentric weights within each subset, as for :class:`ProductOfExperts`.
    """

    subsets = "all"

    def __init__(
        self,
        prior_expert: bool = False,
        inference: Literal["barycenter", "mixture"] = "barycenter",
        weights: Tensor | Sequence[float] | BarycentricWeights | None = None,
    ) -> None:
        super().__init__(prior_expert=prior_expert, weights=weights)
        self.inference = inference


class MixtureOfBarycenters(WassersteinBarycenter):
    """Mixture over all non-empty subsets of Wasserstein barycenters (MWB-VAE; Qiu et al. 2025, Remark 3).

    The forward-KL barycenter of the subsets' W2 barycenters.

    Args:
        weights: Barycentric weights within each subset.
        inference: As for :class:`MixtureOfProductsOfExperts`.
    """

    subsets = "all"

    def __init__(
        self,
        weights: Tensor | Sequence[float] | BarycentricWeights | None = None,
        iters: int = 10,
        inference: Literal["barycenter", "mixture"] = "barycenter",
    ) -> None:
        super().__init__(weights=weights, iters=iters)
        self.inference = inference


AGGREGATORS: dict[str, type[Aggregator]] = {
    "poe": ProductOfExperts,
    "moe": MixtureOfExperts,
    "mopoe": MixtureOfProductsOfExperts,
    "wb": WassersteinBarycenter,
    "mwb": MixtureOfBarycenters,
}


WEIGHTED_AGGREGATORS = ("poe", "mopoe", "wb", "mwb")
"""The aggregators that take barycentric weights (a mixture of single experts does not)."""


def build_aggregator(name: str, **kwargs: Any) -> Aggregator:
    """An aggregator by registry name (``poe``, ``moe``, ``mopoe``, ``wb``, ``mwb``)."""
    if name not in AGGREGATORS:
        raise unknown_name("aggregator", name, list(AGGREGATORS))
    return AGGREGATORS[name](**kwargs)


class PriorDividedProduct(Aggregator):
    r"""The subset posterior of JNF's Eq. 12 (Senellart et al.), used by JMVAE for subsets.

    q(z | x_S) ∝ prod_{j in S} q(z | x_j) / p(z)^(|S|-1): the true posterior factorises
    this way when the modalities are independent given z (Eq. 11-12), and the unimodal
    encoders stand in for p(z | x_j). For Gaussian experts N(mu_j, diag sigma_j^2) and the
    prior N(0, I) it is Gaussian in closed form, with per-dimension

        precision = sum_{j in S} 1/sigma_j^2 - (|S| - 1),
        mean = (sum_{j in S} mu_j / sigma_j^2) / precision.

    For |S| = 1 it is the expert itself, and an expert equal to the prior leaves the
    product unchanged. The precision is not positive when the experts are together broader
    than the prior (e.g. |S| experts of variance above |S|/(|S|-1) in a dimension); the
    product is then not normalisable, and the precision is clamped to ``min_precision``
    (the variance to at most 1/min_precision) so that sampling and densities stay finite.
    The clamp has zero gradient; it is reached only by such broad experts.

    Unlike the product of experts with a prior expert (MVAE, ``poe``), which multiplies the
    prior in once, this divides it out |S| - 1 times. The JNF paper samples this density
    with HMC for flows (Sec. 3.3); with Gaussian experts, as in its JMVAE baseline
    (App. E.2, "the PoE sampling solution"), no sampler is needed.

    Args:
        min_precision: Floor of the per-dimension precision.

    Example:
        >>> experts = GaussianExperts(torch.zeros(2, 1, 3), torch.full((2, 1, 3), 0.5))
        >>> q = PriorDividedProduct()(experts, torch.ones(2, 1, dtype=torch.bool))
        >>> q.full_component().variance.reciprocal().round().tolist()  # 4 + 4 - 1
        [[7.0, 7.0, 7.0]]
    """

    def __init__(self, min_precision: float = 1e-2) -> None:
        super().__init__()
        if not min_precision > 0:
            raise UserError(f"min_precision must be positive, got {min_precision}", parameter="min_precision")
        self.min_precision = min_precision

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        if not experts.is_diagonal:
            raise UserError(
                "the product over the prior needs diagonal covariances; use covariance='diag'",
                parameter="covariance",
            )
        m = mask.unsqueeze(-1)
        dtype, device = experts.loc.dtype, experts.loc.device
        zero = torch.zeros((), dtype=dtype, device=device)
        # Masked experts are replaced before 1/var, so they get exactly zero gradient.
        var = torch.where(m, experts.var, torch.ones((), dtype=dtype, device=device))
        precision = torch.where(m, var.reciprocal(), zero)
        eta = (torch.where(m, experts.loc, zero) * precision).sum(0)
        count = mask.sum(0).to(dtype).unsqueeze(-1)
        # A row with no expert gets 0 - (0 - 1) = 1: the prior, N(0, I).
        total = (precision.sum(0) - (count - 1)).clamp_min(self.min_precision)
        out_var = total.reciprocal()
        return diagonal_normal(eta * out_var, out_var.sqrt())
