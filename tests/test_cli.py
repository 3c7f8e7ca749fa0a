"""The command line: train, resume, impute, listings and one-line errors with exit status 2.

Commands run in-process through ``omnivae.cli.main`` for speed; one test runs the
installed ``omnivae`` program to check the entry point and its exit status.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import NAMES, tiny_arrays, write_tiny_npz
from omnivae.aggregators import AGGREGATORS
from omnivae.cli import main
from omnivae.data import DATASETS, load_npz_array
from omnivae.models import MODELS
from omnivae.train import load_run
from omnivae.train.checkpoint import published_checkpoint

TINY_FLAGS = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--epochs", "1", "--no-progress"]


def train_argv(npz: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "wb", "--dataset", f"npz:{npz}", *TINY_FLAGS, "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    # A default run directory would land in the working directory: keep it in tmp.
    monkeypatch.chdir(tmp_path)


# The command-line data add a fourth modality stored as a 1-D float64 array (one value
# per sample), which the loader reads as shape (1,).
CLI_NAMES = [*NAMES, "age"]


def _age(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 50).normal(40.0, 10.0, size=n)


def cli_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {**tiny_arrays(n, seed), "age": _age(n, seed)}


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", n=40, age=_age(40, 0))


@pytest.fixture(scope="module")
def trained_run(data_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "wb"
    assert main(train_argv(data_npz, out)) == 0
    return out


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("omnivae: error:")
    return lines[0]


# -- train and impute -------------------------------------------------------------------


def test_train_on_npz_writes_a_run(trained_run, capsys):
    names = sorted(p.name for p in trained_run.iterdir())
    assert names == sorted([".lock", "checkpoint.json", "checkpoints", "config.json"])
    checkpoint = published_checkpoint(trained_run).folder
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(["metrics.json", "model.safetensors", "state.json", "state.safetensors"])
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["model"] == "wb"
    assert config["model"]["latent_dim"] == 4 and config["model"]["hidden"] == [16]
    assert config["train"]["batch_size"] == 16 and config["train"]["device"] == "cpu"
    assert [m["name"] for m in config["dataset"]["modalities"]] == CLI_NAMES
    assert [m["kind"] for m in config["dataset"]["modalities"]] == ["image", "vector", "binary", "vector"]
    assert config["dataset"]["modalities"][3]["shape"] == [1]
    history = json.loads(published_checkpoint(trained_run).path("metrics.json").read_text())["history"]
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["test_loss"])


def test_impute_fills_masked_modalities(trained_run, tmp_path, capsys):
    n = 12
    arrays = cli_arrays(n, seed=5)
    arrays["vec"] = arrays["vec"].astype(np.float64) + 1e-12  # not representable in float32
    mask_vec = np.arange(n) >= 6  # rows 0-5 lack vec
    mask_img = ~np.isin(np.arange(n), [6, 7, 8])  # rows 6-8 lack the image
    mask_age = np.arange(n) % 4 != 1
    arrays["vec"][~mask_vec] = np.nan  # values of unobserved rows are ignored, even NaN
    source = {k: v.copy() for k, v in arrays.items()}
    np.savez(tmp_path / "test.npz", **arrays, mask_vec=mask_vec, mask_img=mask_img, mask_age=mask_age)
    output = tmp_path / "filled.npz"

    assert main(["impute", str(trained_run), "--input", str(tmp_path / "test.npz"), "--output", str(output), "--device", "cpu"]) == 0
    assert "imputed" in capsys.readouterr().out
    with np.load(output, allow_pickle=False) as f:
        filled = dict(f)
    for name in CLI_NAMES:
        assert filled[name].dtype == source[name].dtype, name
        assert filled[name].shape == source[name].shape, name
    np.testing.assert_array_equal(filled["mask_vec"], mask_vec)
    np.testing.assert_array_equal(filled["mask_img"], mask_img)
    np.testing.assert_array_equal(filled["mask_bits"], np.ones(n, dtype=bool))
    np.testing.assert_array_equal(filled["labels"], source["labels"])
    # Observed values come back unchanged.
    np.testing.assert_array_equal(filled["vec"][mask_vec], source["vec"][mask_vec])
    np.testing.assert_array_equal(filled["img"][mask_img], source["img"][mask_img])
    np.testing.assert_array_equal(filled["bits"], source["bits"])
    np.testing.assert_array_equal(filled["age"][mask_age], source["age"][mask_age])
    np.testing.assert_array_equal(filled["mask_age"], mask_age)
    # Masked values are filled with the model's imputation.
    assert np.isfinite(filled["vec"]).all()
    assert (filled["img"][~mask_img] > 0).any()
    run = load_run(trained_run)
    data = load_npz_array(tmp_path / "test.npz")
    expected = run.model.impute(data.batch(torch.arange(n)).x, data.masks)
    np.testing.assert_allclose(filled["vec"][~mask_vec], expected["vec"][~mask_vec].numpy(), rtol=1e-6)
    np.testing.assert_allclose(filled["age"][~mask_age], expected["age"][~mask_age, 0].numpy(), rtol=1e-6)
    images = (expected["img"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(filled["img"][~mask_img], images[~mask_img])


def test_impute_adds_a_modality_absent_from_the_input(trained_run, tmp_path, capsys):
    arrays = cli_arrays(6, seed=2)
    del arrays["bits"], arrays["labels"]
    np.savez(tmp_path / "partial.npz", **arrays)
    output = tmp_path / "out.npz"
    assert main(["impute", str(trained_run), "--input", str(tmp_path / "partial.npz"), "--output", str(output), "--device", "cpu"]) == 0
    with np.load(output, allow_pickle=False) as f:
        filled = dict(f)
    assert filled["bits"].shape == (6, 5) and filled["bits"].dtype == np.bool_
    assert not filled["mask_bits"].any()
    assert filled["mask_vec"].all() and filled["mask_img"].all()
    np.testing.assert_array_equal(filled["vec"], arrays["vec"])
    assert "labels" not in filled


def test_resume_extends_a_run_and_config_file_sets_defaults(data_npz, tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"model": "mopoe", "latent-dim": 3, "hidden": "8", "batch_size": 8}))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--dataset", f"npz:{data_npz}", "--latent-dim", "2",
            "--epochs", "1", "--no-progress", "--backbone", "mlp", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["model"] == "mopoe"
    assert saved["model"]["latent_dim"] == 2, "a flag overrides --config"
    assert saved["model"]["hidden"] == [8]
    assert saved["train"]["batch_size"] == 8
    assert len(json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]) == 1
    capsys.readouterr()

    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    history = json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    state = json.loads(published_checkpoint(out).path("state.json").read_text())
    assert state["epoch"] == 2 and state["finished"] is True
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2
    assert capsys.readouterr().err == ""


def test_train_on_polymnist(tmp_path_factory, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path_factory.mktemp("omnivae-cache")))
    out = tmp_path / "poly"
    argv = ["train", "--dataset", "polymnist", "--epochs", "1", "--backbone", "mlp", "--hidden", "32",
            "--latent-dim", "4", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4000 train / 1000 test" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["model"] == "mwb", "mwb is the default model"
    assert config["dataset"]["name"] == "polymnist"
    assert [m["name"] for m in config["dataset"]["modalities"]] == [f"m{k}" for k in range(5)]
    history = json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]
    assert len(history) == 1 and math.isfinite(history[0]["test_loss"])
    assert load_run(out).model.num_modalities == 5


# -- listings ---------------------------------------------------------------------------


def test_models_lists_every_model_and_aggregator(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list(MODELS) + list(AGGREGATORS):
        assert name in out
    listed = {line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.startswith("aggregators")}
    assert set(MODELS) <= listed


def test_datasets_lists_every_dataset(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert "npz:FILE" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


# -- user mistakes: exit 2, one line, nothing written -----------------------------------


def _bad_npz(tmp_path: Path, kind: str) -> Path:
    arrays = cli_arrays(40)
    if kind == "counts":
        arrays["vec"] = arrays["vec"][:39]
    elif kind == "nan":
        arrays["vec"][7, 2] = np.nan
    elif kind == "empty-row":
        for name in CLI_NAMES:
            mask = np.ones(40, dtype=bool)
            mask[3] = False
            arrays[f"mask_{name}"] = mask
    path = tmp_path / f"{kind}.npz"
    np.savez(path, **arrays)
    return path


TRAIN_ERRORS = {
    "unknown-model": (["--model", "nope"], ["'nope'", "mwb", "poe"]),
    "unknown-dataset": (["--dataset", "mnist-ish"], ["'mnist-ish'", "polymnist"]),
    "unknown-aggregator": (["--aggregator", "median"], ["'median'", "mopoe"]),
    "missing-npz": (["--dataset", "npz:absent.npz"], ["absent.npz", "not found"]),
    "batch-too-large": (["--batch-size", "1000"], ["--batch-size", "1000"]),
    "latent-zero": (["--latent-dim", "0"], ["latent"]),
    "negative-beta": (["--beta=-1"], ["beta", "-1"]),
    "zero-samples": (["--num-samples", "0"], ["K", ">= 1"]),
    "missing-rate": (["--missing-rate", "1.5"], ["--missing-rate", "1.5"]),
    "config-missing": (["--config", "nowhere.json"], ["nowhere.json"]),
    "epochs-not-int": (["--epochs", "x"], ["--epochs", "'x'"]),
    "unknown-flag": (["--frobnicate", "3"], ["--frobnicate"]),
    "bad-hidden": (["--hidden", "16,a"], ["--hidden"]),
    "unknown-covariance": (["--covariance", "full"], ["covariance", "lowrank"]),
    "resume-not-a-run": (["--resume", "."], ["not an omnivae run"]),
    "abbreviated-flag": (["--latent", "3"], ["--latent"]),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_train_user_errors(case, data_npz, tmp_path, capsys):
    extra, expected = TRAIN_ERRORS[case]
    out = tmp_path / "out"
    assert main(train_argv(data_npz, out, *extra)) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"latent_dim": "4"}, ["'latent_dim'", "integer"]),
        ({"beta": "x"}, ["'beta'", "number"]),
        ({"hidden": [16, "a"]}, ["'hidden'", "integers"]),
        ({"seed": 1.5}, ["'seed'", "integer"]),
        ({"missing_rate": None}, ["'missing_rate'"]),
        ({"dreg": "yes"}, ["'dreg'", "true or false"]),
        ({"dataset": None}, ["'dataset'", "string"]),
        ({"latnet_dim": 3}, ["unknown option", "latnet_dim"]),
    ],
)
def test_config_file_values_of_the_wrong_type(options, expected, data_npz, tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text(json.dumps(options))
    out = tmp_path / "out"
    argv = ["train", "--config", str(config), "--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(out)]
    if "dataset" not in options:
        argv += ["--dataset", f"npz:{data_npz}", "--batch-size", "16"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a run trained on a GPU")
def test_resume_honours_device(data_npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(data_npz, out)) == 0
    config = json.loads((out / "config.json").read_text())
    config["train"]["device"] = "cuda"  # as if trained on a GPU machine
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert "--device cpu" in one_error_line(capsys)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress", "--device", "cpu"]) == 0
    assert len(json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]) == 2


def test_resume_of_a_damaged_run(data_npz, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"format": "omnivae-run/1"}))
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    assert "config.json" in one_error_line(capsys)


@pytest.mark.parametrize(
    "kind, expected",
    [("counts", ["'vec'", "39", "40"]), ("nan", ["'vec'", "row 7"]), ("empty-row", ["row 3", "every modality"])],
)
def test_bad_npz_files(kind, expected, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_argv(_bad_npz(tmp_path, kind), out)) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(data_npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_argv(data_npz, out, "--device", "cuda")) == 2
    assert "--device cpu" in one_error_line(capsys)
    assert not out.exists()


def test_existing_output_directory_needs_resume(data_npz, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(train_argv(data_npz, out)) == 2
    assert "--resume" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def _impute_input(tmp_path: Path, kind: str) -> Path:
    arrays = cli_arrays(6)
    if kind == "shape":
        arrays["vec"] = np.zeros((6, 7), dtype=np.float32)
    elif kind == "unknown":
        arrays["sound"] = np.zeros((6, 3), dtype=np.float32)
    elif kind == "kind":
        arrays["img"] = arrays["img"].astype(np.float32)  # an image given as floats
    path = tmp_path / f"{kind}.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not-a-run", ["not an omnivae run"]),
        ("shape", ["'vec'", "(7,)", "(6,)"]),
        ("unknown", ["sound"]),
        ("kind", ["'img'", "vector", "image", "uint8"]),
        ("missing-input", ["absent.npz"]),
        ("bad-output", ["--output", ".npz"]),
        ("device", ["'tpu'", "cpu"]),
    ],
)
def test_impute_user_errors(case, expected, trained_run, tmp_path, capsys):
    run = tmp_path if case == "not-a-run" else trained_run
    data = tmp_path / "absent.npz" if case == "missing-input" else _impute_input(tmp_path, case)
    output = tmp_path / ("filled.txt" if case == "bad-output" else "filled.npz")
    argv = ["impute", str(run), "--input", str(data), "--output", str(output)]
    argv += ["--device", "tpu" if case == "device" else "cpu"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not output.exists()


def test_installed_program_exits_with_status_2(data_npz, tmp_path):
    program = Path(sys.executable).with_name("omnivae")
    assert program.is_file(), "the package installs an 'omnivae' program"
    out = tmp_path / "out"
    done = subprocess.run(
        [str(program), "train", "--model", "nope", "--dataset", f"npz:{data_npz}", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnivae: error: unknown model 'nope'"), done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_resume_refuses_settings_it_would_ignore(trained_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    assert main(["train", "--resume", str(trained_run), "--lr", "0.5", "--batch-size", "4"]) == 2
    line = one_error_line(capsys)
    assert "--lr" in line and "--batch-size" in line and "--epochs" in line
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before


@pytest.mark.parametrize("flags, expected", [([], 5.0), (["--warmup-epochs", "0"], 0.0)])
def test_poe_trains_with_its_papers_kl_warm_up_unless_told_otherwise(flags, expected, data_npz, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "poe", "--dataset", f"npz:{data_npz}", *TINY_FLAGS, "--device", "cpu", "--out", str(out)]
    assert main(argv + flags) == 0
    assert json.loads((out / "config.json").read_text())["train"]["warmup_epochs"] == expected


# -- loose ends of issue 17 ---------------------------------------------------------------


def _walk_actions(parser, prefix: str):
    """Every (command, action) of ``parser`` and its subcommands, and each subcommand's own entry."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{prefix} {choice.dest}", choice
            for name, sub in action.choices.items():
                yield from _walk_actions(sub, f"{prefix} {name}")
        else:
            yield prefix, action


def test_every_option_of_every_command_has_a_description():
    from omnivae.cli import build_parser

    seen = list(_walk_actions(build_parser(), "omnivae"))
    assert len({command for command, _ in seen}) >= 9  # the walk reaches the subcommands
    bare = [f"{command} {'/'.join(action.option_strings) or action.dest}" for command, action in seen
            if not (action.help or "").strip() or action.help == "==SUPPRESS=="]
    assert bare == []


@pytest.mark.parametrize("name, suggested", [
    ("train.npz", "npz:train.npz"), ("data/x.h5", "hdf5:data/x.h5"), ("tables/vec.csv", "csv:tables"),
])
def test_a_data_file_without_its_prefix_gets_the_prefixed_form(name, suggested, tmp_path, capsys):
    assert main(["train", "--dataset", name, "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert line.endswith(suggested) and f"unknown dataset {name!r}" in line
    assert not (tmp_path / "run").exists()


def test_a_folder_without_csv_prefix_gets_csv_form(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    assert main(["train", "--dataset", str(tmp_path / "tables"), "--out", str(tmp_path / "run")]) == 2
    assert one_error_line(capsys).endswith(f"csv:{tmp_path / 'tables'}")


def test_a_runs_own_config_json_is_a_config_file(trained_run, data_npz, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["train", "--config", str(trained_run / "config.json"), "--seed", "3", "--out", str(out)]) == 0
    first = json.loads((trained_run / "config.json").read_text())
    second = json.loads((out / "config.json").read_text())
    assert second["model"] == first["model"] and second["dataset"]["name"] == first["dataset"]["name"]
    assert second["train"] == {**first["train"], "seed": 3}
    # A wrong-shaped run config is one line, not a traceback.
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**first, "train": 3}))
    assert main(["train", "--config", str(broken), "--out", str(tmp_path / "no")]) == 2
    assert "'model', 'train' or 'dataset'" in one_error_line(capsys)
    assert not (tmp_path / "no").exists()


def test_benchmark_takes_aggregator_missing_rate_and_set(data_npz, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", "wb,mmvamp", "--dataset", f"npz:{data_npz}", "--seeds", "1", "--epochs", "1",
            "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--device", "cpu",
            "--aggregator", "poe", "--missing-rate", "0.25", "--set", "kl_estimator=mc",
            "--metrics", "recon", "--no-figures", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    configs = {m: json.loads((out / f"{m}-seed0" / "config.json").read_text()) for m in ("wb", "mmvamp")}
    for config in configs.values():
        assert config["model"]["aggregator"] == "poe" and config["train"]["missing_rate"] == 0.25
    assert configs["wb"]["model"]["options"] == {}  # --set goes to the models that have the key
    assert configs["mmvamp"]["model"]["options"] == {"kl_estimator": "mc"}
    results = (out / "results.md").read_text()
    assert "- aggregator: poe" in results and "- missing rate: 0.25" in results and "kl_estimator=mc" in results
    capsys.readouterr()
    bad = [*argv[:-1], str(tmp_path / "bench2")]
    bad[bad.index("kl_estimator=mc")] = "nope=1"
    assert main(bad) == 2
    assert "--set nope: none of the models" in one_error_line(capsys)
    assert not (tmp_path / "bench2").exists()


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.write_text("\n".join(",".join(str(c) for c in row) for row in [header, *rows]) + "\n")


def test_impute_to_csv_writes_the_masks_and_they_read_back(trained_run, tmp_path, capsys):
    from omnivae.data.tables import read_csv_folder

    folder = tmp_path / "tables"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = [10, 11, 12, 13, 14]
    vec_rows = [[i, *np.round(rng.normal(size=6), 3)] if i not in (11, 13) else [i, *[""] * 6] for i in ids]
    _csv(folder / "vec.csv", ["id", *[f"v{k}" for k in range(6)]], vec_rows)
    _csv(folder / "age.csv", ["id", "age"], [[i, 30 + i] for i in ids if i != 14])
    out = tmp_path / "filled"
    assert main(["impute", str(trained_run), "--input", str(folder), "--output", str(out), "--device", "cpu"]) == 0
    assert "observed.csv" in capsys.readouterr().out
    lines = (out / "observed.csv").read_text().splitlines()
    assert lines[0] == "id,img,vec,bits,age"
    assert lines[1:] == ["10,0,1,0,1", "11,0,0,0,1", "12,0,1,0,1", "13,0,0,0,1", "14,0,1,0,0"]
    back = read_csv_folder(out)
    assert back.arrays["mask_vec"].tolist() == [True, False, True, False, True]
    assert back.arrays["mask_age"].tolist() == [True, True, True, True, False]
    assert not back.arrays["mask_img"].any()
    # Imputing the output again fills the same entries, not the earlier imputations kept as given.
    again = tmp_path / "again"
    assert main(["impute", str(trained_run), "--input", str(out), "--output", str(again), "--device", "cpu"]) == 0
    assert (again / "observed.csv").read_text() == (out / "observed.csv").read_text()
    assert (again / "vec.csv").read_text() == (out / "vec.csv").read_text()


def test_a_malformed_observed_csv_is_one_line(tmp_path):
    from omnivae.data.tables import read_csv_folder
    from omnivae.errors import DataError

    _csv(tmp_path / "a.csv", ["x"], [[1], [2]])
    _csv(tmp_path / "observed.csv", ["weight"], [[1], [2]])
    with pytest.raises(DataError, match="observed.csv has no 'a' column.*reserved for the masks"):
        read_csv_folder(tmp_path)
    _csv(tmp_path / "observed.csv", ["a"], [[1], ["yes"]])
    with pytest.raises(DataError, match="observed.csv line 3, column 'a': 'yes' is not 0 or 1"):
        read_csv_folder(tmp_path)


# -- library errors name parameters; the command line adds the flag (issue 19) ----------------
@pytest.mark.parametrize("command, handler, message, parameter, shown", [
    ("train", "omnivae.cli.train.cmd_train", "use covariance='diag' with this aggregator", "covariance",
     "use covariance='diag' with this aggregator (flag: --covariance diag)"),
    ("train", "omnivae.cli.train.cmd_train", "latent_dim must be >= 1, got 0", "latent_dim",
     "latent_dim must be >= 1, got 0 (flag: --latent-dim)"),
    ("train", "omnivae.cli.train.cmd_train", "w_dim=0 leaves no modality-specific latent", "w_dim",
     "w_dim=0 leaves no modality-specific latent (flag: --set w_dim=0)"),
    ("train", "omnivae.cli.train.cmd_train", "x exists; pick another run_dir", "run_dir",
     "x exists; pick another run_dir (flag: --out)"),
    ("train", "omnivae.cli.train.cmd_train", "give resume=True to continue", "resume",
     "give resume=True to continue (flag: --resume)"),
    ("train", "omnivae.cli.train.cmd_train", "pass overwrite=True", "overwrite", "pass overwrite=True (flag: --overwrite)"),
    ("evaluate", "omnivae.cli.evaluate.cmd_evaluate", "batch_size must be >= 1, got 0", "batch_size",
     "batch_size must be >= 1, got 0 (flag: --eval-batch-size)"),
    ("impute", "omnivae.cli.impute.cmd_impute", "source x.npz: no such folder or file", "source",
     "source x.npz: no such folder or file (flag: --input)"),
    # no flag sets it, or the message names the flag already: the line is the library's
    ("sample", "omnivae.cli.evaluate.cmd_sample", "the model has no decoder", "decoders", "the model has no decoder"),
    ("train", "omnivae.cli.train.cmd_train", "the latent size (--latent-dim) must be >= 1", "latent_dim",
     "the latent size (--latent-dim) must be >= 1"),
    ("train", "omnivae.cli.train.cmd_train", "something is wrong", None, "something is wrong"),
])
def test_the_cli_adds_the_flag_that_sets_a_library_errors_parameter(command, handler, message, parameter, shown,
                                                                    monkeypatch, capsys):
    from omnivae.errors import UserError

    def fail(args):
        raise UserError(message, parameter=parameter)

    monkeypatch.setattr(handler, fail)
    argv = {"train": ["train"], "evaluate": ["evaluate", "RUN"], "sample": ["sample", "RUN"],
            "impute": ["impute", "RUN", "--input", "x.npz", "--output", "y.npz"]}[command]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"omnivae: error: {shown}\n"


def test_impute_file_is_a_library_function_whose_errors_name_parameters(tmp_path):
    from omnivae.errors import UserError
    from omnivae.impute import impute_file

    with pytest.raises(UserError) as info:
        impute_file(tmp_path / "run", tmp_path / "absent", tmp_path / "out.npz")
    assert info.value.parameter == "source" and "--" not in str(info.value)
    (tmp_path / "data.npz").write_bytes(b"")
    with pytest.raises(UserError) as info:
        impute_file(tmp_path / "run", tmp_path / "data.npz", tmp_path / "out.txt")
    assert info.value.parameter == "output" and "must end in .npz" in str(info.value)
    with pytest.raises(UserError) as info:
        impute_file(tmp_path / "run", tmp_path / "data.npz", tmp_path / "data.npz", force=True)
    assert info.value.parameter == "output" and "is the input" in str(info.value)
    with pytest.raises(UserError) as info:
        impute_file(tmp_path / "run", tmp_path / "data.npz", tmp_path / "out.npz", batch_size=0)
    assert info.value.parameter == "batch_size"
    assert not (tmp_path / "out.npz").exists()


def test_the_cli_is_a_package_and_python_dash_m_runs_it():
    import subprocess
    import sys

    for module in ("omnivae", "omnivae.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("omnivae "), done.stderr
