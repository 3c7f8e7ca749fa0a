"""Recipe types: what a named method composes (:class:`Recipe`) and the parts it is built from.

A method registers one :class:`Recipe` per name: its paper, its aggregator, its objective,
its typed options (:mod:`omnivae.models.options`) and, for a method with networks of its
own, a ``build`` function. ``build`` receives :class:`ModelParts`, which makes each shared
part (encoders, decoders, aggregator, prior) only when asked for, so a method that needs
networks of another shape builds those alone and nothing is built to be discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from omnivae.aggregators import (
    WEIGHTED_AGGREGATORS,
    Aggregator,
    ProductOfExperts,
    WassersteinBarycenter,
    build_aggregator,
    build_weights,
)
from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, NoOptions, describe_options
from omnivae.nn import build_decoder, build_encoder
from omnivae.objectives import Objective
from omnivae.priors import PRIORS

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["Recipe", "ModelParts", "likelihood_rescaling"]

Covariance = Literal["diag", "lowrank"]


@dataclass(frozen=True)
class Recipe:
    """A named method: which aggregator, prior and objective it composes, and its paper."""

    name: str
    title: str
    reference: str
    aggregator: str
    """The registry name of the default aggregator (or, for a method that does not
    aggregate posteriors, what stands in for it, shown by ``omnivae models``)."""
    objective: Callable[[ModelConfig], Objective]
    warmup_epochs: float = 0.0
    """KL warm-up the method's paper trains with; the trainer uses it unless told otherwise."""
    aggregator_factory: Callable[[], Aggregator] | None = None
    """Builds the method's own aggregator when its settings differ from the registry's
    defaults (used when ``aggregator`` is not overridden or names the recipe's own); None
    builds ``aggregator`` by name."""
    build: Callable[[ModelConfig, Sequence[ModalitySpec], ModelParts], MultimodalVAE] | None = None
    """Assembles the model from the parts it asks for (a method with other networks);
    None gives a plain :class:`MultimodalVAE` of the shared parts."""
    options_type: type[MethodOptions] = NoOptions
    """The method's typed options (``--set KEY=VALUE``), a frozen dataclass."""
    complete_rows_only: bool = False
    """Whether the method learns only from rows where every modality is observed (JNF:
    its joint encoder needs them all); rows with a missing modality then add nothing."""
    swappable: bool = True
    """Whether another aggregator can replace the method's aggregation (not for Nexus,
    whose aggregation is a mean of learnt messages, not of posteriors)."""
    generates: Literal["all", "target"] = "all"
    """Which modalities the model can decode: ``"all"`` from a latent alone (z ~ p(z) for
    ``generate``, any subset's posterior for cross generation), or only one ``"target"``
    modality, given condition modalities (the CVAE: ``model.generated`` names it; ``decode``
    and ``generate`` refuse and evaluation computes only what such a model defines)."""

    @property
    def options(self) -> dict[str, Any]:
        """``name -> default`` of the method's options."""
        return {info.name: info.default for info in describe_options(self.options_type)}


def likelihood_rescaling(modalities: Sequence[ModalitySpec]) -> dict[str, float]:
    """MoPoE's rescaling: weight each modality by (largest dimension) / (its dimension)."""
    sizes = {m.name: float(torch.Size(m.shape).numel()) for m in modalities}
    largest = max(sizes.values())
    return {name: largest / size for name, size in sizes.items()}


class ModelParts:
    """The shared parts a recipe's ``build`` may ask for, each made only when asked.

    Args:
        config: The model's configuration.
        modalities: The dataset's modalities.
        recipe: The recipe being built (its default aggregator).
        encoders, decoders: The user's own networks by modality name, used instead of
            built ones (:func:`~omnivae.models.build_model`).
    """

    def __init__(
        self,
        config: ModelConfig,
        modalities: Sequence[ModalitySpec],
        recipe: Recipe,
        encoders: Mapping[str, nn.Module] | None = None,
        decoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.config = config
        self.modalities = tuple(modalities)
        self.recipe = recipe
        self.own_encoders = dict(encoders or {})
        self.own_decoders = dict(decoders or {})

    def require(self, setting: str, value: str, why: str) -> None:
        """Refuse a configuration whose ``setting`` is not ``value``: ``why`` says what of the
        method needs it (``"joint encoder is a diagonal Gaussian"``)."""
        if getattr(self.config, setting) != value:
            raise UserError(f"{self.config.model}'s {why}; use {setting}={value!r}", parameter=setting)

    @property
    def likelihood_weights(self) -> dict[str, float] | None:
        """MoPoE's rescaling when ``rescale_likelihoods``, else None (all weights 1)."""
        return likelihood_rescaling(self.modalities) if self.config.rescale_likelihoods else None

    @property
    def covariance_rank(self) -> int:
        """The encoders' low-rank factor size (0 for diagonal covariances)."""
        return self.config.rank if self.config.covariance == "lowrank" else 0

    def encoders(self) -> nn.ModuleDict:
        """One Gaussian encoder per modality onto ``latent_dim`` (the user's where given)."""
        c = self.config
        return nn.ModuleDict(
            {
                m.name: self.own_encoders[m.name] if m.name in self.own_encoders else build_encoder(
                    m, c.latent_dim, backbone=c.backbone, hidden=c.hidden, covariance=cast(Covariance, c.covariance), rank=c.rank,
                )
                for m in self.modalities
            }
        )

    def decoders(self) -> nn.ModuleDict:
        """One decoder per modality from ``latent_dim`` (the user's where given)."""
        c = self.config
        return nn.ModuleDict(
            {
                m.name: self.own_decoders[m.name] if m.name in self.own_decoders else build_decoder(
                    m, c.latent_dim, backbone=c.backbone, hidden=c.hidden, likelihood=c.likelihood,
                )
                for m in self.modalities
            }
        )

    def aggregator(self) -> Aggregator:
        """The configured aggregator: the recipe's own unless another one is named."""
        name = self.config.aggregator or self.recipe.aggregator
        if name == self.recipe.aggregator and self.recipe.aggregator_factory is not None:
            aggregator = self.recipe.aggregator_factory()
        else:
            aggregator = build_aggregator(name)
        weights = build_weights(self.config.aggregator_weights, len(self.modalities), self.config.latent_dim)
        if weights is not None:
            if not isinstance(aggregator, (ProductOfExperts, WassersteinBarycenter)):
                raise UserError(f"aggregator_weights needs a weighted aggregator ({', '.join(WEIGHTED_AGGREGATORS)}); "
                                f"{self.config.model} aggregates with {name}", parameter="aggregator_weights")
            aggregator.weights = weights
        return aggregator

    def prior(self) -> nn.Module:
        """p(z) over ``latent_dim`` dimensions, by the configured name."""
        return PRIORS[self.config.prior](self.config.latent_dim)

    def plain_model(self) -> MultimodalVAE:
        """The shared parts as a :class:`MultimodalVAE` (the recipes without ``build``)."""
        encoders, decoders = self.encoders(), self.decoders()
        aggregator, prior = self.aggregator(), self.prior()
        return MultimodalVAE(
            self.modalities, encoders, decoders, aggregator, prior, self.likelihood_weights, self.covariance_rank
        )
