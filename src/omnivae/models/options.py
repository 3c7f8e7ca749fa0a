"""Typed method options: one frozen dataclass per recipe, validated once when it is built.

A recipe declares its method-specific settings (``--set KEY=VALUE`` on the command line,
``ModelConfig(options={...})`` in Python) as a frozen dataclass deriving from
:class:`MethodOptions`, each field with a type, a default and a one-line help made with
:func:`option`. Building the dataclass checks every value against its declared type and
then the method's own :meth:`MethodOptions.check`; errors name the option as a
parameter (``UserError.parameter``), so the command line can name its flag.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ToyOptions(MethodOptions):
    ...     width: int = option(8, "hidden width")
    ...     rate: float = option(0.5, "a rate in [0, 1]")
    >>> [(o.name, o.type, o.default) for o in describe_options(ToyOptions)]
    [('width', 'int', 8), ('rate', 'float', 0.5)]
    >>> build_options(ToyOptions, {"rate": 1}).rate  # an integer where a float belongs
    1.0
    >>> parse_option_value(ToyOptions, "width", "16")
    16
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal, TypeVar, get_args, get_origin

from omnivae.errors import UserError

__all__ = [
    "MethodOptions",
    "NoOptions",
    "OptionInfo",
    "option",
    "describe_options",
    "build_options",
    "parse_option_value",
]

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


def option(default: Any, help: str) -> Any:
    """A method option's field: its default and a one-line help (shown by ``omnivae models``)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MethodOptions:
    """Base class of a recipe's options; subclasses are frozen dataclasses of :func:`option` fields.

    Override :meth:`check` for constraints beyond the declared types (ranges, relations).
    """

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`UserError` (with ``parameter=``) for a value the method cannot use."""


@dataclass(frozen=True)
class NoOptions(MethodOptions):
    """The options of a recipe that has none."""


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``omnivae models`` lists it: name, type, default and help."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()


def _hints(kind: type[MethodOptions]) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _type_name(hint: Any) -> tuple[str, tuple[str, ...]]:
    if get_origin(hint) is Literal:
        choices = tuple(str(c) for c in get_args(hint))
        return "|".join(choices), choices
    return getattr(hint, "__name__", str(hint)), ()


def describe_options(kind: type[MethodOptions]) -> tuple[OptionInfo, ...]:
    """Every option of ``kind`` in declaration order."""
    hints = _hints(kind)
    out = []
    for f in dataclasses.fields(kind):
        name, choices = _type_name(hints[f.name])
        out.append(OptionInfo(f.name, name, f.default, str(f.metadata.get("help", "")), choices))
    return tuple(out)


def _coerce(hint: Any, name: str, value: object, owner: str) -> object:
    """``value`` as the declared type ``hint``, or a :class:`UserError` saying what it should be."""
    where = f"option {name} of {owner}" if owner else name
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise UserError(f"{where} must be one of {listed}, got {value!r}", parameter=name)
        return value
    if hint is bool:
        ok, wanted = isinstance(value, bool), "true or false"
    elif hint is int:
        ok, wanted = isinstance(value, Integral) and not isinstance(value, bool), "an integer"
    elif hint is float:
        ok, wanted = isinstance(value, Real) and not isinstance(value, bool), "a number"
        if ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise UserError(f"{where} must be a finite number, got {value!r}", parameter=name)
    elif hint is str:
        ok, wanted = isinstance(value, str), "a string"
    else:  # pragma: no cover - options are declared with the types above
        ok, wanted = isinstance(value, hint), f"of type {hint}"
    if not ok:
        raise UserError(f"{where} must be {wanted}, got {value!r}", parameter=name)
    if hint is float:
        return float(value)  # type: ignore[arg-type]
    if hint is int:
        return int(value)  # type: ignore[call-overload]
    return value


def build_options(kind: type[OptionsT], values: Mapping[str, object], owner: str = "") -> OptionsT:
    """``kind`` from user values (JSON, ``--set``): unknown names, wrong types and the
    method's own constraints are one :class:`UserError` each.

    Args:
        kind: The recipe's options dataclass.
        values: ``name -> value``; missing names take their defaults.
        owner: The method's name, for messages.
    """
    hints = _hints(kind)
    known = [f.name for f in dataclasses.fields(kind)]
    typed: dict[str, object] = {}
    for key, value in values.items():
        if key not in hints:
            listed = ", ".join(sorted(known)) or "none"
            raise UserError(f"{owner or kind.__name__} has no option {key!r}; its options are: {listed}")
        typed[key] = _coerce(hints[key], key, value, owner)
    return kind(**typed)


def parse_option_value(kind: type[MethodOptions], key: str, text: str, owner: str = "the method") -> object:
    """The text of ``--set KEY=VALUE`` as option ``key``'s declared type (not yet range-checked).

    ``owner`` names the method in messages.
    """
    hints = _hints(kind)
    if key not in hints:
        listed = ", ".join(sorted(hints)) or "none"
        raise UserError(f"{owner} has no option {key!r}; its options are: {listed}")
    hint = hints[key]
    text = text.strip()
    if hint is bool:
        if text.lower() not in ("true", "false"):
            raise UserError(f"{owner} option {key} must be true or false, got {text!r}", parameter=key)
        return text.lower() == "true"
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            wanted = "an integer" if hint is int else "a number"
            raise UserError(f"{owner} option {key} must be {wanted}, got {text!r}", parameter=key) from None
    return text
