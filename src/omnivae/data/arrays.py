"""User data as arrays: one array per modality in an ``.npz`` file (``npz:FILE``).

File layout (all keys optional except the modalities):

- one array per modality, any key other than the reserved ones below; the first axis is
  samples, the rest is the per-sample shape. The dtype picks the kind: ``uint8`` is an
  ``image`` (kept as ``uint8``, scaled to [0, 1] per batch), ``bool`` is ``binary``,
  floating and other integer dtypes are ``vector`` (stored as ``float32``). A 1-D array
  holds one value per sample and is read as per-sample shape ``(1,)``.
- ``mask_<modality>``: boolean ``[N]``, True where the modality is observed. Values in
  unobserved rows are ignored (they may be NaN) and replaced by 0. Without a mask, a
  float row that is all NaN marks the modality missing for that sample, as an empty CSV
  row does; a row with some NaN values is an error.
- ``labels``: ``[N]`` integers (>= 0) or strings; strings become integers in sorted
  order of the distinct strings, which are kept as the label names.
- ``label_names``: strings naming the labels, overriding the sorted order.
- ``split``: ``[N]`` of 0 (train) and 1 (test), used instead of a random split.

Files are read with ``allow_pickle=False``: an array of Python objects is rejected, and
loading data never executes code. Every problem raises one :class:`DataError` line that
names the file, the modality and what to do.

Limits checked before anything is read or inflated: modality names match
:data:`omnivae.data.base.MODALITY_NAME` (they become file names); the arrays of one file
may inflate to at most :func:`max_load_bytes` (8 GiB unless ``OMNIVAE_MAX_LOAD_GB`` says
otherwise), judged from each ``.npy`` header before its data is read, so a header claiming
terabytes or a zip bomb is refused without allocating; integer labels stay below
:data:`MAX_CLASSES` (a label is a class id, and the metrics allocate one row per class).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnivae.data.base import (
    DatasetSplits,
    ModalityKind,
    ModalitySpec,
    MultimodalDataset,
    check_modality_names,
)
from omnivae.data.npz import (
    MAX_LOAD_ENV,
    check_load_size,
    max_load_bytes,
    read_npz,
)
from omnivae.errors import DataError, UserError

__all__ = [
    "RESERVED_KEYS",
    "MASK_PREFIX",
    "infer_kind",
    "read_npz",
    "dataset_from_arrays",
    "split_dataset",
    "load_npz",
    "load_npz_array",
    "max_load_bytes",
    "check_load_size",
    "MAX_CLASSES",
    "MAX_LOAD_ENV",
]

RESERVED_KEYS = ("labels", "label_names", "split")
MASK_PREFIX = "mask_"

#: Integer labels must be below this: they are class ids, and the classifiers and metrics
#: allocate per class. Larger ids (10**12, say) are refused rather than remapped, so a
#: label means the same class in every file and in the outputs; use 0..K-1 or strings.
MAX_CLASSES = 100_000
#: Label texts that mean "no label" (a missing value, never a class).
_MISSING_LABELS = ("", "nan", "na", "n/a", "none", "null")


def infer_kind(dtype: np.dtype) -> ModalityKind:
    """The modality kind for an array dtype: uint8 image, bool binary, other numbers vector.

    Raises:
        DataError: for dtypes that are not numbers (strings, objects, dates, complex).

    Example:
        >>> infer_kind(np.dtype(np.uint8)), infer_kind(np.dtype(bool)), infer_kind(np.dtype("f8"))
        ('image', 'binary', 'vector')
    """
    if dtype == np.uint8:
        return "image"
    if dtype == np.bool_:
        return "binary"
    if dtype.kind in "iuf":
        return "vector"
    raise DataError(f"unsupported dtype {dtype}")


def _mask(arrays: Mapping[str, np.ndarray], key: str, n: int, source: str) -> np.ndarray:
    mask = np.asarray(arrays[key])
    modality = key[len(MASK_PREFIX) :]
    if mask.shape != (n,):
        raise DataError(
            f"{source}: {key} has shape {mask.shape}, expected ({n},): one True/False per "
            f"sample of modality {modality!r}"
        )
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind in "iu" and np.isin(mask, (0, 1)).all():
        return mask.astype(bool)
    raise DataError(
        f"{source}: {key} must be boolean (True = modality {modality!r} observed), "
        f"got dtype {mask.dtype}"
    )


def _labels(
    arrays: Mapping[str, np.ndarray], n: int, source: str
) -> tuple[Tensor | None, list[str] | None]:
    names = arrays.get("label_names")
    if "labels" not in arrays:
        if names is not None:
            raise DataError(f"{source}: label_names given without labels; add a labels array")
        return None, None
    raw = np.asarray(arrays["labels"])
    if raw.ndim != 1 or raw.shape[0] != n:
        raise DataError(
            f"{source}: labels has shape {raw.shape} for {n} samples; store one label per "
            f"sample, shape ({n},)"
        )
    given: list[str] | None = None
    if names is not None:
        names = np.asarray(names)
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{source}: label_names must be a 1-D array of strings")
        given = [_text(v) for v in names.tolist()]
        if len(set(given)) != len(given):
            raise DataError(f"{source}: label_names has duplicates; name each label once")
    if raw.dtype.kind in "US":
        values = [_text(v) for v in raw.tolist()]
        missing = [i for i, v in enumerate(values) if v.strip().lower() in _MISSING_LABELS]
        if missing:
            raise DataError(
                f"{source}: label {values[missing[0]]!r} in row {missing[0]} is a missing label, not a "
                "class; omnivae needs a label for every sample (or no labels at all)"
            )
        if len(set(values)) > MAX_CLASSES:
            raise DataError(
                f"{source}: the labels name {len(set(values))} classes, more than the {MAX_CLASSES} "
                "omnivae handles; labels are classes, not ids"
            )
        if given is None:
            given = sorted(set(values))
        lookup = {name: i for i, name in enumerate(given)}
        unknown = [v for v in values if v not in lookup]
        if unknown:
            raise DataError(f"{source}: label {unknown[0]!r} is not in label_names")
        return torch.tensor([lookup[v] for v in values], dtype=torch.int64), given
    if raw.dtype.kind in "biu":
        if raw.dtype.kind in "iu" and raw.max() >= MAX_CLASSES:  # before int64 could wrap it
            row = int(np.argmax(raw))
            raise DataError(
                f"{source}: label {raw[row]} in row {row} is not a class id below {MAX_CLASSES} "
                "(classes are numbered 0, 1, ..., and the metrics keep one entry per class); "
                "number the classes 0, 1, ... (or use strings)"
            )
        labels = raw.astype(np.int64)
    elif raw.dtype.kind == "f" and np.isnan(raw).any():
        row = int(np.flatnonzero(np.isnan(raw))[0])
        raise DataError(
            f"{source}: label NaN in row {row} is a missing label, not a class; omnivae needs a "
            "label for every sample (or no labels at all)"
        )
    elif raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        if np.abs(raw).max() >= MAX_CLASSES:
            row = int(np.argmax(np.abs(raw)))
            raise DataError(
                f"{source}: label {raw[row]:g} in row {row} is not a class id below {MAX_CLASSES} "
                "(classes are numbered 0, 1, ..., and the metrics keep one entry per class); "
                "number the classes 0, 1, ... (or use strings)"
            )
        labels = raw.astype(np.int64)
    else:
        raise DataError(
            f"{source}: labels must be integers or strings, got dtype {raw.dtype} with "
            "non-integer values"
        )
    if labels.min() < 0:
        row = int(np.flatnonzero(labels < 0)[0])
        raise DataError(f"{source}: label {labels[row]} in row {row} is negative; use 0, 1, ...")
    if given is not None and labels.max() >= len(given):
        raise DataError(
            f"{source}: label {labels.max()} has no name; label_names has {len(given)} entries"
        )
    return torch.from_numpy(labels), given


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def dataset_from_arrays(
    arrays: Mapping[str, np.ndarray], name: str = "arrays", source: str | None = None
) -> MultimodalDataset:
    """Validate named arrays (the ``.npz`` layout above) and hold them as a dataset.

    Args:
        arrays: modality arrays plus the optional ``labels``, ``label_names`` and
            ``mask_<modality>`` arrays (``split`` is ignored here).
        name: the dataset's name.
        source: how error messages refer to the data (a file path); ``name`` if ``None``.

    Raises:
        DataError: with one line naming the modality and the fix, for any problem.

    Example:
        >>> ds = dataset_from_arrays({"a": np.zeros((4, 3)), "b": np.zeros((4, 2, 2), np.uint8)})
        >>> [(m.name, m.shape, m.kind) for m in ds.modalities]
        [('a', (3,), 'vector'), ('b', (2, 2), 'image')]
    """
    source = source or name
    modality_keys = [
        k for k in arrays if k not in RESERVED_KEYS and not k.startswith(MASK_PREFIX)
    ]
    if not modality_keys:
        raise DataError(
            f"{source}: no modality arrays; store one array per modality under any key "
            f"other than {', '.join(RESERVED_KEYS)} and {MASK_PREFIX}*"
        )
    check_modality_names(modality_keys, source)
    first = modality_keys[0]
    raw: dict[str, np.ndarray] = {}
    kinds: dict[str, ModalityKind] = {}
    n = -1
    for key in modality_keys:
        array = np.asarray(arrays[key])
        if array.ndim == 0:
            raise DataError(
                f"{source}: modality {key!r} is a single value; its first axis must be samples"
            )
        try:
            kinds[key] = infer_kind(array.dtype)
        except DataError:
            raise DataError(
                f"{source}: modality {key!r} has dtype {array.dtype}; store uint8 images, "
                "bool, integer or float arrays"
            ) from None
        if n < 0:
            n = array.shape[0]
        elif array.shape[0] != n:
            raise DataError(
                f"{source}: modality {key!r} has {array.shape[0]} samples but {first!r} has "
                f"{n}; every modality needs one row per sample along the first axis"
            )
        raw[key] = array.reshape(n, 1) if array.ndim == 1 else array
    if n == 0:
        raise DataError(f"{source}: the modality arrays have 0 rows; store at least one sample")

    masks: dict[str, np.ndarray] = {}
    for key in arrays:
        if not key.startswith(MASK_PREFIX):
            continue
        modality = key[len(MASK_PREFIX) :]
        if modality not in raw:
            raise DataError(
                f"{source}: {key} is a mask for unknown modality {modality!r}; the modalities "
                f"are {', '.join(repr(k) for k in modality_keys)}"
            )
        masks[modality] = _mask(arrays, key, n, source)
    for key in modality_keys:
        if key in masks:
            continue  # an explicit mask decides; NaN in an observed row is reported below
        masks[key] = np.ones(n, dtype=bool)
        if raw[key].dtype.kind == "f" and raw[key][0].size:
            masks[key] = ~np.isnan(raw[key].reshape(n, -1)).all(axis=1)
    observed = np.logical_or.reduce([masks[k] for k in modality_keys])
    if not observed.all():
        row = int(np.flatnonzero(~observed)[0])
        raise DataError(
            f"{source}: row {row} has every modality masked; drop it or observe at least "
            "one modality"
        )

    data: dict[str, Tensor] = {}
    specs = []
    for key in modality_keys:
        array, mask, kind = raw[key], masks[key], kinds[key]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, once
            values = array.copy() if kind == "image" else array.astype(np.float32)
        if kind == "vector":
            bad = ~np.isfinite(values.reshape(n, -1)).all(axis=1) & mask
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                given = array[row].reshape(-1)
                if np.isfinite(given).all():
                    big = given[np.argmax(np.abs(given))]
                    raise DataError(
                        f"{source}: modality {key!r} row {row} holds {big:g}, beyond the float32 "
                        "range omnivae computes in (about +-3.4e38); rescale the modality"
                    )
                raise DataError(
                    f"{source}: modality {key!r} has NaN or infinite values in row {row}; fix "
                    f"them or set {MASK_PREFIX}{key}[{row}] = False to mark the row missing"
                )
        # Unobserved rows must not carry values a model could read by mistake.
        values[~mask] = 0
        data[key] = torch.from_numpy(np.ascontiguousarray(values))
        specs.append(ModalitySpec(key, tuple(int(s) for s in array.shape[1:]), kind))

    labels, label_names = _labels(arrays, n, source)
    return MultimodalDataset(
        modalities=tuple(specs),
        data=data,
        masks={k: torch.from_numpy(masks[k].copy()) for k in modality_keys},
        labels=labels,
        label_names=label_names,
        name=name,
    )


def _stratified_test_rows(
    labels: np.ndarray | None, n: int, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    if labels is None:
        n_test = int(np.floor(n * test_fraction + 0.5))
        test = rng.permutation(n)[: min(max(n_test, 1), n - 1)]
    else:
        picks = []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            picks.append(members[: int(np.floor(len(members) * test_fraction + 0.5))])
        test = np.concatenate(picks)
        # Rounding per class can empty a split when classes are tiny.
        if len(test) == 0:
            test = rng.permutation(n)[:1]
        elif len(test) == n:
            test = test[1:]
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return is_test


def split_dataset(
    dataset: MultimodalDataset,
    test_fraction: float = 0.2,
    seed: int = 0,
    split: np.ndarray | None = None,
    source: str | None = None,
) -> DatasetSplits:
    """Split a dataset into train and test, each keeping the original row order.

    Args:
        dataset: the rows to split.
        test_fraction: the share of rows for testing, in (0, 1); stratified by label
            when the dataset has labels.
        seed: seeds the random split.
        split: ``[N]`` of 0 (train) and 1 (test) to use instead of a random split.
        source: how error messages refer to the data.

    Raises:
        DataError: if ``split`` is malformed or leaves a split empty, or there are
            fewer than 2 rows.
    """
    source = source or dataset.name
    n = len(dataset)
    if split is not None:
        split = np.asarray(split)
        if split.shape != (n,):
            raise DataError(
                f"{source}: split has shape {split.shape}, expected ({n},): 0 (train) or 1 "
                "(test) per sample"
            )
        if split.dtype.kind not in "biu" or not np.isin(split, (0, 1)).all():
            raise DataError(f"{source}: split must hold only 0 (train) and 1 (test)")
        is_test = split.astype(bool)
        if is_test.all() or not is_test.any():
            which = "train" if is_test.all() else "test"
            raise DataError(
                f"{source}: split puts no row in {which}; mark some rows {int(which == 'test')}"
            )
    else:
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if n < 2:
            raise DataError(f"{source}: {n} row cannot be split into train and test; add rows")
        labels = None if dataset.labels is None else dataset.labels.numpy()
        is_test = _stratified_test_rows(labels, n, test_fraction, np.random.default_rng(seed))
    mask = torch.from_numpy(is_test)
    return DatasetSplits(dataset.subset(~mask), dataset.subset(mask))


def load_npz_array(path: str | os.PathLike[str]) -> MultimodalDataset:
    """Every row of an ``.npz`` file as one dataset, without splitting (for imputation).

    Raises:
        DataError: for any problem with the file (see the module docstring).
    """
    return dataset_from_arrays(read_npz(path), name=Path(path).stem, source=str(path))


def load_npz(
    path: str | os.PathLike[str], test_fraction: float = 0.2, seed: int = 0
) -> DatasetSplits:
    """An ``.npz`` file as train and test splits.

    The file's ``split`` array decides if present; otherwise a random split with
    ``test_fraction`` of the rows in test, stratified by label when there are labels.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "toy.npz"
        >>> np.savez(file, a=np.random.rand(10, 4), labels=np.arange(10) % 2)
        >>> splits = load_npz(file)
        >>> len(splits.train), len(splits.test)
        (8, 2)
    """
    arrays = read_npz(path)
    dataset = dataset_from_arrays(arrays, name=Path(path).stem, source=str(path))
    return split_dataset(dataset, test_fraction, seed, arrays.get("split"), source=str(path))
