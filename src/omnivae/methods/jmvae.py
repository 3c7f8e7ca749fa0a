"""JMVAE-kl (Suzuki et al., arXiv 2016): a joint encoder, unimodal encoders trained to match it.

The model (:class:`JointEncoderVAE`), its objective (:class:`JMVAEKL`: the JNF paper's
Eq. 3 plus alpha times Eq. 7), its option (``alpha``) and its recipe. The joint encoder
network is :class:`omnivae.nn.JointEncoder`; proper subsets use the product over the
prior of the JNF paper, Eq. 12 (:class:`~omnivae.aggregators.PriorDividedProduct`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from omnivae.aggregators import PriorDividedProduct
from omnivae.distributions import GaussianExperts, diagonal_normal, kl_divergence
from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.joint import JointEncoderBase
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import build_joint_encoder
from omnivae.objectives import MultimodalModel, Objective, ObjectiveOutput, check_beta, expert_kl

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["JointEncoderVAE", "JMVAEKL", "JMVAEOptions", "RECIPES"]


def _normal_parameters(dist: Distribution) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of a diagonal Gaussian :class:`Independent` (``Normal``) distribution."""
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return dist.base_dist.loc, dist.base_dist.scale
    raise UserError(
        f"a joint-encoder model needs diagonal Gaussian subset posteriors, got {type(dist).__name__}; "
        "use covariance='diag'",
        parameter="covariance",
    )


class JointEncoderVAE(JointEncoderBase):
    """A multimodal VAE with a joint encoder q(z | X) beside the unimodal ones (JMVAE).

    JMVAE (Suzuki et al. 2016) encodes the complete observation X with its own network,
    :class:`~omnivae.nn.JointEncoder`, and trains unimodal encoders q(z | x_m) to match
    it (:class:`JMVAEKL`). Instead of a network per subset, proper subsets use the
    aggregator over the unimodal experts: for the ``jmvae`` recipe the product over the
    prior of the JNF paper, Eq. 12 (:class:`~omnivae.aggregators.PriorDividedProduct`;
    App. E.2, "the PoE sampling solution").

    Posterior used (:meth:`posterior`), per element:

    - every modality a member: the joint encoder;
    - otherwise the aggregator over the members' experts: its inference posterior
      (:meth:`~omnivae.aggregators.Aggregator.infer`), or its training posterior for the
      proposal (:meth:`joint_posterior`); training draws one component of it
      (:meth:`training_posterior`; the whole posterior for Eq. 12).

    Args:
        modalities, encoders, decoders, aggregator, prior, joint_encoder,
        likelihood_weights, covariance_rank: As for
        :class:`~omnivae.models.joint.JointEncoderBase`.
    """

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """The joint encoder where every modality is a member, the aggregator elsewhere."""
        return self.with_joint(x, members.all(0), super().posterior(x, members, proposal=proposal))

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


class JointEncoderModel(MultimodalModel, Protocol):
    """What :class:`JMVAEKL` needs of a model: :class:`JointEncoderVAE`'s training posterior."""

    def training_posterior(self, x: dict[str, Tensor], mask: Tensor) -> tuple[Distribution, GaussianExperts]: ...


class JMVAEKL(Objective):
    """The JMVAE-kl objective (Suzuki et al. 2016; JNF paper, Eq. 3 plus alpha times Eq. 7).

    L = sum_m w_m log p(x_m | z) - a [beta KL(q(z | X) || p(z))
        + alpha sum_m KL(q(z | X) || q(z | x_m))],   z ~ q(z | X),

    with q(z | X) the joint encoder and a the trainer's KL warm-up factor (``kl_weight``),
    as written in the peer protocols (Sec. 3, "JMVAE-KL"). The second KL pulls each unimodal
    encoder towards the joint one, covering its support (JNF paper, Sec. 3.2). A row that
    misses a modality cannot use the joint encoder: its q(z | X) is the model's subset
    posterior of the observed modalities (JNF paper, Eq. 12), and only observed
    modalities are reconstructed and enter the sum over m.

    The ``jmvae`` recipe warms a up linearly over 10 epochs, MultiVae's default (peer
    protocols, Sec. 3); the JNF paper warms up over 100 epochs of its long runs (App. E),
    so pass a longer ``warmup_epochs`` to the trainer to match it.

    Args:
        beta: Weight of KL(q(z | X) || p(z)).
        alpha: Weight of the unimodal KL terms (0.1 in Suzuki et al. 2016 and the JNF paper).
    """

    def __init__(self, beta: float = 1.0, alpha: float = 0.1) -> None:
        check_beta(beta)
        if not alpha >= 0:
            raise UserError(f"alpha must be >= 0, got {alpha}", parameter="alpha")
        self.beta = beta
        self.alpha = alpha

    def __call__(
        self, model: JointEncoderModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        posterior, experts = model.training_posterior(x, mask)
        z = posterior.rsample()
        rec = model.log_likelihood(x, z, mask)
        kl = kl_divergence(posterior, model.prior())
        kl_unimodal = expert_kl(posterior, experts, mask)
        loss = -(rec - kl_weight * (self.beta * kl + self.alpha * kl_unimodal)).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": kl.mean(), "kl_unimodal": kl_unimodal.mean()})


@dataclass(frozen=True)
class JMVAEOptions(MethodOptions):
    """JMVAE's setting."""

    alpha: float = option(0.1, "weight of sum_m KL(q(z | X) || q(z | x_m)) (Suzuki et al. 2016; JNF paper, App. E: 0.1)")

    def check(self) -> None:
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise UserError(
                f"alpha (JMVAE's weight of the unimodal KL terms) must be finite and >= 0, got {self.alpha}",
                parameter="alpha",
            )


def _build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> JointEncoderVAE:
    """JMVAE's model: the shared parts plus a joint encoder (JNF paper, App. E)."""
    parts.require("covariance", "diag", "joint encoder and subset posteriors are diagonal Gaussians")
    parts.require("prior", "normal", "subset posterior (JNF paper, Eq. 12) is in closed form for the standard normal prior only")
    encoders, decoders, aggregator, prior = parts.encoders(), parts.decoders(), parts.aggregator(), parts.prior()
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    return JointEncoderVAE(
        modalities, encoders, decoders, aggregator, prior, joint, parts.likelihood_weights, parts.covariance_rank
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "jmvae", "JMVAE-KL (joint encoder; subsets: PoE / prior, Eq. 12)",
        "Suzuki et al., arXiv 2016; JNF paper, Eq. 12", "poe",
        lambda c: JMVAEKL(beta=c.beta, alpha=c.settings_as(JMVAEOptions).alpha),
        # MultiVae's JMVAE default; the JNF paper warms up over 100 epochs of its long runs.
        warmup_epochs=10.0,
        aggregator_factory=PriorDividedProduct,
        build=_build,
        options_type=JMVAEOptions,
    ),
)
