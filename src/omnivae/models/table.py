"""The text of ``omnivae models``: the registered methods and their options."""

from __future__ import annotations

from collections.abc import Sequence

from omnivae.aggregators import AGGREGATORS
from omnivae.models.registry import MODELS, recipe_options

__all__ = ["model_table", "options_table"]


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def model_table() -> str:
    """A plain-text table of the registered models for ``omnivae models``."""
    rows = [("name", "method", "aggregator", "reference")]
    rows += [(r.name, r.title, r.aggregator, r.reference) for r in MODELS.values()]
    lines = _columns(rows)
    lines.append("")
    fixed = [r.name for r in MODELS.values() if not r.swappable]
    lines.append(
        f"aggregators (a model takes --aggregator NAME{', except ' + ', '.join(fixed) if fixed else ''}): "
        f"{', '.join(AGGREGATORS)}"
    )
    for recipe in MODELS.values():
        if recipe.options:
            listed = ", ".join(f"{k}={v}" for k, v in recipe.options.items())
            lines.append(f"{recipe.name} options (--set KEY=VALUE): {listed}")
    return "\n".join(lines)


def options_table(name: str) -> str:
    """The options of method ``name``, one per line: name, type, default and help."""
    options = recipe_options(name)
    if not options:
        return f"{name} has no options"
    rows = [("option", "type", "default", "help")]
    rows += [(o.name, o.type, str(o.default), o.help) for o in options]
    return "\n".join(_columns(rows))
