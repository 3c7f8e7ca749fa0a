"""Tests for omnivae.data: the PolyMNIST build, the cache, npz user arrays and batching."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivae.data import (
    DATASETS,
    DatasetSplits,
    ModalitySpec,
    MultimodalDataset,
    cache_dir,
    dataset_table,
    load_dataset,
    load_npz,
    load_npz_array,
)
from omnivae.data.cache import (
    cached_npz,
    read_verified_npz,
    sha256_file,
    sidecar_path,
    write_npz_atomic,
)
from omnivae.data.polymnist import (
    POLYMNIST_BACKGROUNDS,
    POLYMNIST_CACHE_FILE,
    background_images,
    mnist_digits,
    overlay_digits,
    polymnist_arrays,
    random_crops,
)
from omnivae.errors import DataError, UserError

MODALITIES = [f"m{k}" for k in range(5)]


# --------------------------------------------------------------------------- PolyMNIST


@pytest.fixture(scope="session")
def polymnist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DatasetSplits]]:
    """Build PolyMNIST once, into a private cache folder, through the public loader."""
    folder = tmp_path_factory.mktemp("omnivae-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNIVAE_CACHE", str(folder))
        yield folder, load_dataset("polymnist")


@pytest.fixture(scope="session")
def polymnist_raw(polymnist: tuple[Path, DatasetSplits]) -> dict[str, np.ndarray]:
    folder, _ = polymnist
    return polymnist_arrays(folder)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return mnist_digits()


def test_polymnist_is_cached_with_checksum(polymnist: tuple[Path, DatasetSplits]) -> None:
    folder, _ = polymnist
    path = folder / POLYMNIST_CACHE_FILE
    assert path.is_file()
    record = json.loads(sidecar_path(path).read_text())
    assert record["sha256"] == sha256_file(path)
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_polymnist_shapes_and_dtypes(polymnist: tuple[Path, DatasetSplits]) -> None:
    _, splits = polymnist
    assert [m.name for m in splits.modalities] == MODALITIES
    assert all(m.shape == (3, 28, 28) and m.kind == "image" for m in splits.modalities)
    for split, n in ((splits.train, 4000), (splits.test, 1000)):
        assert len(split) == n
        assert split.name == "polymnist"
        assert split.label_names == [str(d) for d in range(10)]
        assert split.labels is not None and split.labels.dtype == torch.int64
        for name in MODALITIES:
            assert split.data[name].dtype == torch.uint8
            assert split.data[name].shape == (n, 3, 28, 28)
            assert bool(split.masks[name].all())
    assert splits.train.labels.bincount().tolist() == [400] * 10
    assert splits.test.labels.bincount().tolist() == [100] * 10


def test_polymnist_train_and_test_share_no_digit(
    polymnist_raw: dict[str, np.ndarray], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    _, mnist_labels = digits
    train_instances = set(polymnist_raw["train_source_m0"].tolist())
    test_instances = set(polymnist_raw["test_source_m0"].tolist())
    assert len(train_instances) == 4000 and len(test_instances) == 1000
    assert train_instances.isdisjoint(test_instances)
    for split, instances in (("train", train_instances), ("test", test_instances)):
        for name in MODALITIES:
            source = polymnist_raw[f"{split}_source_{name}"]
            # Each modality uses every instance of its split exactly once.
            assert set(source.tolist()) == instances and len(source) == len(instances)
            # Pairing is by label: sample i has the split's label in every modality.
            np.testing.assert_array_equal(mnist_labels[source], polymnist_raw[f"{split}_labels"])


def test_polymnist_modalities_pair_different_instances(
    polymnist_raw: dict[str, np.ndarray],
) -> None:
    for a in range(5):
        for b in range(a + 1, 5):
            same = polymnist_raw[f"train_source_m{a}"] == polymnist_raw[f"train_source_m{b}"]
            # Independent permutations of 400 instances per class rarely coincide.
            assert same.mean() < 0.01


def test_polymnist_modalities_have_different_backgrounds(
    polymnist: tuple[Path, DatasetSplits],
) -> None:
    _, splits = polymnist
    means = torch.stack(
        [splits.train.data[name].float().mean(dim=(0, 2, 3)) for name in MODALITIES]
    )
    distances = torch.cdist(means, means)
    assert float(distances[~torch.eye(5, dtype=torch.bool)].min()) > 5.0
    for a in range(5):
        for b in range(a + 1, 5):
            equal = (splits.train.data[MODALITIES[a]] == splits.train.data[MODALITIES[b]])
            assert not bool(equal.flatten(1).all(dim=1).any())


def _find_window(background: np.ndarray, crop: np.ndarray) -> tuple[int, int] | None:
    """The top-left corner of ``crop`` ([3, 28, 28]) inside ``background`` ([H, W, 3])."""
    size = crop.shape[-1]
    rows = np.lib.stride_tricks.sliding_window_view(background, size, axis=1)
    first_row = (rows == crop[:, 0, :]).all(axis=(2, 3))  # [H, W - size + 1]
    for top, left in zip(*np.nonzero(first_row[: background.shape[0] - size + 1])):
        window = background[top : top + size, left : left + size].transpose(2, 0, 1)
        if np.array_equal(window, crop):
            return int(top), int(left)
    return None


def test_polymnist_images_follow_the_recipe(
    polymnist_raw: dict[str, np.ndarray], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    mnist_images, _ = digits
    backgrounds = background_images()
    for m, name in enumerate(MODALITIES):
        for i in (0, 1, 999):
            image = polymnist_raw[f"test_{name}"][i]
            digit = mnist_images[polymnist_raw[f"test_source_{name}"][i]] > 128
            assert digit.any()
            # Undo the inversion under the digit; what remains must be a window of the photo.
            crop = np.where(digit[None], 255 - image, image)
            assert _find_window(backgrounds[m], crop) is not None, (name, i)
            for other in range(5):
                if other != m and _find_window(backgrounds[other], crop) is not None:
                    pytest.fail(f"{name} sample {i} matches the background of m{other}")


def test_background_sources_are_fixed() -> None:
    assert POLYMNIST_BACKGROUNDS == (
        "skimage:chelsea",
        "skimage:coffee",
        "skimage:immunohistochemistry",
        "skimage:astronaut",
        "sklearn:china.jpg",
    )
    assert all(b.dtype == np.uint8 and b.shape[2] == 3 for b in background_images())


def test_mnist_digits_layout(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and (images > 128).sum(axis=(1, 2)).min() > 0


def test_overlay_inverts_background_under_the_digit() -> None:
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    crops = rng.integers(0, 256, size=(4, 3, 28, 28), dtype=np.uint8)
    out = overlay_digits(digits, crops)
    assert out.dtype == np.uint8 and out.shape == crops.shape
    on = np.broadcast_to((digits > 128)[:, None], crops.shape)
    np.testing.assert_array_equal(out[on], 255 - crops[on])
    np.testing.assert_array_equal(out[~on], crops[~on])
    # The threshold is strict: 128 stays background, 129 is digit.
    edge = np.zeros((1, 28, 28), np.uint8)
    edge[0, 0, 0], edge[0, 0, 1] = 128, 129
    flat = overlay_digits(edge, np.full((1, 3, 28, 28), 40, np.uint8))
    assert flat[0, 0, 0, 0] == 40 and flat[0, 0, 0, 1] == 215


def test_random_crops_are_uniform_windows() -> None:
    rng = np.random.default_rng(2)
    background = rng.integers(0, 256, size=(30, 31, 3), dtype=np.uint8)
    crops = random_crops(background, 300, rng)
    assert crops.shape == (300, 3, 28, 28) and crops.dtype == np.uint8
    corners = {_find_window(background, crop) for crop in crops}
    # Every top-left corner 0..H-28 x 0..W-28 is reachable, the last ones included.
    assert corners == {(t, l) for t in range(3) for l in range(4)}


def test_polymnist_rebuilds_damaged_cache_identically(
    polymnist: tuple[Path, DatasetSplits], tmp_path: Path
) -> None:
    folder, splits = polymnist
    source = folder / POLYMNIST_CACHE_FILE
    original = sha256_file(source)
    damaged = tmp_path / POLYMNIST_CACHE_FILE
    shutil.copy(source, damaged)
    shutil.copy(sidecar_path(source), sidecar_path(damaged))
    with open(damaged, "r+b") as handle:
        handle.seek(damaged.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert read_verified_npz(damaged) is None
    arrays = polymnist_arrays(tmp_path)
    # The rebuild is byte-identical to the first build: the build is deterministic.
    assert sha256_file(damaged) == original
    np.testing.assert_array_equal(arrays["train_m3"], splits.train.data["m3"].numpy())


# --------------------------------------------------------------------------- cache


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OMNIVAE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "omnivae"


def _counting_builder() -> tuple[Callable[[], dict[str, np.ndarray]], list[int]]:
    calls: list[int] = []

    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"a": np.arange(100, dtype=np.uint8).reshape(4, 25), "b": np.ones(3, np.int64)}

    return build, calls


def test_cache_writes_reproducible_bytes(tmp_path: Path) -> None:
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4)}
    first = write_npz_atomic(tmp_path / "one.npz", arrays)
    second = write_npz_atomic(tmp_path / "two.npz", arrays)
    assert first == second == sha256_file(tmp_path / "one.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.npz",
        "one.npz.sha256.json",
        "two.npz",
        "two.npz.sha256.json",
    ]
    loaded = read_verified_npz(tmp_path / "one.npz")
    assert loaded is not None
    np.testing.assert_array_equal(loaded["x"], arrays["x"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-sidecar", "bad-sidecar", "garbage"])
def test_cache_rebuilds_when_damaged(tmp_path: Path, damage: str) -> None:
    build, calls = _counting_builder()
    cached_npz("toy-v1.npz", build, tmp_path)
    cached_npz("toy-v1.npz", build, tmp_path)
    assert len(calls) == 1
    path = tmp_path / "toy-v1.npz"
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "no-sidecar":
        sidecar_path(path).unlink()
    elif damage == "bad-sidecar":
        sidecar_path(path).write_text("{not json")
    else:
        path.write_bytes(b"not a zip file")
    arrays = cached_npz("toy-v1.npz", build, tmp_path)
    assert len(calls) == 2
    np.testing.assert_array_equal(arrays["a"], build()["a"])
    assert read_verified_npz(path) is not None


def test_cache_unwritable_folder_still_returns_arrays(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    build, _ = _counting_builder()
    with pytest.warns(UserWarning, match="OMNIVAE_CACHE"):
        arrays = cached_npz("toy-v1.npz", build, blocker / "sub")
    assert arrays["a"].shape == (4, 25)


# --------------------------------------------------------------------------- npz


def _toy_arrays(n: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(n, 5))
    mask_vec = np.ones(n, dtype=bool)
    mask_vec[[2, 7]] = False
    vec[2, 1] = np.nan
    vec[7] = np.inf
    mask_img = np.ones(n, dtype=bool)
    mask_img[[3]] = False
    return {
        "img": rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8),
        "vec": vec,
        "bits": rng.random((n, 4)) > 0.5,
        "counts": rng.integers(0, 9, size=(n, 2)).astype(np.int32),
        "scalar": rng.normal(size=n).astype(np.float32),
        "labels": np.array(["dog", "cat", "ant"])[np.arange(n) % 3],
        "mask_vec": mask_vec,
        "mask_img": mask_img,
    }


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_round_trip(tmp_path: Path) -> None:
    arrays = _toy_arrays()
    ds = load_npz_array(_save(tmp_path / "toy.npz", **arrays))
    assert [(m.name, m.shape, m.kind) for m in ds.modalities] == [
        ("img", (3, 8, 8), "image"),
        ("vec", (5,), "vector"),
        ("bits", (4,), "binary"),
        ("counts", (2,), "vector"),
        ("scalar", (1,), "vector"),
    ]
    assert ds.data["img"].dtype == torch.uint8
    assert all(ds.data[k].dtype == torch.float32 for k in ("vec", "bits", "counts", "scalar"))
    assert len(ds) == 30 and ds.name == "toy"
    assert ds.label_names == ["ant", "cat", "dog"]
    assert ds.labels.tolist()[:3] == [2, 1, 0]
    assert ds.masks["vec"].tolist() == arrays["mask_vec"].tolist()
    assert ds.masks["img"].tolist() == arrays["mask_img"].tolist()
    assert bool(ds.masks["bits"].all())
    # Masked rows (NaN and inf included) are accepted and zeroed; observed rows are intact.
    assert bool(torch.isfinite(ds.data["vec"]).all())
    assert ds.data["vec"][[2, 7]].abs().sum() == 0 and ds.data["img"][3].sum() == 0
    np.testing.assert_allclose(ds.data["vec"][0].numpy(), arrays["vec"][0].astype(np.float32))
    np.testing.assert_array_equal(ds.data["img"][5].numpy(), arrays["img"][5])
    np.testing.assert_array_equal(ds.data["bits"].numpy(), arrays["bits"].astype(np.float32))
    batch = ds.batch(torch.arange(4))
    assert batch.x["img"].dtype == torch.float32 and float(batch.x["img"].max()) <= 1.0


def test_npz_random_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    path = _save(tmp_path / "toy.npz", **_toy_arrays(60))
    splits = load_npz(path, test_fraction=0.2, seed=3)
    assert len(splits.train) == 48 and len(splits.test) == 12
    assert splits.test.labels.bincount().tolist() == [4, 4, 4]
    again = load_npz(path, test_fraction=0.2, seed=3)
    assert torch.equal(splits.test.data["img"], again.test.data["img"])
    other = load_npz(path, test_fraction=0.2, seed=4)
    assert not torch.equal(splits.test.data["img"], other.test.data["img"])
    assert load_dataset(f"npz:{path}", seed=3).test.data["vec"].equal(splits.test.data["vec"])


def test_npz_split_key_decides(tmp_path: Path) -> None:
    split = np.zeros(10, dtype=np.int64)
    split[[1, 4]] = 1
    path = _save(tmp_path / "s.npz", a=np.arange(10.0)[:, None], split=split)
    splits = load_npz(path)
    assert splits.test.data["a"].flatten().tolist() == [1.0, 4.0]
    assert len(splits.train) == 8 and splits.train.labels is None
    assert [m.name for m in splits.modalities] == ["a"]


def test_npz_without_labels_splits_randomly(tmp_path: Path) -> None:
    splits = load_npz(_save(tmp_path / "u.npz", a=np.zeros((10, 2))), test_fraction=0.3)
    assert (len(splits.train), len(splits.test)) == (7, 3)


ERROR_CASES: dict[str, tuple[dict[str, np.ndarray], list[str]]] = {
    "no modality": ({"labels": np.arange(3)}, ["no modality arrays"]),
    "sample counts": (
        {"a": np.zeros((10, 2)), "b": np.zeros((9, 2))},
        ["'b'", "9 samples", "'a'", "10"],
    ),
    "nan observed": (
        {"a": np.zeros((10, 2)), "b": np.where(np.arange(20).reshape(10, 2) == 9, np.nan, 0.0)},
        ["'b'", "row 4", "mask_b[4] = False"],
    ),
    "inf observed": (
        {
            "a": np.where(np.arange(6)[:, None] == 5, np.inf, 0.0),
            "b": np.zeros((6, 1)),
            "mask_a": np.arange(6) != 2,
        },
        ["'a'", "row 5"],
    ),
    "mask length": (
        {"a": np.zeros((10, 2)), "mask_a": np.ones(9, dtype=bool)},
        ["mask_a", "(10,)", "'a'"],
    ),
    "mask dtype": (
        {"a": np.zeros((10, 2)), "mask_a": np.full(10, 0.5)},
        ["mask_a", "boolean"],
    ),
    "mask unknown": (
        {"a": np.zeros((10, 2)), "mask_zz": np.ones(10, dtype=bool)},
        ["mask_zz", "'zz'", "'a'"],
    ),
    "all masked": (
        {
            "a": np.zeros((10, 2)),
            "b": np.zeros((10, 2)),
            "mask_a": np.arange(10) != 6,
            "mask_b": ~np.isin(np.arange(10), [3, 6]),
        },
        ["row 6", "every modality masked"],
    ),
    "labels length": ({"a": np.zeros((10, 2)), "labels": np.arange(8)}, ["labels", "(10,)"]),
    "labels float": ({"a": np.zeros((4, 2)), "labels": np.array([0.5, 1, 2, 3])}, ["labels"]),
    "labels negative": ({"a": np.zeros((3, 1)), "labels": np.array([0, -1, 2])}, ["row 1"]),
    "string modality": (
        {"a": np.zeros((3, 2)), "text": np.array(["x", "y", "z"])},
        ["'text'", "dtype"],
    ),
    "split values": ({"a": np.zeros((4, 2)), "split": np.array([0, 2, 1, 0])}, ["split"]),
    "split empty test": (
        {"a": np.zeros((4, 2)), "split": np.zeros(4, np.int64)},
        ["no row in test"],
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_npz_validation_errors(tmp_path: Path, case: str) -> None:
    arrays, fragments = ERROR_CASES[case]
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_npz(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_npz_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not a valid .npz"):
        load_npz_array(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        load_npz(tmp_path / "single.npy")
    objects = np.empty(3, dtype=object)
    objects[:] = [{"a": 1}, None, "x"]
    np.savez(tmp_path / "objects.npz", a=np.zeros((3, 2)), evil=objects)
    with pytest.raises(DataError, match="'evil'.*Python objects"):
        load_npz(tmp_path / "objects.npz")
    assert issubclass(DataError, UserError)


def test_npz_masked_nan_rows_are_accepted(tmp_path: Path) -> None:
    a = np.full((5, 3), np.nan)
    a[0] = 1.0
    path = _save(tmp_path / "m.npz", a=a, b=np.ones((5, 2)), mask_a=np.arange(5) == 0)
    ds = load_npz_array(path)
    assert bool(torch.isfinite(ds.data["a"]).all())
    assert ds.masks["a"].tolist() == [True, False, False, False, False]


def test_npz_label_names_override_order(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "l.npz",
        a=np.zeros((4, 1)),
        labels=np.array(["lo", "hi", "mid", "lo"]),
        label_names=np.array(["lo", "mid", "hi"]),
    )
    ds = load_npz_array(path)
    assert ds.label_names == ["lo", "mid", "hi"] and ds.labels.tolist() == [0, 2, 1, 0]


# --------------------------------------------------------------------------- registry


def test_registry_lists_polymnist_and_rejects_unknown_names() -> None:
    info = DATASETS["polymnist"]
    assert (info.n_train, info.n_test, info.offline, info.needs) == (4000, 1000, True, "")
    assert info.modalities[0] == "m0 3x28x28 image" and len(info.modalities) == 5
    table = dataset_table()
    assert "polymnist" in table and "npz:FILE" in table
    with pytest.raises(UserError, match="unknown dataset 'nope'.*npz:FILE.*polymnist"):
        load_dataset("nope")
    with pytest.raises(DataError, match="npz:FILE"):
        load_dataset("npz:")


# --------------------------------------------------------------------------- batches


def _indexed_dataset(n: int = 23) -> MultimodalDataset:
    return MultimodalDataset(
        modalities=(ModalitySpec("idx", (1,)), ModalitySpec("img", (1, 2, 2), "image")),
        data={
            "idx": torch.arange(n, dtype=torch.float32)[:, None],
            "img": (torch.arange(n * 4) % 256).to(torch.uint8).view(n, 1, 2, 2),
        },
        labels=torch.arange(n) % 3,
    )


@pytest.mark.parametrize("batch_size", [1, 5, 23, 64])
def test_batches_cover_every_sample_once_per_epoch(batch_size: int) -> None:
    ds = _indexed_dataset()
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        seen = torch.cat([b.x["idx"][:, 0] for b in ds.batches(batch_size, True, generator)])
        assert sorted(seen.long().tolist()) == list(range(23))
    assert ds.num_batches(batch_size) == -(-23 // batch_size)


def test_batches_shuffle_and_start_skips() -> None:
    ds = _indexed_dataset()
    full = [
        b.x["idx"][:, 0].tolist() for b in ds.batches(5, True, torch.Generator().manual_seed(7))
    ]
    assert sum(full, []) != list(range(23))
    resumed = [
        b.x["idx"][:, 0].tolist()
        for b in ds.batches(5, True, torch.Generator().manual_seed(7), start=2)
    ]
    assert resumed == full[2:]
    dropped = list(ds.batches(5, drop_last=True))
    assert len(dropped) == 4 and all(len(b) == 5 for b in dropped)


def test_batches_scale_uint8_to_unit_interval(polymnist: tuple[Path, DatasetSplits]) -> None:
    ds = _indexed_dataset()
    batch = next(ds.batches(23))
    assert batch.x["img"].dtype == torch.float32
    torch.testing.assert_close(batch.x["img"], ds.data["img"].float() / 255.0)
    assert batch.labels.tolist() == (torch.arange(23) % 3).tolist()
    _, splits = polymnist
    image = next(splits.test.batches(64)).x["m0"]
    assert image.shape == (64, 3, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(image.max()) > 0.9


# -- shared storage rows and index-stored categoricals ---------------------------------------
def test_rows_share_storage_and_gather_like_copies():
    from omnivae.data.base import ModalitySpec, MultimodalDataset

    store = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4)
    rows = torch.tensor([4, 0, 0, 2, 3, 1])
    specs = (ModalitySpec("a", (4,)), ModalitySpec("b", (2,)))
    b = torch.randn(6, 2)
    shared = MultimodalDataset(specs, {"a": store, "b": b}, rows={"a": rows}, labels=torch.arange(6))
    copied = MultimodalDataset(specs, {"a": store[rows], "b": b}, labels=torch.arange(6))
    assert len(shared) == 6
    index = torch.tensor([5, 1, 3])
    assert torch.equal(shared.batch(index).x["a"], copied.batch(index).x["a"])
    sub = shared.subset(index)
    assert sub.data["a"] is store  # the storage is shared, not copied
    assert torch.equal(sub.batch(torch.arange(3)).x["a"], store[rows[index]])
    assert torch.equal(sub.values("a"), store[rows[index]])


def test_rows_out_of_range_is_a_data_error():
    from omnivae.data.base import ModalitySpec, MultimodalDataset
    from omnivae.errors import DataError

    with pytest.raises(DataError, match="outside"):
        MultimodalDataset((ModalitySpec("a", (1,)),), {"a": torch.zeros(3, 1)}, rows={"a": torch.tensor([0, 3])})


def test_categorical_indices_expand_to_one_hot_with_zero_rows_for_unknown():
    from omnivae.data.base import ModalitySpec, MultimodalDataset
    from omnivae.data.text import ALPHABET, encode_strings

    codes = torch.from_numpy(encode_strings(["ab", "\u00e9z"], 3))
    spec = ModalitySpec("text", (3, len(ALPHABET)), "categorical")
    data = MultimodalDataset((spec,), {"text": codes})
    x = data.batch(torch.arange(2)).x["text"]
    assert x.shape == (2, 3, len(ALPHABET)) and x.dtype == torch.float32
    assert x[0, 0, 0] == 1 and x[0, 1, 1] == 1 and x[0, 2].sum() == 0
    assert x[1, 0].sum() == 0 and x[1, 1, 25] == 1  # unknown character: all-zero row
    assert torch.equal(x.sum(-1), (codes >= 0).float())
