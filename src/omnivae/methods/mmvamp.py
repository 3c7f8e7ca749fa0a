"""The MM-VAMP VAE, independent VAEs and the aggregated VAE (Sutter et al. 2024).

The three methods compared by "Improved Representation Learning in Multimodal VAEs"
(the MM-VAMP paper, /work/shared/papers/mm-vamp-vae.md):

- ``mmvamp``: one latent z_m per modality, encoded from x_m alone and decoded into x_m
  alone, regularised towards the data-dependent mixture prior
  h(z_m | X) = (1/M) sum_j q(z_m | x_j) (Eq. 1-3). The rate is sum_m KL(q_m || h), M times
  the Jensen-Shannon divergence of the unimodal posteriors (Eq. 4).
- ``independent``: the same networks with the prior N(0, I) per latent: M independent VAEs.
- ``aggregated``: one shared latent whose posterior averages the unimodal means and
  standard deviations (App. B.2, Eq. 15-16, after Hosoya 2018), trained with the ELBO.

Multi-latent models in the single-latent API
--------------------------------------------
``mmvamp`` and ``independent`` expose ONE latent vector of size L = M * D, the
concatenation of the blocks z_1, ..., z_M (D = ``latent_dim``), so that every generic
metric works unchanged (:class:`BlockLatentVAE`):

- decoder m reads block m of z (``decode``, ``decode_mean``, ``modality_log_likelihood``);
- ``prior()`` is N(0, I_L);
- the posterior given a subset S (``subset_posteriors``, ``encode``) is block-wise
  independent (:class:`~omnivae.distributions.ConcatenatedBlocks`): block m is
  q(z_m | x_m) when m is in S, and otherwise the model's aggregator over the observed experts, by default their uniform
  mixture (1/|S|) sum_{j in S} q(z_j | x_j). Generating a missing modality m thus decodes
  the latent of an observed modality with m's decoder, the conditional generation of the
  paper (Sec. 5, "Evaluation"; App. B.2.3, "For the independent VAEs and the MM-VAMP-VAE,
  the reconstruction of a modality is only based on its own unimodal posterior").
- The linear probe of subset {m} therefore reads the mean of q(z_m | x_m) repeated in
  every block (each other block is the mixture of one member): the unimodal posterior
  mean, the representation the paper probes (Sec. 5, "We train independent classifiers
  on the unimodal representations"). Larger subsets concatenate their members' means.

References:
    Sutter, Meng, Fortin, Vogt, Shahbaba & Mandt (2024). Improved Representation
    Learning in Multimodal VAEs (the MM-VAMP VAE). Preprint.
    Hosoya (2018). A simple probabilistic deep generative model for learning
    generalizable disentangled representations from grouped data. CoRR.
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from omnivae.aggregators import Aggregator
from omnivae.distributions import (
    ConcatenatedBlocks,
    GaussianExperts,
    RowwiseChoice,
    SubsetMixture,
    diagonal_normal,
    kl_divergence,
)
from omnivae.errors import UserError
from omnivae.functional import kl_normal_standard
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.objectives import ELBO, Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = [
    "BlockLatentVAE",
    "MMVAMPOptions",
    "IndependentELBO",
    "MMVAMPELBO",
    "KL_ESTIMATORS",
    "masked_experts",
    "mixture_kl_mc",
    "mixture_kl_bound",
    "RECIPES",
]

KL_ESTIMATORS = ("pairwise", "mc")


def masked_experts(experts: GaussianExperts, mask: Tensor) -> GaussianExperts:
    """The experts with unobserved entries replaced by N(0, I) before any arithmetic.

    Whatever an encoder returns for an unobserved row (even inf or NaN) then reaches no
    term, and its parameters get exactly zero gradient (a ``where`` placed only after a
    log or a division would back-propagate 0 * inf = NaN).

    Args:
        experts: Diagonal experts ``[M, *B, D]``.
        mask: ``[M, *B]``, True = observed.
    """
    if not experts.is_diagonal:
        raise UserError("MM-VAMP's blocks are diagonal Gaussians; use covariance='diag'", parameter="covariance")
    keep = mask.unsqueeze(-1)
    loc = torch.where(keep, experts.loc, torch.zeros((), dtype=experts.loc.dtype, device=experts.loc.device))
    scale = torch.where(keep, experts.scale, torch.ones((), dtype=experts.scale.dtype, device=experts.scale.device))
    return GaussianExperts(loc, scale)


def mixture_kl_mc(posterior: Distribution, prior: Distribution, z: Tensor) -> Tensor:
    """One-sample Monte Carlo estimate of KL(q_m || h) for every block: log q_m(z_m) - log h(z_m).

    With z_m ~ q(z_m | x_m) (reparameterised), the estimate is unbiased for the KL to the
    mixture h(z_m | X), which has no closed form; it is the rate of Eq. 1-2 as written
    (MM-VAMP paper, Eq. 4).

    Args:
        posterior: The unimodal posteriors q(z_m | x_m), batch ``[M, *B]``, event ``[D]``.
        prior: h(z | X), batch ``[*B]``, event ``[D]``; the same distribution for every m
            (Eq. 3). Any density with ``log_prob`` (for MM-VAMP a :class:`SubsetMixture`).
        z: Samples of the posteriors, ``[M, *B, D]``.

    Returns:
        ``[M, *B]``.
    """
    return posterior.log_prob(z) - prior.log_prob(z)


def mixture_kl_bound(posterior: Distribution, prior: SubsetMixture) -> Tensor:
    """Convexity upper bound of KL(q_m || h), in closed form: sum_c w_c KL(q_m || h_c).

    KL is convex in its second argument, so for a mixture h = sum_c w_c h_c,
    KL(q || h) <= sum_c w_c KL(q || h_c). For MM-VAMP's h = (1/|O|) sum_{j in O} q_j
    (O the observed modalities) this is the average of the pairwise KLs
    (1/|O|) sum_{j in O} KL(q_m || q_j), the rate of the reference implementation (peer
    protocols, Sec. 3, "MM-VAMP"). For a one-component h (an aggregator swap such as
    ``poe`` or ``wb``) it is the exact KL. Deterministic given the experts.

    Args:
        posterior: q(z_m | x_m), batch ``[M, *B]``, a diagonal Gaussian.
        prior: h(z | X) as a :class:`SubsetMixture` with batch ``[*B]``.

    Returns:
        ``[M, *B]``.
    """
    components, log_weights = prior.all_components()  # batch [C, *B], [C, *B]
    base = cast(Independent, posterior).base_dist
    spread = diagonal_normal(base.loc.unsqueeze(1), base.scale.unsqueeze(1))  # [M, 1, *B]
    kl = kl_divergence(spread, components)  # [M, C, *B]
    valid = torch.isfinite(log_weights)
    weights = torch.where(valid, log_weights, torch.zeros_like(log_weights)).exp()
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    return torch.where(valid, weights * kl, zero).sum(1)


class BlockLatentVAE(MultimodalVAE):
    """One encoder, decoder and latent block per modality, behind the single-latent API.

    The model of the MM-VAMP VAE and of independent VAEs (MM-VAMP paper, Sec. 3,
    "Encoder and Decoder": q(z_m | x_m) and p(x_m | z_m) per modality). The latent is the
    concatenation z = (z_1, ..., z_M) of size L = M * D; decoder m reads block m.

    Posteriors (all :class:`~omnivae.distributions.ConcatenatedBlocks`, batch ``[*B]``, event ``[L]``,
    from :meth:`posterior`):

    - ``subset_posteriors(x, subsets)`` and ``encode(x, mask)``: block m is q(z_m | x_m)
      where m is in the subset (and observed), otherwise the aggregator's inference
      posterior of the subset's experts (``aggregator.infer``; for the recipes' ``moe``
      the uniform mixture of the members' unimodal posteriors, Eq. 3 restricted to S).
    - ``joint_posterior(x, mask)`` (the importance-sampling proposal of the likelihood
      metrics): q(z_m | x_m) for observed blocks and the prior N(0, I) for unobserved
      ones. The model p(X_O, z) = prod_{m in O} p(x_m | z_m) prod_m p(z_m) leaves the
      unobserved blocks at their prior, so this proposal is exact for them and adds no
      variance to log p(X_O) (a mixture there would be unbiased but noisier).

    ``prior()`` is N(0, I_L), the product of the per-block priors of independent VAEs; it
    is the model's p(z) for ``generate`` and the likelihood metrics. MM-VAMP's own prior
    h(z | X) depends on the data (Eq. 3), so it has no unconditional generation (Sec. 3),
    and prior samples decode into unrelated modalities (joint coherence at chance).

    The aggregator builds h(z | X) for :class:`MMVAMPELBO` (``aggregate``) and fills the
    unobserved blocks; the ``mmvamp`` and ``independent`` recipes use ``moe``, and
    ``--aggregator`` swaps it like for any model.

    Args:
        modalities, encoders, decoders, aggregator, prior, likelihood_weights: As for
            :class:`~omnivae.models.MultimodalVAE`; encoders output D = ``prior.latent_dim``
            dimensions, decoders read D.

    Attributes:
        annealing_step: Training calls of the objective so far (a buffer, so it is
            checkpointed and a resumed run continues the prior annealing where it was).
    """

    annealing_step: Tensor

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: nn.Module,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, likelihood_weights, 0)
        self.register_buffer("annealing_step", torch.zeros((), dtype=torch.long))

    @property
    def latent_size(self) -> int:
        """L = M * D, the size of the concatenated latent."""
        return self.num_modalities * self.latent_dim

    # -- blocks ----------------------------------------------------------------------------
    def block(self, z: Tensor, index: int) -> Tensor:
        """Block ``index`` of ``z [..., L]``: ``[..., D]``."""
        d = self.latent_dim
        return z[..., index * d : (index + 1) * d]

    def join_blocks(self, blocks: Tensor) -> Tensor:
        """``[M, *B, D]`` to ``[*B, M * D]`` (block m first in line m)."""
        return blocks.movedim(0, -2).reshape(*blocks.shape[1:-1], self.latent_size)

    def block_posterior(self, experts: GaussianExperts, mask: Tensor) -> ConcatenatedBlocks:
        """Own posterior for observed blocks, the aggregator's posterior of the observed ones elsewhere.

        Args:
            experts: ``[M, *B, D]``.
            mask: ``[M, *B]``; every row needs one True.
        """
        clean = masked_experts(experts, mask)
        filler = self.require_aggregator().infer(clean, mask)  # batch [*B]
        blocks = [RowwiseChoice(mask[m], clean.select(m), filler) for m in range(self.num_modalities)]
        return ConcatenatedBlocks(blocks)

    # -- the single-latent API -------------------------------------------------------------
    def prior(self) -> Distribution:
        """p(z) = N(0, I_L): the standard normal prior of every block."""
        base = self.prior_module()
        loc, scale = base.base_dist.loc, base.base_dist.scale
        return diagonal_normal(loc.repeat(self.num_modalities), scale.repeat(self.num_modalities))

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> ConcatenatedBlocks:
        """Block posteriors of ``members [M, *S, B]`` from one encoder pass: batch ``[*S, B]``, event ``[L]``.

        Block m is q(z_m | x_m) where m is a member; elsewhere the aggregator's inference
        posterior of the members' experts, or, for the ``proposal``, the prior N(0, I)
        (exact for a block the model leaves at its prior).
        """
        experts = self.expand_experts(self.encode_experts(x, self.observed_rows(members)), members)
        if not proposal:
            return self.block_posterior(experts, members)
        clean = masked_experts(experts, members)
        zeros = torch.zeros_like(clean.loc[0])
        standard = diagonal_normal(zeros, torch.ones_like(zeros))
        blocks = [RowwiseChoice(members[m], clean.select(m), standard) for m in range(self.num_modalities)]
        return ConcatenatedBlocks(blocks)

    def decoder_input(self, name: str, z: Tensor) -> Tensor:
        """Decoder m reads block m of ``z [..., L]``: z_m ``[..., D]``."""
        return self.block(z, self.names.index(name))


class IndependentELBO(Objective):
    """The sum of M independent beta-VAE ELBOs (Kingma & Welling 2014; MM-VAMP paper, Sec. 5, baselines).

    L = sum_{m in O} [w_m E_{q(z_m | x_m)} log p(x_m | z_m) - beta KL(q(z_m | x_m) || N(0, I))],

    one reparameterised sample per block, O the observed modalities of the row; a missing
    modality adds nothing. The loss is -L averaged over rows.

    Args:
        beta: Weight of the KL terms (the paper's beta, Sec. 5).
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def sample_blocks(
        self, model: BlockLatentVAE, x: dict[str, Tensor], mask: Tensor
    ) -> tuple[GaussianExperts, Distribution, Tensor, Tensor]:
        """Experts (unobserved ones replaced by N(0, I)), q(z_m | x_m) ``[M, B]``, z ``[M, B, D]``
        and the weighted reconstruction term ``[B]`` of the observed modalities."""
        experts = masked_experts(model.encode_experts(x, mask), mask)
        posterior = diagonal_normal(experts.loc, experts.scale)
        z = posterior.rsample()
        rec = model.log_likelihood(x, model.join_blocks(z), mask)
        return experts, posterior, z, rec

    def rate(
        self, model: BlockLatentVAE, experts: GaussianExperts, posterior: Distribution, z: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-block rate ``[M, B]`` (before masking) and extra terms to report."""
        return kl_normal_standard(experts.loc, experts.var), {}

    def __call__(
        self, model: BlockLatentVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts, posterior, z, rec = self.sample_blocks(model, x, mask)
        per_block, terms = self.rate(model, experts, posterior, z, mask)
        rate = torch.where(mask, per_block, torch.zeros((), dtype=per_block.dtype, device=per_block.device)).sum(0)
        loss = -(rec - self.beta * kl_weight * rate).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": rate.mean(), **terms})


class MMVAMPELBO(IndependentELBO):
    """The MM-VAMP objective (Sutter et al. 2024, Eq. 1-4) with a beta-weighted rate.

    L = sum_{m in O} [w_m E_{q(z_m | x_m)} log p(x_m | z_m) - beta KL(q(z_m | x_m) || h(z_m | X))],
    h(z | X) = (1/|O|) sum_{j in O} q(z | x_j)                          (Eq. 3)

    where O are the row's observed modalities: with missing modalities the mixture prior
    runs over the observed ones only (the paper trains on complete data). A row with one
    observed modality has h = q_m and a zero rate; it trains as an autoencoder, the
    limit the paper discusses in App. A (Eq. 8). h(z | X) is ``model.aggregate`` of the
    observed experts, so ``--aggregator`` swaps it; gradients flow into h (it is not
    detached), as in the paper's objective and the reference code.

    KL(q_m || h) has no closed form. ``kl_estimator``:

    - ``"pairwise"`` (default): the convexity bound (1/|O|) sum_j KL(q_m || q_j), closed
      form (:func:`mixture_kl_bound`). The paper states the exact rate (Eq. 4) but does
      not say how it is estimated; its reported runs come from the reference code, which
      uses this bound (peer protocols, Sec. 3), so the default reproduces them. The bound
      has no sampling noise, and keeps pulling posteriors together when they are far
      apart, where the exact KL saturates at log |O| (App. A, Eq. 9-10) and its gradient
      vanishes. It is an upper bound, so the reported ``kl`` exceeds the true rate.
    - ``"mc"``: log q_m(z_m) - log h(z_m) at the reconstruction's sample z_m ~ q_m
      (:func:`mixture_kl_mc`): unbiased for the exact KL, so the objective is Eq. 1-2 as
      written; noisier.

    Annealing from independent VAEs (``prior_annealing_steps`` = T > 0): the rate is
    (1 - lambda) KL(q_m || N(0, I)) + lambda KL(q_m || h) with lambda = min(1, t / T),
    t the number of earlier training calls of the objective (``model.annealing_step``,
    counted when the model is in training mode with gradients on; checkpointed with the
    model). The reference code anneals the same blend exponentially over 300,000 steps
    (peer protocols, Sec. 3); T = 0 (default) uses the mixture prior from the start, as
    the paper's objective. The schedule counts optimisation steps, not epochs: an
    objective only sees ``kl_weight``, which is the trainer's beta warm-up.

    Reported terms: ``rec`` and ``kl`` (the rate the loss uses, summed over observed
    blocks), and with annealing ``kl_h`` (the estimate of sum_m KL(q_m || h)) and
    ``lambda``.

    Args:
        beta: Weight of the rate (the paper's beta).
        kl_estimator: ``"pairwise"`` or ``"mc"``.
        prior_annealing_steps: T, training steps of the linear ramp (0 = no annealing).
    """

    def __init__(self, beta: float = 1.0, kl_estimator: str = "pairwise", prior_annealing_steps: int = 0) -> None:
        super().__init__(beta)
        if kl_estimator not in KL_ESTIMATORS:
            raise UserError(
                f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {kl_estimator!r}", parameter="kl_estimator"
            )
        if prior_annealing_steps < 0:
            raise UserError(
                f"prior_annealing_steps must be >= 0, got {prior_annealing_steps}", parameter="prior_annealing_steps"
            )
        self.kl_estimator = kl_estimator
        self.prior_annealing_steps = int(prior_annealing_steps)

    def prior_weight(self, model: BlockLatentVAE) -> Tensor | None:
        """lambda for this call (None without annealing); counts the call when training."""
        if self.prior_annealing_steps == 0:
            return None
        step = model.annealing_step
        weight = (step.to(model.likelihood_weights.dtype) / self.prior_annealing_steps).clamp(max=1.0)
        if model.training and torch.is_grad_enabled():
            step.add_(1)
        return weight

    def rate(
        self, model: BlockLatentVAE, experts: GaussianExperts, posterior: Distribution, z: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        mixture = model.aggregate(experts, mask)  # h(z | X), batch [B]
        if self.kl_estimator == "mc":
            kl_mixture = mixture_kl_mc(posterior, mixture, z)
        else:
            kl_mixture = mixture_kl_bound(posterior, mixture)
        weight = self.prior_weight(model)
        if weight is None:
            return kl_mixture, {}
        kl_standard = kl_normal_standard(experts.loc, experts.var)
        zero = torch.zeros((), dtype=kl_mixture.dtype, device=kl_mixture.device)
        observed_mixture = torch.where(mask, kl_mixture, zero).sum(0).mean()
        terms = {"kl_h": observed_mixture.detach(), "lambda": weight.detach()}
        return (1 - weight) * kl_standard + weight * kl_mixture, terms


@dataclass(frozen=True)
class MMVAMPOptions(MethodOptions):
    """The MM-VAMP objective's settings (:class:`MMVAMPELBO`)."""

    kl_estimator: Literal["pairwise", "mc"] = option(
        "pairwise", "estimate of KL(q_m || h): the closed-form pairwise bound (reference code) or one-sample MC"
    )
    prior_annealing_steps: int = option(0, "training steps of the linear ramp from N(0, I) to h (0: none)")

    def check(self) -> None:
        if self.prior_annealing_steps < 0:
            raise UserError(
                f"prior_annealing_steps must be >= 0, got {self.prior_annealing_steps}", parameter="prior_annealing_steps"
            )


def _build_block_vae(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> BlockLatentVAE:
    """The model of ``mmvamp`` and ``independent``: the shared per-modality networks, one block each."""
    parts.require("covariance", "diag", "latent blocks are diagonal Gaussians")
    parts.require("prior", "normal", "per-block prior is N(0, I) (independent VAEs, and MM-VAMP's annealing start)")
    encoders, decoders, aggregator, prior = parts.encoders(), parts.decoders(), parts.aggregator(), parts.prior()
    return BlockLatentVAE(modalities, encoders, decoders, aggregator, prior, parts.likelihood_weights)


def _mmvamp_objective(config: ModelConfig) -> MMVAMPELBO:
    settings = config.settings_as(MMVAMPOptions)
    return MMVAMPELBO(
        beta=config.beta, kl_estimator=settings.kl_estimator, prior_annealing_steps=settings.prior_annealing_steps
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "mmvamp",
        "MM-VAMP VAE (per-modality latents, mixture-of-posteriors prior)",
        "Sutter et al., preprint 2024 (MM-VAMP VAE); Eq. 1-4",
        "moe",
        _mmvamp_objective,
        build=_build_block_vae,
        options_type=MMVAMPOptions,
    ),
    Recipe(
        "independent",
        "Independent VAEs (one VAE per modality; MM-VAMP baseline)",
        "Kingma & Welling, ICLR 2014; Sutter et al. 2024, Sec. 5",
        "moe",
        lambda c: IndependentELBO(beta=c.beta),
        build=_build_block_vae,
    ),
    Recipe(
        # The same model as ``wb``: the W2 barycenter of diagonal Gaussians with equal
        # weights averages means and standard deviations (Qiu et al. 2025, Eq. 7), which
        # is the aggregated VAE's posterior (Eq. 15-16). Registered under its own name
        # so the MM-VAMP paper's baseline is named and cited as that paper has it.
        "aggregated",
        "Aggregated VAE (mean of unimodal means and std; MM-VAMP baseline)",
        "Sutter et al. 2024, App. B.2, Eq. 15-16 (Hosoya 2018)",
        "wb",
        lambda c: ELBO(beta=c.beta),
    ),
)
