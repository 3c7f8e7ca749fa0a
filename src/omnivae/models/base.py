"""The base model: encoders, decoders, an optional aggregator and a prior, one inference hook.

:class:`MultimodalVAE` holds one encoder and one decoder per modality, an aggregator, a
prior and likelihood weights. Inference goes through one hook, :meth:`MultimodalVAE.posterior`
``(x, members)``: the posterior of every (subset, row) element that ``members`` describes.
:meth:`~MultimodalVAE.encode`, :meth:`~MultimodalVAE.subset_posteriors` and
:meth:`~MultimodalVAE.joint_posterior` are written once here on top of it; a method with
other latent spaces or other networks (``omnivae.methods``) overrides the hook and, where
its decoders read something else than z, :meth:`~MultimodalVAE.decoder_input`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from omnivae.aggregators import Aggregator
from omnivae.distributions import GaussianExperts, SubsetMixture
from omnivae.errors import DataError
from omnivae.modalities import ModalitySpec
from omnivae.nn.heads import Decoder

__all__ = ["CPU_DECODE_CHUNK_ELEMENTS", "Mask", "MultimodalVAE"]

Mask = dict[str, Tensor] | Tensor | None
"""What is observed: ``name -> BoolTensor[B]``, a stacked ``BoolTensor[M, B]``, or None (all present)."""

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
        aggregator: Combines the unimodal posteriors (:mod:`omnivae.aggregators`); None
            for a method that does not aggregate Gaussian experts (it then overrides
            :meth:`posterior`).
        prior: Module whose ``forward()`` returns p(z).
        likelihood_weights: Per-modality weights of log p(x_m | z) (1 by default).
        covariance_rank: Rank of the encoders' low-rank covariance factor (0 = diagonal).
    """

    likelihood_weights: Tensor

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator | None,
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
    def generated(self) -> tuple[str, ...]:
        """The modalities this model decodes: all of them here; one target for a CVAE."""
        return tuple(self.names)

    @property
    def device(self) -> torch.device:
        return self.likelihood_weights.device

    # -- masks ---------------------------------------------------------------------------
    def stack_mask(self, x: dict[str, Tensor], mask: Mask = None) -> Tensor:
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
        ``mask [M, B]`` (what is observed) is not read here: every present modality is encoded.
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

    def run_encoders(
        self, x: dict[str, Tensor], width: int, encode: Callable[[str, Tensor], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """``(loc, scale)``, each ``[M, B, width]``: ``encode(name, x[name])`` once per present
        modality, N(0, I) placeholders (callers mask them out) for the absent ones.

        For methods whose encoders give something else than experts of this latent (MMVAE+'s
        (z, w_m), Nexus's bottom latents, JNF's base Gaussians).
        """
        batch = self.batch_size(x)
        dtype = self.likelihood_weights.dtype
        locs, scales = [], []
        for name in self.names:
            if name in x:
                loc, scale = encode(name, x[name])
            else:
                loc = torch.zeros(batch, width, dtype=dtype, device=self.device)
                scale = torch.ones_like(loc)
            locs.append(loc)
            scales.append(scale)
        return torch.stack(locs), torch.stack(scales)

    def gaussian_encoding(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of encoder ``name`` (a diagonal :class:`~omnivae.nn.GaussianEncoder`)."""
        loc, scale, _ = self.encoders[name](x)
        return loc, scale

    @property
    def latent_dim(self) -> int:
        return int(cast(int, self.prior_module.latent_dim))

    def aggregate(self, experts: GaussianExperts, mask: Tensor) -> SubsetMixture:
        """The training posterior q(z | X) of the aggregator."""
        return self.require_aggregator()(experts, mask)

    def require_aggregator(self) -> Aggregator:
        """The aggregator; a model built without one cannot aggregate experts."""
        if self.aggregator is None:
            raise NotImplementedError(f"{type(self).__name__} has no aggregator; it overrides posterior()")
        return self.aggregator

    def prior(self) -> Distribution:
        return self.prior_module()

    @staticmethod
    def expand_experts(experts: GaussianExperts, members: Tensor) -> GaussianExperts:
        """Experts ``[M, B, D]`` broadcast, without copying, to the batch of ``members [M, *S, B]``."""
        return experts.expand_samples(members.shape[1:-1])

    @staticmethod
    def observed_rows(members: Tensor) -> Tensor:
        """``[M, B]``: whether modality m is a member of some element of row b in ``members [M, *S, B]``."""
        return members.reshape(members.shape[0], -1, members.shape[-1]).any(1)

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """The inference hook: q(z | x_S) for every element of ``members``.

        Every method implements this one method; :meth:`encode`, :meth:`subset_posteriors`
        and :meth:`joint_posterior` call it.

        Args:
            x: ``name -> [B, *shape]``; each present modality is encoded once.
            members: ``BoolTensor[M, *S, B]``: element ``(s, b)`` conditions on the
                modalities ``members[:, s, b]`` of row b (observed ones only; callers
                intersect subsets with what is observed).
            proposal: False for the inference posterior (representation, generation);
                True for the training posterior of the observed set, the importance-sampling
                proposal of the likelihood metrics (the proposal of Burda et al. 2016,
                Eq. 8, as MMVAE's and MultiVae's likelihoods use it).

        Returns:
            A distribution with batch shape ``members.shape[1:]``; here the aggregator's
            inference posterior (``aggregator.infer``), or its training posterior when
            ``proposal``.
        """
        experts = self.expand_experts(self.encode_experts(x, self.observed_rows(members)), members)
        if proposal:
            return self.aggregate(experts, members)
        return self.require_aggregator().infer(experts, members)

    def joint_posterior(self, x: dict[str, Tensor], mask: Mask = None) -> Distribution:
        """The training posterior q(z | X) of the observed modalities, the importance-sampling
        proposal: :meth:`posterior` with ``proposal=True``. Supports ``rsample``/``sample``
        with a sample shape and ``log_prob``."""
        return self.posterior(x, self.stack_mask(x, mask), proposal=True)

    def encode(self, x: dict[str, Tensor], mask: Mask = None) -> Distribution:
        """The posterior given the observed modalities, for representation and generation."""
        mask_tensor = self.stack_mask(x, mask)
        if not bool(mask_tensor.any(0).all()):
            raise DataError("every row needs at least one observed modality to encode")
        return self.posterior(x, mask_tensor)

    @staticmethod
    def subset_masks(subsets: Tensor, observed: Tensor) -> Tensor:
        """Masks ``[M, S, B]`` of ``subsets [S, M]`` intersected with ``observed [M, B]``;
        a subset left with no observed modality in some row is a :class:`DataError`."""
        masks = subsets.t().unsqueeze(-1).to(observed.device) & observed.unsqueeze(1)
        if not bool(masks.any(0).all()):
            raise DataError("a subset has no observed modality in some row; every posterior needs one")
        return masks

    def subset_posteriors(self, x: dict[str, Tensor], subsets: Tensor, mask: Mask = None) -> Distribution:
        """Inference posteriors for many subsets at once, from one encoder pass.

        Args:
            x: ``name -> [B, *shape]``.
            subsets: ``BoolTensor[S, M]``, e.g. :func:`omnivae.functional.subset_matrix`.
            mask: What is observed in ``x`` (default: everything present); each subset is
                intersected with it.

        Returns:
            A distribution with batch shape ``[S, B]``: row s conditions on subset s.
        """
        return self.posterior(x, self.subset_masks(subsets, self.stack_mask(x, mask)))

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
    def reconstruct(self, x: dict[str, Tensor], mask: Mask = None) -> dict[str, Tensor]:
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
        mask: Mask = None,
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
    def impute(self, x: dict[str, Tensor], mask: Mask = None) -> dict[str, Tensor]:
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
