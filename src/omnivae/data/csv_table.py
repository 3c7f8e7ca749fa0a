"""One CSV file of a ``csv:DIR`` folder as a table of numbers, and the folder's ``schema.json``.

The layout is described in :mod:`omnivae.data.tables`; :mod:`omnivae.data.csv_folder`
assembles the tables of a folder into a dataset.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnivae.data.base import (
    ModalityKind,
    ModalitySpec,
)
from omnivae.errors import DataError

ID_COLUMN = "id"
LABELS_FILE = "labels.csv"
SPLIT_FILE = "split.csv"
SCHEMA_FILE = "schema.json"
#: The masks ``omnivae impute`` writes beside the filled files: an ``id`` column when the
#: modality files have ids, and one 0/1 column per modality (1 = observed).
OBSERVED_FILE = "observed.csv"

_KINDS: tuple[ModalityKind, ...] = ("image", "vector", "binary", "categorical")
_MISSING_TEXT = ("", "NA", "na", "N/A", "n/a")
_CSV_LAYOUT = (
    "one <modality>.csv per modality with a header row (optional id column), optional "
    f"{LABELS_FILE}, {SPLIT_FILE} and {SCHEMA_FILE}"
)


# -- CSV reading ---------------------------------------------------------------------------



@dataclass
class _Table:
    """One modality file as read: feature columns, per-row ids and values."""

    path: Path
    columns: list[str]
    ids: list[str] | None  # id text per row; None without an id column
    lines: list[int]  # the file line of each row, for error messages
    values: np.ndarray  # float64 [rows, k]; NaN where empty
    empty: np.ndarray  # bool [rows]: every feature cell empty
    text: list[list[str]] | None  # the feature cells as written, when kept



def _csv_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, data rows and their line numbers of one CSV file (trailing blank lines
    dropped)."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            try:
                header = next(reader, None)
                for row in reader:
                    rows.append(row)
                    lines.append(reader.line_num)
            except csv.Error as error:
                raise DataError(
                    f"{path} line {reader.line_num}: not valid CSV ({error}); write comma-"
                    "separated values with a header row"
                ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as a UTF-8 CSV file") from None
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror or error})") from None
    if header is None or not any(cell.strip() for cell in header):
        raise DataError(f"{path} is empty; it needs a header row naming the columns")
    while rows and not rows[-1]:
        rows.pop()
        lines.pop()
    return [cell.strip() for cell in header], rows, lines


def _cell_value(cell: str) -> float:
    """A cell as a number; NaN for an empty (or ``NA``) cell; ValueError otherwise."""
    try:
        return float(cell)
    except ValueError:
        if cell.strip() in _MISSING_TEXT:
            return math.nan
        raise


def _parse_rows(
    rows: list[list[str]], path: Path, lines: list[int], columns: list[str]
) -> np.ndarray:
    """Parse rows of number strings (equal lengths) to float64 ``[rows, k]``, NaN for
    empty cells."""
    k = len(columns)
    # Python's float() is the fast path (numpy's string casts are several times slower);
    # rows with empty cells or errors take the slower per-cell path.
    flat = itertools.chain.from_iterable(rows)
    try:
        values = np.fromiter(map(float, flat), dtype=np.float64, count=len(rows) * k)
    except ValueError:
        try:
            flat = itertools.chain.from_iterable(rows)
            values = np.fromiter(map(_cell_value, flat), dtype=np.float64, count=len(rows) * k)
        except ValueError:
            for row, cells in enumerate(rows):
                for col, cell in enumerate(cells):
                    try:
                        _cell_value(cell)
                    except ValueError:
                        raise DataError(
                            f"{path} line {lines[row]}, column {columns[col]!r}: "
                            f"{cell.strip()!r} is not a number; write numbers only (empty cells "
                            "only for a missing row)"
                        ) from None
            raise  # pragma: no cover
    values = values.reshape(len(rows), k)
    bad = np.isinf(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path} line {lines[row]}, column {columns[col]!r}: {rows[row][col].strip()!r} is "
            "not a finite number; use finite numbers (leave the cell empty only to mark the "
            "whole row missing)"
        )
    return values


def _read_table(
    path: Path,
    parsed: tuple[list[str], list[list[str]], list[int]],
    with_ids: bool,
    keep_text: bool,
) -> _Table:
    """Parse one modality file's rows (from :func:`_csv_rows`) into numbers."""
    header, rows, lines = parsed
    width = len(header)
    id_col = header.index(ID_COLUMN) if with_ids else -1
    columns = [c for i, c in enumerate(header) if i != id_col]
    if not columns:
        raise DataError(
            f"{path} has no feature columns; add one column per value next to the "
            f"{ID_COLUMN!r} column"
        )
    if with_ids:
        kept = [(r, n) for r, n in zip(rows, lines, strict=True) if r]  # blank lines name no sample
        rows, lines = [r for r, _ in kept], [n for _, n in kept]
    for row, line in zip(rows, lines, strict=True):
        if row and len(row) != width:
            raise DataError(
                f"{path} line {line} has {len(row)} cells but the header has {width} "
                "columns; give every row one cell per column"
            )
    ids = None
    if with_ids:
        ids = [row[id_col].strip() for row in rows]
        for i, value in enumerate(ids):
            if not value:
                raise DataError(
                    f"{path} line {lines[i]} has an empty {ID_COLUMN!r}; give every row an id"
                )
        for row in rows:
            del row[id_col]  # in place: the rows are ours, and copies cost memory
        features = rows
    else:
        features = [row if row else [""] * width for row in rows]
    values = _parse_rows(features, path, lines, columns)
    nan = np.isnan(values)
    empty = nan.all(axis=1)
    partial = nan.any(axis=1) & ~empty
    if partial.any():
        bad = int(np.flatnonzero(partial)[0])
        names = [columns[c] for c in np.flatnonzero(nan[bad])[:3]]
        raise DataError(
            f"{path} line {lines[bad]} is partly empty (column {', '.join(map(repr, names))}"
            f"{' ...' if nan[bad].sum() > 3 else ''}); fill it or empty the whole row to mark "
            "the modality missing"
        )
    return _Table(
        path, columns, ids, lines, values, empty, features if keep_text else None
    )


def _read_schema(
    folder: Path, modalities: list[str], defaults: Mapping[str, ModalitySpec]
) -> dict[str, tuple[tuple[int, ...], ModalityKind, bool]]:
    """``{modality: (shape, kind, declared)}`` from ``schema.json`` (declared) or defaults."""
    path = folder / SCHEMA_FILE
    example = '{"img": {"shape": [1, 16, 15], "kind": "image"}}'
    schema: dict[str, tuple[tuple[int, ...], ModalityKind, bool]] = {
        name: (tuple(spec.shape), spec.kind, False) for name, spec in defaults.items()
    }
    if not path.is_file():
        return schema
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); write e.g. {example}") from None
    if not isinstance(declared, dict):
        raise DataError(f"{path} must hold a JSON object of modality entries, e.g. {example}")
    for name, entry in declared.items():
        if name not in modalities:
            raise DataError(
                f"{path}: {name!r} has no {name}.csv; the modalities are "
                f"{', '.join(map(repr, modalities))}"
            )
        if not isinstance(entry, dict) or set(entry) - {"shape", "kind"} or "shape" not in entry:
            raise DataError(
                f"{path}: entry {name!r} must be an object with 'shape' and optional 'kind', "
                f"e.g. {example}"
            )
        shape = entry["shape"]
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
        ):
            raise DataError(
                f"{path}: shape of {name!r} must be a list of integers >= 1, got "
                f"{json.dumps(shape)}"
            )
        kind = entry.get("kind", "vector")
        if kind not in _KINDS:
            raise DataError(
                f"{path}: kind of {name!r} is {json.dumps(kind)}; choose one of "
                f"{', '.join(_KINDS)}"
            )
        schema[name] = (tuple(shape), kind, True)
    return schema


