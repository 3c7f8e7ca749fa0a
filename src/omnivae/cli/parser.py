"""The ``omnivae`` argument parser: one line per usage error, and the option types shared by
the commands."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

from omnivae.errors import UserError

__all__ = ["Parser", "finite_float", "rows_or_all"]


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2.

    Abbreviated flags are refused, so scripts do not change meaning when a new flag
    shares a prefix with an old one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def finite_float(text: str) -> float:
    """argparse type of every float option: a finite number (``nan``/``inf`` would pass
    ``float`` and every range check written as a comparison).

    >>> finite_float("1e-3")
    0.001
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def rows_or_all(text: str) -> int | str:
    """argparse type of a row count: a whole number or ``all``.

    >>> rows_or_all("100"), rows_or_all("ALL")
    (100, 'all')
    """
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of rows or 'all', got {text!r}") from None
