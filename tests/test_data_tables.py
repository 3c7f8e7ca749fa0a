"""User tables: ``csv:DIR`` folders and ``hdf5:FILE`` files, and ``omnivae impute`` on them.

Every file is fabricated here in the exact layout the loaders document; commands run
in-process through ``omnivae.cli.main``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivae.cli import main
from omnivae.data import load_dataset, load_npz_array, registry
from omnivae.data.base import ModalitySpec
from omnivae.data.tables import (
    PREFIXES,
    load_csv,
    load_csv_array,
    load_hdf5,
    load_hdf5_array,
    read_csv_folder,
    read_hdf5,
    write_hdf5,
)
from omnivae.errors import DataError

# The prefixes are wired into the registry by omnivae.data; register them here only if
# that has not happened yet, so these tests run either way.
for _prefix, _form, _description, _loader in PREFIXES:
    if _prefix not in registry._PREFIXES:
        registry.register_prefix(_prefix, _form, _description, _loader)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- csv:DIR -------------------------------------------------------------------------------


def test_ids_give_the_sorted_union_and_masks(tmp_path):
    write_csv(tmp_path / "a.csv", ["id", "x", "y"], [[10, 1.5, 2], [3, -1, 0.25], [1, "", ""]])
    write_csv(tmp_path / "b.csv", ["p", "id"], [[7, 2], [8, 10], [9, 1]])
    data = load_csv_array(tmp_path)
    table = read_csv_folder(tmp_path)
    assert table.ids == ["1", "2", "3", "10"]  # numeric order, not "1", "10", "2", "3"
    assert [(m.name, m.shape, m.kind) for m in data.modalities] == [("a", (2,), "vector"), ("b", (1,), "vector")]
    assert data.data["a"].dtype == torch.float32
    np.testing.assert_array_equal(data.masks["a"].numpy(), [False, False, True, True])
    np.testing.assert_array_equal(data.masks["b"].numpy(), [True, True, False, True])
    np.testing.assert_array_equal(data.data["a"].numpy(), [[0, 0], [0, 0], [-1, 0.25], [1.5, 2]])
    np.testing.assert_array_equal(data.data["b"].numpy()[:, 0], [9, 7, 0, 8])
    assert table.columns == {"a": ["x", "y"], "b": ["p"]}


def test_string_ids_sort_as_strings(tmp_path):
    write_csv(tmp_path / "a.csv", ["id", "x"], [["s10", 1], ["s2", 2]])
    write_csv(tmp_path / "b.csv", ["id", "x"], [["s2", 3], ["s1", 4]])
    table = read_csv_folder(tmp_path)
    assert table.ids == ["s1", "s10", "s2"]
    np.testing.assert_array_equal(table.arrays["mask_a"], [False, True, True])
    np.testing.assert_array_equal(table.arrays["b"][:, 0], [4, 0, 3])


def test_without_ids_rows_align_by_order_and_empty_rows_are_missing(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n,\n3,4\nnan, NA\n\n\n")  # trailing blank lines ignored
    (tmp_path / "b.csv").write_text("v\n5\n6\n\n7\n")  # a blank line is an empty row
    data = load_csv_array(tmp_path)
    assert len(data) == 4
    np.testing.assert_array_equal(data.masks["a"].numpy(), [True, False, True, False])
    np.testing.assert_array_equal(data.masks["b"].numpy(), [True, True, False, True])
    np.testing.assert_array_equal(data.data["a"].numpy(), [[1, 2], [0, 0], [3, 4], [0, 0]])
    np.testing.assert_array_equal(data.data["b"].numpy()[:, 0], [5, 6, 0, 7])


def test_a_sample_empty_everywhere_is_an_error(tmp_path):
    (tmp_path / "a.csv").write_text('x\n1\n""\n')
    (tmp_path / "b.csv").write_text('v\n5\n""\n')
    message = error_of(load_csv_array, tmp_path)
    assert "data row 2" in message and "every modality" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        ("x,y\n1,2\n3,\n", ["a.csv line 3", "partly empty", "'y'", "fill it or empty the whole row"]),
        ("x,y\n1,2\n3,abc\n", ["a.csv line 3", "column 'y'", "'abc'", "not a number"]),
        ("x,y\n1,2\n3,inf\n", ["a.csv line 3", "column 'y'", "finite"]),
        ("x,y\n1,2\n3,4,5\n", ["a.csv line 3", "3 cells", "2 columns"]),
        ("", ["a.csv", "empty", "header"]),
        ('x,y\n1,"2\n', ["a.csv", "not valid CSV"]),
    ],
)
def test_malformed_cells_name_file_line_and_column(content, expected, tmp_path):
    (tmp_path / "a.csv").write_text(content)
    message = error_of(load_csv_array, tmp_path)
    for text in expected:
        assert text in message, message


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.csv": "id,x\n1,2\n", "b.csv": "x\n3\n"}, ["a.csv has an 'id' column", "b.csv has none"]),
        ({"a.csv": "x\n1\n2\n", "b.csv": "x\n3\n"}, ["different numbers of rows", "a.csv 2", "b.csv 1"]),
        ({"a.csv": "id,x\n1,2\n1,3\n"}, ["a.csv line 3", "'1' appears twice"]),
        ({"a.csv": "id,x\n1,2\n,3\n"}, ["a.csv line 3", "empty 'id'"]),
        ({"a.csv": "id\n1\n"}, ["a.csv", "no feature columns"]),
        ({"labels.csv": "label\n1\n"}, ["no modality CSV files", "<modality>.csv"]),
        ({"mask_a.csv": "x\n1\n"}, ["'mask_a' cannot name a modality"]),
        ({"a.csv": "x\n"}, ["no data rows"]),
    ],
)
def test_folder_layout_errors(files, expected, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    message = error_of(load_csv_array, tmp_path)
    for text in expected:
        assert text in message, message


def test_a_missing_folder_names_the_layout(tmp_path):
    message = error_of(load_csv_array, tmp_path / "absent")
    assert "absent" in message and "csv:DIR" in message and "<modality>.csv" in message


def test_schema_declares_image_binary_and_categorical(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 12))
    write_csv(tmp_path / "img.csv", [f"p{i}" for i in range(12)], [*pixels.tolist(), [""] * 12])
    bits = rng.integers(0, 2, size=(4, 5))
    write_csv(tmp_path / "bits.csv", list("abcde"), bits.tolist())
    onehot = np.zeros((4, 2, 3), dtype=int)
    onehot[:, 0, 1] = 1
    onehot[:3, 1, 2] = 1  # the last sample's second position is unknown (all zeros)
    write_csv(tmp_path / "cat.csv", [f"c{i}" for i in range(6)], onehot.reshape(4, 6).tolist())
    schema = {
        "img": {"shape": [1, 3, 4], "kind": "image"},
        "bits": {"shape": [5], "kind": "binary"},
        "cat": {"shape": [2, 3], "kind": "categorical"},
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    data = load_csv_array(tmp_path)
    specs = {m.name: m for m in data.modalities}
    assert specs["img"].shape == (1, 3, 4) and specs["img"].kind == "image"
    assert data.data["img"].dtype == torch.uint8
    np.testing.assert_array_equal(data.data["img"].numpy()[:3], pixels.reshape(3, 1, 3, 4))
    np.testing.assert_array_equal(data.masks["img"].numpy(), [True, True, True, False])
    assert specs["bits"].kind == "binary"
    np.testing.assert_array_equal(data.data["bits"].numpy(), bits)
    assert specs["cat"] == ModalitySpec("cat", (2, 3), "categorical")
    batch = data.batch(torch.arange(4))
    np.testing.assert_array_equal(batch.x["cat"].numpy(), onehot.astype(np.float32))
    assert batch.x["img"].max() <= 1.0


@pytest.mark.parametrize(
    "schema, content, expected",
    [
        ({"a": {"shape": [2, 2], "kind": "image"}}, "w,x,y,z\n1,2,3,256\n", ["a.csv line 2", "'z'", "0..255"]),
        ({"a": {"shape": [2, 2], "kind": "image"}}, "w,x,y,z\n1,2.5,3,4\n", ["a.csv line 2", "'x'", "0..255"]),
        ({"a": {"shape": [4], "kind": "binary"}}, "w,x,y,z\n1,0,2,1\n", ["a.csv line 2", "'y'", "0 or 1"]),
        ({"a": {"shape": [2, 2], "kind": "categorical"}}, "w,x,y,z\n1,1,0,1\n", ["a.csv line 2", "one-hot"]),
        ({"a": {"shape": [3], "kind": "image"}}, "w,x,y,z\n1,1,0,1\n", ["4 feature columns", "[3] = 3 values"]),
        ({"a": {"shape": [4], "kind": "picture"}}, "w,x,y,z\n1,1,0,1\n", ["schema.json", "picture", "image, vector"]),
        ({"b": {"shape": [4]}}, "w,x,y,z\n1,1,0,1\n", ["schema.json", "'b' has no b.csv"]),
        ({"a": {"shape": [0]}}, "w,x,y,z\n1,1,0,1\n", ["schema.json", "integers >= 1"]),
        ({"a": [4]}, "w,x,y,z\n1,1,0,1\n", ["schema.json", "'shape'"]),
    ],
)
def test_schema_errors(schema, content, expected, tmp_path):
    (tmp_path / "a.csv").write_text(content)
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    message = error_of(load_csv_array, tmp_path)
    for text in expected:
        assert text in message, message


def test_string_labels_and_split_by_id(tmp_path):
    write_csv(tmp_path / "a.csv", ["id", "x"], [[i, i * 0.5] for i in (4, 2, 3, 1)])
    write_csv(tmp_path / "labels.csv", ["label", "id"], [["dog", 3], ["cat", 1], ["emu", 2], ["cat", 4]])
    write_csv(tmp_path / "split.csv", ["id", "split"], [[1, "train"], [2, "test"], [3, "TRAIN"], [4, 1]])
    data = load_csv_array(tmp_path)
    assert data.label_names == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(data.labels.numpy(), [0, 2, 1, 0])  # ids 1, 2, 3, 4
    splits = load_csv(tmp_path)
    np.testing.assert_array_equal(splits.train.data["a"].numpy()[:, 0], [0.5, 1.5])
    np.testing.assert_array_equal(splits.test.data["a"].numpy()[:, 0], [1.0, 2.0])
    assert splits.test.label_names == ["cat", "dog", "emu"]


def test_integer_labels_and_split_by_order(tmp_path):
    (tmp_path / "a.csv").write_text("x\n" + "".join(f"{i}\n" for i in range(6)))
    (tmp_path / "labels.csv").write_text("label\n2\n0\n1\n2\n0\n1\n")
    (tmp_path / "split.csv").write_text("split\n0\n0\n1\n0\n1\n0\n")
    splits = load_csv(tmp_path)
    np.testing.assert_array_equal(splits.train.labels.numpy(), [2, 0, 2, 1])
    np.testing.assert_array_equal(splits.test.data["a"].numpy()[:, 0], [2, 4])
    assert splits.train.label_names is None


@pytest.mark.parametrize(
    "labels, split, expected",
    [
        ("id,label\n1,a\n", None, ["labels.csv has no row for id '2'"]),
        ("id,label\n1,a\n2,b\n9,c\n", None, ["labels.csv line 4", "'9' is in no modality file"]),
        ("id,label\n1,a\n2,\n", None, ["labels.csv line 3", "empty label"]),
        ("id,label\n1,3\n2,-1\n", None, ["labels.csv line 3", "negative"]),
        ("label\n1\n2\n", None, ["labels.csv has no 'id' column"]),
        (None, "id,split\n1,train\n2,val\n", ["split.csv line 3", "'val'", "train or test"]),
        (None, "id,split\n1,test\n2,test\n", ["no row in train"]),
    ],
)
def test_label_and_split_file_errors(labels, split, expected, tmp_path):
    (tmp_path / "a.csv").write_text("id,x\n1,0.5\n2,0.25\n")
    if labels is not None:
        (tmp_path / "labels.csv").write_text(labels)
    if split is not None:
        (tmp_path / "split.csv").write_text(split)
    message = error_of(load_csv, tmp_path)
    for text in expected:
        assert text in message, message


def test_random_split_is_seeded_and_registered(tmp_path):
    rows = [[i, float(i)] for i in range(20)]
    write_csv(tmp_path / "a.csv", ["id", "x"], rows)
    first = load_dataset(f"csv:{tmp_path}", seed=3)
    again = load_dataset(f"csv:{tmp_path}", seed=3)
    other = load_dataset(f"csv:{tmp_path}", seed=4)
    assert (len(first.train), len(first.test)) == (16, 4)
    assert torch.equal(first.test.data["a"], again.test.data["a"])
    assert not torch.equal(first.test.data["a"], other.test.data["a"])
    assert "csv:DIR" in registry.dataset_table() and "hdf5:FILE" in registry.dataset_table()


# -- hdf5:FILE -----------------------------------------------------------------------------


def _arrays(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "img": rng.integers(0, 256, size=(n, 1, 4, 4)).astype(np.uint8),
        "vec": rng.normal(size=(n, 3)),
        "bits": rng.random((n, 4)) < 0.5,
        "mask_vec": np.arange(n) % 3 != 0,
        "labels": np.arange(n) % 2,
        "split": (np.arange(n) >= n - 3).astype(np.int64),
    }


@pytest.mark.parametrize("group", [None, "modalities"])
def test_hdf5_matches_the_npz_reading_of_the_same_arrays(group, tmp_path):
    h5py = pytest.importorskip("h5py")
    arrays = _arrays()
    with h5py.File(tmp_path / "data.h5", "w") as f:
        for key, value in arrays.items():
            place = f.require_group(group) if group and key in ("img", "vec", "bits") else f
            place.create_dataset(key, data=value)
    np.savez(tmp_path / "data.npz", **arrays)
    got, want = load_hdf5_array(tmp_path / "data.h5"), load_npz_array(tmp_path / "data.npz")
    assert got.modality_names == ["bits", "img", "vec"]  # HDF5 lists datasets by name
    assert sorted(got.modalities, key=str) == sorted(want.modalities, key=str)
    for name in ("img", "vec", "bits"):
        assert torch.equal(got.data[name], want.data[name]) and torch.equal(got.masks[name], want.masks[name])
    assert torch.equal(got.labels, want.labels)
    splits = load_dataset(f"hdf5:{tmp_path / 'data.h5'}")
    assert (len(splits.train), len(splits.test)) == (7, 3)


@pytest.mark.parametrize("fixed", [False, True])
def test_hdf5_string_labels_and_names(fixed, tmp_path):
    h5py = pytest.importorskip("h5py")
    words = ["owl", "ant", "owl", "bee"]
    with h5py.File(tmp_path / "s.hdf5", "w") as f:
        f.create_dataset("x", data=np.ones((4, 2), dtype=np.float32))
        if fixed:
            f.create_dataset("labels", data=np.array(words, dtype="S3"))
        else:
            f.create_dataset("labels", data=words, dtype=h5py.string_dtype())
            f.create_dataset("label_names", data=["owl", "bee", "ant"], dtype=h5py.string_dtype())
    data = load_hdf5_array(tmp_path / "s.hdf5")
    if fixed:
        assert data.label_names == ["ant", "bee", "owl"]
        np.testing.assert_array_equal(data.labels.numpy(), [2, 0, 2, 1])
    else:
        assert data.label_names == ["owl", "bee", "ant"]
        np.testing.assert_array_equal(data.labels.numpy(), [0, 2, 0, 1])


def test_write_hdf5_round_trip(tmp_path):
    pytest.importorskip("h5py")
    arrays = {**_arrays(6), "label_names": np.array(["even", "odd"])}
    write_hdf5(tmp_path / "out.h5", arrays, group="modalities")
    back = read_hdf5(tmp_path / "out.h5")
    assert set(back) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype.kind == value.dtype.kind


def test_hdf5_errors(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "text.h5", "w") as f:
        f.create_dataset("notes", data=["a", "b"], dtype=h5py.string_dtype())
    assert "'notes' holds strings" in error_of(load_hdf5, tmp_path / "text.h5")
    with h5py.File(tmp_path / "cplx.h5", "w") as f:
        f.create_dataset("z", data=np.ones(3, dtype=np.complex64))
    assert "store numbers" in error_of(load_hdf5, tmp_path / "cplx.h5")
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_dataset("meta/x", data=np.ones(3))
    assert "group 'meta'" in error_of(load_hdf5, tmp_path / "group.h5")
    with h5py.File(tmp_path / "both.h5", "w") as f:
        f.create_dataset("x", data=np.ones(3))
        f.create_dataset("modalities/x", data=np.ones(3))
    assert "both at the root and under modalities/" in error_of(load_hdf5, tmp_path / "both.h5")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5 at all")
    assert "not a valid HDF5 file" in error_of(load_hdf5, tmp_path / "fake.h5")
    assert "hdf5:FILE" in error_of(load_hdf5, tmp_path / "absent.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    assert error_of(load_hdf5, tmp_path / "group.h5") == (
        "reading HDF5 needs h5py; install it with 'pip install h5py'"
    )


# -- omnivae impute on CSV folders and HDF5 files ------------------------------------------

TINY = ["--model", "wb", "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16",
        "--epochs", "1", "--no-progress", "--device", "cpu", "--missing-rate", "0.5"]
N = 32


def _table_values(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 256, size=(n, 12)),
        "vec": np.round(rng.normal(size=(n, 3)), 4),
        "bits": rng.integers(0, 2, size=(n, 4)),
    }


def _csv_folder(folder: Path, n: int, seed: int, holes: dict[str, list[int]] | None = None) -> Path:
    """A CSV folder with ids 100, 102, ...; ``holes`` drops rows (by position) or empties them."""
    folder.mkdir()
    values = _table_values(n, seed)
    holes = holes or {}
    for name, array in values.items():
        rows = []
        for i in range(n):
            if i in holes.get(name, []):
                if i % 2:
                    continue  # absent id
                rows.append([100 + 2 * i, *[""] * array.shape[1]])  # empty row
            else:
                rows.append([100 + 2 * i, *array[i].tolist()])
        write_csv(folder / f"{name}.csv", ["id", *[f"{name}{j}" for j in range(array.shape[1])]], rows)
    schema = {"img": {"shape": [1, 3, 4], "kind": "image"}, "bits": {"shape": [4], "kind": "binary"}}
    (folder / "schema.json").write_text(json.dumps(schema))
    write_csv(folder / "labels.csv", ["id", "label"], [[100 + 2 * i, "ab"[i % 2]] for i in range(n)])
    return folder


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> Path:
    data = _csv_folder(tmp_path_factory.mktemp("csvdata") / "train", N, 0, {"vec": [3, 4, 9]})
    out = tmp_path_factory.mktemp("runs") / "csv"
    assert main(["train", "--dataset", f"csv:{data}", *TINY, "--out", str(out)]) == 0
    return out


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnivae: error:"), captured.err
    return lines[0]


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_impute_fills_a_csv_folder_and_keeps_observed_cells(csv_run, tmp_path, capsys):
    holes = {"img": [0, 1, 6], "vec": [2, 3, 5], "bits": [4, 7]}
    source = _csv_folder(tmp_path / "new", 8, 5, holes)
    out = tmp_path / "filled"
    assert main(["impute", str(csv_run), "--input", str(source), "--output", str(out), "--device", "cpu"]) == 0
    assert "imputed 8 missing entries" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["bits.csv", "img.csv", "labels.csv", "observed.csv", "schema.json", "vec.csv"]
    ids = [str(100 + 2 * i) for i in range(8)]
    for name in ("img", "vec", "bits"):
        given, filled = _read_rows(source / f"{name}.csv"), _read_rows(out / f"{name}.csv")
        assert filled[0] == given[0]  # the same header
        assert [row[0] for row in filled[1:]] == ids  # every id, in order
        observed = {row[0]: row for row in given[1:] if row[1] != ""}
        for row in filled[1:]:
            assert all(cell != "" for cell in row)
            if row[0] in observed:
                assert row == observed[row[0]]  # observed cells exactly as written
    assert (out / "labels.csv").read_bytes() == (source / "labels.csv").read_bytes()
    back = read_csv_folder(out)
    # observed.csv keeps the input's missing entries missing when the output is read back.
    given_back = read_csv_folder(source)
    assert all((back.arrays[f"mask_{n}"] == given_back.arrays[f"mask_{n}"]).all() for n in ("img", "vec", "bits"))
    assert not back.arrays["mask_img"][[0, 1, 6]].any() and back.arrays["mask_img"][[2, 3, 4, 5, 7]].all()
    assert back.specs["img"].kind == "image" and back.specs["bits"].kind == "binary"
    # Imputed rows are the model's imputation.
    from omnivae.train import load_run

    run = load_run(csv_run)
    data = read_csv_folder(source, defaults={m.name: m for m in run.modalities}).dataset()
    expected = run.model.impute(data.batch(torch.arange(8)).x, data.masks)
    np.testing.assert_allclose(back.arrays["vec"][[2, 3, 5]], expected["vec"][[2, 3, 5]].numpy(), rtol=1e-6)
    images = (expected["img"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(back.arrays["img"][[0, 1, 6]], images[[0, 1, 6]])


def test_impute_csv_without_schema_takes_the_runs_shapes(csv_run, tmp_path, capsys):
    source = _csv_folder(tmp_path / "new", 4, 6, {"vec": [0]})
    (source / "schema.json").unlink()
    (source / "labels.csv").unlink()
    (source / "bits.csv").unlink()  # a modality absent from the input is filled entirely
    out = tmp_path / "filled"
    assert main(["impute", str(csv_run), "--input", str(source), "--output", str(out), "--device", "cpu"]) == 0
    back = read_csv_folder(out)
    assert back.columns["bits"] == ["bits_0", "bits_1", "bits_2", "bits_3"]
    assert back.arrays["bits"].dtype == np.bool_ and back.arrays["bits"].shape == (4, 4)
    assert json.loads((out / "schema.json").read_text())["img"] == {"shape": [1, 3, 4], "kind": "image"}
    # Writing again replaces the previous output folder, only when told to (--force).
    assert main(["impute", str(csv_run), "--input", str(source), "--output", str(out), "--device", "cpu"]) == 2
    assert "pass force=True" in (err := capsys.readouterr().err) and "(flag: --force)" in err
    assert main(["impute", str(csv_run), "--input", str(source), "--output", str(out), "--device", "cpu", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bits.csv", "img.csv", "observed.csv", "schema.json", "vec.csv"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def _h5_input(path: Path, n: int, seed: int, group: str | None) -> dict[str, np.ndarray]:
    import h5py

    values = _table_values(n, seed)
    arrays = {
        "img": values["img"].reshape(n, 1, 3, 4).astype(np.uint8),
        "vec": values["vec"],  # float64 comes back as float64
        "bits": values["bits"].astype(bool),
        "mask_vec": np.arange(n) % 3 != 0,
        "mask_img": np.arange(n) % 4 != 1,
    }
    arrays["vec"][~arrays["mask_vec"]] = np.nan
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            place = f.require_group(group) if group and not key.startswith("mask_") else f
            place.create_dataset(key, data=value)
        f.create_dataset("labels", data=["xy"[i % 2] for i in range(n)], dtype=h5py.string_dtype())
    return arrays


def test_train_on_hdf5_and_impute_hdf5(tmp_path, capsys):
    pytest.importorskip("h5py")
    _h5_input(tmp_path / "train.h5", N, 0, None)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"hdf5:{tmp_path / 'train.h5'}", *TINY, "--out", str(run)]) == 0
    source = _h5_input(tmp_path / "new.hdf5", 9, 3, "modalities")
    out = tmp_path / "filled.h5"
    assert main(["impute", str(run), "--input", str(tmp_path / "new.hdf5"), "--output", str(out), "--device", "cpu"]) == 0
    import h5py

    with h5py.File(out, "r") as f:
        assert sorted(f["modalities"]) == ["bits", "img", "vec"]  # the input's layout
    filled = read_hdf5(out)
    for name in ("img", "vec", "bits"):
        assert filled[name].dtype == source[name].dtype and filled[name].shape == source[name].shape
    np.testing.assert_array_equal(filled["mask_vec"], source["mask_vec"])
    np.testing.assert_array_equal(filled["mask_bits"], np.ones(9, dtype=bool))
    mask = source["mask_vec"]
    np.testing.assert_array_equal(filled["vec"][mask], source["vec"][mask])
    assert np.isfinite(filled["vec"]).all()
    np.testing.assert_array_equal(filled["img"][source["mask_img"]], source["img"][source["mask_img"]])
    assert filled["labels"].tolist() == ["x", "y"] * 4 + ["x"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("format", ["--input", "is not a folder", "CSV folder", ".h5/.hdf5", ".npz"]),
        ("absent", ["--input", "no such folder or file"]),
        ("columns", ["'vec'", "(2,)", "2 columns", "(3,)"]),
        ("unknown", ["'sound'", "not in the run"]),
        ("kind", ["'bits'", "reads as vector", "expects binary", "schema.json"]),
        ("cell", ["vec.csv line 3", "'x'", "not a number"]),
        ("output-file", ["--output", "must name a folder"]),
        ("output-busy", ["keep.txt", "not part of a CSV folder"]),
        ("hdf5-output", ["--output", ".h5 or .hdf5"]),
    ],
)
def test_impute_errors_exit_2_with_one_line_and_write_nothing(case, expected, csv_run, tmp_path, capsys):
    source = _csv_folder(tmp_path / "new", 4, 1, {"vec": [2]})
    out = tmp_path / "filled"
    if case == "format":
        source = tmp_path / "data.txt"
        source.write_text("x\n1\n")
    elif case == "absent":
        source = tmp_path / "absent"
    elif case == "columns":
        write_csv(source / "vec.csv", ["id", "a", "b"], [[100, 1, 2]])
    elif case == "unknown":
        write_csv(source / "sound.csv", ["id", "s"], [[100, 1]])
    elif case == "kind":
        (source / "schema.json").write_text(json.dumps({"img": {"shape": [1, 3, 4], "kind": "image"}, "bits": {"shape": [4]}}))
    elif case == "cell":
        (source / "vec.csv").write_text("id,a,b,c\n100,1,2,3\n102,x,2,3\n")
    elif case == "output-file":
        out = tmp_path / "filled.npz"
    elif case == "output-busy":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "hdf5-output":
        pytest.importorskip("h5py")
        _h5_input(tmp_path / "in.h5", 4, 0, None)
        source, out = tmp_path / "in.h5", tmp_path / "filled.csv"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["impute", str(csv_run), "--input", str(source), "--output", str(out), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "output-busy":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
