"""Distributions that torch lacks: Gaussian experts and mixtures over modality subsets.

The aggregated posterior of every barycentric model is one :class:`SubsetMixture`: a
uniform mixture, per row, over subsets of the observed modalities, each component being
the barycenter (product of experts, Wasserstein barycenter, ...) of its subset's experts.

- PoE-VAE and WB-VAE use one subset, the full observed set (a one-component mixture).
- MoE-VAE mixes the singletons (Shi et al. 2019).
- MoPoE-VAE and MWB-VAE mix all non-empty subsets (Sutter et al. 2021; Qiu et al. 2025,
  Remark 3).

Sampling draws one subset per row and combines only that subset's experts, so it costs
O(M) per row, never O(2^M). The exact mixture density in :meth:`SubsetMixture.log_prob`
needs every component and so enumerates the subsets; it is used for evaluation, for the
importance-sampled objectives with few components, and never in the mixture ELBO.

References:
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI.
    Shi et al. (2019). Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models. NeurIPS.
    Sutter et al. (2021). Generalized Multimodal ELBO. ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints
from torch.distributions.kl import register_kl

from omnivae.functional import kl_mvn, subset_matrix

__all__ = [
    "GaussianExperts",
    "ConcatenatedBlocks",
    "Combiner",
    "SubsetMixture",
    "SubsetMode",
    "SampleShape",
    "RowwiseChoice",
    "diagonal_normal",
    "kl_divergence",
]


def diagonal_normal(loc: Tensor, scale: Tensor) -> Independent:
    """A Gaussian with diagonal covariance over the last axis."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


@dataclass
class GaussianExperts:
    """Unimodal Gaussian posteriors stacked over modalities.

    Attributes:
        loc: Means ``[M, *B, D]``.
        scale: Standard deviations ``[M, *B, D]`` (the diagonal part).
        cov_factor: Optional low-rank factor ``[M, *B, D, R]``; the covariance is then
            ``diag(scale**2) + cov_factor @ cov_factor.T``.
    """

    loc: Tensor
    scale: Tensor
    cov_factor: Tensor | None = None

    @property
    def num_modalities(self) -> int:
        return self.loc.shape[0]

    @property
    def batch_shape(self) -> torch.Size:
        return self.loc.shape[1:-1]

    @property
    def var(self) -> Tensor:
        return self.scale.pow(2)

    @property
    def is_diagonal(self) -> bool:
        return self.cov_factor is None

    def covariance(self) -> Tensor:
        """Full covariance matrices ``[M, *B, D, D]``."""
        cov = torch.diag_embed(self.var)
        if self.cov_factor is not None:
            cov = cov + self.cov_factor @ self.cov_factor.transpose(-1, -2)
        return cov

    def detach(self) -> GaussianExperts:
        factor = None if self.cov_factor is None else self.cov_factor.detach()
        return GaussianExperts(self.loc.detach(), self.scale.detach(), factor)

    def expand_samples(self, sample_shape: torch.Size) -> GaussianExperts:
        """Experts broadcast to ``[M, *sample_shape, *B, ...]`` without copying."""
        if len(sample_shape) == 0:
            return self

        def grow(t: Tensor, trailing: int) -> Tensor:
            lead, rest = t.shape[:1], t.shape[1:]
            view = t.reshape(*lead, *([1] * len(sample_shape)), *rest)
            return view.expand(*lead, *sample_shape, *rest)

        factor = None if self.cov_factor is None else grow(self.cov_factor, 2)
        return GaussianExperts(grow(self.loc, 1), grow(self.scale, 1), factor)

    def select(self, modality: int) -> Distribution:
        """The unimodal posterior of one modality as a distribution with batch ``*B``."""
        if self.cov_factor is None:
            return diagonal_normal(self.loc[modality], self.scale[modality])
        return MultivariateNormal(self.loc[modality], covariance_matrix=self.covariance()[modality])


Combiner = Callable[[GaussianExperts, Tensor], Distribution]
"""Maps experts ``[M, *B, D]`` and a mask ``[M, *B]`` to one distribution with batch ``*B``."""

SubsetMode = Literal["full", "all", "singletons"] | Tensor

SampleShape = torch.Size | list[int] | tuple[int, ...]
"""What ``Distribution.sample`` and ``rsample`` accept as ``sample_shape``."""


class SubsetMixture(Distribution):
    """Uniform mixture over subsets of the observed modalities, one barycenter per subset.

    For row b with observed modalities O_b, the components are the subsets in ``subsets``
    contained in O_b, each weighted equally, and component S is ``combine(experts, S)``.

    Args:
        experts: Unimodal posteriors ``[M, *B, D]``.
        mask: ``[M, *B]`` booleans, True = observed. Every row needs one observed modality.
        combine: The barycenter of a subset (see :mod:`omnivae.aggregators`).
        subsets: ``"full"`` (only the observed set: PoE, WB), ``"singletons"`` (MoE),
            ``"all"`` (every non-empty subset: MoPoE, MWB), or a ``BoolTensor[S, M]``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        experts: GaussianExperts,
        mask: Tensor,
        combine: Combiner,
        subsets: SubsetMode = "full",
    ) -> None:
        self.experts = experts
        self.mask = mask
        self.combine = combine
        self.subsets = subsets
        super().__init__(
            batch_shape=experts.batch_shape,
            event_shape=experts.loc.shape[-1:],
            validate_args=False,
        )

    # -- the subsets -------------------------------------------------------------------
    def subset_table(self) -> Tensor:
        """The candidate subsets as ``BoolTensor[S, M]``."""
        m = self.experts.num_modalities
        device = self.mask.device
        if isinstance(self.subsets, Tensor):
            return self.subsets.to(device)
        if self.subsets == "all":
            return subset_matrix(m, device=device)
        if self.subsets == "singletons":
            return torch.eye(m, dtype=torch.bool, device=device)
        return torch.ones(1, m, dtype=torch.bool, device=device)

    def component_masks(self) -> tuple[Tensor, Tensor]:
        """Masks ``[M, S, *B]`` of every component and log-weights ``[S, *B]``.

        Component s of a row is valid when its subset lies inside the row's observed set;
        invalid components get weight zero (log-weight -inf). For ``"full"`` the single
        component is the observed set itself.
        """
        table = self.subset_table()  # [S, M]
        extra = (1,) * (self.mask.dim() - 1)
        if isinstance(self.subsets, str) and self.subsets == "full":
            masks = self.mask.unsqueeze(1)
            valid = self.mask.any(0).unsqueeze(0)
        else:
            wanted = table.t().reshape(*table.t().shape, *extra)  # [M, S, 1..]
            observed = self.mask.unsqueeze(1)  # [M, 1, *B]
            valid = ~(wanted & ~observed).any(0)  # [S, *B]
            masks = wanted & observed
        count = valid.sum(0, keepdim=True).clamp_min(1)
        log_weights = torch.where(
            valid, -count.to(self.experts.loc.dtype).log(), torch.tensor(-math.inf, device=valid.device)
        )
        return masks, log_weights

    def draw_masks(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """One subset per (sample, row), uniformly among the row's valid ones: ``[M, *S, *B]``.

        For ``"all"`` a uniform integer r in [1, 2^n - 1] (n = number of observed
        modalities) picks the subset whose members are the observed modalities at the set
        bits of r; for ``"singletons"`` a uniform r in [0, n) picks one observed modality.
        Both are O(M) per row, with no host synchronisation and no enumeration.
        """
        mask = self.mask
        shape = torch.Size(sample_shape) + mask.shape[1:]
        if isinstance(self.subsets, str) and self.subsets == "full":
            return mask.reshape(mask.shape[0], *([1] * len(sample_shape)), *mask.shape[1:]).expand(
                mask.shape[0], *shape
            )
        observed = mask.reshape(mask.shape[0], *([1] * len(sample_shape)), *mask.shape[1:]).expand(
            mask.shape[0], *shape
        )
        n = observed.sum(0)  # [*S, *B]
        rank = observed.long().cumsum(0) - 1  # position of each modality among observed
        u = torch.rand(shape, device=mask.device)
        if isinstance(self.subsets, str) and self.subsets == "all":
            total = (2 ** n.double()) - 1
            r = (u.double() * total).floor().long().clamp_max((total - 1).long()) + 1
            bits = (r.unsqueeze(0) >> rank.clamp_min(0)) & 1
            return observed & bits.bool()
        if isinstance(self.subsets, str) and self.subsets == "singletons":
            r = (u * n).floor().long().clamp_max((n - 1).clamp_min(0))
            return observed & (rank == r.unsqueeze(0))
        # A general table: sample a valid row by its weights (O(S) per row).
        masks, log_weights = self.component_masks()  # [M, S, *B], [S, *B]
        probs = log_weights.exp().movedim(0, -1).reshape(-1, log_weights.shape[0])
        picks = torch.multinomial(probs, int(torch.Size(sample_shape).numel()), replacement=True)
        picks = picks.t().reshape(*sample_shape, *mask.shape[1:])  # [*S, *B]
        table = self.subset_table()  # [S, M]
        return table[picks].movedim(-1, 0) & observed

    # -- components --------------------------------------------------------------------
    def full_component(self) -> Distribution:
        """The barycenter of all observed experts (the PoE/WB of the observed set)."""
        return self.combine(self.experts, self.mask)

    def sample_component(self, sample_shape: torch.Size = torch.Size()) -> Distribution:
        """One randomly drawn component per (sample, row), batch ``[*S, *B]``.

        Its KL to the prior is an unbiased estimate of the mixture ELBO's KL term
        sum_k w_k KL(q_k || p) (Sutter et al. 2021, Eq. 9).
        """
        sample_shape = torch.Size(sample_shape)
        if isinstance(self.subsets, str) and self.subsets == "full":
            component = self.full_component()
            if len(sample_shape):
                component = component.expand(sample_shape + component.batch_shape)
            return component
        masks = self.draw_masks(sample_shape)
        return self.combine(self.experts.expand_samples(sample_shape), masks)

    def all_components(self) -> tuple[Distribution, Tensor]:
        """Every component at once (batch ``[S, *B]``) and the log-weights ``[S, *B]``."""
        masks, log_weights = self.component_masks()
        experts = self.experts.expand_samples(torch.Size([masks.shape[1]]))
        return self.combine(experts, masks), log_weights

    # -- Distribution API --------------------------------------------------------------
    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        if isinstance(self.subsets, str) and self.subsets == "full":
            return self.full_component().rsample(sample_shape)
        return self.sample_component(sample_shape).rsample()

    def sample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact mixture log-density, computed in log space over all components."""
        if isinstance(self.subsets, str) and self.subsets == "full":
            return self.full_component().log_prob(value)
        components, log_weights = self.all_components()
        batch_dims = len(self.batch_shape)
        # value [*S, *B, D] -> [*S, 1, *B, D] against the component batch [C, *B].
        value = value.unsqueeze(-(batch_dims + 2))
        log_q = components.log_prob(value)  # [*S, C, *B]
        return torch.logsumexp(log_q + log_weights, dim=-(batch_dims + 1))

    def stratified_rsample(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """``num_samples`` draws from every component: ``z [C, K, *B, D]`` and log-weights ``[C, *B]``.

        The stratified sampling of MMVAE (Shi et al. 2019, Eq. 3-4): each mixture
        component contributes the same number of samples; invalid components are drawn
        too (from a finite stand-in) and carry log-weight -inf.
        """
        components, log_weights = self.all_components()
        z = components.rsample(torch.Size([num_samples]))  # [K, C, *B, D]
        return z.transpose(0, 1), log_weights

    @property
    def mean(self) -> Tensor:
        if isinstance(self.subsets, str) and self.subsets == "full":
            return self.full_component().mean
        components, log_weights = self.all_components()
        weights = log_weights.exp().unsqueeze(-1)
        return (weights * components.mean).sum(0)

    def detach(self) -> SubsetMixture:
        """The same mixture with parameters cut from the graph (for DReG)."""
        return SubsetMixture(self.experts.detach(), self.mask, self.combine, self.subsets)

    def expand(self, batch_shape: SampleShape, _instance: Distribution | None = None) -> Distribution:  # pragma: no cover
        raise NotImplementedError("SubsetMixture does not support expand")


class ConcatenatedBlocks(Distribution):
    """Independent blocks as one distribution over their concatenation: q(u) = prod_i q_i(u_i).

    u = [u_1, ..., u_n], block i a distribution over a vector u_i of size D_i. MM-VAMP's
    posterior over z = (z_1, ..., z_M), one block per modality (Sutter et al. 2024, Eq. 3
    and App. B.2), and MMVAE+'s q(z | x_S) q(w_1..w_M | x_S) and p(z) p(w_1..w_M)
    (Palumbo et al. 2023) are both this distribution. ``mean`` and samples concatenate
    the blocks' means and samples (a block that is a mixture samples one component per
    row); ``log_prob`` sums the blocks' log-densities.

    Args:
        blocks: Distributions with vector events ``[D_i]`` and batch shapes that broadcast
            to a common ``[*B]``.

    Shapes:
        ``sample(sample_shape)``: ``[*sample_shape, *B, sum_i D_i]``; ``log_prob(u [..., *B,
        sum_i D_i])``: ``[..., *B]``; ``mean``: ``[*B, sum_i D_i]``.

    Example:
        >>> q = ConcatenatedBlocks([diagonal_normal(torch.zeros(5, 2), torch.ones(5, 2)),
        ...                         diagonal_normal(torch.zeros(5, 3), torch.ones(5, 3))])
        >>> q.sample(torch.Size([4])).shape
        torch.Size([4, 5, 5])
        >>> q.split(q.mean)[1].shape
        torch.Size([5, 3])
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, blocks: Sequence[Distribution]) -> None:
        if not blocks:
            raise ValueError("ConcatenatedBlocks needs at least one block")
        self.blocks = tuple(blocks)
        if any(len(b.event_shape) != 1 for b in self.blocks):
            raise ValueError(f"blocks need vector events, got {[tuple(b.event_shape) for b in self.blocks]}")
        self.sizes = [int(b.event_shape[0]) for b in self.blocks]
        batch = torch.broadcast_shapes(*(b.batch_shape for b in self.blocks))
        super().__init__(batch_shape=batch, event_shape=torch.Size([sum(self.sizes)]), validate_args=False)

    def split(self, value: Tensor) -> list[Tensor]:
        """The blocks of ``value [..., sum_i D_i]``, one tensor ``[..., D_i]`` each."""
        return list(value.split(self.sizes, dim=-1))

    def _joined(self, parts: Sequence[Tensor], lead: torch.Size) -> Tensor:
        shape = lead + self.batch_shape
        return torch.cat([part.expand(*shape, size) for part, size in zip(parts, self.sizes, strict=True)], dim=-1)

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        return self._joined([b.rsample(sample_shape) for b in self.blocks], sample_shape)

    def sample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            return self._joined([b.sample(sample_shape) for b in self.blocks], sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        total = None
        for block, part in zip(self.blocks, self.split(value), strict=True):
            term = block.log_prob(part)
            total = term if total is None else total + term
        assert total is not None
        return total

    @property
    def mean(self) -> Tensor:
        return self._joined([b.mean for b in self.blocks], torch.Size())

    def expand(self, batch_shape: SampleShape, _instance: Distribution | None = None) -> Distribution:  # pragma: no cover
        raise NotImplementedError("ConcatenatedBlocks does not support expand")


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(p: MultivariateNormal, q: Independent) -> Tensor:
    if not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    cov_q = torch.diag_embed(q.base_dist.scale.pow(2)).expand(*p.batch_shape, *p.event_shape, *p.event_shape)
    loc_q = q.base_dist.loc.expand_as(p.loc)
    return kl_mvn(p.loc, p.covariance_matrix, loc_q, cov_q)


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    r"""KL(p || q): :func:`torch.distributions.kl_divergence`, with the diagonal Gaussian
    case in closed form inline.

    For ``Independent(Normal)`` against ``Independent(Normal)`` (the posterior against
    the prior, or against another expert, in every method here),

        KL = 1/2 sum_d [ s_p^2 / s_q^2 + (mu_p - mu_q)^2 / s_q^2 - 1 - log(s_p^2 / s_q^2) ].

    The closed form gives the same numbers as torch's registry; it exists because that
    registry's dispatch (a cached ``min`` over matching type pairs) cannot be traced by
    :func:`torch.compile`, and a graph break in the middle of every objective would
    split a compiled training step in two. Every other pair goes to the registry.

    Example:
        >>> p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
        >>> float(kl_divergence(p, p))
        0.0
    """
    if (
        type(p) is Independent
        and type(q) is Independent
        and type(p.base_dist) is Normal
        and type(q.base_dist) is Normal
        and p.reinterpreted_batch_ndims == q.reinterpreted_batch_ndims
    ):
        base_p, base_q = p.base_dist, q.base_dist
        ratio = (base_p.scale / base_q.scale).pow(2)
        shift = ((base_p.loc - base_q.loc) / base_q.scale).pow(2)
        elementwise = 0.5 * (ratio + shift - 1.0 - ratio.log())
        return elementwise.sum(tuple(range(-p.reinterpreted_batch_ndims, 0))) if p.reinterpreted_batch_ndims else elementwise
    return torch.distributions.kl_divergence(p, q)


class RowwiseChoice(Distribution):
    """Per batch element, one of two distributions: ``first`` where ``choose``, else ``second``.

    A model with a joint encoder (:class:`~omnivae.methods.jmvae.JointEncoderVAE`) uses its joint posterior on
    fully observed rows and a subset posterior elsewhere; the two may be of different
    kinds (a Gaussian and a mixture). Both are sampled and scored in every row and
    :func:`torch.where` keeps one, so the unused one gets zero gradient.

    Args:
        choose: ``BoolTensor[*B]``.
        first: Distribution with batch ``[*B]`` (or broadcastable to it).
        second: Distribution with batch ``[*B]`` and the same event shape.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, choose: Tensor, first: Distribution, second: Distribution) -> None:
        self.choose = choose
        self.first = first
        self.second = second
        super().__init__(batch_shape=choose.shape, event_shape=first.event_shape, validate_args=False)

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        a, b = self.first.rsample(sample_shape), self.second.rsample(sample_shape)
        return torch.where(self.choose.unsqueeze(-1), a, b)

    def sample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.where(self.choose, self.first.log_prob(value), self.second.log_prob(value))

    @property
    def mean(self) -> Tensor:
        return torch.where(self.choose.unsqueeze(-1), self.first.mean, self.second.mean)
