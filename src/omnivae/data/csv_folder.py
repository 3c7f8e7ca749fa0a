"""A ``csv:DIR`` folder as a dataset: modality tables joined by id or order, side files
(``labels.csv``, ``split.csv``, ``observed.csv``) and storage dtypes.

The layout is described in :mod:`omnivae.data.tables`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnivae.data.arrays import (
    _MISSING_LABELS,
    MASK_PREFIX,
    RESERVED_KEYS,
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
from omnivae.data.csv_table import (
    _CSV_LAYOUT,
    ID_COLUMN,
    LABELS_FILE,
    OBSERVED_FILE,
    SCHEMA_FILE,
    SPLIT_FILE,
    _csv_rows,
    _read_schema,
    _read_table,
    _Table,
)
from omnivae.errors import DataError


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
    keys: list[int] | list[str] = numeric if integers else every
    for text, key in zip(every, keys, strict=True):
        keys_of.setdefault(key, text)
    ordered: list[Any] = sorted(keys_of)
    return ordered, keys_of, integers


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
    for row, line in zip(rows, lines, strict=True):
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
    for row, line in zip(rows, lines, strict=True):
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
    for text, line in zip(cells, lines, strict=True):
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
    for i, (text, line) in enumerate(zip(*found, strict=True)):
        if text.lower() not in codes:
            raise DataError(f"{path} line {line}, column {name!r}: {text!r} is not 0 or 1{reserved}")
        column[i] = codes[text.lower()]
    return column


def _split_array(cells: list[str], lines: list[int], path: Path) -> np.ndarray:
    codes = {"train": 0, "0": 0, "test": 1, "1": 1}
    split = np.zeros(len(cells), dtype=np.int64)
    for i, (text, line) in enumerate(zip(cells, lines, strict=True)):
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
    for name, path in zip(names, files, strict=True):
        if name in RESERVED_KEYS or name.startswith(MASK_PREFIX) or not name:
            raise DataError(
                f"{path}: {name!r} cannot name a modality (reserved: {', '.join(RESERVED_KEYS)},"
                f" {MASK_PREFIX}*); rename the file"
            )
    if len({n.lower() for n in names}) != len(names):
        raise DataError(f"{folder}: modality file names differ only in case; rename one")
    check_modality_names(names, str(folder))

    parsed = {name: _csv_rows(path) for name, path in zip(names, files, strict=True)}
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
        for name, path in zip(names, files, strict=True)
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
                text[name] = [cells if seen else None for cells, seen in zip(text[name], masks[name], strict=True)]
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

