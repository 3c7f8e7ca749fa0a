"""MMVAE+ (Palumbo, Daunhawer & Vogt, ICLR 2023): a shared latent z and modality-specific latents w_m.

Each modality m has a shared latent z (dimension D = ``latent_dim``) and a private latent
w_m (dimension W, option ``w_dim``). Its encoder gives q(z | x_m) q(w_m | x_m) and its
decoder reads (z, w_m). The objective is the one written in the peer protocols (Sec. 3,
"MMVAE+"; srl-ethz/mmvaeplus ``objectives.py``). For each observed modality r, draw K
samples u_r = (z_r, w_r) ~ q(z | x_r) q(w_r | x_r). Modality r is decoded from (z_r, w_r),
and every other modality d from (z_r, w~_d) with w~_d ~ r_d(w). r_d is an auxiliary prior
N(0, diag s_d^2) whose scale s_d is **learnable**: "it is important that this
log-variance vector is learnable". The log-weight is

    lw_r = sum_d lambda_d log p(x_d | z_r, w_d)
           + beta [log p(z_r) + log p(w_r) - log (1/M) sum_m q(z_r | x_m) - log q(w_r | x_r)],

and the bound is mean_r log-mean-exp_K lw_r (the "looser" stratified IWAE of MMVAE,
Shi et al. 2019, Eq. 4), with DReG gradients as an option (Tucker et al. 2019). For
K = 1 it is MMVAE+'s ELBO.

Multi-latent model in the single-latent API
-------------------------------------------
The model exposes ONE latent vector u = [z, w_1, ..., w_M] of size L = D + M W, so that
every generic metric works unchanged:

- ``decode`` / ``decode_mean`` / ``modality_log_likelihood`` give decoder m the slice
  (z, w_m) of u (:meth:`MMVAEPlus.decoder_input`);
- ``prior()`` is p(z) p(w_1) ... p(w_M): N(0, I) (or the ``--prior`` of z) times N(0, I_{MW});
- the posterior given a subset S (``encode``, ``subset_posteriors``, batch ``[S, B]``)
  is :class:`~omnivae.distributions.ConcatenatedBlocks` ``[z block, w blocks]``. Its z
  block is the aggregator's inference posterior of the experts q(z | x_j), j in S. For the recipe's ``moe`` this is their uniform
  mixture. Each w_m block is q(w_m | x_m) if m is in S, else the prior p(w_m). A cross
  generation to m outside S then decodes z from the source and w_m from the prior. This
  is MMVAE+'s test-time cross generation (peer protocols, "Coherence", MMVAE+).
  Its ``.mean`` is the mixture mean of z and the posterior (or prior, 0) means of the
  w_m; its ``log_prob`` is the sum of the blocks' densities.
- ``joint_posterior`` (the likelihood metric's proposal) is the training posterior of z
  times q(w_m | x_m) for the observed m and p(w_m) for the others. The unobserved w_m
  cancel in p(u) / q(u), so the estimate is that of the observed modalities.

The linear probe reads u, not z
-------------------------------
The generic probe (:func:`omnivae.metrics.linear_probe`) fits one regression on the
whole posterior mean u = [z, w_1, ..., w_M]. MMVAE+ fits separate regressions on u, w
and z (peer protocols, "Latent linear probe"), and the shared part z is the
representation the method is about. Reading u has three consequences. Label
information that leaked into the private w_m (the "shortcut" MMVAE+ is designed to
prevent) raises the score. For a subset S, the blocks w_m with m outside S are the
constant prior mean 0 and carry nothing. And u has L = D + M W features, so a score is
not comparable with a single-latent model probed at latent size D. To probe z alone,
slice the means with :attr:`MMVAEPlus.shared_slice`.

Design decisions
----------------
- Gaussian posteriors, not the Laplace ones of the MMVAE+ code. With Gaussians the
  shared block reuses :mod:`omnivae.aggregators`, so ``--aggregator`` swaps the
  aggregation of z as for any model. The JNF paper's MHD comparison also runs MMVAE+
  with Gaussians (Senellart et al., App. E.4). Likelihoods are the package's (Laplace
  0.75 for colour images, as MMVAE+).
- One encoder network per modality whose Gaussian head has D + W outputs. The first D
  give q(z | x_m) and the last W give q(w_m | x_m), so one body feeds two linear heads.
- ``w_dim`` defaults to 32, the private dimension of MMVAE+ on PolyMNIST and MHD
  (JNF paper, App. E.2-E.4; peer protocols, Sec. 4). The shared dimension is
  ``--latent-dim``, which is also 32 there.
- With another aggregator, component c of q(z | X) (a subset S_c of the observed
  modalities) plays the role of r. Modality d in S_c is decoded with its posterior w_d,
  and its log p(w_d) - log q(w_d | x_d) enters the weight. Modality d outside S_c is
  decoded with w~_d ~ r_d. For singletons (``moe``) this is exactly the formula above.
  For one-component aggregators (``poe``, ``wb``) with every modality observed, no w~
  is drawn, so the auxiliary scales get no gradient.
- DReG: q's parameters are detached in log q(z | X) and log q(w_r | x_r), and the
  gradients of the posterior samples z_r and w_r are multiplied once more by the
  normalised weights (as :class:`omnivae.objectives.StratifiedIWAE`). The w~_d are not
  proposal samples (no density of r_d enters lw), so their gradient into the auxiliary
  scales is the plain IWAE one, sum_k w^_k grad lw_k.

References:
    Palumbo, Daunhawer & Vogt (2023). MMVAE+: Enhancing the generative quality of
    multimodal VAEs without compromises. ICLR.
    Shi, Siddharth, Paige & Torr (2019). Variational Mixture-of-Experts Autoencoders for
    Multi-Modal Deep Generative Models. NeurIPS.
    Tucker, Lawson, Gu & Maddison (2019). Doubly reparameterized gradient estimators for
    Monte Carlo objectives. ICLR.
    Senellart & Allasonnière (2025). Bridging the inference gap in multimodal VAEs
    (the JNF paper), App. E.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from omnivae.aggregators import Aggregator
from omnivae.distributions import (
    ConcatenatedBlocks,
    GaussianExperts,
    SubsetMixture,
    diagonal_normal,
)
from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import build_decoder, build_encoder, soft_clamp
from omnivae.objectives import ObjectiveOutput, StratifiedIWAE, importance_bound

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = [
    "SplitExperts",
    "MMVAEPlus",
    "PlusSamples",
    "MMVAEPlusObjective",
    "MMVAEPlusOptions",
    "RECIPES",
]

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class SplitExperts:
    """The unimodal posteriors of MMVAE+: q(z | x_m) and q(w_m | x_m) for every modality.

    Attributes:
        shared: Experts over z, ``[M, B, D]``.
        loc: Means of q(w_m | x_m), ``[M, B, W]``.
        scale: Standard deviations of q(w_m | x_m), ``[M, B, W]``.
    """

    shared: GaussianExperts
    loc: Tensor
    scale: Tensor

    def detach(self) -> SplitExperts:
        return SplitExperts(self.shared.detach(), self.loc.detach(), self.scale.detach())


def _standard_normal_log_prob(w: Tensor) -> Tensor:
    """log N(w; 0, I) summed over the last axis."""
    return -0.5 * (w.pow(2) + _LOG_2PI).sum(-1)


class MMVAEPlus(MultimodalVAE):
    """MMVAE+ with the latent u = [z, w_1, ..., w_M] of size L = D + M W (Palumbo et al. 2023).

    Args:
        modalities: The dataset's modalities, in order.
        encoders: ``name -> module`` returning ``(loc, scale, None)`` of size D + W: the
            first D entries parameterise q(z | x_m), the last W q(w_m | x_m).
        decoders: ``name -> module`` mapping ``(z, w_m) [N, D + W]`` to p(x_m | z, w_m).
        aggregator: Aggregates the experts q(z | x_m) (``moe`` for MMVAE+).
        prior: Module whose ``forward()`` gives p(z) over D dimensions; p(w_m) is N(0, I_W).
        w_dim: W, the dimension of each w_m.
        likelihood_weights: Per-modality weights lambda_m of log p(x_m | z, w_m).

    The auxiliary priors r_m(w) = N(0, diag s_m^2) of the cross terms have learnable
    log-scales ``aux_log_scale [M, W]``, initialised at 0 (r_m = p(w)) and soft-clamped to
    [-7, 5].
    """

    w_prior_loc: Tensor
    w_prior_scale: Tensor

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: nn.Module,
        w_dim: int,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, likelihood_weights, 0)
        if w_dim < 1:
            raise UserError(f"w_dim (MMVAE+'s modality-specific latent size) must be >= 1, got {w_dim}", parameter="w_dim")
        self.shared_dim = int(cast(int, prior.latent_dim))
        self.w_dim = int(w_dim)
        count = len(self.names)
        self.aux_log_scale = nn.Parameter(torch.zeros(count, self.w_dim))
        self.register_buffer("w_prior_loc", torch.zeros(count * self.w_dim))
        self.register_buffer("w_prior_scale", torch.ones(count * self.w_dim))

    # -- the latent layout ----------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """L = D + M W, the size of u = [z, w_1, ..., w_M]."""
        return self.shared_dim + self.num_modalities * self.w_dim

    @property
    def shared_slice(self) -> slice:
        """Where z lies in u (e.g. to probe the shared part alone)."""
        return slice(0, self.shared_dim)

    def specific_slice(self, name: str) -> slice:
        """Where w_name lies in u."""
        begin = self.shared_dim + self.names.index(name) * self.w_dim
        return slice(begin, begin + self.w_dim)

    def decoder_input(self, name: str, u: Tensor) -> Tensor:
        """(z, w_name) of ``u [..., L]``: ``[..., D + W]``, what decoder ``name`` reads."""
        return torch.cat([u[..., self.shared_slice], u[..., self.specific_slice(name)]], -1)

    def auxiliary_scale(self) -> Tensor:
        """The scales s_m of the auxiliary priors r_m(w) = N(0, diag s_m^2): ``[M, W]``."""
        return soft_clamp(self.aux_log_scale, -7.0, 5.0).exp()

    # -- inference ----------------------------------------------------------------------
    def encode_blocks(self, x: dict[str, Tensor]) -> SplitExperts:
        """Run each present modality's encoder once: q(z | x_m) ``[M, B, D]`` and q(w_m | x_m) ``[M, B, W]``.

        Modalities absent from ``x`` get placeholder experts N(0, I); callers mask them out.
        """
        loc, scale = self.run_encoders(x, self.shared_dim + self.w_dim, self.gaussian_encoding)
        d = self.shared_dim
        return SplitExperts(GaussianExperts(loc[..., :d], scale[..., :d]), loc[..., d:], scale[..., d:])

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """The experts q(z | x_m) of the shared block, ``[M, B, D]``."""
        return self.encode_blocks(x).shared

    def _specific_block(self, loc: Tensor, scale: Tensor, mask: Tensor) -> Distribution:
        """q(w_m | x_m) where ``mask [M, *B]`` holds, else p(w_m) = N(0, I), as one Gaussian over ``[*B, M W]``."""
        keep = mask.unsqueeze(-1)
        loc = torch.where(keep, loc, torch.zeros((), dtype=loc.dtype, device=loc.device))
        scale = torch.where(keep, scale, torch.ones((), dtype=scale.dtype, device=scale.device))
        return diagonal_normal(loc.movedim(0, -2).flatten(-2), scale.movedim(0, -2).flatten(-2))

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """Posteriors over u of ``members [M, *S, B]`` from one encoder pass: batch ``[*S, B]``, event ``[L]``.

        The z block is the aggregator's inference posterior of the members' experts (its
        training posterior for the ``proposal``: for ``moe`` the MoE of the observed
        experts, the denominator of MMVAE+'s weight); block w_m is q(w_m | x_m) for a
        member m and the prior N(0, I) otherwise.
        """
        blocks = self.encode_blocks(x)
        shared_experts = self.expand_experts(blocks.shared, members)
        shared: Distribution
        if proposal:
            shared = self.aggregate(shared_experts, members)
        else:
            shared = self.require_aggregator().infer(shared_experts, members)
        lead = members.shape[1:-1]
        view = (blocks.loc.shape[0], *([1] * len(lead)), *blocks.loc.shape[1:])
        loc = blocks.loc.reshape(view).expand(-1, *lead, -1, -1)
        scale = blocks.scale.reshape(view).expand(-1, *lead, -1, -1)
        return ConcatenatedBlocks([shared, self._specific_block(loc, scale, members)])

    def prior(self) -> Distribution:
        """p(u) = p(z) prod_m N(w_m; 0, I), event ``[L]``."""
        return ConcatenatedBlocks([self.prior_module(), diagonal_normal(self.w_prior_loc, self.w_prior_scale)])

@dataclass
class PlusSamples:
    """The reparameterised draws of one MMVAE+ step (C components, K samples each).

    Attributes:
        z: ``[C, K, B, D]`` from component c of q(z | X) (for ``moe``, q(z | x_c)).
        w_posterior: ``[M, C, K, B, W]`` from q(w_m | x_m), one set per component.
        w_auxiliary: ``[M, C, K, B, W]`` from the auxiliary priors r_m.
    """

    z: Tensor
    w_posterior: Tensor
    w_auxiliary: Tensor


class MMVAEPlusObjective(StratifiedIWAE):
    """MMVAE+'s stratified importance-weighted bound (peer protocols, Sec. 3, "MMVAE+").

    For every component r of q(z | X) (each observed modality for ``moe``):

        lw_r = sum_{d observed} lambda_d log p(x_d | z_r, w_d)
               + a beta [log p(z_r) - log q(z_r | X) + sum_{d in S_r} (log p(w_d) - log q(w_d | x_d))],

    where w_d ~ q(w_d | x_d) for d in S_r (the modalities of component r), w_d ~ r_d(w)
    otherwise. q(z | X) is the whole aggregated posterior: for ``moe``,
    (1/|O|) sum_{m in O} q(z | x_m) over the observed modalities O. a is the trainer's KL
    warm-up factor. The bound per row is the mean over valid components of
    log-mean-exp over K; the loss is minus its batch mean. Unobserved modalities are
    neither components nor reconstructed, so they get exactly zero gradient.

    Args:
        num_samples: K importance samples per component (JNF paper, App. E: K = 10; the
            MMVAE+ PolyMNIST script: K = 1).
        dreg: Use the DReG gradient estimator (Tucker et al. 2019).
        beta: The beta in front of the bracket (1 is the bound itself; 2.5 for MMVAE+ on
            PolyMNIST).

    The arguments, their checks and the bound with its DReG gradient
    (:func:`~omnivae.objectives.importance_bound`, paths z and w_m) are
    :class:`~omnivae.objectives.StratifiedIWAE`'s; only the weights differ.
    """

    def draw(self, model: MMVAEPlus, blocks: SplitExperts, posterior: SubsetMixture) -> PlusSamples:
        """K reparameterised draws of z per component, of every w_m and of every auxiliary w~_m."""
        z, _ = posterior.stratified_rsample(self.num_samples)  # [C, K, B, D]
        components, k, batch, _ = z.shape
        shape = (model.num_modalities, components, k, batch, model.w_dim)
        eps = torch.randn(shape, dtype=z.dtype, device=z.device)
        w_posterior = blocks.loc[:, None, None] + blocks.scale[:, None, None] * eps
        aux = model.auxiliary_scale().to(z.dtype)[:, None, None, None, :]
        w_auxiliary = aux * torch.randn(shape, dtype=z.dtype, device=z.device)
        return PlusSamples(z, w_posterior, w_auxiliary)

    def evaluate(
        self,
        model: MMVAEPlus,
        x: dict[str, Tensor],
        mask: Tensor,
        blocks: SplitExperts,
        posterior: SubsetMixture,
        samples: PlusSamples,
        kl_weight: float = 1.0,
    ) -> ObjectiveOutput:
        """The loss for given draws (so that tests can fix them).

        Args:
            model: The MMVAE+ model.
            x: ``name -> [B, *shape]``.
            mask: ``[M, B]`` observed modalities.
            blocks: The experts of ``x`` (:meth:`MMVAEPlus.encode_blocks`).
            posterior: ``model.aggregate(blocks.shared, mask)``.
            samples: Draws from :meth:`draw`.
            kl_weight: The warm-up factor a.
        """
        component_masks, log_weights = posterior.component_masks()  # [M, C, B], [C, B]
        valid = torch.isfinite(log_weights)  # [C, B]
        z = samples.z
        components, k, batch, _ = z.shape
        selves = component_masks.unsqueeze(2)  # [M, C, 1, B]
        w = torch.where(selves.unsqueeze(-1), samples.w_posterior, samples.w_auxiliary)  # [M, C, K, B, W]
        zero = torch.zeros((), dtype=z.dtype, device=z.device)

        rec = torch.zeros(components, k, batch, dtype=z.dtype, device=z.device)
        for index, name in enumerate(model.names):
            if name not in x:
                continue
            inputs = torch.cat([z, w[index]], -1).reshape(components * k, batch, -1)
            log_p = model.decoder_log_prob(name, x[name], inputs).reshape(components, k, batch)
            rec = rec + torch.where(mask[index], model.likelihood_weights[index] * log_p, zero)

        source = blocks.detach() if self.dreg else blocks
        density = model.aggregate(source.shared, mask) if self.dreg else posterior
        log_qz = density.log_prob(z)  # [C, K, B]
        log_pz = model.prior_module().log_prob(z)
        q_w = diagonal_normal(source.loc[:, None, None], source.scale[:, None, None])
        log_ratio_w = _standard_normal_log_prob(samples.w_posterior) - q_w.log_prob(samples.w_posterior)
        specific = torch.where(selves, log_ratio_w, zero).sum(0)  # [C, K, B]
        regulariser = log_pz - log_qz + specific
        log_w = rec + self.beta * kl_weight * regulariser
        bound = importance_bound(log_w, valid, self.dreg, (z, samples.w_posterior))
        weight = valid.unsqueeze(1).expand(components, k, batch)
        total = weight.sum().clamp_min(1)
        terms = {
            "rec": -torch.where(weight, rec, zero).sum() / total,
            "kl": -torch.where(weight, regulariser, zero).sum() / total,
        }
        return ObjectiveOutput(-bound.mean(), terms)

    def __call__(  # type: ignore[override]
        self, model: MMVAEPlus, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        blocks = model.encode_blocks(x)
        posterior = model.aggregate(blocks.shared, mask)
        samples = self.draw(model, blocks, posterior)
        return self.evaluate(model, x, mask, blocks, posterior, samples, kl_weight)


@dataclass(frozen=True)
class MMVAEPlusOptions(MethodOptions):
    """MMVAE+'s setting."""

    w_dim: int = option(32, "W, the size of each modality-specific latent w_m")

    def check(self) -> None:
        if self.w_dim < 1:
            raise UserError(f"w_dim (MMVAE+'s modality-specific latent size) must be >= 1, got {self.w_dim}", parameter="w_dim")


def _build_mmvaeplus(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> MMVAEPlus:
    """MMVAE+'s networks: encoders with D + W outputs, decoders reading (z, w_m) (Palumbo et al. 2023)."""
    parts.require("covariance", "diag", "encoders give one diagonal Gaussian, split into z and w")
    w_dim = config.settings_as(MMVAEPlusOptions).w_dim
    width = config.latent_dim + w_dim
    encoders = nn.ModuleDict(
        {m.name: build_encoder(m, width, backbone=config.backbone, hidden=config.hidden) for m in modalities}
    )
    decoders = nn.ModuleDict(
        {
            m.name: build_decoder(
                m, width, backbone=config.backbone, hidden=config.hidden, likelihood=config.likelihood
            )
            for m in modalities
        }
    )
    return MMVAEPlus(modalities, encoders, decoders, parts.aggregator(), parts.prior(), w_dim, parts.likelihood_weights)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "mmvae+",
        "MMVAE+ (shared z + modality-specific w_m, auxiliary priors)",
        "Palumbo et al., ICLR 2023; peer protocols Sec. 3",
        "moe",
        lambda c: MMVAEPlusObjective(num_samples=c.num_samples, dreg=c.dreg, beta=c.beta),
        build=_build_mmvaeplus,
        options_type=MMVAEPlusOptions,
    ),
)
