"""Multimodal VAEs as compositions, and the registry of named methods.

A model is :class:`MultimodalVAE`: one encoder and one decoder per modality, an
aggregator, a prior and likelihood weights. A named method (``poe``, ``moe``, ``mopoe``,
``wb``, ``mwb``, ``jmvae``, ``mvtcae``) is a :class:`Recipe`: which aggregator, prior and
objective to use, and, for a method with more networks (JMVAE's joint encoder), which
model class to assemble. Any recipe takes another aggregator by name, so aggregation is
swapped, not re-implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints

from omnivae.configs import check_field_types, type_problem
from omnivae.aggregators import AGGREGATORS, Aggregator, ProductOfExperts, build_aggregator
from omnivae.data.base import ModalitySpec
from omnivae.distributions import GaussianExperts, SubsetMixture, diagonal_normal
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.nn import JOINT_ENCODERS, JointEncoder, build_decoder, build_encoder, build_joint_encoder
from omnivae.nn.heads import Decoder
from omnivae.objectives import (
    ELBO,
    JMVAEKL,
    MVTCAE,
    MixtureELBO,
    Objective,
    StratifiedIWAE,
    SubsampledELBO,
)
from omnivae.priors import PRIORS

__all__ = [
    "CPU_DECODE_CHUNK_ELEMENTS",
    "MultimodalVAE",
    "JointEncoderVAE",
    "PriorDividedProduct",
    "RowwiseChoice",
    "ModelConfig",
    "ModelParts",
    "Recipe",
    "MODELS",
    "build_model",
    "check_networks",
    "model_table",
]

# Output elements per decoder call when a CPU decode of many latent copies is chunked:
# 8 MB of float32, under glibc's largest mmap threshold (32 MB) with room for the body's
# wider hidden activations, and still thousands of rows per matrix product.
CPU_DECODE_CHUNK_ELEMENTS = 2**21


class MultimodalVAE(nn.Module):
    """Encoders, decoders, an aggregator and a prior over one shared latent space.

    Args:
        modalities: The dataset's modalities, in order.
        encoders: ``name -> module``; ``module(x [B, *shape])`` returns ``(loc, scale, factor)``.
        decoders: ``name -> module``; ``module(z [N, D])`` returns a distribution over x.
        aggregator: Combines the unimodal posteriors (:mod:`omnivae.aggregators`).
        prior: Module whose ``forward()`` returns p(z).
        likelihood_weights: Per-modality weights of log p(x_m | z) (1 by default).
        covariance_rank: Rank of the encoders' low-rank covariance factor (0 = diagonal).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: nn.Module,
        likelihood_weights: dict[str, float] | None = None,
        covariance_rank: int = 0,
    ) -> None:
        super().__init__()
        self.covariance_rank = covariance_rank
        self.modalities = tuple(modalities)
        self.names = [m.name for m in self.modalities]
        self.encoders = encoders
        self.decoders = decoders
        self.aggregator = aggregator
        self.prior_module = prior
        weights = likelihood_weights or {}
        self.register_buffer(
            "likelihood_weights", torch.tensor([float(weights.get(n, 1.0)) for n in self.names])
        )

    @property
    def num_modalities(self) -> int:
        return len(self.names)

    @property
    def device(self) -> torch.device:
        return self.likelihood_weights.device

    # -- masks ---------------------------------------------------------------------------
    def stack_mask(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Tensor:
        """The observation mask as ``BoolTensor[M, B]``; modalities absent from ``x`` are unobserved."""
        if isinstance(mask, Tensor):
            return mask
        batch = self.batch_size(x)
        rows = []
        for name in self.names:
            if name not in x:
                rows.append(torch.zeros(batch, dtype=torch.bool, device=self.device))
            elif mask is not None and name in mask:
                rows.append(mask[name].to(self.device, torch.bool))
            else:
                rows.append(torch.ones(batch, dtype=torch.bool, device=self.device))
        return torch.stack(rows)

    def batch_size(self, x: dict[str, Tensor]) -> int:
        present = [v for k, v in x.items() if k in self.names]
        if not present:
            raise DataError(f"no known modality in the input; this model has {self.names}")
        return present[0].shape[0]

    # -- inference -----------------------------------------------------------------------
    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """Run each present modality's encoder once: experts ``[M, B, D]``.

        Modalities absent from ``x`` get placeholder experts N(0, I); they are masked out.
        """
        batch = self.batch_size(x)
        locs, scales, factors = [], [], []
        for name in self.names:
            if name in x:
                loc, scale, factor = self.encoders[name](x[name])
            else:
                loc = torch.zeros(batch, self.latent_dim, device=self.device)
                scale = torch.ones_like(loc)
                factor = None
                if self.covariance_rank:
                    factor = torch.zeros(batch, self.latent_dim, self.covariance_rank, device=self.device)
            locs.append(loc)
            scales.append(scale)
            factors.append(factor)
        factor_stack = None if factors[0] is None else torch.stack(factors)
        return GaussianExperts(torch.stack(locs), torch.stack(scales), factor_stack)

    @property
    def latent_dim(self) -> int:
        return int(self.prior_module.latent_dim)

    def aggregate(self, experts: GaussianExperts, mask: Tensor) -> SubsetMixture:
        """The training posterior q(z | X) of the aggregator."""
        return self.aggregator(experts, mask)

    def prior(self) -> Distribution:
        return self.prior_module()

    def joint_posterior(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The training posterior q(z | X) used as the importance-sampling proposal.

        For an aggregated model it is the aggregator's training posterior of the observed
        modalities (the proposal of Burda et al. 2016, Eq. 8, as MMVAE's and MultiVae's
        likelihoods use it); a model with a joint encoder overrides it. The result
        supports ``rsample``/``sample`` with a sample shape and ``log_prob``.
        """
        mask_tensor = self.stack_mask(x, mask)
        return self.aggregate(self.encode_experts(x, mask_tensor), mask_tensor)

    def encode(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The posterior given the observed modalities, for representation and generation."""
        mask_tensor = self.stack_mask(x, mask)
        if not bool(mask_tensor.any(0).all()):
            raise DataError("every row needs at least one observed modality to encode")
        return self.aggregator.infer(self.encode_experts(x, mask_tensor), mask_tensor)

    @staticmethod
    def subset_masks(subsets: Tensor, observed: Tensor) -> Tensor:
        """Masks ``[M, S, B]`` of ``subsets [S, M]`` intersected with ``observed [M, B]``;
        a subset left with no observed modality in some row is a :class:`DataError`."""
        masks = subsets.t().unsqueeze(-1).to(observed.device) & observed.unsqueeze(1)
        if not bool(masks.any(0).all()):
            raise DataError("a subset has no observed modality in some row; every posterior needs one")
        return masks

    def subset_posteriors(
        self, x: dict[str, Tensor], subsets: Tensor, mask: dict[str, Tensor] | Tensor | None = None
    ) -> Distribution:
        """Inference posteriors for many subsets at once, from one encoder pass.

        Args:
            x: ``name -> [B, *shape]``.
            subsets: ``BoolTensor[S, M]``, e.g. :func:`omnivae.functional.subset_matrix`.
            mask: What is observed in ``x`` (default: everything present); each subset is
                intersected with it.

        Returns:
            A distribution with batch shape ``[S, B]``: row s conditions on subset s.
        """
        observed = self.stack_mask(x, mask)
        experts = self.encode_experts(x, observed)
        masks = self.subset_masks(subsets, observed)  # [M, S, B]
        return self.aggregator.infer(experts.expand_samples(torch.Size([subsets.shape[0]])), masks)

    # -- generation ----------------------------------------------------------------------
    def decoder_input(self, name: str, z: Tensor) -> Tensor:
        """What decoder ``name`` reads of the latent ``z [..., L]``: all of it here.

        Models with several latent spaces override only this (MM-VAMP: block m; MMVAE+:
        (z, w_m); Nexus: the bottom latent predicted from the top one), so decoding and
        every likelihood below work for them unchanged.
        """
        return z

    def decode(self, z: Tensor, names: Sequence[str] | None = None) -> dict[str, Distribution]:
        """Likelihoods p(x_m | z) for ``z [N, L]`` (fold extra leading axes into N first)."""
        return {name: self.decoders[name](self.decoder_input(name, z)) for name in (names or self.names)}

    def decode_mean(self, z: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Expected values of p(x_m | z) for ``z [*L, D]``: ``[*L, *shape]`` per modality."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        out = {}
        for name, dist in self.decode(flat, names).items():
            mean = dist.mean
            out[name] = mean.reshape(*lead, *mean.shape[1:])
        return out

    def decoder_log_prob(self, name: str, target: Tensor, inputs: Tensor) -> Tensor:
        """log p(x_name | decoder inputs) for ``inputs [*L, B, I]``: ``[*L, B]``.

        The leading sample axes fold into the decoder's batch, and ``target [B, *shape]``
        is broadcast against them, never copied. On the CPU, a decode of many copies
        (MMVAE's K x M importance samples) runs in chunks of at most
        ``CPU_DECODE_CHUNK_ELEMENTS`` output elements: one call would make tens-of-MB
        temporaries, which glibc serves with fresh mmaps that page-fault on every step
        (the K = 10 benchmark spent more time in page faults than in its matrix products).
        On a GPU it is one call.
        """
        lead, batch = inputs.shape[:-2], inputs.shape[-2]
        flat = inputs.reshape(-1, inputs.shape[-1])
        copies = flat.shape[0] // batch
        decoder = self.decoders[name]
        if not isinstance(decoder, Decoder):  # a user's module: only its distribution is known
            if copies > 1:
                target = target.unsqueeze(0).expand(copies, *target.shape).reshape(-1, *target.shape[1:])
            return decoder(flat).log_prob(target).reshape(*lead, batch)
        per_chunk = copies
        if flat.device.type == "cpu":
            per_chunk = max(1, CPU_DECODE_CHUNK_ELEMENTS // max(1, batch * math.prod(target.shape[1:])))
        if per_chunk >= copies:
            return decoder.log_prob(flat, target).reshape(*lead, batch)
        rows = per_chunk * batch
        parts = [decoder.log_prob(chunk, target) for chunk in flat.split(rows)]
        return torch.cat(parts).reshape(*lead, batch)

    def modality_log_likelihood(self, name: str, target: Tensor, z: Tensor) -> Tensor:
        """Unweighted log p(x_name | z) for ``z [*L, B, L]``: ``[*L, B]``, one decoder call."""
        return self.decoder_log_prob(name, target, self.decoder_input(name, z))

    def log_likelihood(
        self,
        x: dict[str, Tensor],
        z: Tensor,
        mask: Tensor,
        decode_terms: Sequence[Sequence[bool]] | None = None,
    ) -> Tensor:
        """Weighted sum over observed modalities of log p(x_m | z).

        Args:
            x: ``name -> [B, *shape]``.
            z: ``[*L, B, D]`` latent samples (leading axes fold into one decoder call).
            mask: ``[M, B]`` or ``[M, *L, B]``; unobserved modalities contribute nothing.
            decode_terms: Optional ``[L][M]`` table, known before the step, of which
                modalities each leading slice may reconstruct (``L`` one axis). A modality
                is decoded only for the slices that may need it, so an objective whose
                terms reconstruct different modalities (MVAE's unimodal ELBOs) pays for
                no decoder output it then masks away.

        Returns:
            ``[*L, B]``.
        """
        lead = z.shape[:-2]
        batch = z.shape[-2]
        total = torch.zeros(*lead, batch, dtype=z.dtype, device=z.device)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        for index, name in enumerate(self.names):
            if name not in x:
                continue
            observed = mask[index].expand(*lead, batch)
            if decode_terms is None:
                z_used, slices = z, None
            else:
                slices = [t for t, row in enumerate(decode_terms) if row[index]]
                if not slices:
                    continue
                z_used, observed = z[slices], observed[slices]
            log_p = self.modality_log_likelihood(name, x[name], z_used)
            term = torch.where(observed, self.likelihood_weights[index] * log_p, zero)
            if slices is None:
                total = total + term
            else:
                total = total.index_add(0, torch.tensor(slices, device=z.device), term)
        return total

    def sampler_statistics(self) -> dict[str, float] | None:
        """Totals of the MCMC runs behind inference since the last :meth:`reset_sampler_statistics`
        (acceptance rate, chain-steps, seconds), or ``None`` for models whose inference is closed
        form, as here. Evaluation writes them into ``eval.json``."""
        return None

    def reset_sampler_statistics(self) -> None:
        """Start :meth:`sampler_statistics` afresh (nothing to reset for closed-form inference)."""

    @torch.no_grad()
    def reconstruct(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> dict[str, Tensor]:
        """Decode the posterior mean of the observed modalities into every modality."""
        return self.decode_mean(self.encode(x, mask).mean)

    @torch.no_grad()
    def generate(self, num_samples: int) -> dict[str, Tensor]:
        """Unconditional samples: z ~ p(z), decoded to every modality's mean."""
        z = self.prior().sample(torch.Size([num_samples]))
        return self.decode_mean(z)

    @torch.no_grad()
    def conditional_generate(
        self,
        x: dict[str, Tensor],
        mask: dict[str, Tensor] | Tensor | None = None,
        num_samples: int = 1,
    ) -> dict[str, Tensor]:
        """Samples of every modality given the observed ones: ``[num_samples, B, *shape]``."""
        z = self.encode(x, mask).sample(torch.Size([num_samples]))
        return self.decode_mean(z)

    def check_inputs(self, x: dict[str, Tensor]) -> None:
        """Raise a :class:`DataError` naming the modality if ``x`` does not fit this model:
        a modality it does not have, or a per-sample shape other than the one it was built for."""
        unknown = [k for k in x if k not in self.names]
        if unknown:
            raise DataError(f"modalities {unknown} are not in this model (it has {self.names}); rename or drop them")
        for spec in self.modalities:
            if spec.name in x and tuple(x[spec.name].shape[1:]) != tuple(spec.shape):
                raise DataError(
                    f"modality {spec.name!r} has per-sample shape {tuple(x[spec.name].shape[1:])}, "
                    f"the model expects {tuple(spec.shape)}; give [batch, {', '.join(map(str, spec.shape))}] values"
                )

    @torch.no_grad()
    def impute(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> dict[str, Tensor]:
        """Fill unobserved modalities with the decoded posterior mean; keep observed values.

        Raises:
            DataError: if ``x`` holds a modality the model lacks or one of another shape.
        """
        self.check_inputs(x)
        mask_tensor = self.stack_mask(x, mask)
        filled = self.decode_mean(self.encode(x, mask_tensor).mean)
        out = {}
        for index, name in enumerate(self.names):
            if name not in x:
                out[name] = filled[name]
                continue
            keep = mask_tensor[index].reshape(-1, *([1] * (x[name].dim() - 1)))
            out[name] = torch.where(keep, x[name], filled[name].to(x[name].dtype))
        return out


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
            raise UserError(f"min_precision must be positive, got {min_precision}")
        self.min_precision = min_precision

    def combine(self, experts: GaussianExperts, mask: Tensor) -> Distribution:
        if not experts.is_diagonal:
            raise UserError("the product over the prior needs diagonal covariances; use --covariance diag")
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


class RowwiseChoice(Distribution):
    """Per batch element, one of two distributions: ``first`` where ``choose``, else ``second``.

    A model with a joint encoder (:class:`JointEncoderVAE`) uses its joint posterior on
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

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        a, b = self.first.rsample(sample_shape), self.second.rsample(sample_shape)
        return torch.where(self.choose.unsqueeze(-1), a, b)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.where(self.choose, self.first.log_prob(value), self.second.log_prob(value))

    @property
    def mean(self) -> Tensor:
        return torch.where(self.choose.unsqueeze(-1), self.first.mean, self.second.mean)


def _normal_parameters(dist: Distribution) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of a diagonal Gaussian :class:`Independent` (``Normal``) distribution."""
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return dist.base_dist.loc, dist.base_dist.scale
    raise UserError(
        f"a joint-encoder model needs diagonal Gaussian subset posteriors, got {type(dist).__name__}; "
        "use --covariance diag"
    )


class JointEncoderVAE(MultimodalVAE):
    """A multimodal VAE with a joint encoder q(z | X) beside the unimodal ones (JMVAE).

    JMVAE (Suzuki et al. 2016) encodes the complete observation X with its own network,
    :class:`~omnivae.nn.JointEncoder`, and trains unimodal encoders q(z | x_m) to match
    it (:class:`~omnivae.objectives.JMVAEKL`). Instead of a network per subset, proper
    subsets use the aggregator over the unimodal experts: for the ``jmvae`` recipe the
    product over the prior of the JNF paper, Eq. 12 (:class:`PriorDividedProduct`; App.
    E.2, "the PoE sampling solution").

    Posterior used, per row:

    - every modality observed: the joint encoder, for training, :meth:`encode`,
      :meth:`subset_posteriors` (the full set) and :meth:`joint_posterior`;
    - some modality missing: the aggregator over the observed experts, its inference
      posterior (:meth:`Aggregator.infer`) for :meth:`encode` and
      :meth:`subset_posteriors`, its training posterior for :meth:`joint_posterior`,
      and one drawn component of it for training (the whole posterior for Eq. 12).

    Args:
        modalities, encoders, decoders, aggregator, prior, likelihood_weights,
        covariance_rank: As for :class:`MultimodalVAE`.
        joint_encoder: ``joint_encoder(x) -> (loc [B, D], scale [B, D])`` from every modality.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: nn.Module,
        joint_encoder: JointEncoder,
        likelihood_weights: dict[str, float] | None = None,
        covariance_rank: int = 0,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, likelihood_weights, covariance_rank)
        self.joint_encoder = joint_encoder

    def has_every_modality(self, x: dict[str, Tensor]) -> bool:
        """Whether ``x`` holds every modality, so the joint encoder can run at all."""
        return all(name in x for name in self.names)

    def encode_joint(self, x: dict[str, Tensor]) -> Independent:
        """The joint encoder's q(z | X), batch ``[B]`` (Suzuki et al. 2016; JNF paper, Sec. 3.1)."""
        loc, scale = self.joint_encoder(x)
        return diagonal_normal(loc, scale)

    def _with_joint(self, x: dict[str, Tensor], full: Tensor, other: Distribution) -> Distribution:
        """``other`` with the joint posterior in the rows (of batch ``full.shape``) where ``full``."""
        if not self.has_every_modality(x):
            return other
        loc, scale = self.joint_encoder(x)
        shape = (*full.shape, loc.shape[-1])
        return RowwiseChoice(full, diagonal_normal(loc.expand(shape), scale.expand(shape)), other)

    def training_posterior(self, x: dict[str, Tensor], mask: Tensor) -> tuple[Independent, GaussianExperts]:
        """q(z | X) of the training objective, one diagonal Gaussian per row, and the experts.

        Fully observed rows take the joint encoder; the others a component of the
        aggregator's posterior of their observed experts (JNF paper, Eq. 12, for the
        ``jmvae`` recipe). One pass of every encoder.

        Returns:
            The posterior (batch ``[B]``) and the unimodal experts ``[M, B, D]``.
        """
        experts = self.encode_experts(x, mask)
        loc, scale = _normal_parameters(self.aggregate(experts, mask).sample_component())
        if self.has_every_modality(x):
            joint_loc, joint_scale = self.joint_encoder(x)
            full = mask.all(0).unsqueeze(-1)
            loc = torch.where(full, joint_loc, loc)
            scale = torch.where(full, joint_scale, scale)
        return diagonal_normal(loc, scale), experts

    def joint_posterior(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The training posterior q(z | X) used as the importance-sampling proposal.

        The joint encoder on fully observed rows (as MultiVae's JMVAE likelihood; peer
        protocols, "Test log-likelihood"), the aggregator's posterior of the observed
        experts (Eq. 12 for ``jmvae``) on the others.
        """
        mask_tensor = self.stack_mask(x, mask)
        experts = self.encode_experts(x, mask_tensor)
        return self._with_joint(x, mask_tensor.all(0), self.aggregate(experts, mask_tensor))

    def encode(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The posterior given the observed modalities: the joint encoder when all are observed."""
        mask_tensor = self.stack_mask(x, mask)
        if not bool(mask_tensor.any(0).all()):
            raise DataError("every row needs at least one observed modality to encode")
        experts = self.encode_experts(x, mask_tensor)
        return self._with_joint(x, mask_tensor.all(0), self.aggregator.infer(experts, mask_tensor))

    def subset_posteriors(
        self, x: dict[str, Tensor], subsets: Tensor, mask: dict[str, Tensor] | Tensor | None = None
    ) -> Distribution:
        """Inference posteriors for many subsets: one pass of each unimodal encoder and one joint pass.

        The full set (where fully observed) uses the joint encoder; other subsets the
        aggregator (JNF paper, Eq. 12, for ``jmvae``). Arguments and batch shape
        ``[S, B]`` as for :meth:`MultimodalVAE.subset_posteriors`.
        """
        observed = self.stack_mask(x, mask)
        experts = self.encode_experts(x, observed)
        masks = self.subset_masks(subsets, observed)  # [M, S, B]
        inferred = self.aggregator.infer(experts.expand_samples(torch.Size([subsets.shape[0]])), masks)
        return self._with_joint(x, masks.all(0), inferred)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored as JSON in the run directory.

    Fields added later have defaults, so a stored configuration without them still loads
    (:meth:`from_json`). Method-specific ones:

    - ``alpha``: JMVAE-kl's weight of sum_m KL(q(z | X) || q(z | x_m)) (0.1, Suzuki et
      al. 2016 and the JNF paper, App. E).
    - ``tc_ratio``: MVTCAE's alpha in [0, 1] (5/6, Hwang et al. 2021 and the JNF paper,
      App. E.2). A separate field from ``alpha`` because the defaults differ.
    - ``joint_encoder``: JMVAE's joint encoder, ``"heads"`` (heads and a merging MLP) or
      ``"concat"`` (heads only), see :func:`omnivae.nn.build_joint_encoder`.
    """

    model: str = "mwb"
    aggregator: str | None = None
    latent_dim: int = 32
    beta: float = 1.0
    backbone: str = "auto"
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    covariance: str = "diag"
    rank: int = 1
    likelihood: str = "auto"
    rescale_likelihoods: bool = False
    num_samples: int = 1
    dreg: bool = False
    num_random_subsets: int = 0
    prior: str = "normal"
    alpha: float = 0.1
    tc_ratio: float = 5 / 6
    joint_encoder: str = "heads"
    options: dict = field(default_factory=dict)
    """Method-specific settings (``--set KEY=VALUE``), checked against the recipe's
    :attr:`Recipe.options`; read them with :meth:`option`."""

    def validate(self) -> None:
        check_field_types(self)
        if self.model not in MODELS:
            raise unknown_name("model", self.model, list(MODELS))
        if self.aggregator is not None and self.aggregator not in AGGREGATORS:
            raise unknown_name("aggregator", self.aggregator, list(AGGREGATORS))
        if self.prior not in PRIORS:
            raise unknown_name("prior", self.prior, list(PRIORS))
        if self.latent_dim < 1:
            raise UserError(f"the latent size (--latent-dim) must be >= 1, got {self.latent_dim}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise UserError(f"beta (--beta, the weight of the KL term) must be a finite number >= 0, got {self.beta}")
        if self.num_samples < 1:
            raise UserError(
                f"the number of importance samples K (--num-samples) must be >= 1, got {self.num_samples}"
            )
        if self.num_random_subsets < 0:
            raise UserError(f"--num-random-subsets must be >= 0, got {self.num_random_subsets}")
        if self.covariance not in ("diag", "lowrank"):
            raise unknown_name("covariance", self.covariance, ["diag", "lowrank"])
        if self.covariance == "lowrank" and self.rank < 1:
            raise UserError(f"the covariance rank must be >= 1, got {self.rank}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise UserError(
                f"alpha (JMVAE's weight of the unimodal KL terms) must be finite and >= 0, got {self.alpha}"
            )
        if not 0 <= self.tc_ratio <= 1:
            raise UserError(f"tc_ratio (MVTCAE's alpha) must lie in [0, 1], got {self.tc_ratio}")
        if self.joint_encoder not in JOINT_ENCODERS:
            raise unknown_name("joint encoder", self.joint_encoder, JOINT_ENCODERS)
        known = MODELS[self.model].options
        for key, value in self.options.items():
            if key not in known:
                listed = ", ".join(sorted(known)) or "none"
                raise UserError(f"{self.model} has no option {key!r}; its options are: {listed}")
            wanted = type_problem(value, known[key])
            if wanted is not None:
                raise UserError(f"option {key} of {self.model} must be {wanted}, got {value!r}")

    def option(self, key: str):
        """A method-specific setting: the user's value, else the recipe's default."""
        default = MODELS[self.model].options[key]
        value = self.options.get(key, default)
        return float(value) if isinstance(default, float) else value

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass
class ModelParts:
    """The parts :func:`build_model` makes for every recipe, before a model class assembles them.

    Attributes:
        encoders, decoders, aggregator, prior, likelihood_weights, covariance_rank: The
            arguments of :class:`MultimodalVAE` of the same names.
    """

    encoders: nn.ModuleDict
    decoders: nn.ModuleDict
    aggregator: Aggregator
    prior: nn.Module
    likelihood_weights: dict[str, float] | None
    covariance_rank: int


@dataclass(frozen=True)
class Recipe:
    """A named method: which aggregator, prior and objective it composes, and its paper."""

    name: str
    title: str
    reference: str
    aggregator: str
    objective: Callable[[ModelConfig], Objective]
    warmup_epochs: float = 0.0
    """KL warm-up the method's paper trains with; the trainer uses it unless told otherwise."""
    aggregator_factory: Callable[[], Aggregator] | None = None
    """Builds the method's own aggregator when its options differ from the registry's
    defaults (used when ``--aggregator`` is unset or names ``aggregator``); None builds
    ``aggregator`` by name."""
    build: Callable[[ModelConfig, Sequence[ModalitySpec], ModelParts], MultimodalVAE] | None = None
    """Assembles the model from the shared parts (a method with extra networks); None
    gives a plain :class:`MultimodalVAE`."""
    options: dict = field(default_factory=dict)
    """Method-specific settings and their defaults (``--set KEY=VALUE``); the default's
    type is the setting's type."""
    complete_rows_only: bool = False
    """Whether the method learns only from rows where every modality is observed (JNF:
    its joint encoder needs them all); rows with a missing modality then add nothing."""
    swappable: bool = True
    """Whether ``--aggregator`` can replace the method's aggregation (not for Nexus,
    whose aggregation is a mean of learnt messages, not of posteriors)."""


def _build_joint_encoder_vae(
    config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts
) -> JointEncoderVAE:
    """JMVAE's model: the shared parts plus a joint encoder (JNF paper, App. E)."""
    if config.covariance != "diag":
        raise UserError(
            f"{config.model}'s joint encoder and subset posteriors are diagonal Gaussians; use --covariance diag"
        )
    if config.prior != "normal":
        raise UserError(
            f"{config.model}'s subset posterior (JNF paper, Eq. 12) is in closed form for the standard "
            "normal prior only; use --prior normal"
        )
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    return JointEncoderVAE(
        modalities, parts.encoders, parts.decoders, parts.aggregator, parts.prior, joint,
        parts.likelihood_weights, parts.covariance_rank,
    )


MODELS: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in [
        Recipe(
            "poe", "PoE-VAE (MVAE)", "Wu & Goodman, NeurIPS 2018; Eq. 5-6", "poe",
            lambda c: SubsampledELBO(beta=c.beta, num_random_subsets=c.num_random_subsets),
            # MVAE anneals the KL weight (Wu & Goodman 2018, Sec. 5); without it the
            # product with the prior expert collapses onto the prior (train KL 0.0 nats
            # after 6 epochs on two-view MNIST, 8 nats with 3 epochs of warm-up).
            warmup_epochs=5.0,
        ),
        Recipe(
            "moe", "MoE-VAE (MMVAE)", "Shi et al., NeurIPS 2019; Eq. 2-4", "moe",
            lambda c: StratifiedIWAE(num_samples=c.num_samples, dreg=c.dreg, beta=c.beta),
        ),
        Recipe(
            "mopoe", "MoPoE-VAE", "Sutter et al., ICLR 2021; Eq. 7-9", "mopoe",
            lambda c: MixtureELBO(beta=c.beta),
        ),
        Recipe(
            "wb", "WB-VAE (Wasserstein barycenter)", "Qiu et al., AAAI 2025; Eq. 6-7", "wb",
            lambda c: ELBO(beta=c.beta),
        ),
        Recipe(
            "mwb", "MWB-VAE (mixture of Wasserstein barycenters)", "Qiu et al., AAAI 2025; Remark 3", "mwb",
            lambda c: MixtureELBO(beta=c.beta),
        ),
        Recipe(
            "jmvae", "JMVAE-KL (joint encoder; subsets: PoE / prior, Eq. 12)",
            "Suzuki et al., arXiv 2016; JNF paper, Eq. 12", "poe",
            lambda c: JMVAEKL(beta=c.beta, alpha=c.alpha),
            # MultiVae's JMVAE default; the JNF paper warms up over 100 epochs of its long runs.
            warmup_epochs=10.0,
            aggregator_factory=PriorDividedProduct,
            build=_build_joint_encoder_vae,
        ),
        Recipe(
            "mvtcae", "MVTCAE (PoE without prior expert)", "Hwang et al., NeurIPS 2021", "poe",
            lambda c: MVTCAE(beta=c.beta, tc_ratio=c.tc_ratio),
            # No prior expert, as MultiVae (the implementation of the JNF paper's comparison):
            # the prior already enters through (1 - alpha) KL(q || p), and the KL terms to each
            # q(z | x_m) then compare q with a product of those experts alone. The original
            # code (built on MoPoE's) multiplies N(0, I) into the full-set product.
            aggregator_factory=partial(ProductOfExperts, prior_expert=False),
        ),
    ]
}


def likelihood_rescaling(modalities: Sequence[ModalitySpec]) -> dict[str, float]:
    """MoPoE's rescaling: weight each modality by (largest dimension) / (its dimension)."""
    sizes = {m.name: float(torch.Size(m.shape).numel()) for m in modalities}
    largest = max(sizes.values())
    return {name: largest / size for name, size in sizes.items()}


def check_networks(
    modalities: Sequence[ModalitySpec],
    encoders: Mapping[str, nn.Module] | None = None,
    decoders: Mapping[str, nn.Module] | None = None,
) -> dict[str, dict[str, str]]:
    """Check networks of your own against the modalities; returns what ``config.json`` records.

    Returns:
        ``{"encoders": {name: "module.Class"}, "decoders": {...}}`` for the given networks.

    Raises:
        UserError: for a name that is not a modality or a value that is not an ``nn.Module``.
    """
    names = [m.name for m in modalities]
    described: dict[str, dict[str, str]] = {}
    for role, networks in (("encoders", encoders), ("decoders", decoders)):
        described[role] = {}
        for name, network in (networks or {}).items():
            if name not in names:
                raise UserError(f"{role}[{name!r}]: not a modality; the modalities are {', '.join(names)}")
            if not isinstance(network, nn.Module):
                raise UserError(f"{role}[{name!r}] must be a torch.nn.Module, got {type(network).__name__}")
            described[role][name] = f"{type(network).__module__}.{type(network).__qualname__}"
    return described


def build_model(
    config: ModelConfig,
    modalities: Sequence[ModalitySpec],
    encoders: Mapping[str, nn.Module] | None = None,
    decoders: Mapping[str, nn.Module] | None = None,
) -> tuple[MultimodalVAE, Objective]:
    """The model and objective of a recipe, for a dataset's modalities.

    Args:
        config: the recipe and its settings.
        modalities: the dataset's modalities.
        encoders: your own encoders by modality name, used instead of the built ones; each
            maps ``x [B, *shape]`` to ``(loc [B, D], scale [B, D], factor)`` as
            :class:`~omnivae.nn.heads.GaussianEncoder` does (``factor`` ``None`` for
            diagonal covariances).
        decoders: your own decoders by modality name; each maps ``z [N, D]`` to a
            distribution over ``x`` as :func:`~omnivae.nn.factory.build_decoder`'s do.
    """
    config.validate()
    check_networks(modalities, encoders, decoders)
    recipe = MODELS[config.model]
    own_encoders, own_decoders = dict(encoders or {}), dict(decoders or {})
    encoders = nn.ModuleDict(
        {
            m.name: own_encoders[m.name] if m.name in own_encoders else build_encoder(
                m, config.latent_dim, backbone=config.backbone, hidden=config.hidden,
                covariance=config.covariance, rank=config.rank,
            )
            for m in modalities
        }
    )
    decoders = nn.ModuleDict(
        {
            m.name: own_decoders[m.name] if m.name in own_decoders else build_decoder(
                m, config.latent_dim, backbone=config.backbone, hidden=config.hidden,
                likelihood=config.likelihood,
            )
            for m in modalities
        }
    )
    name = config.aggregator or recipe.aggregator
    if name == recipe.aggregator and recipe.aggregator_factory is not None:
        aggregator = recipe.aggregator_factory()
    else:
        aggregator = build_aggregator(name)
    prior = PRIORS[config.prior](config.latent_dim)
    weights = likelihood_rescaling(modalities) if config.rescale_likelihoods else None
    rank = config.rank if config.covariance == "lowrank" else 0
    parts = ModelParts(encoders, decoders, aggregator, prior, weights, rank)
    if recipe.build is not None:
        model = recipe.build(config, modalities, parts)
    else:
        model = MultimodalVAE(modalities, encoders, decoders, aggregator, prior, weights, rank)
    used = {id(module) for module in model.modules()}
    ignored = [f"{role}[{name!r}]" for role, own in (("encoders", own_encoders), ("decoders", own_decoders))
               for name, network in own.items() if id(network) not in used]
    if ignored:  # methods with networks of another shape (MMVAE+, Nexus) build their own
        raise UserError(f"{config.model} builds its own networks and cannot use {', '.join(ignored)}")
    return model, recipe.objective(config)


def model_table() -> str:
    """A plain-text table of the registered models for ``omnivae models``."""
    rows = [("name", "method", "aggregator", "reference")]
    rows += [(r.name, r.title, r.aggregator, r.reference) for r in MODELS.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    fixed = [r.name for r in MODELS.values() if not r.swappable]
    lines.append(
        f"aggregators (a model takes --aggregator NAME{', except ' + ', '.join(fixed) if fixed else ''}): "
        f"{', '.join(AGGREGATORS)}"
    )
    for recipe in MODELS.values():
        if recipe.options:
            listed = ", ".join(f"{k}={v}" for k, v in recipe.options.items())
            lines.append(f"{recipe.name} options (--set KEY=VALUE): {listed}")
    return "\n".join(lines)


# Methods that live in their own modules (several latent spaces, several stages) import
# this one; they are registered here, after MODELS exists, in the order `omnivae models`
# lists them.
_METHOD_MODULES = (
    "omnivae.methods.jnf",
    "omnivae.methods.mmvamp",
    "omnivae.methods.mmvaeplus",
    "omnivae.methods.nexus",
)


def _register_method_modules() -> None:
    import importlib

    for module_name in _METHOD_MODULES:
        for recipe in importlib.import_module(module_name).RECIPES:
            MODELS.setdefault(recipe.name, recipe)


_register_method_modules()
