"""MHVAE's objective, options and builder (Dorent et al. 2023; the package docstring has the choices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from omnivae.errors import UserError
from omnivae.functional import kl_normal_normal, kl_normal_standard, subset_matrix
from omnivae.methods.mhvae.model import MHVAE, LadderEncoder, gaussian_block
from omnivae.modalities import ModalitySpec
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts
from omnivae.nn import MLP, build_encoder
from omnivae.objectives import Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["MHVAELoss", "MHVAEOptions", "build", "objective"]


class MHVAELoss(Objective):
    """MHVAE's negative hierarchical ELBO, averaged over subsets of the observed modalities.

    For a row with observed modalities O and a non-empty subset S of O, with z ~ q(z | x_S)
    drawn top-down and a the trainer's KL warm-up factor:

        ELBO_S = sum_{m in O} w_m log p(x_m | z_1)
                 - a beta [ KL(q(z_L | x_S) || N(0, I))
                            + sum_{l<L} KL(q(z_l | x_S, z_{l+1}) || p(z_l | z_{l+1})) ],

    each KL in closed form given the drawn z_{l+1} (the hierarchical ELBO of ladder VAEs,
    Sonderby et al. 2016; NVAE, Vahdat & Kautz 2020; Dorent et al. 2023, Sec. 2; equation numbers not checked offline).
    The row's loss is -ELBO_S averaged over all 2^|O| - 1 subsets (``subsets="all"``, as
    MultiVae), or for one subset drawn uniformly (``"sampled"``); the batch loss is the
    mean over rows. Unobserved modalities enter no product and no reconstruction.

    Args:
        beta: Weight of the KL terms.
        subsets: ``"all"`` or ``"sampled"``.
    """

    def __init__(self, beta: float = 1.0, subsets: str = "all") -> None:
        check_beta(beta)
        if subsets not in ("all", "sampled"):
            raise UserError(f"subsets must be 'all' or 'sampled', got {subsets!r}", parameter="subsets")
        self.beta = beta
        self.subsets = subsets

    def members(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The subsets each row averages over: ``members [M, K, B]`` and weights ``[K, B]``
        summing to 1 over K for a row that observes anything (0 for an invalid subset)."""
        table = subset_matrix(mask.shape[0], device=mask.device)  # [K, M]
        inside = (table.unsqueeze(-1) <= mask.unsqueeze(0)).all(1)  # [K, B]: S within O
        if self.subsets == "sampled":
            rows = torch.arange(mask.shape[1], device=mask.device)
            weights = inside.t().to(torch.float32) + (~mask.any(0)).unsqueeze(-1).to(torch.float32)
            choice = torch.multinomial(weights, 1).squeeze(-1)  # [B]
            members = table[choice].t().unsqueeze(1) & mask.unsqueeze(1)  # [M, 1, B]
            valid = inside[choice, rows].unsqueeze(0)
            return members, valid.to(torch.float32)
        members = table.t().unsqueeze(-1) & mask.unsqueeze(1)  # [M, K, B]
        count = inside.sum(0, keepdim=True).clamp_min(1)
        return members, inside / count

    def expert_rows(self, count: int, device: torch.device) -> list[Tensor | None] | None:
        """For ``"all"``: per modality, the subsets (rows of ``subset_matrix``) it belongs to,
        where alone its lower levels' experts are computed (found on the host: no sync)."""
        if self.subsets != "all":
            return None
        table = subset_matrix(count)
        return [table[:, m].nonzero().squeeze(-1).to(device) for m in range(count)]

    def elbo_terms(
        self,
        model: MHVAE,
        x: dict[str, Tensor],
        members: Tensor,
        mask: Tensor,
        noise: Sequence[Tensor] | None = None,
        rows: Sequence[Tensor | None] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Reconstruction ``[K, B]`` and the KL of each level z_1 .. z_L (``[K, B]`` each)
        for the posteriors of ``members [M, K, B]``; ``noise`` (tests) fixes the standard
        normal draws, ``noise[l - 1]`` of z_l (``[K, B, D]``); ``rows`` as for
        :meth:`MHVAE.level`."""
        q = model.subset_ladder(x, members, rows)

        def draw(index: int, loc: Tensor, var: Tensor) -> Tensor:
            eps = torch.randn_like(loc) if noise is None else noise[index]
            return loc + var.sqrt() * eps

        levels = q._walk(q.batch_shape, draw)
        kls = [kl_normal_standard(levels[-1].loc, levels[-1].var)]
        kls = [kl_normal_normal(lv.loc, lv.var, lv.prior_loc, lv.prior_var) for lv in levels[:-1]] + kls
        u = torch.cat([level.z for level in levels], -1)
        rec = model.log_likelihood(x, u, mask.unsqueeze(1))
        return rec, kls

    def __call__(self, model: MHVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        members, weights = self.members(mask)
        rec, kls = self.elbo_terms(model, x, members, mask, rows=self.expert_rows(mask.shape[0], mask.device))
        kl = torch.stack(kls).sum(0)
        zero = rec.new_zeros(())
        weights = weights.to(rec.dtype)
        use = weights > 0

        def average(term: Tensor) -> Tensor:
            return torch.where(use, weights * term, zero).sum(0).mean()

        elbo = rec - self.beta * kl_weight * kl
        terms = {"rec": -average(rec), "kl": average(kl)}
        terms.update({f"kl_{i + 1}": average(k) for i, k in enumerate(kls)})
        return ObjectiveOutput(-average(elbo), terms)


@dataclass(frozen=True)
class MHVAEOptions(MethodOptions):
    """MHVAE's settings (Dorent et al. 2023; defaults as MultiVae's ``MHVAEConfig``)."""

    levels: int = option(3, "L, the number of latent levels (each of size latent_dim; MultiVae's n_latent)")
    width: int = option(0, "W, width of the bottom-up, top-down and expert blocks; 0: the last hidden width")
    subsets: Literal["all", "sampled"] = option(
        "all", "average the ELBO over every subset of the observed modalities (MultiVae) or one drawn per row"
    )

    def check(self) -> None:
        if self.levels < 1:
            raise UserError(f"levels must be >= 1, got {self.levels}", parameter="levels")
        if self.width < 0:
            raise UserError(f"width must be >= 0 (0: the last hidden width), got {self.width}", parameter="width")


def build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> MHVAE:
    """MHVAE's networks: a :class:`LadderEncoder` per modality on omnivae's encoder bodies,
    shared top-down and prior blocks, omnivae's decoders on z_1 (the user's where given)."""
    if config.aggregator not in (None, "poe"):
        raise UserError(
            "mhvae multiplies experts inside its hierarchy, level by level; an aggregator does not apply to it",
            parameter="aggregator",
        )
    parts.require("covariance", "diag", "experts at every level are diagonal Gaussians")
    parts.require("prior", "normal", "top level's prior is N(0, I) and its lower levels' priors are learnt")
    settings = config.settings_as(MHVAEOptions)
    hidden = [int(h) for h in config.hidden]
    width = settings.width or (hidden[-1] if hidden else 256)
    dim = config.latent_dim
    encoders = nn.ModuleDict()
    for spec in modalities:
        # Only the backbone of the standard encoder is kept: MHVAE has its own heads.
        standard = build_encoder(spec, dim, backbone=config.backbone, hidden=hidden)
        encoders[spec.name] = LadderEncoder(standard.body, standard.loc.in_features, settings.levels, width, dim)
    top_down = nn.ModuleList([MLP(dim, (), width, final_activation=True) for _ in range(settings.levels - 1)])
    level_priors = nn.ModuleList([gaussian_block(width, None, dim) for _ in range(settings.levels - 1)])
    return MHVAE(modalities, encoders, parts.decoders(), top_down, level_priors, parts.prior(), parts.likelihood_weights)


def objective(config: ModelConfig) -> MHVAELoss:
    return MHVAELoss(beta=config.beta, subsets=config.settings_as(MHVAEOptions).subsets)
