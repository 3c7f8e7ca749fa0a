"""MHVAE's networks, model and hierarchical distribution (the package docstring has the paper and the choices)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from omnivae.distributions import GaussianExperts
from omnivae.errors import UserError
from omnivae.functional import gaussian_log_prob, poe
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.nn import MLP, GaussianEncoder

__all__ = ["Ladder", "LadderDistribution", "LadderEncoder", "Ladders", "Level", "MHVAE", "gaussian_block"]


def _rows(net: nn.Module, x: Tensor) -> Tensor:
    """``net`` on ``x [*lead, F]`` as one ``[N, F]`` batch (MLPs flatten every axis after the first)."""
    out = net(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _gaussian_rows(net: GaussianEncoder, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(loc, var)`` of a Gaussian block on ``x [*lead, F]``, each ``[*lead, D]``."""
    loc, scale, _ = net(x.reshape(-1, x.shape[-1]))
    lead = x.shape[:-1]
    return loc.reshape(*lead, -1), scale.pow(2).reshape(*lead, -1)


def gaussian_block(in_features: int, hidden: int | None, latent_dim: int) -> GaussianEncoder:
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
        self.latent_dim = latent_dim
        self.body = body
        widths = [features] + [width] * (levels - 1)  # d^1 .. d^L's input widths
        self.up = nn.ModuleList([MLP(widths[i], (), width, final_activation=True) for i in range(levels - 1)])
        self.top = gaussian_block(widths[-1], None, latent_dim)
        # experts[i]: q_m(z_{i+1} | x_m, z_{i+2}) from [h_{i+1} (W), d^{i+1}].
        self.experts = nn.ModuleList(
            [gaussian_block(width + widths[i], width, latent_dim) for i in range(levels - 1)]
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
        self,
        index: int,
        above: Tensor,
        skips: Sequence[Sequence[Tensor] | None] | None,
        members: Tensor | None,
        rows: Sequence[Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Level l = ``index`` + 1 < L given z_{l+1} = ``above [*lead, D]``.

        Args:
            index: l - 1.
            above: z_{l+1}, ``[*lead, D]``.
            skips: Per modality its features d_m^1 .. d_m^{L-1} (``[*batch, F]``, ``*batch``
                a suffix of ``*lead``), or None for a modality absent from x; None: no experts.
            members: ``[M, *batch]`` which experts enter the product; None: none.
            rows: Optional, per modality, the indices along ``above``'s first axis (the
                subsets of a training step) where it can be a member; its expert is
                computed there only (MultiVae's cost: experts of the members alone).

        Returns:
            ``(loc, var)`` of q(z_l | x_S, z_{l+1}) and ``(loc, var)`` of p(z_l | z_{l+1}), ``[*lead, D]`` each.
        """
        h = _rows(self.top_down[index], above)
        prior_loc, prior_var = _gaussian_rows(cast(GaussianEncoder, self.level_priors[index]), h)
        if skips is None or members is None:
            return prior_loc, prior_var, prior_loc, prior_var
        lead = above.shape[:-1]
        locs, variances = [prior_loc], [prior_var]
        for m, (name, features) in enumerate(zip(self.names, skips, strict=True)):
            if features is None:  # absent from x, so never a member
                locs.append(torch.zeros_like(prior_loc))
                variances.append(torch.ones_like(prior_var))
                continue
            where = None if rows is None else rows[m]
            h_m = h if where is None else h.index_select(0, where)
            d = features[index].expand(*h_m.shape[:-1], features[index].shape[-1])
            block = cast(LadderEncoder, self.encoders[name]).experts[index]
            loc, var = _gaussian_rows(cast(GaussianEncoder, block), torch.cat([h_m, d], -1))
            if where is not None:  # placeholders N(0, 1) elsewhere, masked out below
                loc = torch.zeros_like(prior_loc).index_copy(0, where, loc)
                var = torch.ones_like(prior_var).index_copy(0, where, var)
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
        rows: Sequence[Tensor | None] | None = None,
    ) -> list[Level]:
        """Descend from z_L to z_1, picking each level's value with ``choose``.

        Args:
            top_loc, top_var: q(z_L | x_S), ``[*lead, D]`` (the sample shape already in ``*lead``).
            skips, members, rows: As for :meth:`level`.
            choose: ``(l - 1, loc, var) -> z_l``: a draw, the mean, or given values.

        Returns:
            The levels z_1 .. z_L (ascending), each with its posterior's and prior's parameters.
        """
        top = self.levels - 1
        z = choose(top, top_loc, top_var)
        out = [Level(z, top_loc, top_var, torch.zeros_like(top_loc), torch.ones_like(top_var))]
        for index in range(self.levels - 2, -1, -1):
            loc, var, prior_loc, prior_var = self.level(index, z, skips, members, rows)
            z = choose(index, loc, var)
            out.append(Level(z, loc, var, prior_loc, prior_var))
        return out[::-1]

    # -- the inference hook ---------------------------------------------------------------
    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """q(u | x_S) for ``members [M, *S, B]``: a :class:`LadderDistribution` with batch
        ``members.shape[1:]`` (the training posterior and the proposal are the same)."""
        return self.subset_ladder(x, members)

    def subset_ladder(
        self, x: dict[str, Tensor], members: Tensor, rows: Sequence[Tensor | None] | None = None
    ) -> LadderDistribution:
        """:meth:`posterior`, with the optional ``rows`` of :meth:`level` (``members [M, S, B]``)."""
        ladders = self.ladders(x)
        lead = members.shape[1:-1]
        view = (ladders.top_loc.shape[0], *([1] * len(lead)), *ladders.top_loc.shape[1:])
        top_loc, top_var = poe(
            ladders.top_loc.reshape(view).expand(-1, *members.shape[1:], -1),
            ladders.top_scale.pow(2).reshape(view).expand(-1, *members.shape[1:], -1),
            members,
        )
        return LadderDistribution(self, top_loc, top_var, ladders.skips, members, rows)

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
        rows: As for :meth:`MHVAE.level`, used by walks over the batch shape alone.

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
        rows: Sequence[Tensor | None] | None = None,
    ) -> None:
        self.model = model
        self.rows = rows
        self.top_loc = top_loc
        self.top_var = top_var
        self.members = members
        self.skips = skips
        batch = top_loc.shape[:-1]
        event = torch.Size([model.latent_dim])
        super().__init__(batch_shape=batch, event_shape=event, validate_args=False)

    def _walk(self, lead: torch.Size, choose: Choose) -> list[Level]:
        shape = (*lead, self.top_loc.shape[-1])
        top_loc, top_var = self.top_loc.expand(shape), self.top_var.expand(shape)
        rows = self.rows if lead == self.batch_shape else None  # rows index the batch's first axis
        return self.model.walk(top_loc, top_var, self.skips, self.members, choose, rows)

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
