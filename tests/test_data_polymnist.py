"""Tests for the PolyMNIST family: real-file layouts, full-size builds, translated and fashion.

Every file here is fabricated in ``tmp_path`` in the exact format of the real data: PNG
folders written by Pillow or by a small PNG encoder below (to cover every row filter),
tensors written by ``torch.save``, idx files written byte by byte. Backgrounds are
small random photos so the full-size builders run on a few dozen digits in milliseconds.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnivae.data import polymnist, polymnist_build, polymnist_files
from omnivae.data.polymnist import (
    ENTRIES,
    FASHION_LABEL_NAMES,
    build_from_idx,
    build_polymnist_arrays,
    build_translated_arrays,
    load_polyfashion,
    load_polymnist,
    load_translated_polymnist,
    translate_digits,
)
from omnivae.data.polymnist_files import decode_png_files, list_png_modality, unfilter_png_rows
from omnivae.errors import DataError

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- fixtures and writers


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("OMNIVAE_CACHE", str(folder))
    return folder


@pytest.fixture
def backgrounds(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Five small random photos in place of the bundled ones (same role, tiny sizes)."""
    rng = np.random.default_rng(7)
    photos = [rng.integers(0, 256, size=(30 + k, 33 + 2 * k, 3), dtype=np.uint8) for k in range(5)]
    monkeypatch.setattr(polymnist_build, "background_images", lambda: photos)
    return photos


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [n, 28, 28]`` digits: faint noise (<= 99) plus one bright block (> 128)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 100, size=(n, 28, 28)).astype(np.uint8)
    for i in range(n):
        top, left = rng.integers(0, 20, size=2)
        images[i, top : top + rng.integers(3, 9), left : left + rng.integers(3, 9)] = rng.integers(129, 256)
    return images, (np.arange(n) % 10).astype(np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = fake_digits(n_train, 1)
    test_images, test_labels = fake_digits(n_test, 2)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for role, stem in IDX_NAMES.items():
        raw = idx_bytes(arrays[role])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def encode_png(rgb: np.ndarray, filters: list[int], split_idat: bool = False) -> bytes:
    """An 8-bit RGB PNG with the given filter type per row (RFC 2083, Section 6)."""
    height, width, _ = rgb.shape
    rows = rgb.astype(np.int16).reshape(height, width * 3)
    body = bytearray()
    prev = np.zeros(width * 3, np.int16)
    for r in range(height):
        x = rows[r]
        a = np.concatenate([np.zeros(3, np.int16), x[:-3]])
        c = np.concatenate([np.zeros(3, np.int16), prev[:-3]])
        b = prev
        kind = filters[r]
        if kind == 0:
            predictor = np.zeros_like(x)
        elif kind == 1:
            predictor = a
        elif kind == 2:
            predictor = b
        elif kind == 3:
            predictor = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        body.append(kind)
        body += ((x - predictor) % 256).astype(np.uint8).tobytes()
        prev = x

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stream = zlib.compress(bytes(body))
    parts = [stream[: len(stream) // 2], stream[len(stream) // 2 :]] if split_idat else [stream]
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunk(b"IDAT", p) for p in parts) + chunk(b"IEND", b"")


def write_png_layout(
    root: Path, n_modalities: int = 3, n: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """PNG layout ``{split}/m{k}/{i}.{d}.png``; image ``i`` has value ``i`` at pixel (0,0,0).

    Returns the expected arrays in sorted order: ``{split}_m{k}`` and ``{split}_labels``.
    """
    n = n or {"train": 12, "test": 4}
    rng = np.random.default_rng(3)
    expected: dict[str, np.ndarray] = {}
    for split, count in n.items():
        labels = (np.arange(count) * 7) % 10
        expected[f"{split}_labels"] = labels
        for k in range(n_modalities):
            folder = root / split / f"m{k}"
            folder.mkdir(parents=True)
            images = rng.integers(0, 256, size=(count, 28, 28, 3), dtype=np.uint8)
            images[:, 0, 0, 0] = np.arange(count)
            for i in range(count):
                Image.fromarray(images[i]).save(folder / f"{i}.{labels[i]}.png")
            expected[f"{split}_m{k}"] = images.transpose(0, 3, 1, 2)
    return expected


def window_of(background: np.ndarray, crop: np.ndarray) -> bool:
    """True if ``crop [3, 28, 28]`` is a 28x28 window of ``background [H, W, 3]``."""
    windows = np.lib.stride_tricks.sliding_window_view(background, (28, 28), axis=(0, 1))
    return bool((windows == crop).all(axis=(2, 3, 4)).any())


# --------------------------------------------------------------------------- PNG decoding


def test_png_decoder_undoes_every_row_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28, 3), dtype=np.uint8)
    images[:6] = np.cumsum(images[:6] // 16, axis=2, dtype=np.uint8)  # smooth rows as well as noise
    paths = []
    for i, image in enumerate(images):
        filters = rng.integers(0, 5, size=28).tolist()
        filters[0] = [3, 4, 2, 1, 0][i % 5]  # the first row sees zeros above: cover every type
        path = tmp_path / f"{i}.0.png"
        path.write_bytes(encode_png(image, filters, split_idat=i % 2 == 1))
        paths.append(path)
        # The encoder is right: Pillow reads the same pixels.
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    decoded = decode_png_files(paths)
    assert decoded.shape == (12, 3, 28, 28) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, images.transpose(0, 3, 1, 2))


def test_numpy_unfilter_matches_the_encoder() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10, 28, 28, 3), dtype=np.uint8)
    filtered = []
    for i, image in enumerate(images):
        filters = rng.integers(0, 5, size=28).tolist()
        raw = encode_png(image, filters)
        start = raw.index(b"IDAT") + 4
        length = struct.unpack(">I", raw[start - 8 : start - 4])[0]
        filtered.append(np.frombuffer(zlib.decompress(raw[start : start + length]), np.uint8).reshape(28, 85))
    out = unfilter_png_rows(np.stack(filtered), 3)
    np.testing.assert_array_equal(out, images.reshape(10, 28, 84))


def test_png_decoder_converts_other_modes_with_pillow(tmp_path: Path) -> None:
    grey = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    Image.fromarray(grey.astype(np.uint8), "L").save(tmp_path / "0.1.png")
    rgba = np.random.default_rng(2).integers(0, 256, size=(28, 28, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "1.1.png")
    out = decode_png_files([tmp_path / "0.1.png", tmp_path / "1.1.png"])
    np.testing.assert_array_equal(out[0], np.broadcast_to(grey.astype(np.uint8), (3, 28, 28)))
    np.testing.assert_array_equal(out[1], rgba[:, :, :3].transpose(2, 0, 1))


def test_png_decoder_rejects_wrong_sizes_and_damage(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "0.0.png")
    with pytest.raises(DataError, match=r"0\.0\.png.*32x32.*28x28"):
        decode_png_files([tmp_path / "0.0.png"])
    raw = encode_png(np.zeros((28, 28, 3), np.uint8), [0] * 28)
    start = raw.index(b"IDAT") + 4
    (tmp_path / "1.0.png").write_bytes(raw[: start + 3] + b"\x00\x00\x00" + raw[start + 6 :])
    with pytest.raises(DataError, match=r"1\.0\.png.*damaged"):
        decode_png_files([tmp_path / "1.0.png"])


def test_png_listing_sorts_by_integer_index(tmp_path: Path) -> None:
    for name in ("10.1.png", "9.3.png", "2.5.png", "0.0.png", "1.2.png", "0.7.png"):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    paths, labels = list_png_modality(tmp_path)
    assert [p.name for p in paths] == ["0.0.png", "0.7.png", "1.2.png", "2.5.png", "9.3.png", "10.1.png"]
    assert labels.tolist() == [0, 7, 2, 5, 3, 1] and labels.dtype == np.int64


# --------------------------------------------------------------------------- PNG layout


def test_png_layout_reads_sorted_paired_images(tmp_path: Path) -> None:
    expected = write_png_layout(tmp_path / "data" / "MMNIST")
    splits = load_polymnist(tmp_path / "data")
    for split, data in (("train", splits.train), ("test", splits.test)):
        assert data.modality_names == ["m0", "m1", "m2"] and data.name == "polymnist"
        assert data.label_names == [str(d) for d in range(10)]
        np.testing.assert_array_equal(data.labels.numpy(), expected[f"{split}_labels"])
        for k in range(3):
            images = data.data[f"m{k}"].numpy()
            assert images.dtype == np.uint8 and images.shape == expected[f"{split}_m{k}"].shape
            np.testing.assert_array_equal(images, expected[f"{split}_m{k}"])
    # 10.*.png and 11.*.png come after 9.*.png, not after 1.*.png.
    assert splits.train.data["m1"][:, 0, 0, 0].tolist() == list(range(12))


def test_png_layout_is_cached_and_reread_when_files_change(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_png_layout(tmp_path / "d")
    first = load_polymnist(tmp_path / "d")
    assert len(list(private_cache.glob("polymnist-png-v1-*.npz"))) == 1

    def no_decoding(paths: list[Path]) -> np.ndarray:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(polymnist_files, "decode_png_files", no_decoding)
    again = load_polymnist(tmp_path / "d")
    assert torch.equal(again.test.data["m2"], first.test.data["m2"])
    # A changed listing has another fingerprint, so the files are decoded again.
    changed = tmp_path / "d" / "test" / "m0" / "0.0.png"
    os.utime(changed, ns=(1, 1))
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_polymnist(tmp_path / "d")


def test_png_layout_with_unequal_folders_names_the_folder(tmp_path: Path) -> None:
    write_png_layout(tmp_path)
    (tmp_path / "train" / "m2" / "11.7.png").unlink()
    with pytest.raises(DataError, match=r"train/m2.*11 images.*m0.*12"):
        load_polymnist(tmp_path)


def test_png_layout_with_mismatched_labels_names_the_folder(tmp_path: Path) -> None:
    write_png_layout(tmp_path)
    folder = tmp_path / "test" / "m1"
    (folder / "3.1.png").rename(folder / "3.4.png")
    with pytest.raises(DataError, match=r"test/m1.*does not pair.*3\.4\.png"):
        load_polymnist(tmp_path)


def test_png_layout_rejects_misnamed_files_and_missing_test(tmp_path: Path) -> None:
    write_png_layout(tmp_path / "a")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a" / "train" / "m0" / "digit.png")
    with pytest.raises(DataError, match=r"digit\.png.*\{index\}\.\{digit\}\.png"):
        load_polymnist(tmp_path / "a")
    write_png_layout(tmp_path / "b", n={"train": 3})
    with pytest.raises(DataError, match="no test/ folder"):
        load_polymnist(tmp_path / "b")


# --------------------------------------------------------------------------- tensor layout


def write_tensor_layout(root: Path, n: dict[str, int] | None = None, modalities: int = 5) -> dict[str, torch.Tensor]:
    n = n or {"train": 6, "test": 3}
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for split, count in n.items():
        (root / split).mkdir(parents=True)
        for k in range(modalities):
            images = torch.rand(count, 3, 28, 28, generator=generator)
            images[0, 0, 0, :2] = torch.tensor([0.0, 1.0])
            torch.save(images, root / split / f"m{k}.pt")
            tensors[f"{split}_m{k}"] = images
        tensors[f"{split}_labels"] = torch.arange(count) % 10
        torch.save(tensors[f"{split}_labels"], root / split / "labels.pt")
    return tensors


def test_tensor_layout_reads_and_rounds(tmp_path: Path) -> None:
    tensors = write_tensor_layout(tmp_path / "PolyMNIST")
    splits = load_polymnist(tmp_path)
    assert len(splits.train) == 6 and len(splits.test) == 3
    for split, data in (("train", splits.train), ("test", splits.test)):
        assert data.modality_names == [f"m{k}" for k in range(5)]
        assert torch.equal(data.labels, tensors[f"{split}_labels"])
        for k in range(5):
            expected = (tensors[f"{split}_m{k}"] * 255).round().to(torch.uint8)
            assert data.data[f"m{k}"].dtype == torch.uint8
            assert torch.equal(data.data[f"m{k}"], expected)
    assert splits.train.data["m0"][0, 0, 0, :2].tolist() == [0, 255]


def test_tensor_layout_rejects_values_outside_unit_range(tmp_path: Path) -> None:
    write_tensor_layout(tmp_path)
    torch.save(torch.full((3, 3, 28, 28), 1.5), tmp_path / "test" / "m4.pt")
    with pytest.raises(DataError, match=r"test/m4\.pt.*outside \[0, 1\]"):
        load_polymnist(tmp_path)


def test_tensor_layout_rejects_bad_shapes_and_labels(tmp_path: Path) -> None:
    write_tensor_layout(tmp_path / "a")
    torch.save(torch.rand(6, 1, 28, 28), tmp_path / "a" / "train" / "m1.pt")
    with pytest.raises(DataError, match=r"train/m1\.pt.*\(6, 1, 28, 28\).*\[N, 3, 28, 28\]"):
        load_polymnist(tmp_path / "a")
    write_tensor_layout(tmp_path / "b")
    torch.save(torch.arange(5), tmp_path / "b" / "train" / "labels.pt")
    with pytest.raises(DataError, match=r"labels\.pt.*one integer label per image"):
        load_polymnist(tmp_path / "b")
    write_tensor_layout(tmp_path / "c")
    (tmp_path / "c" / "test" / "labels.pt").unlink()
    with pytest.raises(DataError, match=r"lacks labels\.pt.*zenodo"):
        load_polymnist(tmp_path / "c")


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "payload"


class _Payload:
    def __reduce__(self) -> tuple:
        return (_record_unpickling, ())


def test_tensor_layout_never_unpickles_code(tmp_path: Path) -> None:
    write_tensor_layout(tmp_path)
    torch.save(_Payload(), tmp_path / "train" / "m3.pt")
    with pytest.raises(DataError, match=r"train/m3\.pt.*torch\.save"):
        load_polymnist(tmp_path)
    assert _UNPICKLED == []


# --------------------------------------------------------------------------- missing files


def test_missing_files_error_names_every_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_polymnist(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for needed in ("{train,test}/m{k}/{i}.{digit}.png", "m{k}.pt", "labels.pt", "zenodo.org/record/4899160",
                   "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "without data_dir"):
        assert needed in message
    with pytest.raises(DataError, match="not a folder"):
        load_polymnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"Translated_MMNIST_scale_75_translated_True.*idx"):
        load_translated_polymnist(tmp_path)


# --------------------------------------------------------------------------- full-size builds


def test_polymnist_from_idx_follows_the_recipe(tmp_path: Path, backgrounds: list[np.ndarray]) -> None:
    digits = write_idx(tmp_path / "MNIST" / "raw", gz=True)
    splits = load_polymnist(tmp_path)
    assert len(splits.train) == 50 and len(splits.test) == 20
    assert splits.train.modality_names == [f"m{k}" for k in range(5)]
    raw = build_from_idx(tmp_path / "MNIST" / "raw")
    for split, data in (("train", splits.train), ("test", splits.test)):
        images, labels = digits[f"{split}_images"], digits[f"{split}_labels"]
        sample_labels = raw[f"{split}_labels"]
        assert torch.equal(data.labels, torch.from_numpy(sample_labels))
        for k in range(5):
            source = raw[f"{split}_source_m{k}"]
            # Every instance once per modality, each with the sample's label.
            assert sorted(source.tolist()) == list(range(len(labels)))
            np.testing.assert_array_equal(labels[source], sample_labels)
            stored = data.data[f"m{k}"].numpy()
            np.testing.assert_array_equal(stored, raw[f"{split}_m{k}"])
            for i in range(0, len(labels), 7):
                on = images[source[i]] > 128
                # Undo the inversion under the digit: the rest is a window of m{k}'s photo.
                crop = np.where(on[None], 255 - stored[i], stored[i])
                assert window_of(backgrounds[k], crop), (split, k, i)
    # Paired by label only: modalities draw different instances.
    assert (raw["train_source_m0"] != raw["train_source_m1"]).any()


def test_idx_build_is_deterministic_and_cached(
    tmp_path: Path, private_cache: Path, backgrounds: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_idx(tmp_path)
    first = build_from_idx(tmp_path)
    second = build_from_idx(tmp_path)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    loaded = load_polymnist(tmp_path)
    assert len(list(private_cache.glob("polymnist-mnist-v1-*.npz"))) == 1

    def no_build(*args: object, **kwargs: object) -> dict:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(polymnist, "build_from_idx", no_build)
    again = load_polymnist(tmp_path)
    assert torch.equal(again.train.data["m4"], loaded.train.data["m4"])
    # Replacing an idx file changes the fingerprint in the cache name.
    (tmp_path / IDX_NAMES["test_labels"]).write_bytes(idx_bytes(np.zeros(20, np.uint8)))
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_polymnist(tmp_path)


# --------------------------------------------------------------------------- translated


def test_translate_digits_footprint_and_offsets() -> None:
    rng = np.random.default_rng(0)
    full = np.full((400, 28, 28), 255, np.uint8)
    canvas, offsets = translate_digits(full, rng, 0.75)
    assert canvas.shape == (400, 28, 28) and canvas.dtype == np.uint8
    assert offsets.shape == (400, 2) and offsets.dtype == np.int64
    # MultiVae's randint(0, int(28 * 0.25)): 0..6, every value drawn.
    assert set(offsets.ravel().tolist()) == set(range(7))
    on = canvas > 128
    assert (on.sum(axis=(1, 2)) == 21 * 21).all()
    for i in range(0, 400, 37):
        top, left = offsets[i]
        assert on[i, top : top + 21, left : left + 21].all()
    centred, fixed = translate_digits(full[:3], rng, 0.75, translate=False)
    assert (fixed == 3).all() and centred[0, 3:24, 3:24].min() == 255 and centred[0].sum() == 255 * 441
    half, half_offsets = translate_digits(full, rng, 0.5)
    assert ((half > 128).sum(axis=(1, 2)) == 14 * 14).all()
    assert half_offsets.min() >= 0 and half_offsets.max() == 13


def test_translate_digits_uses_bilinear_downscaling() -> None:
    digits, _ = fake_digits(4, 5)
    canvas, offsets = translate_digits(digits, np.random.default_rng(1), 0.75)
    small = torch.nn.functional.interpolate(
        torch.from_numpy(digits).float()[:, None], size=(21, 21), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    for i, (top, left) in enumerate(offsets):
        window = canvas[i, top : top + 21, left : left + 21]
        np.testing.assert_array_equal(window > 128, small[i] > 128)
        np.testing.assert_allclose(window, small[i], atol=1)
        outside = canvas[i].copy()
        outside[top : top + 21, left : left + 21] = 0
        assert not outside.any()


def test_translated_from_idx_inverts_only_inside_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path, n_train=30, n_test=10)
    flat = [np.full((30, 30, 3), 40 + 10 * k, np.uint8) for k in range(5)]
    monkeypatch.setattr(polymnist_build, "background_images", lambda: flat)
    splits = load_translated_polymnist(tmp_path)
    assert splits.train.name == "translated-polymnist" and len(splits.train) == 30
    raw = build_from_idx(tmp_path, scale=0.75)
    for k in range(5):
        images = splits.train.data[f"m{k}"].numpy()
        np.testing.assert_array_equal(images, raw[f"train_m{k}"])
        inverted = images[:, 0] == 255 - (40 + 10 * k)
        assert (inverted | (images[:, 0] == 40 + 10 * k)).all()
        for i, (top, left) in enumerate(raw[f"train_offset_m{k}"]):
            assert 0 <= top <= 6 and 0 <= left <= 6
            inside = np.zeros((28, 28), bool)
            inside[top : top + 21, left : left + 21] = True
            assert inverted[i].any() and not (inverted[i] & ~inside).any()
    # The registered 0.5 variant: 14x14 windows, offsets 0..13.
    builder = dict((info.name, build) for info, build in ENTRIES)["translated-polymnist-50"]
    half = builder(str(tmp_path), 0)
    assert half.train.name == "translated-polymnist-50" and len(half.test) == 10
    raw_half = build_from_idx(tmp_path, scale=0.5)
    assert raw_half["train_offset_m0"].max() <= 13
    np.testing.assert_array_equal(half.train.data["m0"].numpy(), raw_half["train_m0"])


def test_translated_png_layout(tmp_path: Path) -> None:
    expected = write_png_layout(tmp_path / "Translated_MMNIST_scale_75_translated_True", 5, {"train": 4, "test": 2})
    splits = load_translated_polymnist(tmp_path)
    np.testing.assert_array_equal(splits.test.data["m4"].numpy(), expected["test_m4"])
    # The folder of another scale is not taken for this one.
    with pytest.raises(DataError, match="Translated_MMNIST_scale_50_translated_True"):
        load_translated_polymnist(tmp_path, scale=0.5)


def test_translated_offline_shares_the_polymnist_split(monkeypatch: pytest.MonkeyPatch) -> None:
    digits, labels = fake_digits(100, 9)
    monkeypatch.setattr(polymnist_build, "mnist_digits", lambda: (digits, labels))
    monkeypatch.setattr(polymnist_build, "background_images",
                        lambda: [np.full((29, 30, 3), 9 * k, np.uint8) for k in range(5)])
    plain = build_polymnist_arrays()
    moved = build_translated_arrays(0.75)
    assert set(moved["train_source_m0"].tolist()) == set(plain["train_source_m0"].tolist())
    assert len(moved["train_labels"]) == 80 and len(moved["test_labels"]) == 20
    again = build_translated_arrays(0.75)
    np.testing.assert_array_equal(again["test_m3"], moved["test_m3"])
    splits = load_translated_polymnist()
    assert len(splits.train) == 80 and splits.train.modality_names == [f"m{k}" for k in range(5)]
    np.testing.assert_array_equal(splits.train.data["m2"].numpy(), moved["train_m2"])


# --------------------------------------------------------------------------- polyfashion


def test_polyfashion_from_a_fabricated_idx_folder(
    tmp_path: Path, private_cache: Path, backgrounds: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    digits = write_idx(tmp_path / "fashion", n_train=40, n_test=10)
    splits = load_polyfashion(str(tmp_path / "fashion"))
    assert (len(splits.train), len(splits.test)) == (40, 10)
    assert splits.train.name == "polyfashion" and splits.train.label_names == FASHION_LABEL_NAMES
    assert FASHION_LABEL_NAMES[0] == "T-shirt/top" and FASHION_LABEL_NAMES[9] == "Ankle boot"
    raw = build_from_idx(tmp_path / "fashion")
    np.testing.assert_array_equal(digits["train_labels"][raw["train_source_m3"]], splits.train.labels.numpy())
    assert len(list(private_cache.glob("polyfashion-v1-*.npz"))) == 1
    # Without --data-dir the Debian package's folder is used.
    monkeypatch.setattr(polymnist, "FASHION_MNIST_DIR", tmp_path / "fashion")
    assert torch.equal(load_polyfashion().test.data["m1"], splits.test.data["m1"])


def test_polyfashion_errors_name_the_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(polymnist, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as error:
        load_polyfashion()
    assert str(error.value) == (
        "polyfashion needs Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist) "
        "or data_dir with the Fashion-MNIST idx files"
    )
    with pytest.raises(DataError, match=r"lacks the Fashion-MNIST idx files.*train-images-idx3-ubyte"):
        load_polyfashion(tmp_path)


# --------------------------------------------------------------------------- catalogue entries


def test_entries_describe_the_datasets() -> None:
    infos = {info.name: info for info, _ in ENTRIES}
    assert list(infos) == ["polymnist", "translated-polymnist", "translated-polymnist-50", "polyfashion"]
    assert infos["polymnist"].needs == "" and "--data-dir" in infos["polymnist"].description
    assert "idx" in infos["polymnist"].description and ".pt" in infos["polymnist"].description
    assert "mmvampvae" in infos["translated-polymnist-50"].description
    fashion = infos["polyfashion"]
    assert fashion.offline and "dataset-fashion-mnist" in fashion.needs
    assert (fashion.n_train, fashion.n_test) == (60000, 10000)
    for info in infos.values():
        assert info.modalities == [f"m{k} 3x28x28 image" for k in range(5)]
