"""The real MNIST and SVHN files of ``mnist-svhn``: where they may sit under ``data_dir``, and
reading them (MNIST idx files, SVHN ``.mat`` files) into uint8 images and 0..9 labels.

:mod:`omnivae.data.mnist_svhn` pairs them into the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from omnivae.data.idx import IDX_FILES, find_idx_files, load_idx_split
from omnivae.errors import DataError

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES: dict[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
# Where the files may sit, relative to the data folder.
_MNIST_FOLDERS = (".", "MNIST", "mnist", "MNIST/raw")
_SVHN_FOLDERS = (".", "SVHN", "svhn")
_MNIST_NEEDS = (
    f"the MNIST idx files {', '.join(IDX_FILES.values())} (optionally .gz; from {MNIST_URL})"
)
_SVHN_NEEDS = f"the SVHN files {', '.join(SVHN_FILES.values())} (from {SVHN_URL})"
_WHERE = "in data_dir or its MNIST/, mnist/, MNIST/raw/, SVHN/ or svhn/ subfolders"


def find_mnist_files(data_dir: str | os.PathLike[str]) -> Path | None:
    """The folder holding the four MNIST idx files: ``DIR``, ``DIR/MNIST``, ``DIR/mnist``
    or ``DIR/MNIST/raw`` (the first that has all four), or ``None``."""
    for sub in _MNIST_FOLDERS:
        folder = Path(data_dir) / sub
        if folder.is_dir() and find_idx_files(folder) is not None:
            return folder
    return None


def find_svhn_file(data_dir: str | os.PathLike[str], split: str) -> Path | None:
    """``train_32x32.mat`` or ``test_32x32.mat`` (``split``) in ``DIR``, ``DIR/SVHN`` or
    ``DIR/svhn``, or ``None``."""
    for sub in _SVHN_FOLDERS:
        path = Path(data_dir) / sub / SVHN_FILES[split]
        if path.is_file():
            return path
    return None


def read_mnist(folder: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST split from the idx files in ``folder`` (LeCun et al., the MNIST database).

    Returns:
        ``(images uint8 [N, 28, 28], labels int64 [N])`` with labels in ``0..9``.

    Raises:
        DataError: if a file is missing or damaged, or holds other than 28x28 digits.
    """
    images, labels = load_idx_split(folder, split)
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"the MNIST {split} images in {str(folder)!r} are {images.shape[1:]}, expected 28x28; "
            f"mnist-svhn needs {_MNIST_NEEDS}", parameter="data_dir")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"the MNIST {split} labels in {str(folder)!r} leave 0..9; mnist-svhn needs {_MNIST_NEEDS}", parameter="data_dir")
    return images, labels


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN split from its MATLAB file (Netzer et al., 2011, cropped digits).

    The file holds ``X``, ``uint8 [32, 32, 3, N]``, and ``y``, ``[N, 1]`` with labels
    ``1..10`` where 10 means digit 0; labels are taken ``% 10``.

    Returns:
        ``(images uint8 [N, 3, 32, 32], labels int64 [N])`` with labels in ``0..9``.

    Raises:
        DataError: if the file cannot be read or holds other arrays than that.
    """
    import scipy.io

    path = Path(path)
    expected = (
        f"expected X uint8 [32, 32, 3, N] and y [N, 1] with labels 1..10 as in "
        f"{', '.join(SVHN_FILES.values())} from {SVHN_URL}"
    )
    try:
        content = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as error:  # scipy raises many types for a file it cannot parse
        raise DataError(f"cannot read the SVHN file {str(path)!r} ({error}); {expected}") from error
    if "X" not in content or "y" not in content:
        raise DataError(f"the SVHN file {str(path)!r} lacks X or y; {expected}")
    images, labels = content["X"], np.asarray(content["y"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(
            f"the SVHN file {str(path)!r} holds X {images.dtype} of shape {images.shape}; {expected}"
        )
    n = images.shape[3]
    if labels.shape not in ((n, 1), (n,)) or not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"the SVHN file {str(path)!r} holds y of shape {labels.shape} for {n} images; {expected}")
    labels = labels.reshape(n).astype(np.int64)
    if n and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"the SVHN file {str(path)!r} holds labels outside 1..10; {expected}")
    # [H, W, C, N] -> [N, C, H, W]
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels % 10
