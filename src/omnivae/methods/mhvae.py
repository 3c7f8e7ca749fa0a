"""MHVAE (Dorent et al., MICCAI 2023): a multimodal hierarchical VAE with a product of experts at every level.

Dorent, Haouchine, Kogl, Joutard, Juvekar, Torio, Golby, Ourselin, Frisken, Vercauteren
et al. (2023), "Unified Brain MR-Ultrasound Synthesis using Multi-Modal Hierarchical
Representations", MICCAI 2023, LNCS 14221, pp. 448-458 (arXiv:2309.08747); the model
MultiVae 1.0.3 implements as ``MHVAE``. It builds on ladder / deep hierarchical VAEs
(Sonderby et al. 2016, NeurIPS; Vahdat & Kautz 2020, NVAE, NeurIPS).

The latent is split into levels z_1 (bottom, read by the decoders) ... z_L (top). The
generative model (the paper's Sec. 2; equation numbers not checked offline, the paper is
not among the project's stored papers) is

    p(x, z) = p(z_L) prod_{l<L} p(z_l | z_{l+1}) prod_m p(x_m | z_1),   p(z_L) = N(0, I),

and the posterior given the modalities S factorises top-down,
q(z | x_S) = q(z_L | x_S) prod_{l<L} q(z_l | x_S, z_{l+1}), each level a product of
Gaussian experts that includes that level's prior:

    q(z_L | x_S)          ~ p(z_L)           prod_{m in S} q_m(z_L | x_m),
    q(z_l | x_S, z_{l+1}) ~ p(z_l | z_{l+1}) prod_{m in S} q_m(z_l | x_m, z_{l+1}).

A missing modality simply leaves the product, so any subset (and a prior-only posterior)
is defined. The objective is the hierarchical ELBO with one KL per level (closed form,
both sides Gaussian given z_{l+1}; :class:`MHVAELoss`).

Networks (the diagram MultiVae documents, made concrete for omnivae's backbones), per
modality m in :class:`LadderEncoder`:

- bottom-up: d_m^1 = body_m(x_m) (the backbone of :func:`omnivae.nn.build_encoder`,
  feature width F), d_m^{l+1} = up_m^l(d_m^l) (Linear + ReLU, width W) for l < L - 1,
  and q_m(z_L | x_m) = Gaussian heads on up_m^{L-1}(d_m^{L-1}) (the deepest features);
- posterior experts q_m(z_l | x_m, z_{l+1}) = Gaussian heads on
  Linear + ReLU([h_l, d_m^l]), h_l the top-down context of level l;

shared by the modalities (in :class:`MHVAE`): the top-down blocks h_l = td_l(z_{l+1})
(Linear + ReLU) and the prior blocks p(z_l | z_{l+1}) = Gaussian heads on h_l. Every
level has ``latent_dim`` dimensions. The decoders are omnivae's, reading z_1. Log-variances
are soft-clamped to [-12, 8] as in every omnivae encoder.

Choices where the paper or MultiVae leave room:

- The hierarchy is Markov, p(z_l | z_{l+1}), and the top-down context reads z_{l+1} only,
  as in MultiVae's MHVAE (NVAE carries a deterministic state through all levels).
- Subsets (option ``subsets``): ``"all"`` averages the ELBO over every non-empty subset of
  a row's observed modalities, as MultiVae does for complete rows (its ``forward``: the
  mean over all subsets, every observed modality reconstructed from each subset's z_1);
  ``"sampled"`` draws one such subset per row uniformly, an unbiased estimate of the same
  average at the cost of one subset (for many modalities: 2^M - 1 decodes per row otherwise).
- Posterior experts are per modality (MultiVae also allows blocks shared by modalities).
- The paper's discriminator (adversarial) loss is left out, as MultiVae leaves it out.
- The loss is averaged over the batch (MultiVae sums it); Adam is invariant to the scale.

Single-latent API: the exposed latent is the concatenation u = [z_1, ..., z_L] (size
L x latent_dim). A hierarchy has no one Gaussian latent; the concatenation is what the
generative model is a density over, so ``posterior`` returns the exact q(u | x_S) and
``prior`` the exact p(u) (:class:`LadderDistribution`: ancestral ``rsample``, exact
``log_prob``), which the likelihood metrics need, and probes see every level (the top
levels carry the most abstract content). ``decode`` reads z_1 alone. The ``mean`` of
the hierarchy is not closed form: it is the ancestral mean path (each level's mean
given the mean of the level above), what MultiVae's ``encode(return_mean=True)`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from omnivae.distributions import GaussianExperts
from omnivae.errors import UserError
from omnivae.functional import (
    gaussian_log_prob,
    kl_normal_normal,
    kl_normal_standard,
    poe,
    subset_matrix,
)
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import MLP, GaussianEncoder, build_encoder
from omnivae.objectives import Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["LadderDistribution", "LadderEncoder", "Ladders", "MHVAE", "MHVAELoss", "MHVAEOptions", "RECIPES"]


def _rows(net: nn.Module, x: Tensor) -> Tensor:
    """``net`` on ``x [*lead, F]`` as one ``[N, F]`` batch (MLPs flatten every axis after the first)."""
    out = net(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _gaussian_rows(net: GaussianEncoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(loc, var)`` of a Gaussian block on ``x [*lead, F]``, each ``[*lead, D]``."""
    loc, scale, _ = net(x.reshape(-1, x.shape[-1]))
    lead = x.shape[:-1]
    return loc.reshape(*lead, -1), scale.pow(2).reshape(*lead, -1)


def _gaussian_block(in_features: int, hidden: int | None, latent_dim: int) -> GaussianEncoder:
    """Gaussian heads on ``in_features`` inputs, after one Linear + ReLU of width ``hidden`` if given."""
    if hidden is None:
        return GaussianEncoder(nn.Identity(), in_features, latent_dim)
    return GaussianEncoder(MLP(in_features, (), hidden, final_activation=True), hidden, latent_dim)


class Ladder(NamedTuple):
    """One modality's bottom-up pass: q_m(z_L | x_m) and the features of the lower levels."""

    top_loc: Tensor
    """``[B, D]``."""
    top_scale: Tensor
    """``[B, D]``."""
    skips: list[Tensor]
    """d_m^1 .. d_m^{L-1}, ``[B, F_l]`` each (empty for one level)."""


class LadderEncoder(nn.Module):
    """One modality's networks of MHVAE: bottom-up path, top expert and the lower levels' experts.

    Args:
        body: Maps ``x [B, *shape]`` to features d^1 ``[B, features]`` (an encoder backbone).
        features: F, the body's output width.
        levels: L.
        width: W, the width of the bottom-up blocks and of the experts' hidden layer.
        latent_dim: D, the size of every level.
    """

    def __init__(self, body: nn.Module, features: int, levels: int, width: int, latent_dim: int) -> None:
        super().__init__()
        self.body = body
        widths = [features] + [width] * (levels - 1)  # d^1 .. d^L's input widths
        self.up = nn.ModuleList([MLP(widths[i], (), width, final_activation=True) for i in range(levels - 1)])
        self.top = _gaussian_block(widths[-1], None, latent_dim)
        # experts[i]: q_m(z_{i+1} | x_m, z_{i+2}) from [h_{i+1} (W), d^{i+1}].
        self.experts = nn.ModuleList(
            [_gaussian_block(width + widths[i], width, latent_dim) for i in range(levels - 1)]
        )

    def forward(self, x: Tensor) -> Ladder:
        d = self.body(x)
        skips = []
        for block in self.up:
            skips.append(d)
            d = block(d)
        loc, scale, _ = self.top(d)
        return Ladder(loc, scale, skips)


class Ladders(NamedTuple):
    """The bottom-up pass of every modality (``None`` skips for a modality absent from x)."""

    top_loc: Tensor
    """``[M, B, D]`` (N(0, I) placeholders for absent modalities)."""
    top_scale: Tensor
    """``[M, B, D]``."""
    skips: list[list[Tensor] | None]
    """Per modality, d_m^1 .. d_m^{L-1}, ``[B, F_l]`` each."""


class Level(NamedTuple):
    """One level of a top-down walk: the sample and the posterior's and prior's parameters."""

    z: Tensor
    loc: Tensor
    var: Tensor
    prior_loc: Tensor
    prior_var: Tensor


Choose = Callable[[int, Tensor, Tensor], Tensor]
"""``(level index l - 1, loc, var) -> z_l``: how a walk picks each level's value."""


class MHVAE(MultimodalVAE):
    """The MHVAE model (Dorent et al. 2023): latent u = [z_1, ..., z_L], a PoE at every level.

    Args:
        modalities: The dataset's modalities, in order.
        encoders: ``name -> LadderEncoder``.
        decoders: ``name -> module`` mapping ``z_1 [N, D]`` to p(x_m | z_1).
        top_down: L - 1 blocks; ``top_down[l - 1]`` maps z_{l+1} ``[N, D]`` to h_l ``[N, W]``.
        level_priors: L - 1 Gaussian blocks; ``level_priors[l - 1]`` maps h_l to p(z_l | z_{l+1}).
        prior: p(z_L) = N(0, I_D), a module with ``latent_dim`` D.
        likelihood_weights: Per-modality weights of log p(x_m | z_1).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        top_down: nn.ModuleList,
        level_priors: nn.ModuleList,
        prior: nn.Module,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        # Experts are combined level by level, inside the hierarchy: no aggregator.
        super().__init__(modalities, encoders, decoders, None, prior, likelihood_weights, 0)
        if len(top_down) != len(level_priors):
            raise UserError("MHVAE needs one prior block per top-down block", parameter="level_priors")
        self.top_down = top_down
        self.level_priors = level_priors
        self.level_dim = int(cast(int, prior.latent_dim))
        self.levels = len(top_down) + 1

    @property
    def latent_dim(self) -> int:
        """L x D, the size of u = [z_1, ..., z_L]."""
        return self.levels * self.level_dim

    def decoder_input(self, name: str, z: Tensor) -> Tensor:
        """z_1, the first D entries of ``u [..., L D]``."""
        return z[..., : self.level_dim]

    # -- bottom-up ----------------------------------------------------------------------
    def ladders(self, x: dict[str, Tensor]) -> Ladders:
        """Every present modality's bottom-up pass, once."""
        batch = self.batch_size(x)
        dtype = self.likelihood_weights.dtype
        locs, scales, skips = [], [], []
        for name in self.names:
            if name in x:
                ladder = self.encoders[name](x[name])
                locs.append(ladder.top_loc)
                scales.append(ladder.top_scale)
                skips.append(ladder.skips)
            else:
                locs.append(torch.zeros(batch, self.level_dim, dtype=dtype, device=self.device))
                scales.append(torch.ones_like(locs[-1]))
                skips.append(None)
        return Ladders(torch.stack(locs), torch.stack(scales), skips)

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """The top level's experts q_m(z_L | x_m), ``[M, B, D]`` (the lower levels' experts
        depend on z_{l+1}; :meth:`posterior` gives the whole hierarchy)."""
        ladders = self.ladders(x)
        return GaussianExperts(ladders.top_loc, ladders.top_scale)

    # -- top-down -----------------------------------------------------------------------
    def level(
        self, index: int, above: Tensor, skips: Sequence[Sequence[Tensor] | None] | None, members: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Level l = ``index`` + 1 < L given z_{l+1} = ``above [*lead, D]``.

        Args:
            index: l - 1.
            above: z_{l+1}, ``[*lead, D]``.
            skips: Per modality its features d_m^1 .. d_m^{L-1} (``[*batch, F]``, ``*batch``
                a suffix of ``*lead``), or None for a modality absent from x; None: no experts.
            members: ``[M, *batch]`` which experts enter the product; None: none.

        Returns:
            ``(loc, var)`` of q(z_l | x_S, z_{l+1}) and ``(loc, var)`` of p(z_l | z_{l+1}), ``[*lead, D]`` each.
        """
        h = _rows(self.top_down[index], above)
        prior_loc, prior_var = _gaussian_rows(cast(GaussianEncoder, self.level_priors[index]), h)
        if skips is None or members is None:
            return prior_loc, prior_var, prior_loc, prior_var
        lead = above.shape[:-1]
        locs, variances = [prior_loc], [prior_var]
        for name, features in zip(self.names, skips, strict=True):
            if features is None:  # absent from x, so never a member
                locs.append(torch.zeros_like(prior_loc))
                variances.append(torch.ones_like(prior_var))
                continue
            d = features[index].expand(*lead, features[index].shape[-1])
            block = cast(LadderEncoder, self.encoders[name]).experts[index]
            loc, var = _gaussian_rows(cast(GaussianEncoder, block), torch.cat([h, d], -1))
            locs.append(loc)
            variances.append(var)
        keep = torch.cat([torch.ones_like(members[:1]), members])
        # [M + 1, *batch] gains the sample axes in front of the batch: [M + 1, *lead].
        keep = keep.reshape(len(locs), *([1] * (len(lead) - keep.dim() + 1)), *keep.shape[1:]).expand(len(locs), *lead)
        loc, var = poe(torch.stack(locs), torch.stack(variances), keep, prior_expert=False)
        return loc, var, prior_loc, prior_var

    def walk(
        self,
        top_loc: Tensor,
        top_var: Tensor,
        skips: Sequence[Sequence[Tensor] | None] | None,
        members: Tensor | None,
        choose: Choose,
    ) -> list[Level]:
        """Descend from z_L to z_1, picking each level's value with ``choose``.

        Args:
            top_loc, top_var: q(z_L | x_S), ``[*lead, D]`` (the sample shape already in ``*lead``).
            skips, members: As for :meth:`level`.
            choose: ``(l - 1, loc, var) -> z_l``: a draw, the mean, or given values.

        Returns:
            The levels z_1 .. z_L (ascending), each with its posterior's and prior's parameters.
        """
        top = self.levels - 1
        z = choose(top, top_loc, top_var)
        out = [Level(z, top_loc, top_var, torch.zeros_like(top_loc), torch.ones_like(top_var))]
        for index in range(self.levels - 2, -1, -1):
            loc, var, prior_loc, prior_var = self.level(index, z, skips, members)
            z = choose(index, loc, var)
            out.append(Level(z, loc, var, prior_loc, prior_var))
        return out[::-1]

    # -- the inference hook ---------------------------------------------------------------
    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """q(u | x_S) for ``members [M, *S, B]``: a :class:`LadderDistribution` with batch
        ``members.shape[1:]`` (the training posterior and the proposal are the same)."""
        ladders = self.ladders(x)
        lead = members.shape[1:-1]
        view = (ladders.top_loc.shape[0], *([1] * len(lead)), *ladders.top_loc.shape[1:])
        top_loc, top_var = poe(
            ladders.top_loc.reshape(view).expand(-1, *members.shape[1:], -1),
            ladders.top_scale.pow(2).reshape(view).expand(-1, *members.shape[1:], -1),
            members,
        )
        return LadderDistribution(self, top_loc, top_var, ladders.skips, members)

    def prior(self) -> Distribution:
        """p(u) = N(z_L; 0, I) prod_{l<L} p(z_l | z_{l+1}), batch shape ``[]``."""
        loc = torch.zeros(self.level_dim, dtype=self.likelihood_weights.dtype, device=self.device)
        return LadderDistribution(self, loc, torch.ones_like(loc), None, None)


class LadderDistribution(Distribution):
    """q(u | x_S) or p(u) of MHVAE over u = [z_1, ..., z_L], walked top-down.

    Args:
        model: The model whose top-down, prior and expert blocks the walk runs.
        top_loc, top_var: The top level's Gaussian, ``[*B, D]``.
        skips: Per modality its bottom-up features (``[B, F]`` each, broadcast to ``*B``),
            or None for the prior.
        members: ``[M, *B]``, the experts in each element's products; None for the prior.

    Shapes: ``rsample(sample_shape)`` ``[*sample_shape, *B, L D]``; ``log_prob(u [..., *B,
    L D])`` ``[..., *B]``; ``mean`` (the ancestral mean path) ``[*B, L D]``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        model: MHVAE,
        top_loc: Tensor,
        top_var: Tensor,
        skips: Sequence[Sequence[Tensor] | None] | None,
        members: Tensor | None,
    ) -> None:
        self.model = model
        self.top_loc = top_loc
        self.top_var = top_var
        self.members = members
        self.skips = skips
        batch = top_loc.shape[:-1]
        event = torch.Size([model.latent_dim])
        super().__init__(batch_shape=batch, event_shape=event, validate_args=False)

    def _walk(self, lead: torch.Size, choose: Choose) -> list[Level]:
        shape = (*lead, self.top_loc.shape[-1])
        return self.model.walk(self.top_loc.expand(shape), self.top_var.expand(shape), self.skips, self.members, choose)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        lead = torch.Size(sample_shape) + self.batch_shape

        def draw(index: int, loc: Tensor, var: Tensor) -> Tensor:
            return loc + var.sqrt() * torch.randn_like(loc)

        return torch.cat([level.z for level in self._walk(lead, draw)], -1)

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """sum_l log q(z_l | x_S, z_{l+1}), with z_{l+1} the given values' (exact)."""
        parts = value.split(self.model.level_dim, dim=-1)
        lead = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        levels = self._walk(lead, lambda index, loc, var: parts[index].expand_as(loc))
        total = torch.zeros(lead, dtype=value.dtype, device=value.device)
        for level in levels:
            total = total + gaussian_log_prob(level.z, level.loc, level.var)
        return total

    @property
    def mean(self) -> Tensor:
        """The ancestral mean path: z_L's mean, then each level's mean given the one above."""
        return torch.cat([level.z for level in self._walk(self.batch_shape, lambda index, loc, var: loc)], -1)

    def expand(self, batch_shape: torch.Size | Sequence[int], _instance: Distribution | None = None) -> Distribution:  # pragma: no cover
        raise NotImplementedError("LadderDistribution does not support expand")


class MHVAELoss(Objective):
    """MHVAE's negative hierarchical ELBO, averaged over subsets of the observed modalities.

    For a row with observed modalities O and a non-empty subset S of O, with z ~ q(z | x_S)
    drawn top-down and a the trainer's KL warm-up factor:

        ELBO_S = sum_{m in O} w_m log p(x_m | z_1)
                 - a beta [ KL(q(z_L | x_S) || N(0, I))
                            + sum_{l<L} KL(q(z_l | x_S, z_{l+1}) || p(z_l | z_{l+1})) ],

    each KL in closed form given the drawn z_{l+1} (the hierarchical ELBO of ladder VAEs,
    Sonderby et al. 2016; NVAE, Vahdat & Kautz 2020, Eq. 2; Dorent et al. 2023, Sec. 2).
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

    def elbo_terms(
        self, model: MHVAE, x: dict[str, Tensor], members: Tensor, mask: Tensor, noise: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Reconstruction ``[K, B]`` and the KL of each level z_1 .. z_L (``[K, B]`` each)
        for the posteriors of ``members [M, K, B]``; ``noise`` (tests) fixes the standard
        normal draws of z_1 .. z_L (``[K, B, D]`` each)."""
        q = cast(LadderDistribution, model.posterior(x, members))

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
        rec, kls = self.elbo_terms(model, x, members, mask)
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


def _build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> MHVAE:
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
    level_priors = nn.ModuleList([_gaussian_block(width, None, dim) for _ in range(settings.levels - 1)])
    return MHVAE(modalities, encoders, parts.decoders(), top_down, level_priors, parts.prior(), parts.likelihood_weights)


def _objective(config: ModelConfig) -> MHVAELoss:
    return MHVAELoss(beta=config.beta, subsets=config.settings_as(MHVAEOptions).subsets)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "mhvae",
        "MHVAE (hierarchical latents z_1..z_L, PoE with the prior at every level)",
        "Dorent et al., MICCAI 2023 (as MultiVae's MHVAE)",
        "poe",
        _objective,
        build=_build,
        options_type=MHVAEOptions,
        swappable=False,
    ),
)
