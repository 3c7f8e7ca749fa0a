"""The idx file format of MNIST and Fashion-MNIST, read without any download.

An idx file is a big-endian header (two zero bytes, a type code, the number of
dimensions, then one 32-bit size per dimension) followed by the raw array. MNIST and
Fashion-MNIST ship four such files, optionally gzipped:
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``.

References:
    LeCun, Cortes and Burges. The MNIST database, http://yann.lecun.com/exdb/mnist/
    (file formats section).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from omnivae.errors import DataError

__all__ = ["IDX_FILES", "read_idx", "find_idx_files", "has_idx_files", "load_idx_split"]

#: The four files of an MNIST-style folder, by role (each may end in ``.gz``).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_DTYPES: dict[int, type | str] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one idx file (plain or ``.gz``) into an array.

    Raises:
        DataError: if the file is missing, truncated, or its header is not idx.

    Example:
        >>> import tempfile, struct
        >>> raw = struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 3) + bytes([1, 2, 3])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "x-idx1-ubyte"; _ = p.write_bytes(raw)
        ...     read_idx(p).tolist()
        [1, 2, 3]
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file {str(path)!r} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read idx file {str(path)!r} ({error}); the file is damaged, fetch it again") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{str(path)!r} is not an idx file (bad header); expected MNIST's idx format")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {str(path)!r} is truncated in its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"idx file {str(path)!r} holds {len(raw) - header} data bytes but its header "
            f"{shape} needs {expected}; the file is truncated or damaged"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(folder: str | os.PathLike[str]) -> dict[str, Path] | None:
    """The four MNIST-style idx files in ``folder`` (plain or gzipped), or ``None``.

    Also accepts the ``train-images.idx3-ubyte`` spelling some mirrors use.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    for role, stem in IDX_FILES.items():
        dotted = stem.replace("-idx", ".idx")
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (folder / name).is_file():
                found[role] = folder / name
                break
        else:
            return None
    return found


def has_idx_files(folder: str | os.PathLike[str] | None) -> bool:
    """True if ``folder`` holds the four MNIST-style idx files."""
    return folder is not None and Path(folder).is_dir() and find_idx_files(folder) is not None


def load_idx_split(folder: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of ``split`` (``train``/``test``).

    Raises:
        DataError: if a file is missing or the images and labels disagree.
    """
    files = find_idx_files(folder)
    if files is None:
        names = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        raise DataError(f"{str(folder)!r} lacks the MNIST-style idx files; it needs {names}")
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{files[f'{split}_images']} holds {images.dtype} of shape {images.shape}; expected uint8 [N, H, W]")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{files[f'{split}_labels']} has {labels.shape} labels for {len(images)} images; "
            "the image and label files must come from the same split"
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)
