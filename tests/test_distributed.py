"""Training with torchrun on the CPU: two processes, gloo on localhost (no network needed).

Two launches (a few seconds of process start-up each): ``distributed_worker.py``, which
trains through the Python API and saves what every process ends with, and
``-m omnivae train``, the command line. The rest runs in this process.

What "the same as one process" can mean: each process draws its own reparameterisation
noise and ``--missing-rate`` masks (the parts of a batch must not share noise), so a
random objective cannot reproduce a one-process run draw for draw. The comparison with
one process therefore uses an objective without random numbers (the ELBO at the joint
posterior's mean, on the real model and trainer), where N processes must match one
process up to rounding: same batches, same averaged gradients, same Adam steps, same
logged losses. The random objective is checked for what must hold exactly: identical
models in every process, every process stopping at the same step when only one gets a
signal, and a resumed run continuing bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_tiny_npz
from omnivae.cli import main
from omnivae.data.base import Batch
from omnivae.errors import UserError
from omnivae.train import TrainConfig
from omnivae.train.checkpoint import published_checkpoint
from omnivae.train.distributed import Distributed

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Launch two processes; nothing of an enclosing launch leaks into them."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(TORCHRUN + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("torchrun")
    torchrun([str(HERE / "distributed_worker.py"), str(out)], cwd=out)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def test_two_processes_match_one_process(ranks):
    from distributed_worker import deterministic_run

    one = deterministic_run()  # in this process: not under torchrun
    assert one.dist is None
    reference = {k: v.detach() for k, v in one.model.state_dict().items()}
    two = ranks[0]["deterministic"]
    # 2 epochs of 4 steps: batches of 15 rows split 7 + 8, and a last batch of one row.
    assert max_diff(two["params"], reference) < 1e-5
    assert len(two["history"]) == len(one.history) == 2
    for mine, theirs in zip(two["history"], one.history):
        for key in ("train_loss", "train_rec", "train_kl"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6)


def test_processes_stay_identical_and_stop_together(ranks):
    for key in ("full", "resumed"):
        assert max_diff(ranks[0][key], ranks[1][key]) == 0.0
    assert max_diff(ranks[0]["deterministic"]["params"], ranks[1]["deterministic"]["params"]) == 0.0
    # Only rank 1 was asked to stop, after step 5: both stopped there.
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == 5


def test_resume_under_torchrun_continues_bit_for_bit(ranks):
    for rank in ranks:
        assert max_diff(rank["full"], rank["resumed"]) == 0.0


def test_train_command_under_torchrun(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", n=40)
    out = tmp_path / "run"
    flags = ["--model", "wb", "--dataset", f"npz:{npz}", "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4",
             "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    result = torchrun(["-m", "omnivae", "train", *flags], cwd=tmp_path)
    # Rank 0 alone prints (and shows progress bars, on stderr); rank 1 is silent.
    assert result.stdout.count("training wb") == 1
    assert result.stdout.count("epoch 2/2") == 1
    assert result.stdout.count(f"run written to {out}") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.npz"]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.json", "checkpoints", "config.json"]
    assert sorted(p.name for p in published_checkpoint(out).folder.iterdir()) == [
        "metrics.json", "model.safetensors", "state.json", "state.safetensors",
    ]
    state = json.loads(published_checkpoint(out).path("state.json").read_text())
    assert state["finished"] and state["global_step"] == 2 * 2  # 31 training rows, global batches of 16
    history = json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert "rng/torch/rank1" in load_file(published_checkpoint(out).path("state.safetensors"))
    # A run trained by two processes continues in one.
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    assert json.loads(published_checkpoint(out).path("state.json").read_text())["global_step"] == 3 * 2


def test_each_process_takes_its_rows_of_the_batch():
    x = torch.arange(7.0).unsqueeze(1)
    batch = Batch({"v": x}, {"v": torch.ones(7, dtype=torch.bool)}, torch.arange(7))
    parts = [Distributed(r, 3, r, torch.device("cpu")) for r in range(3)]
    rows = [part.local_part(batch).x["v"].squeeze(1).tolist() for part in parts]
    assert rows == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0, 6.0]]
    assert [part._weight for part in parts] == pytest.approx([2 / 7, 2 / 7, 3 / 7])
    # One row for two processes: rank 1 trains on it, rank 0 computes on it but weighs it zero.
    lone = Batch({"v": x[:1]}, {"v": torch.ones(1, dtype=torch.bool)})
    pair = [Distributed(r, 2, r, torch.device("cpu")) for r in range(2)]
    assert [len(part.local_part(lone)) for part in pair] == [1, 1]
    assert [part._weight for part in pair] == [0.0, 1.0]


def test_batch_smaller_than_the_processes_is_a_user_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="smaller than the 4 processes"):
        TrainConfig(batch_size=2).validate()
    TrainConfig(batch_size=6).validate()  # need not divide evenly
