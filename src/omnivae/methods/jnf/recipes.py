"""JNF's recipes: ``jnf``, ``jnf-dcca`` and ``jnf-cl`` (Senellart et al., Sec. 3, App. E).

Each recipe builds JNF's networks (App. E) and its staged objective from a
:class:`~omnivae.models.ModelConfig` and its typed options (:class:`JNFOptions`,
:class:`JNFSharedOptions`, :class:`JNFContrastiveOptions`), checked once when the
configuration is validated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import nn

from omnivae.errors import UserError
from omnivae.methods.jnf.model import JNFVAE, HMCSettings, UnimodalFlow
from omnivae.methods.jnf.objectives import JNFObjective
from omnivae.methods.jnf.projectors import Projector
from omnivae.modalities import ModalitySpec
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import MLP, GaussianEncoder, build_joint_encoder

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["JNFOptions", "JNFSharedOptions", "JNFContrastiveOptions", "RECIPES"]


@dataclass(frozen=True)
class JNFOptions(MethodOptions):
    """JNF's settings: the flows (App. E), stage 2 (Eq. 8) and the HMC of Eq. 12 (App. F)."""

    flow_blocks: int = option(2, "MADE blocks of each unimodal flow (App. E: 2; 0: Gaussian posteriors)")
    flow_hidden: int = option(128, "width of each MADE's two hidden layers")
    stage2_epochs: int = option(0, "epochs of stage 2, the unimodal posteriors (0: as many as stage 1)")
    stage2_samples: int = option(1, "draws of q(z | X) per row in Eq. 8")
    hmc_steps: int = option(100, "HMC steps per sample of Eq. 12 (App. F: 100)")
    hmc_leapfrog: int = option(10, "leapfrog steps per HMC proposal (reference code: 10)")
    hmc_step_size: float = option(0.01, "leapfrog step size (reference code: 0.01)")
    hmc_adapt_steps: int = option(0, "burn-in steps that adapt each chain's step size (0: none)")
    hmc_prior_power: Literal["paper", "once"] = option(
        "paper", "divide Eq. 12 by p(z)^(|S|-1) ('paper') or by p(z) once (Eq. F.3, reference code)"
    )
    mean_samples: int = option(64, "draws per unimodal posterior behind .mean and log Z of Eq. 12")

    def hmc(self) -> HMCSettings:
        """The sampler's settings these options give."""
        return HMCSettings(
            num_steps=self.hmc_steps,
            leapfrog_steps=self.hmc_leapfrog,
            step_size=self.hmc_step_size,
            adapt_steps=self.hmc_adapt_steps,
            prior_power=self.hmc_prior_power,
            mean_samples=self.mean_samples,
        )

    def check(self) -> None:
        self.hmc().validate()
        if self.flow_blocks < 0 or self.flow_hidden < 1:
            bad = "flow_blocks" if self.flow_blocks < 0 else "flow_hidden"
            raise UserError(
                f"flow_blocks must be >= 0 and flow_hidden >= 1, got {self.flow_blocks} and {self.flow_hidden}",
                parameter=bad,
            )
        if self.stage2_epochs < 0:
            raise UserError(f"stage2_epochs must be >= 0 (0: as many as stage 1), got {self.stage2_epochs}", parameter="stage2_epochs")
        if self.stage2_samples < 1:
            raise UserError(f"stage2_samples must be >= 1, got {self.stage2_samples}", parameter="stage2_samples")


@dataclass(frozen=True)
class JNFSharedOptions(JNFOptions):
    """JNF-Shared's settings: JNF's plus the projectors of Sec. 3.4 (App. E.1)."""

    projection_dim: int = option(10, "size of each projection g_j(x_j) (App. E.1: 10)")
    projector_epochs: int = option(0, "epochs of stage 0, the projectors (0: as many as stage 1)")

    def check(self) -> None:
        super().check()
        if self.projection_dim < 1:
            raise UserError(f"projection_dim must be >= 1, got {self.projection_dim}", parameter="projection_dim")
        if self.projector_epochs < 0:
            raise UserError(
                f"projector_epochs must be >= 0 (0: as many as stage 1), got {self.projector_epochs}",
                parameter="projector_epochs",
            )


@dataclass(frozen=True)
class JNFContrastiveOptions(JNFSharedOptions):
    """JNF-Shared with contrastive projectors: the temperature of App. B.2."""

    temperature: float = option(0.1, "tau of the contrastive loss (App. B.2: 0.1)")

    def check(self) -> None:
        super().check()
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be positive, got {self.temperature}", parameter="temperature")


def _build_jnf(
    config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts, shared: bool = False
) -> JNFVAE:
    """JNF's networks (App. E): the shared decoders, a joint encoder, flows, [projectors]."""
    if config.aggregator not in (None, "poe"):
        raise UserError(
            f"{config.model} infers subsets with Eq. 12 of its paper (a product of flow posteriors, by HMC); "
            "it takes no aggregator",
            parameter="aggregator",
        )
    parts.require("covariance", "diag", "encoders are diagonal Gaussians (then flows)")
    settings = config.settings_as(JNFOptions)
    # Plain JNF's unimodal encoders read x_j: the shared parts, built first as before.
    encoders = None if shared else parts.encoders()
    decoders, prior = parts.decoders(), parts.prior()
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    flows = nn.ModuleDict(
        {m.name: UnimodalFlow(config.latent_dim, settings.flow_blocks, settings.flow_hidden) for m in modalities}
    )
    projectors = None
    if shared:
        dim = config.settings_as(JNFSharedOptions).projection_dim
        projectors = nn.ModuleDict(
            {m.name: Projector(m, dim, config.backbone, config.hidden) for m in modalities}
        )
        # App. E.1: "simple networks with two linear hidden layers" on the projection.
        hidden = int(config.hidden[-1]) if config.hidden else 512
        encoders = nn.ModuleDict(
            {
                m.name: GaussianEncoder(MLP(dim, (hidden,), hidden, final_activation=True), hidden, config.latent_dim)
                for m in modalities
            }
        )
    assert encoders is not None
    return JNFVAE(
        modalities, encoders, decoders, prior, joint, flows, projectors, parts.likelihood_weights, settings.hmc()
    )


def _build_jnf_shared(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> JNFVAE:
    return _build_jnf(config, modalities, parts, shared=True)


def _objective(config: ModelConfig, projector: Literal["dcca", "contrastive"] | None = None) -> JNFObjective:
    settings = config.settings_as(JNFOptions)
    projector_epochs, temperature = 0, 0.1
    if isinstance(settings, JNFSharedOptions):
        projector_epochs = settings.projector_epochs
    if isinstance(settings, JNFContrastiveOptions):
        temperature = settings.temperature
    return JNFObjective(
        beta=config.beta,
        stage2_epochs=settings.stage2_epochs,
        stage2_samples=settings.stage2_samples,
        projector=projector,
        projector_epochs=projector_epochs,
        temperature=temperature,
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "jnf", "JNF (joint VAE, then flow posteriors; subsets: Eq. 12 by HMC)",
        "Senellart et al. 2024 (JNF); Eq. 3, 8, 10, 12", "poe",
        _objective,
        build=_build_jnf,
        swappable=False,
        complete_rows_only=True,
        options_type=JNFOptions,
    ),
    Recipe(
        "jnf-dcca", "JNF-Shared (DCCA projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.1", "poe",
        lambda c: _objective(c, "dcca"),
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options_type=JNFSharedOptions,
    ),
    Recipe(
        "jnf-cl", "JNF-Shared (contrastive projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.2", "poe",
        lambda c: _objective(c, "contrastive"),
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options_type=JNFContrastiveOptions,
    ),
)
