"""Callbacks and experiment trackers, with the real libraries, offline.

Each tracker's output is read back through its own library (TensorBoard's
EventAccumulator, MLflow's client) or, for W&B, from the offline run file, and compared
with ``metrics.json`` and ``eval.json``. Trainings are two epochs of the tiny networks.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import warnings
from pathlib import Path

import pytest
import torch

from helpers import tiny_config, tiny_splits, write_tiny_npz
from omnivae.cli import main
from omnivae.train import Callback, TrainConfig, train
from omnivae.train.checkpoint import published_checkpoint
from omnivae.train.tracking import MLflowTracker, TensorBoardTracker, WandbTracker, read_record

TINY = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "8", "--no-progress", "--device", "cpu"]


def _config(**overrides) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu", "progress": False, "warmup_epochs": 1.0}
    options.update(overrides)
    return TrainConfig(**options)


def _history(run: Path) -> list[dict]:
    return json.loads(published_checkpoint(run).path("metrics.json").read_text())["history"]


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _wandb_records(folder: Path) -> list:
    """The protobuf records of W&B offline run files: their framing is LevelDB's log
    format (32 KiB blocks; each record a 7-byte header: CRC-32C, length, type) after a
    7-byte file header ``:W&B``, magic ``0xBEE1``, version."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        position, pending = 7, b""
        while position + 7 <= len(data):
            room = 32768 - position % 32768
            if room < 7:  # a block's tail too short for a header is padding
                position += room
                continue
            _, length, kind = struct.unpack("<IHB", data[position : position + 7])
            if kind == 0 and length == 0:
                position += room
                continue
            pending += data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind in (1, 4):  # a full record, or the last piece of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
                pending = b""
    return records


@pytest.fixture(scope="module")
def splits():
    return tiny_splits(48, 16)


@pytest.fixture(scope="module")
def tracked_run(splits, tmp_path_factory):
    """One training logged to all three trackers, every step."""
    run = tmp_path_factory.mktemp("tracked") / "run"
    trackers = [TensorBoardTracker(log_every=1), MLflowTracker(log_every=1), WandbTracker(log_every=1)]
    trainer = train(tiny_config("mwb"), _config(), splits, "tiny", run, callbacks=trackers)
    return run, trainer


def test_tensorboard_scalars_equal_metrics_json(tracked_run):
    run, trainer = tracked_run
    scalars = _scalars(run / "tracking" / "tensorboard")
    history = _history(run)
    for key in ("train_loss", "train_rec", "train_kl", "test_loss", "samples_per_second"):
        logged = scalars[f"epoch/{key}"]
        assert [step for step, _ in logged] == [record["step"] for record in history]
        assert [value for _, value in logged] == pytest.approx([r[key] for r in history], rel=1e-6)
    steps = trainer.global_step
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, steps + 1))
    # Warm-up over one epoch (3 steps): the KL weight rises to 1, then stays there.
    per_epoch = trainer.steps_per_epoch
    assert [v for _, v in scalars["train/kl_weight"]] == pytest.approx(
        [min(1.0, s / per_epoch) for s in range(1, steps + 1)]
    )
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([1e-3] * steps)
    assert all(v > 0 for _, v in scalars["train/samples_per_second"])


def test_mlflow_store_reads_back(tracked_run):
    from mlflow.tracking import MlflowClient

    run, _ = tracked_run
    ids = read_record(run)["mlflow"]
    assert ids["tracking_uri"] == (run / "tracking" / "mlflow").absolute().as_uri()
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    stored = client.get_run(ids["run_id"])
    assert stored.info.status == "FINISHED"
    assert stored.data.params["train.lr"] == "0.001"
    assert stored.data.params["model.model"] == "mwb"
    history = _history(run)
    logged = client.get_metric_history(ids["run_id"], "epoch/train_loss")
    assert sorted((m.step, m.value) for m in logged) == [
        (r["step"], pytest.approx(r["train_loss"], rel=1e-12)) for r in history
    ]
    artifacts = {f.path for f in client.list_artifacts(ids["run_id"], "run")}
    assert {"run/config.json", "run/checkpoint.json", "run/checkpoints"} <= artifacts
    assert "run/tracking" not in artifacts


def test_wandb_offline_run_holds_the_history(tracked_run):
    run, trainer = tracked_run
    records = _wandb_records(run / "tracking" / "wandb")
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    history = _history(run)
    epochs = [row for row in rows if "epoch/train_loss" in row]
    assert [row["_step"] for row in epochs] == [r["step"] for r in history]
    assert [row["epoch/train_loss"] for row in epochs] == pytest.approx([r["train_loss"] for r in history], rel=1e-12)
    assert sum("train/loss" in row for row in rows) == trainer.global_step
    assert read_record(run)["wandb"]["run_id"] in {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin",))

    def on_step_end(self, trainer, step):
        self.calls.append(("step", step.step, step.epoch, step.rows))

    def on_epoch_end(self, trainer, record):
        self.calls.append(("epoch", record["epoch"]))

    def on_stage_change(self, trainer, index, stage):
        self.calls.append(("stage", index, stage.name))

    def on_checkpoint(self, trainer, run_dir):
        self.calls.append(("checkpoint", trainer.global_step))

    def on_train_end(self, trainer, status):
        self.calls.append(("end", status))


def test_hooks_in_order_with_a_stage_change(splits, tmp_path):
    """JNF trains its joint VAE, then its unimodal posteriors: one stage change between."""
    recorder = Recorder()
    trainer = train(tiny_config("jnf"), _config(epochs=1), splits, "tiny", tmp_path / "run", callbacks=[recorder])
    per_epoch = trainer.steps_per_epoch
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "begin" and recorder.calls[-1] == ("end", "finished")
    assert [c for c in recorder.calls if c[0] == "stage"] == [("stage", 1, "unimodal posteriors")]
    assert kinds.index("stage") == kinds.index("checkpoint") + 1  # after the first epoch's checkpoint
    steps = [c for c in recorder.calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(1, 2 * per_epoch + 1))
    assert sum(c[3] for c in steps) == 2 * len(splits.train)
    assert [c[1] for c in recorder.calls if c[0] == "epoch"] == [1, 2]
    assert [c[1] for c in recorder.calls if c[0] == "checkpoint"] == [per_epoch, 2 * per_epoch, 2 * per_epoch]


class Broken(Callback):
    def on_step_end(self, trainer, step):
        raise OSError("disk full")


def test_a_failing_tracker_costs_nothing(splits, tmp_path):
    """A callback that raises is warned about once and dropped; the run is the one trained
    without it (the same parameters and history), and the other callbacks keep going."""
    plain = train(tiny_config("mwb"), _config(), splits, "tiny", tmp_path / "plain")
    recorder = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(
            tiny_config("mwb"), _config(), splits, "tiny", tmp_path / "run",
            callbacks=[Broken(), TensorBoardTracker(log_every=1), recorder],
        )
    failures = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(failures) == 1 and "Broken failed in on_step_end (OSError: disk full)" in failures[0]
    assert recorder.calls[-1] == ("end", "finished")
    assert len(_scalars(tmp_path / "run" / "tracking" / "tensorboard")["train/loss"]) == trainer.global_step
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_second")} for r in _history(tmp_path / "run")]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_second")} for r in plain.history]


def test_a_tracker_that_breaks_midway_is_dropped(splits, tmp_path):
    class Flaky(TensorBoardTracker):
        def _log(self, values, step):
            if step > 2:
                raise RuntimeError("writer gone")
            super()._log(values, step)

    with pytest.warns(RuntimeWarning, match="Flaky failed in on_step_end"):
        trainer = train(tiny_config("mwb"), _config(), splits, "tiny", tmp_path / "run", callbacks=[Flaky(log_every=1)])
    assert trainer.epoch == 2 and (tmp_path / "run" / "checkpoint.json").is_file()


# -- the command line -------------------------------------------------------------------


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", n=40)


def test_cli_train_and_evaluate_track_into_the_same_runs(npz, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "wb", "--dataset", f"npz:{npz}", "--epochs", "2", *TINY, "--out", str(run)]
    assert main([*argv, "--track", "tensorboard,mlflow"]) == 0
    ids = read_record(run)
    assert set(ids) == {"tensorboard", "mlflow"}
    assert main(["evaluate", str(run), "--metrics", "recon", "--device", "cpu", "--track", "tensorboard,mlflow"]) == 0
    assert read_record(run)["mlflow"]["run_id"] == ids["mlflow"]["run_id"]  # the same run, not a new one
    results = json.loads((run / "eval.json").read_text())
    steps = _history(run)[-1]["step"]
    scalars = _scalars(run / "tracking" / "tensorboard")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    metrics = client.get_run(ids["mlflow"]["run_id"]).data.metrics
    for kind in ("self", "cross", "joint"):
        for name, value in results["recon"][kind].items():
            assert scalars[f"eval/recon/{kind}/{name}"] == [(steps, pytest.approx(value, rel=1e-6))]
            assert metrics[f"eval/recon/{kind}/{name}"] == pytest.approx(value, rel=1e-12)
    assert "epoch/train_loss" in metrics  # training's metrics are in that same MLflow run


def test_cli_missing_package_is_one_line_before_training(npz, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    run = tmp_path / "run"
    argv = ["train", "--model", "wb", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY, "--out", str(run)]
    assert main([*argv, "--track", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "omnivae: error: tracking with wandb needs the wandb package, which is not installed; "
        'install the tracking extra: pip install "omnivae[tracking]"'
    ]
    assert not run.exists()


def test_cli_unknown_backend(npz, tmp_path, capsys):
    argv = ["train", "--dataset", f"npz:{npz}", *TINY, "--out", str(tmp_path / "run"), "--track", "tensorboard,comet"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "omnivae: error: unknown tracking backend 'comet'; choose one of: mlflow, tensorboard, wandb (flag: --track)"
    )
    assert not (tmp_path / "run").exists()
