"""The NaN guard: a non-finite loss stops training within a few steps, keeps the last good
checkpoint and raises a one-line TrainingDiverged (exit status 2 on the command line)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config, tiny_splits, write_tiny_npz
from omnivae.cli import main
from omnivae.errors import TrainingDiverged, UserError
from omnivae.models import build_model
from omnivae.objectives import ObjectiveOutput
from omnivae.train import TrainConfig, Trainer
from omnivae.train.checkpoint import published_checkpoint
from omnivae.train.trainer import FINITE_CHECK_EVERY

STEPS_PER_EPOCH = 30
BATCH = 16


@pytest.fixture(scope="module")
def splits():
    return tiny_splits(STEPS_PER_EPOCH * BATCH, 16, observed=0.8)


class PoisonAt:
    """The model's objective, except that training step ``at`` (1-based) returns a NaN loss.

    The NaN reaches the gradients, so Adam writes NaN into the parameters and every later
    loss is NaN too, as in a real divergence.
    """

    def __init__(self, objective, at: int, value: float = float("nan"), then=None) -> None:
        self.objective = objective
        self.at = at
        self.value = value
        self.then = then
        self.calls = 0

    def __call__(self, model, x, mask, kl_weight=1.0):
        out = self.objective(model, x, mask, kl_weight)
        if not model.training:
            return out
        self.calls += 1
        if self.calls == self.at:
            return ObjectiveOutput(out.loss * self.value, out.terms)
        if self.then is not None and self.calls == self.at + 1:
            self.then()
        return out


def make_trainer(splits, run_dir, epochs=3, poison_at=None, value=float("nan"), then=None) -> Trainer:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("mwb"), splits.modalities)
    if poison_at is not None:
        objective = PoisonAt(objective, poison_at, value, then)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, seed=0, device="cpu", progress=False)
    return Trainer(model, objective, splits.train, config, run_dir)


def reference_state(splits, epochs: int) -> dict[str, torch.Tensor]:
    trainer = make_trainer(splits, None, epochs=epochs)
    trainer.fit()
    return trainer.model.state_dict()


@pytest.mark.parametrize("at_in_epoch", [3, 13, STEPS_PER_EPOCH])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_within_a_few_steps_and_keeps_the_last_good_checkpoint(
    splits, tmp_path, at_in_epoch, value
):
    run = tmp_path / "run"
    at = STEPS_PER_EPOCH + at_in_epoch  # in the second epoch
    trainer = make_trainer(splits, run, poison_at=at, value=value)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    assert isinstance(caught.value, UserError) and isinstance(caught.value, FloatingPointError)
    # Stopped within a check interval of the bad step, never past it.
    assert at <= trainer.global_step < at + FINITE_CHECK_EVERY
    message = str(caught.value)
    assert "\n" not in message
    assert f"epoch 2/3, step {at_in_epoch}/{STEPS_PER_EPOCH} (global step {at})" in message
    assert f"the last good checkpoint (global step {STEPS_PER_EPOCH}) is in {run}" in message
    assert "lower --lr" in message and "check the data" in message
    # The checkpoint on disk is still the one of the end of epoch 1, bit for bit.
    state = json.loads(published_checkpoint(run).path("state.json").read_text())
    assert state["global_step"] == STEPS_PER_EPOCH and state["epoch"] == 1
    saved = load_file(str(published_checkpoint(run).path("model.safetensors")))
    expected = reference_state(splits, epochs=1)
    assert saved.keys() == expected.keys()
    for key in saved:
        assert torch.equal(saved[key], expected[key]), key
    assert [r["epoch"] for r in json.loads(published_checkpoint(run).path("metrics.json").read_text())["history"]] == [1]
    # ...and it resumes.
    resumed = make_trainer(splits, run)
    resumed.load(run)
    assert resumed.global_step == STEPS_PER_EPOCH
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_a_signal_after_a_nan_step_does_not_checkpoint_it(splits, tmp_path):
    run = tmp_path / "run"
    at = STEPS_PER_EPOCH + 2
    trainer = make_trainer(splits, run, poison_at=at)
    trainer_ref = []

    def stop():  # SIGTERM arrives during the step after the NaN one
        trainer_ref[0]._stop_signal = 15

    trainer.objective.then = stop
    trainer_ref.append(trainer)
    with pytest.raises(TrainingDiverged, match=f"global step {at}"):
        trainer.fit()
    assert trainer.global_step == at + 1
    state = json.loads(published_checkpoint(run).path("state.json").read_text())
    assert state["global_step"] == STEPS_PER_EPOCH
    saved = load_file(str(published_checkpoint(run).path("model.safetensors")))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_divergence_in_the_first_epoch_says_no_checkpoint_was_written(splits, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(splits, run, poison_at=5)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written") as caught:
        trainer.fit()
    assert trainer.global_step < 5 + FINITE_CHECK_EVERY
    assert "epoch 1/3, step 5/" in str(caught.value)
    assert published_checkpoint(run) is None


def test_divergence_without_a_run_directory(splits):
    trainer = make_trainer(splits, None, poison_at=7)
    with pytest.raises(TrainingDiverged, match="nothing was saved"):
        trainer.fit()
    assert trainer.global_step < 7 + FINITE_CHECK_EVERY


def test_no_check_fails_a_healthy_run(splits):
    trainer = make_trainer(splits, None, epochs=1)
    trainer.fit()
    assert trainer.global_step == STEPS_PER_EPOCH


def test_the_command_line_prints_one_line_and_exits_with_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    npz = write_tiny_npz(tmp_path / "tiny.npz", n=64)
    import omnivae.train.run as run_module

    real_build = run_module.build_model

    def poisoned_build(config, modalities, *networks):
        model, objective = real_build(config, modalities, *networks)
        return model, PoisonAt(objective, 6)  # epoch 2 (4 steps per epoch), step 2

    monkeypatch.setattr(run_module, "build_model", poisoned_build)
    out = tmp_path / "run"
    argv = ["train", "--model", "wb", "--dataset", f"npz:{npz}", "--backbone", "mlp", "--hidden", "16",
            "--latent-dim", "4", "--batch-size", "16", "--epochs", "3", "--no-progress", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert line.startswith("omnivae: error: the training loss became NaN or infinite")
    assert "epoch 2/3, step 2/" in line and "global step 6" in line
    assert f"is in {out}" in line and "lower --lr" in line
    assert json.loads(published_checkpoint(out).path("state.json").read_text())["global_step"] == 4
