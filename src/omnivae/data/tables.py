"""User data as tables: a folder of CSV files (``csv:DIR``) or an HDF5 file (``hdf5:FILE``).

Both forms extend the ``npz:FILE`` conventions of :mod:`omnivae.data.arrays`: they are read
into the same dictionary of arrays and validated by its functions, so a dataset means the
same thing whatever file holds it.

``csv:DIR`` -- a folder with one ``<modality>.csv`` per modality (UTF-8, comma separated,
a header row naming the columns):

- Samples: if every modality file has a column named ``id``, the samples are the union of
  the ids over the files, sorted (numerically when every id is an integer, else as
  strings), and a modality is missing for the ids absent from its file. Without ``id``
  columns, rows align by order and every file needs the same number of data rows.
- Missing values: a row whose feature cells are all empty (or ``NaN``/``NA``) marks the
  modality missing for that sample; a partly empty row is an error. Without ids a blank
  line is such an empty row (blank lines at the end of a file are ignored); with ids blank
  lines are skipped.
- Each other column is one feature: per-sample shape ``(n_columns,)``, kind ``vector``
  (``float32``). ``schema.json`` may declare a modality's shape and kind instead, e.g.
  ``{"img": {"shape": [1, 16, 15], "kind": "image"}}``: the columns, in order, fill the
  shape in C order and their count must equal its product. ``image`` values are integers
  0..255 (kept as ``uint8``), ``binary`` values 0/1 (``bool``), ``categorical`` values a
  one-hot 0/1 code along the last axis of the shape (``float32``; all zeros = unknown).
- Optional ``labels.csv``: a ``label`` column (integers >= 0, or strings that become
  integers in sorted order of the distinct strings, kept as label names) and an ``id``
  column when the modality files have ids, else one row per sample in order.
- Optional ``split.csv``: a ``split`` column of ``train``/``test`` (or 0/1) and an ``id``
  column when the modality files have ids; otherwise a random 80/20 split seeded by the
  run's seed, stratified by label, as for ``npz:FILE``.
- Optional ``observed.csv`` (written by ``omnivae impute``): one 0/1 column per modality
  (and ``id``), the CSV form of ``mask_<modality>``: a row marked 0 is missing whatever
  its cells hold.

``hdf5:FILE`` (``.h5``/``.hdf5``) -- the ``npz`` layout as HDF5 datasets: one numeric
dataset per modality (at the root, or every modality under a group ``modalities/``; the
dtype picks the kind: ``uint8`` image, ``bool`` binary, other numbers vector), optional
``mask_<modality>``, ``labels`` (integers or strings), ``label_names`` and ``split``.
The file is read into memory. Reading it needs the optional ``h5py`` package.

Values of unobserved rows are replaced by 0. Every problem raises one :class:`DataError`
line naming the file (and for CSV the line and column) and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnivae.data.arrays import (
    _MISSING_LABELS,
    MASK_PREFIX,
    RESERVED_KEYS,
    check_load_size,
    dataset_from_arrays,
    split_dataset,
)
from omnivae.data.base import (
    DatasetSplits,
    ModalityKind,
    ModalitySpec,
    MultimodalDataset,
    check_modality_names,
)
from omnivae.errors import DataError
from omnivae.fileio import atomic_write

__all__ = [
    "ID_COLUMN",
    "LABELS_FILE",
    "SPLIT_FILE",
    "SCHEMA_FILE",
    "OBSERVED_FILE",
    "HDF5_GROUP",
    "HDF5_SUFFIXES",
    "CsvFolder",
    "read_csv_folder",
    "load_csv_array",
    "load_csv",
    "write_filled_csv",
    "check_csv_output",
    "read_hdf5",
    "hdf5_group",
    "load_hdf5_array",
    "load_hdf5",
    "write_hdf5",
    "PREFIXES",
]

ID_COLUMN = "id"
LABELS_FILE = "labels.csv"
SPLIT_FILE = "split.csv"
SCHEMA_FILE = "schema.json"
#: The masks ``omnivae impute`` writes beside the filled files: an ``id`` column when the
#: modality files have ids, and one 0/1 column per modality (1 = observed).
OBSERVED_FILE = "observed.csv"
HDF5_GROUP = "modalities"
HDF5_SUFFIXES = (".h5", ".hdf5")

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


@dataclass
class CsvFolder:
    """A ``csv:DIR`` folder as read (see the module docstring for the layout).

    Attributes:
        folder: the folder.
        arrays: the :mod:`omnivae.data.arrays` layout: per modality ``[N, *shape]`` in its
            storage dtype (uint8 image, bool binary, float32 vector and categorical) with
            zeros where unobserved, ``mask_<modality>`` ``[N]`` bool, and ``labels``
            ``[N]`` and ``split`` ``[N]`` (0 train, 1 test) when their files exist.
        specs: each modality's :class:`ModalitySpec`, in file-name order.
        columns: each modality's feature column names, in file order.
        ids: the id text of each of the ``N`` samples (sorted), or ``None`` without ids.
        text: with ``keep_text``, each modality's feature cells per sample as written
            (``None`` where unobserved), so rewriting keeps observed values exactly.
    """

    folder: Path
    arrays: dict[str, np.ndarray]
    specs: dict[str, ModalitySpec]
    columns: dict[str, list[str]]
    ids: list[str] | None
    text: dict[str, list[list[str] | None]] = field(default_factory=dict)

    def dataset(self) -> MultimodalDataset:
        """Every sample as one dataset, validated by :func:`dataset_from_arrays`."""
        dataset = dataset_from_arrays(self.arrays, name=self.folder.name, source=str(self.folder))
        # The arrays layout knows kinds only by dtype: restore declared categoricals.
        specs = tuple(self.specs[m.name] for m in dataset.modalities)
        return dataclasses.replace(dataset, modalities=specs)


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
        kept = [(r, n) for r, n in zip(rows, lines) if r]  # blank lines name no sample
        rows, lines = [r for r, _ in kept], [n for _, n in kept]
    for row, line in zip(rows, lines):
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
        row = int(np.flatnonzero(partial)[0])
        names = [columns[c] for c in np.flatnonzero(nan[row])[:3]]
        raise DataError(
            f"{path} line {lines[row]} is partly empty (column {', '.join(map(repr, names))}"
            f"{' ...' if nan[row].sum() > 3 else ''}); fill it or empty the whole row to mark "
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


def _id_keys(tables: Mapping[str, _Table]) -> tuple[list[object], dict[object, str], bool]:
    """The sorted union of ids: keys, the text first seen for each key, and whether the
    ids are integers."""
    every = [i for table in tables.values() for i in (table.ids or [])]
    try:
        numeric = [int(i) for i in every]
        integers = True
    except ValueError:
        integers = False
    keys_of: dict[object, str] = {}
    for text, key in zip(every, numeric if integers else every):
        keys_of.setdefault(key, text)
    return sorted(keys_of), keys_of, integers


def _side_file(
    folder: Path,
    filename: str,
    column: str,
    ids: list[str] | None,
    key_of: Callable[[str], object] | None,
    index: Mapping[object, int],
    n: int,
) -> tuple[list[str], list[int]] | None:
    """The ``column`` cells of ``labels.csv``/``split.csv`` in sample order, with lines."""
    path = folder / filename
    if not path.is_file():
        return None
    header, rows, lines = _csv_rows(path)
    need = [column] + ([ID_COLUMN] if ids is not None else [])
    absent = [c for c in need if c not in header]
    if absent:
        how = f"columns {ID_COLUMN!r} and {column!r}" if ids is not None else f"a column {column!r}"
        raise DataError(
            f"{path} has no {absent[0]!r} column; it needs {how} (header: "
            f"{', '.join(map(repr, header))})"
        )
    col = header.index(column)
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise DataError(
                f"{path} line {line} has {len(row)} cells but the header has {len(header)} "
                "columns; give every row one cell per column"
            )
    if ids is None:
        if len(rows) != n:
            raise DataError(
                f"{path} has {len(rows)} rows for {n} samples; give one row per sample, in the "
                "order of the modality files (or add id columns)"
            )
        return [row[col].strip() for row in rows], list(lines)
    id_col = header.index(ID_COLUMN)
    cells: list[str | None] = [None] * n
    at: list[int] = [0] * n
    assert key_of is not None
    for row, line in zip(rows, lines):
        text = row[id_col].strip()
        try:
            key = key_of(text)
        except ValueError:
            key = None
        if key not in index:
            raise DataError(
                f"{path} line {line}: id {text!r} is in no modality file; remove the row or fix "
                "the id"
            )
        i = index[key]
        if cells[i] is not None:
            raise DataError(f"{path} line {line}: id {text!r} appears twice; give it one row")
        cells[i], at[i] = row[col].strip(), line
    if None in cells:
        missing = ids[cells.index(None)]
        raise DataError(f"{path} has no row for id {missing!r}; give every sample one row")
    return [c for c in cells if c is not None], at


def _labels_array(cells: list[str], lines: list[int], path: Path) -> np.ndarray:
    for text, line in zip(cells, lines):
        if text.strip().lower() in _MISSING_LABELS:
            shown = "an empty label" if not text.strip() else f"label {text!r}"
            raise DataError(
                f"{path} line {line} has {shown}, a missing label, not a class; give every "
                f"sample a label (or remove {LABELS_FILE})"
            )
    try:
        labels = np.array([int(text) for text in cells], dtype=np.int64)
    except ValueError:
        return np.array(cells, dtype=str)
    if (labels < 0).any():
        row = int(np.flatnonzero(labels < 0)[0])
        raise DataError(
            f"{path} line {lines[row]}: label {labels[row]} is negative; use 0, 1, ... or names"
        )
    return labels


def _observed_column(
    folder: Path,
    name: str,
    ids: list[str] | None,
    key_of: Callable[[str], object] | None,
    index: Mapping[object, int],
    n: int,
) -> np.ndarray:
    """Modality ``name``'s column of ``observed.csv`` as booleans in sample order."""
    path = folder / OBSERVED_FILE
    reserved = (
        f"; {OBSERVED_FILE} is reserved for the masks 'omnivae impute' writes (one 0/1 column per "
        "modality, 1 = observed): rename the file if it holds a modality"
    )
    try:
        found = _side_file(folder, OBSERVED_FILE, name, ids, key_of, index, n)
    except DataError as err:
        raise DataError(f"{err}{reserved}") from None
    assert found is not None
    codes = {"1": True, "true": True, "0": False, "false": False}
    column = np.zeros(n, dtype=bool)
    for i, (text, line) in enumerate(zip(*found)):
        if text.lower() not in codes:
            raise DataError(f"{path} line {line}, column {name!r}: {text!r} is not 0 or 1{reserved}")
        column[i] = codes[text.lower()]
    return column


def _split_array(cells: list[str], lines: list[int], path: Path) -> np.ndarray:
    codes = {"train": 0, "0": 0, "test": 1, "1": 1}
    split = np.zeros(len(cells), dtype=np.int64)
    for i, (text, line) in enumerate(zip(cells, lines)):
        if text.lower() not in codes:
            raise DataError(
                f"{path} line {line}: split {text!r} must be train or test (or 0 or 1)"
            )
        split[i] = codes[text.lower()]
    return split


def _storage(
    values: np.ndarray, kind: ModalityKind, table: _Table, rows: np.ndarray
) -> np.ndarray:
    """Convert parsed values (zeros where unobserved) to the kind's storage dtype, checking
    the values of observed rows (``rows`` maps storage rows to file rows)."""

    def fail(bad: np.ndarray, what: str) -> None:
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{table.path} line {table.lines[rows[row]]}, column {table.columns[col]!r}: "
            f"{values[row, col]:g} is not {what}"
        )

    if kind == "image":
        bad = (values != np.round(values)) | (values < 0) | (values > 255)
        if bad.any():
            fail(bad, "an image value; image modalities hold integers 0..255")
        return values.astype(np.uint8)
    if kind == "binary":
        bad = (values != 0) & (values != 1)
        if bad.any():
            fail(bad, "0 or 1, as binary modalities need")
        return values.astype(bool)
    if kind == "categorical":
        bad = (values != 0) & (values != 1)
        if bad.any():
            fail(bad, "0 or 1; categorical modalities hold one-hot codes")
    bad = np.abs(values) > np.finfo(np.float32).max
    if bad.any():
        fail(bad, "within the float32 range omnivae computes in (about +-3.4e38); rescale the column")
    return values.astype(np.float32)


def read_csv_folder(
    folder: str | os.PathLike[str],
    defaults: Mapping[str, ModalitySpec] | None = None,
    keep_text: bool = False,
) -> CsvFolder:
    """Read a ``csv:DIR`` folder into the arrays layout of :mod:`omnivae.data.arrays`.

    Args:
        folder: the folder (layout in the module docstring).
        defaults: shape and kind for modalities that ``schema.json`` does not declare,
            used when the file's column count equals the shape's size (``omnivae impute``
            passes the run's modalities, so inputs need no schema).
        keep_text: keep the feature cells as written (:attr:`CsvFolder.text`).

    Returns:
        The :class:`CsvFolder`; its ``arrays`` hold ``N`` samples per modality, shaped
        ``[N, *shape]``.

    Raises:
        DataError: one line naming the file, line and column, for any problem.
    """
    folder = Path(folder)
    if folder.is_file():
        raise DataError(
            f"{folder} is a file, not a folder; csv:DIR takes a folder holding one <modality>.csv "
            "per modality (use npz:FILE or hdf5:FILE for an .npz or HDF5 file)"
        )
    if not folder.is_dir():
        raise DataError(
            f"CSV folder {str(folder)!r} not found; pass an existing folder as csv:DIR holding "
            f"{_CSV_LAYOUT}"
        )
    reserved_files = (LABELS_FILE, SPLIT_FILE, OBSERVED_FILE)
    try:
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() == ".csv" and p.name.lower() not in reserved_files
        )
    except OSError as error:
        raise DataError(
            f"CSV folder {str(folder)!r} cannot be read ({error.strerror or error}); check its permissions"
        ) from None
    if not files:
        raise DataError(f"{folder} holds no modality CSV files; it needs {_CSV_LAYOUT}")
    names = [p.stem for p in files]
    for name, path in zip(names, files):
        if name in RESERVED_KEYS or name.startswith(MASK_PREFIX) or not name:
            raise DataError(
                f"{path}: {name!r} cannot name a modality (reserved: {', '.join(RESERVED_KEYS)},"
                f" {MASK_PREFIX}*); rename the file"
            )
    if len({n.lower() for n in names}) != len(names):
        raise DataError(f"{folder}: modality file names differ only in case; rename one")
    check_modality_names(names, str(folder))

    parsed = {name: _csv_rows(path) for name, path in zip(names, files)}
    with_id = [name for name in names if ID_COLUMN in parsed[name][0]]
    if with_id and len(with_id) != len(names):
        without = next(name for name in names if name not in with_id)
        raise DataError(
            f"{folder}: {with_id[0]}.csv has an {ID_COLUMN!r} column but {without}.csv has none; "
            f"give every modality file an {ID_COLUMN!r} column or none"
        )
    use_ids = bool(with_id)
    tables = {
        name: _read_table(path, parsed.pop(name), use_ids, keep_text)
        for name, path in zip(names, files)
    }

    index: dict[object, int]
    ids: list[str] | None
    key_of: Callable[[str], object] | None
    if use_ids:
        keys, text_of, integers = _id_keys(tables)
        key_of = int if integers else str
        index = {key: i for i, key in enumerate(keys)}
        ids = [text_of[key] for key in keys]
        n = len(keys)
    else:
        counts = {name: len(t.values) for name, t in tables.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name}.csv {c}" for name, c in counts.items())
            raise DataError(
                f"{folder}: the modality files have different numbers of rows ({listed}); "
                f"without {ID_COLUMN!r} columns rows align by order, so give every file one row "
                f"per sample (an empty row for a missing value) or add {ID_COLUMN!r} columns"
            )
        n, ids, key_of, index = next(iter(counts.values())), None, None, {}
    if n == 0:
        raise DataError(f"{folder}: the modality files have no data rows; add samples")

    schema = _read_schema(folder, names, defaults or {})
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    specs: dict[str, ModalitySpec] = {}
    text: dict[str, list[list[str] | None]] = {}
    for name, table in tables.items():
        k = len(table.columns)
        shape, kind, declared = schema.get(name, ((k,), "vector", False))
        if math.prod(shape) != k:
            if declared:
                raise DataError(
                    f"{table.path} has {k} feature columns but {SCHEMA_FILE} declares shape "
                    f"{list(shape)} = {math.prod(shape)} values; give one column per value"
                )
            shape, kind = (k,), "vector"
        if use_ids:
            assert table.ids is not None and key_of is not None
            rows_at = np.array([index[key_of(i)] for i in table.ids], dtype=np.int64)
            if len(np.unique(rows_at)) != len(rows_at):
                seen: set[int] = set()
                for i, at in enumerate(rows_at.tolist()):
                    if at in seen:
                        raise DataError(
                            f"{table.path} line {table.lines[i]}: id {table.ids[i]!r} appears "
                            "twice; give each sample one row"
                        )
                    seen.add(at)
        else:
            rows_at = np.arange(n)
        observed = np.zeros(n, dtype=bool)
        observed[rows_at] = ~table.empty
        values = np.zeros((n, k), dtype=np.float64)
        values[rows_at] = np.nan_to_num(table.values, nan=0.0)
        source_row = np.zeros(n, dtype=np.int64)
        source_row[rows_at] = np.arange(len(rows_at))
        stored = _storage(values, kind, table, source_row)
        if kind == "categorical":
            crowded = (stored.reshape(n, -1, shape[-1]).sum(axis=-1) > 1).any(axis=-1)
            if crowded.any():
                row = int(np.flatnonzero(crowded)[0])
                raise DataError(
                    f"{table.path} line {table.lines[source_row[row]]}: more than one 1 in a "
                    f"one-hot group of {shape[-1]} columns; a categorical value has at most one 1"
                )
        arrays[name] = stored.reshape(n, *shape)
        masks[name] = observed
        specs[name] = ModalitySpec(name, tuple(shape), kind)
        if keep_text:
            assert table.text is not None
            cells: list[list[str] | None] = [None] * n
            for i, at in enumerate(rows_at.tolist()):
                if not table.empty[i]:
                    cells[at] = table.text[i]
            text[name] = cells

    if (folder / OBSERVED_FILE).is_file():
        for name in names:
            masks[name] = masks[name] & _observed_column(folder, name, ids, key_of, index, n)
            if keep_text:
                text[name] = [cells if seen else None for cells, seen in zip(text[name], masks[name])]
    none = ~np.logical_or.reduce(list(masks.values()))
    if none.any():
        row = int(np.flatnonzero(none)[0])
        which = f"id {ids[row]!r}" if ids is not None else f"data row {row + 1}"
        raise DataError(
            f"{folder}: sample {which} is empty in every modality file; drop it or fill one "
            "modality"
        )
    for name in names:
        arrays[f"{MASK_PREFIX}{name}"] = masks[name]
    labels = _side_file(folder, LABELS_FILE, "label", ids, key_of, index, n)
    if labels is not None:
        arrays["labels"] = _labels_array(*labels, folder / LABELS_FILE)
    split = _side_file(folder, SPLIT_FILE, "split", ids, key_of, index, n)
    if split is not None:
        arrays["split"] = _split_array(*split, folder / SPLIT_FILE)
    columns = {name: t.columns for name, t in tables.items()}
    return CsvFolder(folder, arrays, specs, columns, ids, text)


def load_csv_array(folder: str | os.PathLike[str]) -> MultimodalDataset:
    """Every sample of a ``csv:DIR`` folder as one dataset, without splitting.

    Modalities are ``[N, *shape]`` tensors (module docstring); masks mark observed rows.

    Raises:
        DataError: for any problem with the files.
    """
    return read_csv_folder(folder).dataset()


def load_csv(
    folder: str | os.PathLike[str], test_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """A ``csv:DIR`` folder as train and test splits.

    ``split.csv`` decides if present; otherwise a random split with ``test_fraction`` of
    the samples in test, stratified by label, seeded by ``seed`` (as ``npz:FILE``).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.csv").write_text("x,y\\n" + "1,2\\n" * 10)
        >>> splits = load_csv(folder)
        >>> len(splits.train), len(splits.test), splits.modalities[0].shape
        (8, 2, (2,))
    """
    table = read_csv_folder(folder)
    dataset = table.dataset()
    return split_dataset(
        dataset, test_fraction, seed, table.arrays.get("split"), source=str(table.folder)
    )


# -- CSV writing ---------------------------------------------------------------------------


def _format_rows(values: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    """``[N, prod(shape)]`` cell strings for values in storage form (categorical: scores
    whose largest entry per group becomes the one 1)."""
    n = values.shape[0]
    if spec.kind == "categorical":
        groups = np.asarray(values, dtype=np.float32).reshape(n, -1, spec.shape[-1])
        values = np.zeros(groups.shape, dtype=np.uint8)
        np.put_along_axis(values, groups.argmax(-1)[..., None], 1, axis=-1)
    elif spec.kind in ("image", "binary"):
        values = np.asarray(values).astype(np.uint8)
    else:
        values = np.asarray(values, dtype=np.float32)
    return values.reshape(n, -1).astype(str)


def _write_folder(path: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``path``, then move it into place.

    An existing ``path`` is replaced only if it is a folder holding nothing but files in
    the CSV-folder layout (``*.csv`` and ``schema.json``).
    """
    if path.exists():
        check_csv_output(path)
    parent = path.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        for filename, data in files.items():
            # Names come from data (modality names): whatever they hold, nothing is
            # written outside the output folder.
            target = (tmp / filename).resolve()
            if target.parent != tmp.resolve() or filename in ("", ".", ".."):
                raise DataError(
                    f"{filename!r} cannot be written inside {path}: it names a place outside the "
                    "output folder; rename the modality"
                )
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes the folder private; outputs are ordinary folders
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.rename(path, old / "data")
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old / "data", path)  # put the previous output back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_csv_output(path: str | os.PathLike[str]) -> None:
    """Refuse an existing output ``path`` unless it is a folder holding only a CSV folder's
    files (``*.csv`` and ``schema.json``), which :func:`write_filled_csv` replaces.

    Raises:
        DataError: naming the file that makes ``path`` unsafe to replace.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} exists and is not a folder; choose a folder name for the output")
    foreign = [
        p.name for p in path.iterdir()
        if not p.is_file() or (p.suffix.lower() != ".csv" and p.name != SCHEMA_FILE)
    ]
    if foreign:
        raise DataError(
            f"{path} exists and holds {foreign[0]!r}, which is not part of a CSV folder; "
            "choose a new output folder (only a folder of .csv files and schema.json is replaced)"
        )


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_filled_csv(
    source: CsvFolder,
    filled: Mapping[str, np.ndarray],
    specs: Sequence[ModalitySpec],
    path: str | os.PathLike[str],
    observed: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write a CSV folder like ``source`` with every modality of ``specs`` filled.

    With ``observed`` (``name -> bool [N]``), ``observed.csv`` records which rows of each
    modality were given (1) and which were filled (0); reading the folder back applies
    these masks, as ``mask_<name>`` arrays do for npz.

    Observed cells are written exactly as ``source`` holds them (read it with
    ``keep_text=True``); the other rows come from ``filled[name]`` (``[N, *shape]`` in
    storage form: uint8 image, bool binary, float vector, per-class scores for
    categorical, written one-hot). Ids and column names are kept; a modality absent from
    ``source`` gets columns ``<name>_0 ...``. ``labels.csv`` and ``split.csv`` are
    copied; ``schema.json`` declares every modality that is not a flat vector. The folder
    is written beside ``path`` and renamed into place.

    Raises:
        DataError: if ``path`` exists and is not a folder of CSV files.
    """
    path = Path(path)
    check_modality_names([spec.name for spec in specs], "the run")
    files: dict[str, bytes] = {}
    schema = {}
    for spec in specs:
        name = spec.name
        cells = _format_rows(filled[name], spec).tolist()
        kept = source.text.get(name)
        if kept is not None:
            cells = [given if given is not None else new for given, new in zip(kept, cells)]
        width = math.prod(spec.shape)
        columns = source.columns.get(name) or [f"{name}_{i}" for i in range(width)]
        header = list(columns)
        if source.ids is not None:
            header = [ID_COLUMN, *header]
            cells = [[i, *row] for i, row in zip(source.ids, cells)]
        files[f"{name}.csv"] = _csv_bytes(header, cells)
        if spec.kind != "vector" or len(spec.shape) != 1:
            schema[name] = {"shape": list(spec.shape), "kind": spec.kind}
    if schema:
        files[SCHEMA_FILE] = (json.dumps(schema, indent=2, allow_nan=False) + "\n").encode("utf-8")
    for extra in (LABELS_FILE, SPLIT_FILE):
        if (source.folder / extra).is_file():
            files[extra] = (source.folder / extra).read_bytes()
    if observed is not None:
        names = [spec.name for spec in specs]
        rows = [[str(int(bool(observed[name][i]))) for name in names] for i in range(len(filled[names[0]]))]
        if source.ids is not None:
            files[OBSERVED_FILE] = _csv_bytes([ID_COLUMN, *names], [[i, *row] for i, row in zip(source.ids, rows)])
        else:
            files[OBSERVED_FILE] = _csv_bytes(names, rows)
    _write_folder(path, files)


# -- HDF5 ----------------------------------------------------------------------------------


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 needs h5py; install it with 'pip install h5py'") from None
    return h5py


def _open_hdf5(path: Path):
    h5py = _h5py()
    if not path.is_file():
        raise DataError(
            f"HDF5 file {str(path)!r} not found; pass an existing .h5/.hdf5 file as hdf5:FILE"
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(
            f"{path} is not a valid HDF5 file ({error}); write it with h5py, one dataset per "
            "modality"
        ) from None


def _read_dataset(h5py, dataset, key: str, path: Path) -> np.ndarray:
    if dataset.shape is None:
        raise DataError(f"{path}: dataset {dataset.name!r} is empty (no dataspace); store an array")
    if h5py.check_string_dtype(dataset.dtype) is not None:
        values = dataset.asstr()[()]
        if isinstance(values, np.ndarray):
            return np.array(values.tolist(), dtype=str).reshape(values.shape)
        return np.array(values, dtype=str)
    kind = dataset.dtype.kind
    if kind not in "biuf" and not (kind == "S" and key in ("labels", "label_names")):
        raise DataError(
            f"{path}: dataset {dataset.name!r} has HDF5 type {dataset.dtype}; store numbers "
            "(uint8 images, bool, integers, floats), or strings only for labels and label_names"
        )
    try:
        return np.asarray(dataset[()])
    except (OSError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: dataset {dataset.name!r} cannot be read ({error}); the file is damaged"
        ) from None


def read_hdf5(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read an ``hdf5:FILE`` file into the :mod:`omnivae.data.arrays` layout, in memory.

    Modality datasets sit at the root or all under the group ``modalities/``; ``labels``,
    ``label_names``, ``split`` and ``mask_<modality>`` may sit in either place. Strings
    (variable or fixed length) become numpy ``str`` arrays.

    Returns:
        Arrays keyed by name: per modality ``[N, *shape]``, plus the optional keys.

    Raises:
        DataError: if h5py is missing, the file is missing or not HDF5, a dataset is not
            numeric (strings are allowed for labels), or a group other than
            ``modalities/`` holds data.
    """
    path = Path(path)
    h5py = _h5py()
    arrays: dict[str, np.ndarray] = {}
    with _open_hdf5(path) as handle:
        places = [handle]
        for key, item in handle.items():
            if isinstance(item, h5py.Group):
                if key != HDF5_GROUP:
                    raise DataError(
                        f"{path}: group {key!r} is not part of the layout; put one dataset per "
                        f"modality at the root or under the group {HDF5_GROUP!r}"
                    )
                places.append(item)
        total = 0
        for place in places:
            for key, item in place.items():
                if item is None:  # h5py gives None for a link it cannot resolve
                    link = place.get(key, getlink=True)
                    target = getattr(link, "path", "?")
                    if isinstance(link, h5py.ExternalLink):
                        target = f"{link.filename}:{link.path}"
                    raise DataError(
                        f"{path}: {place.name.rstrip('/')}/{key} is a link to {target}, which "
                        "cannot be opened; put the file next to it or store the data itself"
                    )
                if isinstance(item, h5py.Group):
                    if place is handle:
                        continue
                    raise DataError(
                        f"{path}: {item.name!r} is a group; {HDF5_GROUP}/ holds only one "
                        "dataset per modality"
                    )
                if not isinstance(item, h5py.Dataset):
                    continue
                if key in arrays:
                    raise DataError(
                        f"{path}: {key!r} is both at the root and under {HDF5_GROUP}/; keep one"
                    )
                if item.shape is not None:  # judged before reading: compressed data inflates
                    total += int(np.prod(item.shape, dtype=object)) * item.dtype.itemsize
                    check_load_size(total, str(path), f"dataset {item.name!r} (with those before it)")
                arrays[key] = _read_dataset(h5py, item, key, path)
    for key, array in arrays.items():
        if key not in ("labels", "label_names") and array.dtype.kind in "US":
            raise DataError(
                f"{path}: dataset {key!r} holds strings; store numbers (strings only for labels "
                "and label_names)"
            )
    return arrays


def hdf5_group(path: str | os.PathLike[str]) -> str | None:
    """``"modalities"`` if the file keeps its modalities under that group, else ``None``."""
    h5py = _h5py()
    with _open_hdf5(Path(path)) as handle:
        return HDF5_GROUP if isinstance(handle.get(HDF5_GROUP), h5py.Group) else None


def load_hdf5_array(path: str | os.PathLike[str]) -> MultimodalDataset:
    """Every row of an ``hdf5:FILE`` file as one dataset, without splitting.

    Raises:
        DataError: for any problem with the file (see :func:`read_hdf5`).
    """
    return dataset_from_arrays(read_hdf5(path), name=Path(path).stem, source=str(path))


def load_hdf5(
    path: str | os.PathLike[str], test_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """An ``hdf5:FILE`` file as train and test splits: its ``split`` dataset if present,
    else a random split with ``test_fraction`` in test, stratified by label (as
    ``npz:FILE``)."""
    arrays = read_hdf5(path)
    dataset = dataset_from_arrays(arrays, name=Path(path).stem, source=str(path))
    return split_dataset(dataset, test_fraction, seed, arrays.get("split"), source=str(path))


def write_hdf5(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], group: str | None = None
) -> None:
    """Write arrays as an HDF5 file, atomically (temporary file, then rename).

    Modalities go under ``group`` when given (the reserved keys and masks stay at the
    root); ``str`` arrays become UTF-8 variable-length strings.
    """
    h5py = _h5py()

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as handle:
            for key, array in arrays.items():
                reserved = key in RESERVED_KEYS or key.startswith(MASK_PREFIX)
                place = handle if group is None or reserved else handle.require_group(group)
                array = np.asarray(array)
                if array.dtype.kind == "U":
                    place.create_dataset(
                        key, data=array.astype(object), dtype=h5py.string_dtype("utf-8")
                    )
                else:
                    place.create_dataset(key, data=array)

    atomic_write(path, write)


# -- registration --------------------------------------------------------------------------


def _csv_loader(argument: str, seed: int) -> DatasetSplits:
    return load_csv(argument, seed=seed)


def _hdf5_loader(argument: str, seed: int) -> DatasetSplits:
    return load_hdf5(argument, seed=seed)


#: ``(prefix, form, description, loader)`` for :func:`omnivae.data.registry.register_prefix`.
PREFIXES: tuple[tuple[str, str, str, Callable[[str, int], DatasetSplits]], ...] = (
    (
        "csv",
        "csv:DIR",
        "your tables: one <modality>.csv per modality (header row, optional id column; an "
        "empty row = missing), optional schema.json (shape, kind), labels.csv, split.csv; "
        "random 80/20 split otherwise",
        _csv_loader,
    ),
    (
        "hdf5",
        "hdf5:FILE",
        "your arrays in HDF5 (.h5/.hdf5; needs h5py): the npz layout, one dataset per "
        "modality at the root or under modalities/, optional labels, mask_<modality>, split",
        _hdf5_loader,
    ),
)
