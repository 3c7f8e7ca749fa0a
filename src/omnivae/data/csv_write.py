"""Writing a ``csv:DIR`` folder: the filled output of ``omnivae impute``.

The folder is written beside its place and renamed into it; an existing output is replaced
only if it holds nothing but a CSV folder's files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from omnivae.data.base import (
    ModalitySpec,
    check_modality_names,
)
from omnivae.data.csv_folder import CsvFolder
from omnivae.data.csv_table import ID_COLUMN, LABELS_FILE, OBSERVED_FILE, SCHEMA_FILE, SPLIT_FILE
from omnivae.errors import DataError


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
            cells = [given if given is not None else new for given, new in zip(kept, cells, strict=True)]
        width = math.prod(spec.shape)
        columns = source.columns.get(name) or [f"{name}_{i}" for i in range(width)]
        header = list(columns)
        if source.ids is not None:
            header = [ID_COLUMN, *header]
            cells = [[i, *row] for i, row in zip(source.ids, cells, strict=True)]
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
            files[OBSERVED_FILE] = _csv_bytes([ID_COLUMN, *names], [[i, *row] for i, row in zip(source.ids, rows, strict=True)])
        else:
            files[OBSERVED_FILE] = _csv_bytes(names, rows)
    _write_folder(path, files)


