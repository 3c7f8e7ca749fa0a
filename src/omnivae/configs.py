"""Type checks for configurations that arrive as JSON (``--config`` files, a run's ``config.json``).

JSON can hold a string where a number belongs; these checks turn that into one clear
:class:`~omnivae.errors.UserError` instead of a ``TypeError`` deep inside a build.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from numbers import Integral, Real
from typing import Any

from omnivae.errors import UserError

__all__ = ["type_problem", "check_field_types"]


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def type_problem(value: object, default: object) -> str | None:
    """What ``value`` should be when it does not have the type of ``default``; None if it does.

    A default of ``None`` stands for an optional name (a string or null).
    """
    if default is None:
        ok, wanted = value is None or isinstance(value, str), "a name or null"
    elif isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, wanted = _is_int(value), "an integer"
    elif isinstance(default, float):
        ok, wanted = isinstance(value, Real) and not isinstance(value, bool), "a number"
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
        wanted = "a list of integers"
    elif isinstance(default, str):
        ok, wanted = isinstance(value, str), "a string"
    else:
        ok, wanted = isinstance(value, type(default)), f"of type {type(default).__name__}"
    return None if ok else wanted


def check_field_types(config: object) -> None:
    """Raise :class:`UserError` for a dataclass field whose value has another type than its default."""
    for f in fields(config):  # type: ignore[arg-type]  # a dataclass instance, by contract
        value = getattr(config, f.name)
        factory: Any = f.default_factory
        default = factory() if f.default is MISSING else f.default
        wanted = type_problem(value, default)
        if wanted is not None:
            raise UserError(f"{f.name} must be {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
            raise UserError(f"{f.name} must be a finite number, got {value!r}")
