"""The trainer: run directories, exact resume, damaged runs, masking, schedules, devices."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from helpers import NAMES, tiny_batch, tiny_config, tiny_splits
from omnivae.errors import RunDirError, UserError
from omnivae.models import build_model
from omnivae.objectives import Objective
from omnivae.stages import Stage
from omnivae.train import (
    LinearWarmup,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    hide_modalities,
    load_run,
    resolve_device,
    train,
)
from omnivae.train.checkpoint import FILES, FORMAT, published_checkpoint

RUN_ENTRIES = [".lock", "checkpoint.json", "checkpoints", "config.json"]


def ckpt(run, name: str):
    """A file of the run's published checkpoint."""
    return published_checkpoint(run).path(name)


def _train_config(**overrides) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu", "progress": False}
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def splits():
    return tiny_splits(48, 16, observed=0.8)


@pytest.fixture(scope="module")
def finished_run(splits, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    trainer = train(tiny_config("mwb"), _train_config(epochs=2), splits, "tiny", run)
    return run, trainer


# -- the run directory ------------------------------------------------------------------


def test_train_writes_a_complete_run(finished_run):
    run, trainer = finished_run
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_ENTRIES)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [ckpt(run, "state.json").parent.name]
    assert sorted(p.name for p in ckpt(run, "state.json").parent.iterdir()) == sorted(FILES)
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == FORMAT
    assert config["model"]["model"] == "mwb" and config["model"]["latent_dim"] == 4
    assert config["train"]["epochs"] == 2
    assert config["dataset"]["name"] == "tiny"
    assert [m["name"] for m in config["dataset"]["modalities"]] == NAMES
    assert config["label_names"] == ["a", "b", "c"]
    state = json.loads(ckpt(run, "state.json").read_text())
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0 and state["finished"] is True
    assert state["global_step"] == 2 * 3
    history = json.loads(ckpt(run, "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        for key in ("train_loss", "train_rec", "train_kl", "test_loss"):
            assert math.isfinite(record[key]), key
    assert history == trainer.history
    params = load_file(str(ckpt(run, "model.safetensors")))
    assert params.keys() == trainer.model.state_dict().keys()


def test_load_run_rebuilds_an_identical_model(finished_run):
    run, trainer = finished_run
    loaded = load_run(run)
    assert loaded.model_config == tiny_config("mwb")
    assert loaded.train_config.epochs == 2
    assert loaded.dataset_name == "tiny"
    assert [m.name for m in loaded.modalities] == NAMES
    assert not loaded.model.training
    trainer.model.eval()
    x = tiny_batch(5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :2] = False
    assert torch.equal(loaded.model.encode(x, mask).mean, trainer.model.encode(x, mask).mean)
    z = torch.randn(5, 4)
    ours, theirs = trainer.model.decode_mean(z), loaded.model.decode_mean(z)
    for name in NAMES:
        assert torch.equal(ours[name], theirs[name])


def test_training_reduces_the_loss(splits):
    trainer = train(tiny_config("wb"), _train_config(epochs=8, lr=3e-3), splits, "tiny", None)
    losses = [r["train_loss"] for r in trainer.history]
    assert len(losses) == 8
    assert losses[-1] < losses[0]


def test_same_seed_same_run_and_other_seed_differs(splits):
    runs = [
        train(tiny_config("mopoe"), _train_config(epochs=1, seed=s), splits, "tiny", None)
        for s in (3, 3, 4)
    ]
    states = [r.model.state_dict() for r in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_refuses_to_overwrite_a_non_empty_directory(splits, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="resume=True"):
        train(tiny_config("wb"), _train_config(epochs=1), splits, "tiny", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# -- exact resume -----------------------------------------------------------------------

RESUME_MODEL = {"model": "mwb"}
RESUME_TRAIN = {"epochs": 3, "missing_rate": 0.3, "warmup_epochs": 1.5}


def _final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def straight(splits, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    trainer = train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run)
    return run, trainer


def _assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming"


def test_resume_after_an_epoch_is_exact(splits, straight, tmp_path):
    run = tmp_path / "run"
    first = train(tiny_config(**RESUME_MODEL), _train_config(**{**RESUME_TRAIN, "epochs": 1}), splits, "tiny", run)
    assert len(first.history) == 1
    # The run is not yet where the straight one ended, so the comparison below means something.
    assert not all(torch.equal(v, straight[1].model.state_dict()[k]) for k, v in _final_state(first).items())
    resumed = train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run, resume=True)
    _assert_same_parameters(_final_state(resumed), _final_state(straight[1]))
    _assert_same_parameters(load_file(str(ckpt(run, "model.safetensors"))), load_file(str(ckpt(straight[0], "model.safetensors"))))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for mine, theirs in zip(resumed.history, straight[1].history):
        assert mine["train_loss"] == theirs["train_loss"]
        assert mine["test_loss"] == theirs["test_loss"]
    straight_adam = load_file(str(ckpt(straight[0], "state.safetensors")))
    resumed_adam = load_file(str(ckpt(run, "state.safetensors")))
    _assert_same_parameters(resumed_adam, straight_adam)


@pytest.mark.parametrize("stop_after", [1, 4])
def test_resume_from_the_middle_of_an_epoch_is_exact(splits, straight, tmp_path, monkeypatch, stop_after):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = Trainer.train_step

    def interrupted_step(self, x, mask):
        terms = original(self, x, mask)
        calls["n"] += 1
        if calls["n"] == stop_after:
            # A real SIGINT, caught by the trainer's handler: it finishes the step first.
            os.kill(os.getpid(), signal.SIGINT)
        return terms

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    state = json.loads(ckpt(run, "state.json").read_text())
    steps_per_epoch = 3
    assert state["global_step"] == stop_after
    assert state["epoch"] == stop_after // steps_per_epoch
    assert state["step_in_epoch"] == stop_after % steps_per_epoch
    assert state["finished"] is False

    resumed = train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run, resume=True)
    _assert_same_parameters(_final_state(resumed), _final_state(straight[1]))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.global_step == straight[1].global_step


def test_stop_signal_set_directly_also_checkpoints(splits, straight, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = Trainer.train_step

    def step(self, x, mask):
        terms = original(self, x, mask)
        if self.global_step == 4:  # counted before this step: stop after the 5th step
            self._stop_signal = signal.SIGTERM
        return terms

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingInterrupted):
        train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert json.loads(ckpt(run, "state.json").read_text())["global_step"] == 5
    resumed = train(tiny_config(**RESUME_MODEL), _train_config(**RESUME_TRAIN), splits, "tiny", run, resume=True)
    _assert_same_parameters(_final_state(resumed), _final_state(straight[1]))


# -- damaged and foreign run directories ------------------------------------------------


def flat_copy(source, target) -> None:
    """``source`` in the layout omnivae wrote before checkpoint generations: config.json
    and the four checkpoint files side by side, checksums of the tensors in state.json."""
    target.mkdir()
    (target / "config.json").write_bytes((source / "config.json").read_bytes())
    for name in FILES:
        (target / name).write_bytes(ckpt(source, name).read_bytes())


@pytest.fixture(params=["generations", "flat"])
def run_copy(finished_run, tmp_path, request):
    source, _ = finished_run
    target = tmp_path / "copy"
    if request.param == "flat":
        flat_copy(source, target)
        assert published_checkpoint(target).generation is None
    else:
        shutil.copytree(source, target)
    load_run(target)  # the copy itself is fine
    return target


def rewrite(run, name: str, data: bytes) -> None:
    """Replace a checkpoint file and record its checksum where the layout records one: a
    checkpoint that is damaged yet consistent, which only the file's own checks can catch."""
    ckpt(run, name).write_bytes(data)
    pointer = run / "checkpoint.json"
    if pointer.exists():
        obj = json.loads(pointer.read_text())
        obj["sha256"][name] = hashlib.sha256(data).hexdigest()
        pointer.write_text(json.dumps(obj))


def test_truncated_model_file_is_a_run_dir_error(run_copy):
    file = ckpt(run_copy, "model.safetensors")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="model.safetensors"):
        load_run(run_copy)


def test_tampered_model_file_is_a_run_dir_error(run_copy):
    file = ckpt(run_copy, "model.safetensors")
    data = bytearray(file.read_bytes())
    data[-10] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="checksum"):
        load_run(run_copy)


@pytest.mark.parametrize("cut", [0, 7, 100, 0.5])
def test_truncated_file_without_checksum_is_a_run_dir_error(run_copy, cut):
    # Without a recorded checksum the safetensors reader itself must fail cleanly.
    state = json.loads(ckpt(run_copy, "state.json").read_text())
    del state["sha256"]
    rewrite(run_copy, "state.json", json.dumps(state).encode())
    data = ckpt(run_copy, "model.safetensors").read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else cut
    rewrite(run_copy, "model.safetensors", data[:size])
    with pytest.raises(RunDirError, match="model.safetensors"):
        load_run(run_copy)


def test_missing_model_file_is_a_run_dir_error(run_copy):
    ckpt(run_copy, "model.safetensors").unlink()
    with pytest.raises(RunDirError, match="model.safetensors"):
        load_run(run_copy)


def test_weights_of_another_model_are_a_run_dir_error(run_copy, splits, tmp_path):
    other = tmp_path / "other"
    train(tiny_config("mwb", latent_dim=3), _train_config(epochs=1), splits, "tiny", other)
    for name in ("model.safetensors", "state.json"):
        rewrite(run_copy, name, ckpt(other, name).read_bytes())
    with pytest.raises(RunDirError, match="does not fit"):
        load_run(run_copy)


def test_truncated_state_is_a_run_dir_error_on_resume(run_copy, splits):
    file = ckpt(run_copy, "state.safetensors")
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(RunDirError, match="state.safetensors"):
        train(tiny_config("mwb"), _train_config(epochs=3), splits, "tiny", run_copy, resume=True)


def test_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="config.json"):
        load_run(tmp_path)
    with pytest.raises(RunDirError, match="not a directory"):
        load_run(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunDirError):
        load_run(tmp_path / "file.txt")


def test_another_format_is_named(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["format"] = "someone-else/7"
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="format") as info:
        load_run(run_copy)
    assert "someone-else/7" in str(info.value)
    assert FORMAT in str(info.value)


def test_damaged_config_json(run_copy):
    (run_copy / "config.json").write_text('{"format": ')
    with pytest.raises(RunDirError, match="damaged"):
        load_run(run_copy)
    (run_copy / "config.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(RunDirError, match="lacks"):
        load_run(run_copy)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "latent_dim", "4"),
        ("model", "hidden", "16"),
        ("model", "beta", None),
        ("model", "model", "nope"),
        ("train", "epochs", "x"),
        ("dataset", "modalities", 5),
        ("dataset", "modalities", [{"name": "img", "shape": ["a"], "kind": "image"}]),
        (None, "model", [1]),
    ],
)
def test_malformed_config_values_are_a_run_dir_error(run_copy, section, key, value):
    config = json.loads((run_copy / "config.json").read_text())
    (config if section is None else config[section])[key] = value
    (run_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="config.json"):
        load_run(run_copy)


# -- hiding modalities ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.7])
def test_hide_modalities_with_everything_observed(rate):
    m, n = 3, 20000
    mask = torch.ones(m, n, dtype=torch.bool)
    torch.manual_seed(0)
    hidden = hide_modalities(mask, rate)
    assert hidden.shape == mask.shape and hidden.dtype == torch.bool
    assert hidden.any(0).all(), "a row is never left empty"
    # Each modality is hidden with probability rate, except that a row about to lose all
    # of them (probability rate^M) gets one back.
    expected = rate - rate**m / m
    assert abs(float((~hidden).float().mean()) - expected) < 0.01
    assert hidden.sum(0).float().mean() > 0


def test_hide_modalities_never_reveals_and_keeps_lonely_modalities():
    m, n = 4, 5000
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(m, n, generator=gen) < 0.5
    mask[2] |= ~mask.any(0)
    torch.manual_seed(0)
    hidden = hide_modalities(mask, 0.6)
    assert not (hidden & ~mask).any(), "an unobserved modality is never revealed"
    assert hidden.any(0).all()
    lonely = mask.sum(0) == 1
    assert lonely.any()
    assert torch.equal(hidden[:, lonely], mask[:, lonely])
    # Among rows with two or more observed, something does get hidden.
    assert (hidden.sum(0) < mask.sum(0)).any()


def test_hide_modalities_rate_zero_is_the_identity():
    mask = torch.rand(3, 10) < 0.5
    assert hide_modalities(mask, 0.0) is mask


# -- schedules and devices --------------------------------------------------------------


def test_linear_warmup_values():
    warmup = LinearWarmup(epochs=2)
    steps = 10
    assert warmup(0, steps) == pytest.approx(1 / 20)
    assert warmup(9, steps) == pytest.approx(10 / 20)
    assert warmup(18, steps) == pytest.approx(19 / 20)
    assert warmup(19, steps) == 1.0
    assert warmup(500, steps) == 1.0
    values = [warmup(s, steps) for s in range(25)]
    assert values == sorted(values)
    assert LinearWarmup(0)(0, steps) == 1.0
    assert LinearWarmup(0.5)(0, 4) == pytest.approx(0.5)


def test_trainer_applies_the_warmup_to_the_kl_weight(splits, monkeypatch):
    seen = []
    model, objective = build_model(tiny_config("wb"), splits.modalities)

    def recording(model, x, mask, kl_weight=1.0):
        seen.append(float(kl_weight))  # a device tensor the trainer refills each step
        return type(objective).__call__(objective, model, x, mask, kl_weight)

    trainer = Trainer(model, recording, splits.train, _train_config(epochs=2, warmup_epochs=1))
    trainer.fit()
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("tpu", "bogus", "mps"):
        with pytest.raises(UserError, match="device"):
            resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error(splits, tmp_path):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="cuda"):
            resolve_device(name)
    with pytest.raises(UserError, match="cuda"):
        train(tiny_config("wb"), _train_config(device="cuda"), splits, "tiny", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"lr": "1e-3"}, "lr must be a number"),
        ({"progress": "no"}, "progress must be true or false"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch-size"),
        ({"batch_size": 49}, "larger than the 48"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"missing_rate": 1.0}, "missing-rate"),
        ({"missing_rate": -0.1}, "missing-rate"),
        ({"warmup_epochs": -1.0}, "warmup"),
    ],
)
def test_train_config_validation(splits, tmp_path, overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        train(tiny_config("wb"), _train_config(**overrides), splits, "tiny", tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- staged training ----------------------------------------------------------------------
class _DecoderRefit(Objective):
    """A two-stage schedule for the tests: the whole model, then only the decoders."""

    def __init__(self, inner: Objective) -> None:
        self.inner = inner

    def __call__(self, model, x, mask, kl_weight=1.0):
        return self.inner(model, x, mask, kl_weight)

    def stages(self, epochs):
        return (
            Stage("joint", self.inner, epochs),
            Stage("decoders", self.inner, 1, parameters=lambda m: m.decoders.parameters(), warmup=False),
        )


def _staged(splits, run=None, **train_overrides):
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("mwb"), splits.modalities)
    config = _train_config(**{"epochs": 2, **train_overrides})
    return Trainer(model, _DecoderRefit(objective), splits.train, config, run, splits.test, {"model": {}})


def test_a_later_stage_trains_only_its_parameters_with_a_fresh_optimizer(splits):
    trainer = _staged(splits)
    first_stage_optimizer = trainer.optimizer
    trainer.config.epochs = 2
    while trainer.epoch < 2:
        trainer._run_epoch()
    encoders = {k: v.clone() for k, v in trainer.model.encoders.state_dict().items()}
    decoders = {k: v.clone() for k, v in trainer.model.decoders.state_dict().items()}
    trainer.fit()  # runs the remaining stage
    assert trainer.epoch == trainer.total_epochs == 3
    assert trainer.optimizer is not first_stage_optimizer
    assert all(torch.equal(v, trainer.model.encoders.state_dict()[k]) for k, v in encoders.items())
    assert not all(torch.equal(v, trainer.model.decoders.state_dict()[k]) for k, v in decoders.items())
    assert [r.get("stage") for r in trainer.history] == ["joint", "joint", "decoders"]
    fresh = _staged(splits)
    assert fresh._epoch_label() == "stage 1/2 (joint) epoch 1/2"
    fresh.epoch = 2
    fresh._enter_stage(1)
    assert fresh._epoch_label() == "stage 2/2 (decoders) epoch 1/1"


def test_resume_inside_a_later_stage_is_exact(splits, tmp_path, monkeypatch):
    straight = _staged(splits, tmp_path / "straight")
    straight.fit()
    run = tmp_path / "run"
    original = Trainer.train_step
    calls = {"n": 0}
    steps_per_epoch = straight.steps_per_epoch

    def interrupted_step(self, x, mask):
        terms = original(self, x, mask)
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 1:  # one step into the second stage
            self._stop_signal = signal.SIGTERM
        return terms

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(TrainingInterrupted):
        _staged(splits, run).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert json.loads(ckpt(run, "state.json").read_text())["stage"] == 1
    resumed = _staged(splits, run)
    resumed.load(run)
    resumed.fit()
    _assert_same_parameters(_final_state(resumed), _final_state(straight))
