"""Multimodal VAEs as compositions, and the registry of named methods.

A model is :class:`MultimodalVAE`: one encoder and one decoder per modality, an
aggregator, a prior and likelihood weights. A named method (``poe``, ``moe``, ``mopoe``,
``wb``, ``mwb``) is a :class:`Recipe`: which aggregator, prior and objective to use. Any
recipe takes another aggregator by name, so aggregation is swapped, not re-implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from omnivae.configs import check_field_types
from omnivae.aggregators import AGGREGATORS, Aggregator, build_aggregator
from omnivae.data.base import ModalitySpec
from omnivae.distributions import GaussianExperts, SubsetMixture
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.nn import build_decoder, build_encoder
from omnivae.objectives import ELBO, MixtureELBO, Objective, StratifiedIWAE, SubsampledELBO
from omnivae.priors import PRIORS

__all__ = ["MultimodalVAE", "ModelConfig", "Recipe", "MODELS", "build_model", "model_table"]


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

    def encode(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The posterior given the observed modalities, for representation and generation."""
        mask_tensor = self.stack_mask(x, mask)
        if not bool(mask_tensor.any(0).all()):
            raise DataError("every row needs at least one observed modality to encode")
        return self.aggregator.infer(self.encode_experts(x, mask_tensor), mask_tensor)

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
        masks = subsets.t().unsqueeze(-1).to(observed.device) & observed.unsqueeze(1)  # [M, S, B]
        if not bool(masks.any(0).all()):
            raise DataError("a subset has no observed modality in some row; every posterior needs one")
        return self.aggregator.infer(experts.expand_samples(torch.Size([subsets.shape[0]])), masks)

    # -- generation ----------------------------------------------------------------------
    def decode(self, z: Tensor, names: Sequence[str] | None = None) -> dict[str, Distribution]:
        """Likelihoods p(x_m | z) for ``z [N, D]`` (fold extra leading axes into N first)."""
        return {name: self.decoders[name](z) for name in (names or self.names)}

    def decode_mean(self, z: Tensor, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Expected values of p(x_m | z) for ``z [*L, D]``: ``[*L, *shape]`` per modality."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        out = {}
        for name, dist in self.decode(flat, names).items():
            mean = dist.mean
            out[name] = mean.reshape(*lead, *mean.shape[1:])
        return out

    def modality_log_likelihood(self, name: str, target: Tensor, z: Tensor) -> Tensor:
        """Unweighted log p(x_name | z) for ``z [*L, B, D]``: ``[*L, B]``, one decoder call.

        The leading sample axes fold into the decoder's batch, and ``target [B, *shape]``
        is repeated to match.
        """
        lead, batch = z.shape[:-2], z.shape[-2]
        flat = z.reshape(-1, z.shape[-1])
        copies = flat.shape[0] // batch
        if copies > 1:
            target = target.unsqueeze(0).expand(copies, *target.shape).reshape(-1, *target.shape[1:])
        return self.decoders[name](flat).log_prob(target).reshape(*lead, batch)

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

    @torch.no_grad()
    def impute(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> dict[str, Tensor]:
        """Fill unobserved modalities with the decoded posterior mean; keep observed values."""
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


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored as JSON in the run directory."""

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

    def validate(self) -> None:
        check_field_types(self)
        if self.model not in MODELS:
            raise unknown_name("model", self.model, list(MODELS))
        if self.aggregator is not None and self.aggregator not in AGGREGATORS:
            raise unknown_name("aggregator", self.aggregator, list(AGGREGATORS))
        if self.prior not in PRIORS:
            raise unknown_name("prior", self.prior, list(PRIORS))
        if self.latent_dim < 1:
            raise UserError(f"the latent size must be >= 1, got {self.latent_dim}")
        if not self.beta >= 0:
            raise UserError(f"beta must be >= 0, got {self.beta}")
        if self.num_samples < 1:
            raise UserError(f"the number of importance samples K must be >= 1, got {self.num_samples}")
        if self.covariance not in ("diag", "lowrank"):
            raise unknown_name("covariance", self.covariance, ["diag", "lowrank"])
        if self.covariance == "lowrank" and self.rank < 1:
            raise UserError(f"the covariance rank must be >= 1, got {self.rank}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


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
    ]
}


def likelihood_rescaling(modalities: Sequence[ModalitySpec]) -> dict[str, float]:
    """MoPoE's rescaling: weight each modality by (largest dimension) / (its dimension)."""
    sizes = {m.name: float(torch.Size(m.shape).numel()) for m in modalities}
    largest = max(sizes.values())
    return {name: largest / size for name, size in sizes.items()}


def build_model(config: ModelConfig, modalities: Sequence[ModalitySpec]) -> tuple[MultimodalVAE, Objective]:
    """The model and objective of a recipe, for a dataset's modalities."""
    config.validate()
    recipe = MODELS[config.model]
    encoders = nn.ModuleDict(
        {
            m.name: build_encoder(
                m, config.latent_dim, backbone=config.backbone, hidden=config.hidden,
                covariance=config.covariance, rank=config.rank,
            )
            for m in modalities
        }
    )
    decoders = nn.ModuleDict(
        {
            m.name: build_decoder(
                m, config.latent_dim, backbone=config.backbone, hidden=config.hidden,
                likelihood=config.likelihood,
            )
            for m in modalities
        }
    )
    aggregator = build_aggregator(config.aggregator or recipe.aggregator)
    prior = PRIORS[config.prior](config.latent_dim)
    weights = likelihood_rescaling(modalities) if config.rescale_likelihoods else None
    rank = config.rank if config.covariance == "lowrank" else 0
    model = MultimodalVAE(modalities, encoders, decoders, aggregator, prior, weights, rank)
    return model, recipe.objective(config)


def model_table() -> str:
    """A plain-text table of the registered models for ``omnivae models``."""
    rows = [("name", "method", "aggregator", "reference")]
    rows += [(r.name, r.title, r.aggregator, r.reference) for r in MODELS.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"aggregators (any model takes --aggregator NAME): {', '.join(AGGREGATORS)}")
    return "\n".join(lines)
