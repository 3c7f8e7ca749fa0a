"""Killing real ``omnivae`` processes: SIGTERM/SIGINT mid-training, then ``--resume``, ends
bit-for-bit where an uninterrupted run ends; a killed benchmark redoes no finished run.

The trainer catches SIGINT and SIGTERM, finishes the current step, writes a checkpoint and
stops; the command line then prints ``resume with: omnivae train --resume RUN`` and exits
with status 130 (see :class:`omnivae.train.TrainingInterrupted`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_tiny_npz
from omnivae.train.checkpoint import published_checkpoint

EPOCHS = 30
TINY = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--no-progress",
        "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def omnivae(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "omnivae", *args],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> float:
    """Poll until ``path`` exists (the process must still be running); the time it appeared."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended (status {process.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)
    return time.monotonic()


def finish(process: subprocess.Popen, timeout: float = 120.0) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def train_args(npz: Path, out: Path, model: str = "wb") -> list[str]:
    return ["train", "--model", model, "--dataset", f"npz:{npz}", *TINY, "--epochs", str(EPOCHS), "--out", str(out)]


def read_state(run: Path) -> dict:
    return json.loads(published_checkpoint(run).path("state.json").read_text())


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", n=120)


@pytest.fixture(scope="module")
def straight(npz, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and how long it trained after its first checkpoint."""
    cwd = tmp_path_factory.mktemp("straight")
    run = cwd / "run"
    process = omnivae(*train_args(npz, run), cwd=cwd)
    first = wait_for(run / "checkpoint.json", process)
    status, out, err = finish(process)
    assert status == 0, err
    return run, time.monotonic() - first


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_training_resumes_bit_for_bit(npz, straight, tmp_path, signum):
    reference, seconds = straight
    run = tmp_path / "run"
    process = omnivae(*train_args(npz, run), cwd=tmp_path)
    wait_for(run / "checkpoint.json", process)  # past the first epoch: training is under way
    # A random moment in the first third of what is left, so the signal lands mid-training
    # (and, most likely, mid-epoch).
    time.sleep(random.uniform(0.0, seconds / 3))
    process.send_signal(signum)
    status, out, err = finish(process)
    assert status == 130, f"status {status}\n{out}\n{err}"
    assert "Traceback" not in err
    assert f"resume with: omnivae train --resume {run}" in err
    state = read_state(run)
    assert not state["finished"], "the signal arrived after training had ended"
    stopped_at = state["global_step"]
    print(f"{signum.name} landed at epoch {state['epoch'] + 1}, step {state['step_in_epoch']} (global step {stopped_at})")

    resumed = omnivae("train", "--resume", str(run), "--no-progress", cwd=tmp_path)
    status, out, err = finish(resumed)
    assert status == 0, err
    assert read_state(run)["finished"]
    assert read_state(run)["global_step"] == read_state(reference)["global_step"] > stopped_at

    ours = load_file(str(published_checkpoint(run).path("model.safetensors")))
    theirs = load_file(str(published_checkpoint(reference).path("model.safetensors")))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after resuming from step {stopped_at}"
    history = json.loads(published_checkpoint(run).path("metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))


def test_killed_benchmark_redoes_no_finished_run(npz, tmp_path):
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", "wb,moe", "--dataset", f"npz:{npz}", "--seeds", "1",
            "--epochs", str(EPOCHS // 2), "--out", str(out), "--metrics", "recon", "--no-figures",
            "--latent-dim", "4", "--hidden", "16", "--backbone", "mlp", "--batch-size", "16", "--no-progress",
            "--device", "cpu", "--eval-batch-size", "32"]
    process = omnivae(*argv, cwd=tmp_path)
    done = out / "wb-seed0"
    wait_for(done / "eval.json", process)
    wait_for(out / "moe-seed0" / "checkpoint.json", process)  # the second run is training
    process.send_signal(signal.SIGTERM)
    status, printed, err = finish(process)
    assert status == 130, f"status {status}\n{printed}\n{err}"
    assert not read_state(out / "moe-seed0")["finished"]

    files = sorted(p for p in done.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    process = omnivae(*argv, cwd=tmp_path)
    status, printed, err = finish(process)
    assert status == 0, err
    assert "[wb seed 0] finished earlier, skipped" in printed
    assert "[moe seed 0] resuming" in printed
    assert "[wb seed 0] training" not in printed and "[wb seed 0] evaluating" not in printed
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert after == before, "a finished run was touched"
    assert sorted(p for p in done.rglob("*") if p.is_file()) == files
    assert read_state(out / "moe-seed0")["finished"]
    assert (out / "moe-seed0" / "eval.json").is_file()
    assert "| wb |" in (out / "results.md").read_text()
