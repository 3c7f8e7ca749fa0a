"""TELBO (Vedantam et al., ICLR 2018, "Generative models of visually grounded imagination").

The triple ELBO: a joint inference network q(z | X) and one unimodal inference network
q(z | x_m) per modality share the decoders p(x_m | z). The paper's objective (Sec. 3.1,
"the triple ELBO") is the sum of three ELBOs for two modalities x, y:

    ELBO(x, y; q(z | x, y)) + ELBO(x; q(z | x)) + ELBO(y; q(z | y)),

where each unimodal ELBO reconstructs its own modality only, and the decoders are trained
by the joint term alone: the unimodal inference networks learn to fit decoders that they
do not change. omnivae trains it in stages (``Objective.stages``), as MultiVae does and as
the paper's "freeze the decoders" describes:

1. ``"joint VAE"``: the joint ELBO (:class:`JointELBO`) trains the joint encoder, the
   decoders and the prior;
2. ``"unimodal encoders"``: the sum of the unimodal ELBOs (:class:`UnimodalELBOs`) trains
   the unimodal encoders, every other parameter frozen by the trainer.

Choices the paper leaves open (it has two modalities):

- M > 2 modalities: the triple ELBO becomes the joint ELBO plus M unimodal ELBOs.
- Proper subsets with more than one modality: the product of the members' unimodal
  posteriors over the prior^(|S|-1) (JNF paper, Eq. 12, closed form;
  :class:`~omnivae.aggregators.PriorDividedProduct`), as for JMVAE. Singletons use their
  unimodal encoder, the full set the joint encoder.
- Missing modalities: the joint ELBO uses the fully observed rows only; the unimodal ELBO
  of modality m the rows where m is observed. Unobserved entries get zero gradient.
- The likelihood weights lambda of the paper are the model's likelihood weights
  (``rescale_likelihoods``); the paper's per-term KL weights are the one ``beta``.
- The paper's equation numbers are not cited: its PDF is not among the project's stored
  papers and could not be read offline (issue 21 searched for it). The formula above
  follows its Sec. 3 as MultiVae documents it and as the authors' released code computes
  it (github.com/google/joint_vae, ``joint_vae/multimodal_elbo_loss.py``: the three ELBOs,
  each unimodal one reconstructing its own modality, with per-modality likelihood scales).

Where the authors' code differs from this schedule: it optimises the three ELBOs in one
loss (each row's present ELBOs averaged), with options to stop the unimodal terms'
gradients into the decoders; omnivae, like MultiVae, trains the joint VAE first and the
unimodal encoders afterwards with the decoders frozen, which gives the decoders the same
training signal (the joint term only) without the two objectives competing for the
shared steps. MultiVae's stage 2 computes KL(q(z | x_m) || p(z)) with the joint encoder's
log-variance in place of the unimodal one (its ``telbo_model.py``); omnivae uses the
unimodal KL the formula calls for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from omnivae.aggregators import PriorDividedProduct
from omnivae.distributions import diagonal_normal, kl_divergence
from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.joint import JointEncoderBase
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import build_joint_encoder
from omnivae.objectives import Objective, ObjectiveOutput, check_beta
from omnivae.stages import Stage

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["TELBOVAE", "JointELBO", "UnimodalELBOs", "TELBOObjective", "TELBOOptions", "RECIPES"]


class TELBOVAE(JointEncoderBase):
    """TELBO's model: the joint inference network beside the unimodal ones (Vedantam et al. 2018).

    :meth:`posterior` uses the joint encoder where every modality is a member, otherwise the
    aggregator over the members' unimodal posteriors (a singleton: that modality's own
    encoder; the ``telbo`` recipe's aggregator is the product over the prior, JNF paper, Eq. 12).
    """

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """The joint encoder where every modality is a member, the aggregator elsewhere."""
        return self.with_joint(x, members.all(0), super().posterior(x, members, proposal=proposal))


def _kl(posterior: Distribution, prior: Distribution, z: Tensor) -> Tensor:
    """KL(q || p) in closed form, or the one-draw estimate log q(z) - log p(z) (Laplace prior)."""
    try:
        return kl_divergence(posterior, prior)
    except NotImplementedError:
        return posterior.log_prob(z) - prior.log_prob(z)


class JointELBO(Objective):
    """Stage 1 of TELBO: the joint term of the triple ELBO, elbo(X; q(z | X)).

    L = -(1 / B) sum_rows c_b [sum_m w_m log p(x_m | z) - a beta KL(q(z | X) || p(z))],
    z ~ q(z | X) (one reparameterised draw), with c_b = 1 on fully observed rows and 0
    elsewhere (the joint encoder reads every modality); a the KL warm-up factor.

    Args:
        beta: Weight of the KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(self, model: TELBOVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        complete = mask.all(0)
        if not model.has_every_modality(x) or not bool(complete.any()):
            zero = torch.zeros((), dtype=model.likelihood_weights.dtype, device=mask.device, requires_grad=True)
            return ObjectiveOutput(zero, {"rec": zero.detach(), "kl": zero.detach()})
        loc, scale = model.joint_encoder(x)
        posterior = diagonal_normal(loc, scale)
        z = posterior.rsample()
        rec = model.log_likelihood(x, z, mask)
        kl = _kl(posterior, model.prior(), z)
        zero = rec.new_zeros(())
        elbo = torch.where(complete, rec - self.beta * kl_weight * kl, zero)
        loss = -elbo.mean()
        return ObjectiveOutput(
            loss, {"rec": -torch.where(complete, rec, zero).mean(), "kl": torch.where(complete, kl, zero).mean()}
        )


class UnimodalELBOs(Objective):
    """Stage 2 of TELBO: the unimodal terms of the triple ELBO, sum_m elbo(x_m; q(z | x_m)).

    L = -(1 / B) sum_rows sum_m o_mb [w_m log p(x_m | z_m) - a beta KL(q(z | x_m) || p(z))],
    z_m ~ q(z | x_m), with o_mb = 1 where modality m of row b is observed. Each term
    reconstructs its own modality only. The trainer freezes the decoders in this stage.

    Args:
        beta: Weight of the KL terms.
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(self, model: TELBOVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        prior = model.prior()
        total = experts.loc.new_zeros(mask.shape[1:])
        zero = total.new_zeros(())
        terms: dict[str, Tensor] = {}
        for index, name in enumerate(model.names):
            if name not in x:
                continue
            posterior = experts.select(index)
            z = posterior.rsample()
            rec = model.likelihood_weights[index] * model.modality_log_likelihood(name, x[name], z)
            elbo = torch.where(mask[index], rec - self.beta * kl_weight * _kl(posterior, prior, z), zero)
            total = total + elbo
            terms[f"elbo_{name}"] = elbo.detach().mean()
        loss = -total.mean()
        terms["uni"] = loss.detach()
        return ObjectiveOutput(loss, terms)


def _joint_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Stage 1: the joint encoder, the decoders and the prior."""
    model = cast(TELBOVAE, module)
    return itertools.chain(model.joint_encoder.parameters(), model.decoders.parameters(), model.prior_module.parameters())


def _unimodal_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Stage 2: the unimodal encoders (decoders frozen)."""
    return cast(TELBOVAE, module).encoders.parameters()


class TELBOObjective(Objective):
    """TELBO's schedule and, called directly, the triple ELBO (the sum of both stages' losses).

    :meth:`stages`: ``"joint VAE"`` (:class:`JointELBO`, ``--epochs`` epochs), then
    ``"unimodal encoders"`` (:class:`UnimodalELBOs`, ``stage2_epochs`` or ``--epochs``).
    Called directly the gradient of the unimodal terms also reaches the decoders; training
    goes through :meth:`stages`, which does not let it.

    Args:
        beta: Weight of every KL term.
        stage2_epochs: Epochs of stage 2; 0 means ``--epochs``.
    """

    def __init__(self, beta: float = 1.0, stage2_epochs: int = 0) -> None:
        if stage2_epochs < 0:
            raise UserError(f"stage2_epochs must be >= 0 (0: as many as stage 1), got {stage2_epochs}", parameter="stage2_epochs")
        self.joint = JointELBO(beta)
        self.unimodal = UnimodalELBOs(beta)
        self.stage2_epochs = stage2_epochs

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        return (
            Stage("joint VAE", self.joint, epochs, parameters=_joint_parameters),
            Stage("unimodal encoders", self.unimodal, self.stage2_epochs or epochs, parameters=_unimodal_parameters),
        )

    def __call__(self, model: TELBOVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        joint = self.joint(model, x, mask, kl_weight)
        unimodal = self.unimodal(model, x, mask, kl_weight)
        return ObjectiveOutput(joint.loss + unimodal.loss, {**joint.terms, **unimodal.terms})


@dataclass(frozen=True)
class TELBOOptions(MethodOptions):
    """TELBO's setting."""

    stage2_epochs: int = option(0, "epochs of the unimodal encoders' stage (0: as many as --epochs)")

    def check(self) -> None:
        if self.stage2_epochs < 0:
            raise UserError(
                f"stage2_epochs must be >= 0 (0: as many as stage 1), got {self.stage2_epochs}", parameter="stage2_epochs"
            )


def _build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> TELBOVAE:
    """TELBO's model: the shared parts plus a joint encoder."""
    parts.require("covariance", "diag", "joint encoder and subset posteriors are diagonal Gaussians")
    parts.require("prior", "normal", "subset posterior (JNF paper, Eq. 12) is in closed form for the standard normal prior only")
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    return TELBOVAE(
        modalities, parts.encoders(), parts.decoders(), parts.aggregator(), parts.prior(), joint,
        parts.likelihood_weights, parts.covariance_rank,
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "telbo", "TELBO (triple ELBO; joint VAE, then unimodal encoders with decoders frozen)",
        "Vedantam et al., ICLR 2018", "poe",
        lambda c: TELBOObjective(beta=c.beta, stage2_epochs=c.settings_as(TELBOOptions).stage2_epochs),
        aggregator_factory=PriorDividedProduct,
        build=_build,
        options_type=TELBOOptions,
    ),
)
