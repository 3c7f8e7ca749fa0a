"""Multimodal VAEs as compositions, and the registry of named methods.

A model is :class:`MultimodalVAE`: one encoder and one decoder per modality, an
aggregator, a prior and likelihood weights, with one inference hook
(:meth:`MultimodalVAE.posterior`). A named method is a :class:`Recipe` (which aggregator,
prior, objective and typed options; for a method with more networks, how to build it);
method families live in :mod:`omnivae.methods` and :data:`MODELS` lists them all. Any
swappable recipe takes another aggregator by name, so aggregation is swapped, not
re-implemented.

Layout (imports point one way, down this list):

- :mod:`omnivae.models.base`, :mod:`~omnivae.models.options`, :mod:`~omnivae.models.recipe`:
  the floor that method families import;
- :mod:`omnivae.methods`: one module or package per method family, exporting ``RECIPES``;
- :mod:`omnivae.models.registry` (:data:`MODELS`, :func:`build_model`),
  :mod:`~omnivae.models.config` (:class:`ModelConfig`) and :mod:`~omnivae.models.table`:
  they import every family.

The names of the last group are loaded on first use (PEP 562), so that importing a
method family first (which imports this package's floor) does not import the registry
that imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnivae.aggregators import PriorDividedProduct
from omnivae.distributions import RowwiseChoice
from omnivae.models.base import CPU_DECODE_CHUNK_ELEMENTS, MultimodalVAE
from omnivae.models.options import MethodOptions, NoOptions, OptionInfo, option
from omnivae.models.recipe import ModelParts, Recipe, likelihood_rescaling

if TYPE_CHECKING:
    from omnivae.methods.jmvae import JointEncoderVAE
    from omnivae.models.config import ModelConfig
    from omnivae.models.registry import (
        MODELS,
        build_model,
        check_networks,
        parse_option,
        recipe_options,
        register,
    )
    from omnivae.models.table import model_table, options_table

__all__ = [
    "CPU_DECODE_CHUNK_ELEMENTS",
    "MultimodalVAE",
    "JointEncoderVAE",
    "PriorDividedProduct",
    "RowwiseChoice",
    "ModelConfig",
    "ModelParts",
    "Recipe",
    "MethodOptions",
    "NoOptions",
    "OptionInfo",
    "option",
    "MODELS",
    "build_model",
    "check_networks",
    "likelihood_rescaling",
    "model_table",
    "options_table",
    "recipe_options",
    "parse_option",
    "register",
]

_LAZY = {
    "ModelConfig": "omnivae.models.config",
    "MODELS": "omnivae.models.registry",
    "build_model": "omnivae.models.registry",
    "check_networks": "omnivae.models.registry",
    "recipe_options": "omnivae.models.registry",
    "parse_option": "omnivae.models.registry",
    "register": "omnivae.models.registry",
    "model_table": "omnivae.models.table",
    "options_table": "omnivae.models.table",
    "JointEncoderVAE": "omnivae.methods.jmvae",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
