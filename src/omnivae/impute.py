"""Fill the missing modalities of a user's data file with a trained model.

:func:`impute_file` reads a CSV folder, an HDF5 file or an ``.npz`` file, imputes every
masked or absent modality of every row with the run's model
(:meth:`~omnivae.models.MultimodalVAE.impute`: the mean of the decoder given a sample of
the posterior of the observed subset, Eq. 2 of the barycentric paper's conditional
generation) and writes the filled data in the input's format. Observed values come back
exactly (copied from the input, never through the model's float32), and the output is
written to a temporary name and renamed into place, so a mistake leaves nothing behind.

``omnivae impute RUN --input DATA --output FILLED`` is a thin wrapper around it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import DataError, UserError

__all__ = ["ImputeResult", "impute_file", "input_format"]

FORMS = "a CSV folder (one <modality>.csv each), an .h5/.hdf5 file or an .npz file"


@dataclass
class ImputeResult:
    """What :func:`impute_file` did: the filled entries per modality, the rows, the output."""

    output: Path
    rows: int
    missing: dict[str, int] = field(default_factory=dict)
    #: How the output marks the observed values.
    marks: str = ""

    def summary(self) -> str:
        """One line for a person."""
        counts = ", ".join(f"{k}: {v}" for k, v in self.missing.items())
        return (f"imputed {sum(self.missing.values())} missing entries ({counts}) in {self.rows} samples; "
                f"wrote {self.output} ({self.marks})")


def input_format(path: Path) -> str:
    """``"csv"``, ``"hdf5"`` or ``"npz"`` for an input path, from what it is and its suffix.

    >>> input_format(Path("data.npz")), input_format(Path("data.H5"))
    ('npz', 'hdf5')
    """
    from omnivae.data.hdf5 import HDF5_SUFFIXES

    if path.is_dir():
        return "csv"
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npz":
        return "npz"
    if not path.exists():
        raise UserError(f"source {path}: no such folder or file; give {FORMS}", parameter="source")
    raise UserError(f"source {path} is not a folder and does not end in .h5, .hdf5 or .npz; give {FORMS}",
                    parameter="source")


def _check_output(output: Path, form: str, source: Path, force: bool = False) -> None:
    """The output is written in the input's format: check its name and place up front,
    and never replace an existing output (or the input) unless ``force``."""
    from omnivae.data.csv_write import check_csv_output
    from omnivae.data.hdf5 import HDF5_SUFFIXES
    from omnivae.outputs import check_output_file, check_output_folder

    if form == "csv":
        if output.suffix.lower() in (*HDF5_SUFFIXES, ".npz", ".csv"):
            raise UserError(f"output {output} must name a folder: the input is a CSV folder", parameter="output")
        check_output_folder(output, "output", must_exist_parent=True)
    else:
        suffixes = HDF5_SUFFIXES if form == "hdf5" else (".npz",)
        if output.suffix.lower() not in suffixes:
            raise UserError(
                f"output {output} must end in {' or '.join(suffixes)}: the input is an {form.upper()} file "
                "and the output is written in its format", parameter="output"
            )
        if output.is_dir():
            raise UserError(f"output {output} is a folder; name a file ending in {' or '.join(suffixes)}",
                            parameter="output")
        check_output_file(output, "output")
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise UserError(f"output {output} is the input; write the filled data elsewhere", parameter="output")
    if output.exists():
        if form == "csv":
            check_csv_output(output)  # a folder of anything but a CSV folder's files is never replaced
        if not force:
            raise UserError(f"output {output} already exists; pass force=True to replace it, or pick another output",
                            parameter="force")


def _check_modalities(data: MultimodalDataset, expected: Mapping[str, ModalitySpec], source: str, form: str) -> None:
    """Every input modality must be one of the run's, with its kind and per-sample shape."""
    unknown = [m.name for m in data.modalities if m.name not in expected]
    if unknown:
        raise DataError(
            f"{source}: modalities {unknown} are not in the run (it has {list(expected)}); rename or drop them"
        )
    if form == "csv":
        hint = 'declare it in schema.json, e.g. {"img": {"shape": [1, 28, 28], "kind": "image"}}'
    else:
        hint = "store images as uint8, binary data as bool, vectors as floats"
    for spec in data.modalities:
        want = expected[spec.name]
        if tuple(spec.shape) != tuple(want.shape):
            size = f" ({int(np.prod(spec.shape))} columns)" if form == "csv" else ""
            raise DataError(
                f"{source}: modality {spec.name!r} has per-sample shape {tuple(spec.shape)}{size}, "
                f"the run expects {tuple(want.shape)} ({int(np.prod(want.shape))} values)"
            )
        if spec.kind != want.kind:
            raise DataError(
                f"{source}: modality {spec.name!r} reads as {spec.kind} data, the run expects {want.kind}; {hint}"
            )


def _impute_values(
    model: Any, data: MultimodalDataset, expected: Mapping[str, ModalitySpec], device: torch.device, batch_size: int
) -> dict[str, np.ndarray]:
    """Every modality of the run for every sample: observed values kept, the rest imputed,
    in storage form (uint8 images, bool binary, float32 otherwise)."""
    filled: dict[str, list[torch.Tensor]] = {name: [] for name in expected}
    with torch.no_grad():
        for batch in data.to(device).batches(batch_size):
            out = model.impute(batch.x, batch.mask)
            for name in expected:
                filled[name].append(out[name].cpu())
    arrays: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        values = torch.cat(filled[name])
        if spec.kind == "image":
            arrays[name] = (values.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        elif spec.kind == "binary":
            arrays[name] = (values >= 0.5).numpy()
        else:
            arrays[name] = values.numpy()
    return arrays


def in_dtype(values: np.ndarray, dtype: np.dtype, name: str, source: str) -> np.ndarray:
    """Imputed values in the input's dtype: floats as they are, integers rounded to the
    nearest (half to even); a value outside the integer type's range is refused.

    >>> in_dtype(np.array([0.5, 1.5, 2.6]), np.dtype("int16"), "age", "x.npz")
    array([0, 2, 3], dtype=int16)
    """
    if dtype.kind not in "iu":
        return values.astype(dtype)
    rounded = np.round(values.astype(np.float64))
    info = np.iinfo(dtype)
    bad = ~np.isfinite(rounded) | (rounded < info.min) | (rounded > info.max)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
        raise DataError(
            f"{source}: a value imputed for modality {name!r} (the {row + 1}th missing row) does not fit "
            f"its integer type {dtype}; store the modality as floats to impute it"
        )
    return rounded.astype(dtype)


def filled_arrays(
    raw: Mapping[str, np.ndarray],
    data: MultimodalDataset,
    expected: Mapping[str, ModalitySpec],
    values: Mapping[str, np.ndarray],
    source_name: str = "input",
) -> dict[str, np.ndarray]:
    """The npz/HDF5 output: each modality filled, ``mask_<name>`` marking the observed
    values, and the input's labels, label names and split as given.

    A modality of the input keeps its shape (a 1-D array is read as (N, 1)) and dtype, and
    its observed values are copied from the input, never through the model's float32: an
    int64 above 2**24 or a float64 comes back exactly. Imputed values in an integer
    modality are rounded to the nearest integer (:func:`in_dtype`).
    """
    arrays: dict[str, np.ndarray] = {}
    n = len(data)
    present = [m.name for m in data.modalities]
    for name in expected:
        array = values[name]
        observed = data.masks[name].numpy() if name in present else np.zeros(n, dtype=bool)
        if name in present:
            source = raw[name]
            array = array.reshape(source.shape)
            filled = np.empty(source.shape, dtype=source.dtype)
            filled[observed] = source[observed]
            if (~observed).any():
                filled[~observed] = in_dtype(array[~observed], source.dtype, name, source_name)
            array = filled
        arrays[name] = array
        arrays[f"mask_{name}"] = observed
    for key in ("labels", "label_names", "split"):
        if key in raw:
            arrays[key] = raw[key]
    return arrays


def impute_file(
    run: str | os.PathLike[str],
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 512,
    device: str = "auto",
    force: bool = False,
) -> ImputeResult:
    """Fill the missing modalities of ``source`` with the model of ``run`` and write ``output``.

    Args:
        run: a run folder written by :func:`omnivae.train.train`.
        source: a CSV folder (one ``<modality>.csv`` each, as ``csv:DIR``), an ``.h5``/``.hdf5``
            file or an ``.npz`` file; a missing value is a masked row (``mask_<name>``), an
            empty CSV row, or a modality of the run that the input lacks.
        output: where the filled data go, in the input's format: a folder, ``.h5``/``.hdf5`` or
            ``.npz``. In npz and HDF5, ``mask_<name>`` marks the observed rows; a CSV output
            gets ``observed.csv``.
        batch_size: rows imputed at once.
        device: ``auto``, ``cpu`` or ``cuda``.
        force: replace an existing ``output`` (never done without it).

    Raises:
        UserError: a bad path or setting (``parameter`` names it); :class:`DataError` for
        data the run cannot read.
    """
    from omnivae.data.arrays import dataset_from_arrays, read_npz
    from omnivae.data.csv_folder import read_csv_folder
    from omnivae.data.csv_write import write_filled_csv
    from omnivae.data.hdf5 import hdf5_group, read_hdf5, write_hdf5
    from omnivae.fileio import atomic_write_bytes
    from omnivae.outputs import WRITE_ERRNOS, write_failure
    from omnivae.train import load_run, resolve_device

    source, output = Path(source), Path(output)
    form = input_format(source)
    _check_output(output, form, source, force)
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}", parameter="batch_size")
    where = resolve_device(device)
    loaded = load_run(run, device=where)
    expected = {m.name: m for m in loaded.modalities}
    table = None
    raw: Mapping[str, np.ndarray]
    if form == "csv":
        table = read_csv_folder(source, defaults=expected, keep_text=True)
        raw, data = table.arrays, table.dataset()
    else:
        raw = read_hdf5(source) if form == "hdf5" else read_npz(source)
        data = dataset_from_arrays(raw, name=source.stem, source=str(source))
    _check_modalities(data, expected, str(source), form)
    values = _impute_values(loaded.model, data, expected, where, batch_size)
    n = len(data)
    present = set(data.modality_names)
    missing = {name: n - (int(data.masks[name].sum()) if name in present else 0) for name in expected}
    try:
        if table is not None:
            observed = {
                name: data.masks[name].numpy() if name in present else np.zeros(n, dtype=bool) for name in expected
            }
            write_filled_csv(table, values, loaded.modalities, output, observed=observed)
            marks = "every row filled; observed.csv marks the observed rows"
        else:
            arrays = filled_arrays(raw, data, expected, values, str(source))
            if form == "hdf5":
                write_hdf5(output, arrays, group=hdf5_group(source))
            else:
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
                atomic_write_bytes(output, buffer.getvalue())
            marks = "mask_<name> arrays mark the observed values"
    except OSError as err:  # a full disk mid-write: the temporary file or folder is already gone
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(err, str(output)) from None
    return ImputeResult(output, n, missing, marks)
