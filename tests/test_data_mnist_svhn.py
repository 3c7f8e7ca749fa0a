"""Tests for omnivae.data.mnist_svhn: the label pairing, the MNIST/SVHN readers on
fabricated files in the exact formats, the text modality and the offline MNIST-Text."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from omnivae.data import mnist_svhn as ms
from omnivae.data.base import DatasetSplits
from omnivae.data.mnist_svhn import (
    ENTRIES,
    MNIST_CLASS_COUNTS,
    SVHN_CLASS_COUNTS,
    TEXT_LENGTH,
    build_mnist_text_arrays,
    digit_text_indices,
    load_mnist_svhn,
    load_mnist_svhn_text,
    load_mnist_text,
    mnist_text_arrays,
    pair_by_label_multiplied,
    pair_count,
    read_svhn_mat,
)
from omnivae.data.text import ALPHABET, DIGIT_WORDS, decode_indices, encode_strings, place_words
from omnivae.errors import DataError, UserError

BUILDERS = {info.name: builder for info, builder in ENTRIES}
INFOS = {info.name: info for info, _ in ENTRIES}


# ---------------------------------------------------------------- pairing


def _labels(counts: list[int], rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def test_pairing_follows_rand_match_on_idx() -> None:
    rng = np.random.default_rng(1)
    mnist = _labels([7, 3, 12, 5], rng)
    svhn = _labels([4, 9, 12, 0], rng)
    mult, cap = 4, 10
    m_idx, s_idx = pair_by_label_multiplied(mnist, svhn, mult, np.random.default_rng(0), cap)
    assert m_idx.dtype == np.int64 and s_idx.dtype == np.int64
    np.testing.assert_array_equal(mnist[m_idx], svhn[s_idx])
    n_c = [min(a, b, cap) for a, b in zip([7, 3, 12, 5], [4, 9, 12, 0])]
    assert n_c == [4, 3, 10, 0]
    assert len(m_idx) == len(s_idx) == mult * sum(n_c) == pair_count([7, 3, 12, 5], [4, 9, 12, 0], mult, cap)
    for labels, index in ((mnist, m_idx), (svhn, s_idx)):
        counts = np.bincount(index, minlength=len(labels))
        for c, n in enumerate(n_c):
            kept = np.flatnonzero(labels == c)[:n]  # the first n_c of the sorted list
            dropped = np.flatnonzero(labels == c)[n:]
            assert (counts[kept] == mult).all()
            assert (counts[dropped] == 0).all()
    # Class 3 has no SVHN instance, so none of its MNIST digits is paired.
    assert 3 not in set(mnist[m_idx].tolist())


def test_pairing_repeats_are_independent_permutations() -> None:
    mnist = np.repeat(np.arange(2), 30)
    svhn = np.repeat(np.arange(2), 40)
    m_idx, s_idx = pair_by_label_multiplied(mnist, svhn, 5, np.random.default_rng(3))
    for index, labels in ((m_idx, mnist), (s_idx, svhn)):
        blocks = index.reshape(2, 5, 30)  # class-major, then one block per repeat
        for c in range(2):
            kept = np.flatnonzero(labels == c)[:30]
            for block in blocks[c]:
                np.testing.assert_array_equal(np.sort(block), kept)
            assert len({tuple(block) for block in blocks[c]}) == 5
    # The two modalities are permuted independently, so the pairs are not fixed couples.
    assert len(set(zip(m_idx.tolist(), s_idx.tolist()))) > 30 * 2


def test_pairing_caps_classes_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    mnist, svhn = _labels([50, 50], rng), _labels([80, 20], rng)
    a = pair_by_label_multiplied(mnist, svhn, 3, np.random.default_rng(7), max_per_class=15)
    b = pair_by_label_multiplied(mnist, svhn, 3, np.random.default_rng(7), max_per_class=15)
    c = pair_by_label_multiplied(mnist, svhn, 3, np.random.default_rng(8), max_per_class=15)
    assert len(a[0]) == 3 * (15 + 15)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(UserError, match="multiplication"):
        pair_by_label_multiplied(mnist, svhn, 0, np.random.default_rng(0))


def test_standard_pair_counts_in_entries() -> None:
    assert pair_count(MNIST_CLASS_COUNTS["train"], SVHN_CLASS_COUNTS["train"], 20) == 1_121_360
    assert pair_count(MNIST_CLASS_COUNTS["test"], SVHN_CLASS_COUNTS["test"], 20) == 200_000
    assert sum(SVHN_CLASS_COUNTS["train"]) == 73_257 and sum(SVHN_CLASS_COUNTS["test"]) == 26_032
    assert sum(MNIST_CLASS_COUNTS["train"]) == 60_000 and sum(MNIST_CLASS_COUNTS["test"]) == 10_000
    for name in ("mnist-svhn", "mnist-svhn-text"):
        info = INFOS[name]
        assert (info.n_train, info.n_test, info.offline) == (1_121_360, 200_000, False)
        for needed in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train_32x32.mat", "test_32x32.mat"):
            assert needed in info.needs
    assert INFOS["mnist-svhn-text"].modalities[-1] == f"text 8x{len(ALPHABET)} categorical"
    assert (INFOS["mnist-text"].n_train, INFOS["mnist-text"].n_test, INFOS["mnist-text"].offline) == (4000, 1000, True)


def test_digit_text_indices_equal_place_words_then_encode() -> None:
    labels = np.arange(200) % 10
    indices, offsets = digit_text_indices(labels, TEXT_LENGTH, np.random.default_rng(5))
    expected = encode_strings(place_words(labels, TEXT_LENGTH, np.random.default_rng(5)), TEXT_LENGTH)
    assert indices.dtype == np.int16 and indices.shape == (200, TEXT_LENGTH)
    np.testing.assert_array_equal(indices, expected)
    widths = np.array([len(DIGIT_WORDS[d]) for d in labels])
    assert (offsets >= 0).all() and (offsets <= TEXT_LENGTH - 1 - widths).all()
    # Every allowed offset occurs: "three" (5 letters) starts at 0, 1 or 2.
    assert set(offsets[labels == 3].tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- fabricated files


def _write_idx(path: Path, array: np.ndarray) -> None:
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _fabricate(root: Path, layout: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny MNIST idx files and SVHN .mat files in the exact formats; returns the sources."""
    rng = np.random.default_rng(seed)
    mnist_dir = root / "MNIST" / "raw" if layout == "subfolders" else root
    svhn_dir = root / "SVHN" if layout == "subfolders" else root
    mnist_dir.mkdir(parents=True, exist_ok=True)
    svhn_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if layout == "subfolders" else ""
    sources: dict[str, np.ndarray] = {}
    for split, prefix, n_mnist, n_svhn in (("train", "train", 47, 53), ("test", "t10k", 23, 19)):
        images = rng.integers(0, 256, size=(n_mnist, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_mnist).astype(np.uint8)
        _write_idx(mnist_dir / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(mnist_dir / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        x = rng.integers(0, 256, size=(32, 32, 3, n_svhn), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n_svhn, 1)).astype(np.uint8)
        y[0, 0] = 10  # SVHN writes digit 0 as 10
        scipy.io.savemat(svhn_dir / f"{split}_32x32.mat", {"X": x, "y": y}, do_compression=True)
        sources.update({f"{split}_mnist": images, f"{split}_mnist_labels": labels.astype(np.int64)})
        sources.update({f"{split}_svhn_x": x, f"{split}_svhn_y": y[:, 0].astype(np.int64)})
    return sources


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("mnist-svhn")
    return root, _fabricate(root, "flat")


def _counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels % 10, minlength=10).tolist()


@pytest.mark.parametrize("layout", ["flat", "subfolders"])
def test_mnist_svhn_loads_fabricated_files(tmp_path: Path, layout: str) -> None:
    src = _fabricate(tmp_path, layout)
    splits = load_mnist_svhn(tmp_path, multiplication=3)
    assert [m.name for m in splits.modalities] == ["mnist", "svhn"]
    assert [(m.shape, m.kind) for m in splits.modalities] == [((1, 28, 28), "image"), ((3, 32, 32), "image")]
    for split in ("train", "test"):
        data = getattr(splits, split)
        mnist_labels, svhn_labels = src[f"{split}_mnist_labels"], src[f"{split}_svhn_y"] % 10
        assert len(data) == pair_count(_counts(mnist_labels), _counts(svhn_labels), 3)
        # Each instance is stored once, in the files' order.
        assert data.data["mnist"].shape == (len(mnist_labels), 1, 28, 28) and data.data["mnist"].dtype == torch.uint8
        assert data.data["svhn"].shape == (len(svhn_labels), 3, 32, 32) and data.data["svhn"].dtype == torch.uint8
        rows_m, rows_s = data.rows["mnist"].numpy(), data.rows["svhn"].numpy()
        np.testing.assert_array_equal(data.labels.numpy(), mnist_labels[rows_m])
        np.testing.assert_array_equal(data.labels.numpy(), svhn_labels[rows_s])
        index = torch.arange(0, len(data), 2)
        batch = data.batch(index)
        assert batch.x["mnist"].shape == (len(index), 1, 28, 28) and batch.x["svhn"].shape == (len(index), 3, 32, 32)
        pixels_m = (batch.x["mnist"] * 255).round().to(torch.uint8).numpy()
        pixels_s = (batch.x["svhn"] * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(pixels_m[:, 0], src[f"{split}_mnist"][rows_m[index.numpy()]])
        expected_s = src[f"{split}_svhn_x"][..., rows_s[index.numpy()]].transpose(3, 2, 0, 1)
        np.testing.assert_array_equal(pixels_s, expected_s)


def test_svhn_label_ten_is_digit_zero(fabricated: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, src = fabricated
    images, labels = read_svhn_mat(root / "train_32x32.mat")
    assert images.shape == (53, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels[0] == 0 and labels.max() <= 9
    np.testing.assert_array_equal(labels, src["train_svhn_y"] % 10)
    np.testing.assert_array_equal(images[5, 2], src["train_svhn_x"][:, :, 2, 5])


def test_mnist_svhn_text_words_and_pairs(fabricated: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = fabricated
    plain = load_mnist_svhn(root, multiplication=2)
    splits = load_mnist_svhn_text(root, seed=11, multiplication=2)
    assert [m.name for m in splits.modalities] == ["mnist", "svhn", "text"]
    assert splits.modalities[2].shape == (8, 71) and splits.modalities[2].kind == "categorical"
    for split in ("train", "test"):
        data, base = getattr(splits, split), getattr(plain, split)
        # Same pairs with and without text, whatever the run seed.
        for name in ("mnist", "svhn"):
            assert torch.equal(data.rows[name], base.rows[name])
        assert data.data["text"].dtype == torch.int16 and data.data["text"].shape == (len(data), 8)
        one_hot = data.batch(torch.arange(len(data))).x["text"]
        assert one_hot.shape == (len(data), 8, 71)
        assert torch.equal(one_hot.sum(-1), torch.ones(len(data), 8))  # spaces are in the alphabet
        texts = decode_indices(one_hot.argmax(-1).numpy())
        for text, label in zip(texts, data.labels.tolist()):
            word = DIGIT_WORDS[label]
            assert len(text) == 8 and text.strip() == word
            assert text.index(word) <= 7 - len(word)
            assert set(text.replace(word, "", 1)) <= {" "}
    again = load_mnist_svhn_text(root, seed=0, multiplication=2)
    assert torch.equal(again.train.data["text"], splits.train.data["text"])


def test_entries_builders_use_multiplication_twenty(fabricated: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, src = fabricated
    splits = BUILDERS["mnist-svhn-text"](str(root), 0)
    counts = (_counts(src["test_mnist_labels"]), _counts(src["test_svhn_y"]))
    assert len(splits.test) == pair_count(*counts, 20)
    assert isinstance(BUILDERS["mnist-svhn"](str(root), 3), DatasetSplits)


def test_missing_files_name_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_mnist_svhn(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for needed in (
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train_32x32.mat",
        "test_32x32.mat",
        "http://yann.lecun.com/exdb/mnist/",
        "http://ufldl.stanford.edu/housenumbers/",
    ):
        assert needed in message
    with pytest.raises(DataError, match="data_dir"):
        BUILDERS["mnist-svhn"](None, 0)
    _fabricate(tmp_path, "flat")
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError) as error:
        BUILDERS["mnist-svhn-text"](str(tmp_path), 0)
    message = str(error.value)
    assert "test_32x32.mat" in message and "train_32x32.mat" not in message and "idx3" not in message


@pytest.mark.parametrize(
    "content, fragment",
    [
        ({"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1), np.uint8)}, "shape (28, 28, 3, 4)"),
        ({"X": np.zeros((32, 32, 3, 4), np.float64), "y": np.ones((4, 1), np.uint8)}, "float64"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1), np.uint8)}, "y of shape (3, 1)"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.full((4, 1), 11, np.uint8)}, "outside 1..10"),
        ({"X": np.zeros((32, 32, 3, 4), np.uint8)}, "lacks X or y"),
        (None, "cannot read"),
    ],
)
def test_malformed_svhn_file_is_a_data_error(tmp_path: Path, content: dict | None, fragment: str) -> None:
    _fabricate(tmp_path, "flat")
    path = tmp_path / "train_32x32.mat"
    if content is None:
        path.write_bytes(b"not a MATLAB file at all")
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(DataError) as error:
        load_mnist_svhn(tmp_path, multiplication=1)
    message = str(error.value)
    assert fragment in message and "train_32x32.mat" in message and "[32, 32, 3, N]" in message
    assert "\n" not in message


def test_wrong_mnist_image_size_is_a_data_error(tmp_path: Path) -> None:
    _fabricate(tmp_path, "flat")
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((47, 32, 32), np.uint8))
    with pytest.raises(DataError, match="28x28"):
        load_mnist_svhn(tmp_path, multiplication=1)


# ---------------------------------------------------------------- offline MNIST-Text


@pytest.fixture(scope="module")
def mnist_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DatasetSplits]]:
    folder = tmp_path_factory.mktemp("omnivae-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNIVAE_CACHE", str(folder))
        yield folder, BUILDERS["mnist-text"](None, 0)


def test_mnist_text_shapes_and_words(mnist_text: tuple[Path, DatasetSplits]) -> None:
    folder, splits = mnist_text
    assert (folder / "mnist-text-v1.npz").is_file()
    assert (len(splits.train), len(splits.test)) == (4000, 1000)
    assert [(m.name, m.shape, m.kind) for m in splits.modalities] == [
        ("mnist", (1, 28, 28), "image"),
        ("text", (8, 71), "categorical"),
    ]
    raw = mnist_text_arrays(folder)
    for split, n in (("train", 400), ("test", 100)):
        data = getattr(splits, split)
        assert data.data["mnist"].dtype == torch.uint8 and data.data["mnist"].shape == (n * 10, 1, 28, 28)
        assert data.data["text"].dtype == torch.int16 and data.data["text"].shape == (n * 10, 8)
        labels = data.labels.numpy()
        assert np.bincount(labels).tolist() == [n] * 10
        texts = decode_indices(data.data["text"].numpy())
        offsets = raw[f"{split}_offset"]
        for text, label, offset in zip(texts, labels.tolist(), offsets.tolist()):
            word = DIGIT_WORDS[label]
            assert len(text) == 8 and text[offset : offset + len(word)] == word and text.strip() == word
            assert 0 <= offset <= 7 - len(word)
    assert not set(raw["train_source"].tolist()) & set(raw["test_source"].tolist())
    digits, digit_labels = ms.mnist_digits()
    np.testing.assert_array_equal(raw["test_mnist"][:, 0], digits[raw["test_source"]])
    np.testing.assert_array_equal(raw["test_labels"], digit_labels[raw["test_source"]])


def test_mnist_text_is_deterministic_and_cached(
    mnist_text: tuple[Path, DatasetSplits], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, splits = mnist_text
    fresh = build_mnist_text_arrays()
    cached = mnist_text_arrays(folder)
    assert sorted(fresh) == sorted(cached)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], cached[key])

    def refuse() -> dict[str, np.ndarray]:
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(ms, "build_mnist_text_arrays", refuse)
    monkeypatch.setenv("OMNIVAE_CACHE", str(folder))
    again = load_mnist_text(None, seed=5)
    assert torch.equal(again.train.data["text"], splits.train.data["text"])
    assert torch.equal(again.test.data["mnist"], splits.test.data["mnist"])
