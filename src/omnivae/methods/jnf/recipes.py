"""JNF's recipes: ``jnf``, ``jnf-dcca`` and ``jnf-cl`` (Senellart et al., Sec. 3, App. E).

Each recipe builds JNF's networks (App. E) and its staged objective from a
:class:`~omnivae.models.ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from omnivae.data.base import ModalitySpec
from omnivae.errors import UserError
from omnivae.methods.jnf.model import JNFVAE, HMCSettings, UnimodalFlow
from omnivae.methods.jnf.objectives import JNFObjective
from omnivae.methods.jnf.projectors import Projector
from omnivae.models import ModelConfig, ModelParts, PriorDividedProduct, Recipe
from omnivae.nn import MLP, GaussianEncoder, build_joint_encoder

__all__ = ["RECIPES"]


def _hmc_settings(config: ModelConfig) -> HMCSettings:
    settings = HMCSettings(
        num_steps=int(config.option("hmc_steps")),
        leapfrog_steps=int(config.option("hmc_leapfrog")),
        step_size=float(config.option("hmc_step_size")),
        adapt_steps=int(config.option("hmc_adapt_steps")),
        prior_power=str(config.option("hmc_prior_power")),  # type: ignore[arg-type]
        mean_samples=int(config.option("mean_samples")),
    )
    settings.validate()
    return settings


def _build_jnf(
    config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts, shared: bool = False
) -> JNFVAE:
    """JNF's networks (App. E): the shared decoders, a joint encoder, flows, [projectors]."""
    if config.aggregator not in (None, "poe"):
        raise UserError(
            f"{config.model} infers subsets with Eq. 12 of its paper (a product of flow posteriors, by HMC); "
            "it takes no --aggregator"
        )
    if config.covariance != "diag":
        raise UserError(f"{config.model}'s encoders are diagonal Gaussians (then flows); use --covariance diag")
    hmc_settings = _hmc_settings(config)
    blocks, width = int(config.option("flow_blocks")), int(config.option("flow_hidden"))
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    flows = nn.ModuleDict({m.name: UnimodalFlow(config.latent_dim, blocks, width) for m in modalities})
    projectors = None
    encoders = parts.encoders
    if shared:
        dim = int(config.option("projection_dim"))
        if dim < 1:
            raise UserError(f"projection_dim must be >= 1, got {dim}")
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
    return JNFVAE(
        modalities, encoders, parts.decoders, parts.prior, joint, flows, projectors,
        parts.likelihood_weights, hmc_settings,
    )


def _build_jnf_shared(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> JNFVAE:
    return _build_jnf(config, modalities, parts, shared=True)


def _objective(config: ModelConfig, projector: Literal["dcca", "contrastive"] | None = None) -> JNFObjective:
    extra = {}
    if projector is not None:
        extra["projector_epochs"] = int(config.option("projector_epochs"))
    if projector == "contrastive":
        extra["temperature"] = float(config.option("temperature"))
    return JNFObjective(
        beta=config.beta,
        stage2_epochs=int(config.option("stage2_epochs")),
        stage2_samples=int(config.option("stage2_samples")),
        projector=projector,
        **extra,
    )


_OPTIONS: dict = {
    "flow_blocks": 2,  # App. E: MAF with two MADE blocks
    "flow_hidden": 128,  # width of each MADE's two hidden layers
    "stage2_epochs": 0,  # 0: as --epochs
    "stage2_samples": 1,  # draws of q(z | X) per row in Eq. 8
    "hmc_steps": 100,  # App. F: "100 steps per sampling"
    "hmc_leapfrog": 10,  # reference code
    "hmc_step_size": 0.01,  # reference code
    "hmc_adapt_steps": 0,  # step-size adaptation before sampling (0: none)
    "hmc_prior_power": "paper",  # "paper" (Eq. 12) or "once" (Eq. F.3, reference code)
    "mean_samples": 64,  # draws per unimodal posterior for .mean and log Z of Eq. 12
}
_SHARED_OPTIONS: dict = {**_OPTIONS, "projection_dim": 10, "projector_epochs": 0}  # App. E.1: dimension 10

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "jnf", "JNF (joint VAE, then flow posteriors; subsets: Eq. 12 by HMC)",
        "Senellart et al. 2024 (JNF); Eq. 3, 8, 10, 12", "poe",
        _objective,
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf,
        swappable=False,
        complete_rows_only=True,
        options=dict(_OPTIONS),
    ),
    Recipe(
        "jnf-dcca", "JNF-Shared (DCCA projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.1", "poe",
        lambda c: _objective(c, "dcca"),
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options=dict(_SHARED_OPTIONS),
    ),
    Recipe(
        "jnf-cl", "JNF-Shared (contrastive projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.2", "poe",
        lambda c: _objective(c, "contrastive"),
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options={**_SHARED_OPTIONS, "temperature": 0.1},
    ),
)
