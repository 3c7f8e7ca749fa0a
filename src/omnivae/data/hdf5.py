"""``hdf5:FILE``: the ``npz`` layout as HDF5 datasets, read and written with the optional ``h5py``.

The layout is described in :mod:`omnivae.data.tables`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omnivae.data.arrays import (
    MASK_PREFIX,
    RESERVED_KEYS,
    check_load_size,
    dataset_from_arrays,
    split_dataset,
)
from omnivae.data.base import (
    DatasetSplits,
    MultimodalDataset,
)
from omnivae.errors import DataError
from omnivae.fileio import atomic_write

HDF5_GROUP = "modalities"
HDF5_SUFFIXES = (".h5", ".hdf5")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DataError("reading HDF5 needs h5py; install it with 'pip install h5py'") from None
    return h5py


def _open_hdf5(path: Path) -> Any:
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


def _read_dataset(h5py: Any, dataset: Any, key: str, path: Path) -> np.ndarray:
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


