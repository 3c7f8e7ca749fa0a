"""The registry of named methods and the factory that builds them.

Every method family under :mod:`omnivae.methods` exports ``RECIPES``; this module imports
each family plainly and lists their recipes in :data:`MODELS`, in the order
``omnivae models`` shows them. The families import only the floor of this package
(:mod:`omnivae.models.base`, :mod:`~omnivae.models.recipe`, :mod:`~omnivae.models.options`),
never this module, so the imports point one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import nn

from omnivae.errors import UserError
from omnivae.methods import (
    barycentric,
    cmvae,
    crmvae,
    cvae,
    dmvae,
    jmvae,
    jnf,
    mhvae,
    mmvaeplus,
    mmvamp,
    mvtcae,
    nexus,
    telbo,
)
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import OptionInfo, describe_options, parse_option_value
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.objectives import Objective

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["MODELS", "build_model", "check_networks", "recipe_options", "parse_option"]

MODELS: dict[str, Recipe] = {
    recipe.name: recipe
    for family in (barycentric, jmvae, mvtcae, jnf, mmvamp, mmvaeplus, nexus, crmvae, telbo, dmvae, cmvae, mhvae, cvae)
    for recipe in family.RECIPES
}
"""Every registered recipe by name."""


def register(recipe: Recipe) -> Recipe:
    """Add a recipe of your own (a new method) under ``recipe.name``; returns it.

    It is then built by :func:`build_model`, trained by :func:`omnivae.train.train` and
    listed by ``omnivae models`` like the built-in ones (docs/architecture.md).

    Raises:
        UserError: if the name is taken.
    """
    if recipe.name in MODELS:
        raise UserError(f"a method named {recipe.name!r} is already registered", parameter="name")
    MODELS[recipe.name] = recipe
    return recipe


def _recipe(name: str) -> Recipe:
    if name not in MODELS:
        from omnivae.errors import unknown_name

        raise unknown_name("model", name, list(MODELS))
    return MODELS[name]


def recipe_options(name: str) -> tuple[OptionInfo, ...]:
    """The options of method ``name``: name, type, default and help of each, in order."""
    return describe_options(_recipe(name).options_type)


def parse_option(name: str, key: str, text: str) -> object:
    """The text of ``--set KEY=VALUE`` for method ``name``, parsed as option ``key``'s declared type."""
    return parse_option_value(_recipe(name).options_type, key, text, owner=name)


def check_networks(
    modalities: Sequence[ModalitySpec],
    encoders: Mapping[str, nn.Module] | None = None,
    decoders: Mapping[str, nn.Module] | None = None,
) -> dict[str, dict[str, str]]:
    """Check networks of your own against the modalities; returns what ``config.json`` records.

    Returns:
        ``{"encoders": {name: "module.Class"}, "decoders": {...}}`` for the given networks.

    Raises:
        UserError: for a name that is not a modality or a value that is not an ``nn.Module``.
    """
    names = [m.name for m in modalities]
    described: dict[str, dict[str, str]] = {}
    for role, networks in (("encoders", encoders), ("decoders", decoders)):
        described[role] = {}
        for name, network in (networks or {}).items():
            if name not in names:
                raise UserError(f"{role}[{name!r}]: not a modality; the modalities are {', '.join(names)}", parameter=role)
            if not isinstance(network, nn.Module):
                raise UserError(f"{role}[{name!r}] must be a torch.nn.Module, got {type(network).__name__}", parameter=role)
            described[role][name] = f"{type(network).__module__}.{type(network).__qualname__}"
    return described


def build_model(
    config: ModelConfig,
    modalities: Sequence[ModalitySpec],
    encoders: Mapping[str, nn.Module] | None = None,
    decoders: Mapping[str, nn.Module] | None = None,
) -> tuple[MultimodalVAE, Objective]:
    """The model and objective of a recipe, for a dataset's modalities.

    Args:
        config: the recipe and its settings.
        modalities: the dataset's modalities.
        encoders: your own encoders by modality name, used instead of the built ones; each
            maps ``x [B, *shape]`` to ``(loc [B, D], scale [B, D], factor)`` as
            :class:`~omnivae.nn.heads.GaussianEncoder` does (``factor`` ``None`` for
            diagonal covariances).
        decoders: your own decoders by modality name; each maps ``z [N, D]`` to a
            distribution over ``x`` as :func:`~omnivae.nn.factory.build_decoder`'s do.
    """
    config.validate()
    check_networks(modalities, encoders, decoders)
    recipe = MODELS[config.model]
    parts = ModelParts(config, modalities, recipe, encoders, decoders)
    model = recipe.build(config, modalities, parts) if recipe.build is not None else parts.plain_model()
    used = {id(module) for module in model.modules()}
    ignored = [f"{role}[{name!r}]" for role, own in (("encoders", parts.own_encoders), ("decoders", parts.own_decoders))
               for name, network in own.items() if id(network) not in used]
    if ignored:  # methods with networks of another shape (MMVAE+, Nexus) build their own
        raise UserError(f"{config.model} builds its own networks and cannot use {', '.join(ignored)}")
    return model, recipe.objective(config)
