"""One process of the torchrun launch in ``test_distributed.py`` (not a test module itself).

Run as ``torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT``. Each
process writes ``OUT/rank{R}.pt`` with what the test compares:

- ``deterministic``: the parameters and history after 2 epochs with a noise-free objective
  (the ELBO at the posterior mean), for comparison with one process;
- ``full`` / ``resumed``: the parameters after 2 epochs of the real, random mwb objective
  with ``missing_rate``, uninterrupted, and stopped by a signal that only rank 1 receives
  then resumed from rank 0's checkpoint;
- ``stopped_at``: the step every process stopped at.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch
from torch.distributions import kl_divergence

from helpers import MODALITIES, tiny_config, tiny_dataset
from omnivae.models import build_model
from omnivae.objectives import ObjectiveOutput
from omnivae.train import TrainConfig, Trainer, TrainingInterrupted

# 46 rows in batches of 15: parts of 7 and 8 rows, and a last batch of one row, which
# leaves rank 1 without a row (it takes part with weight zero).
N, BATCH = 46, 15
DEVICE = "cpu"


def posterior_mean_elbo(model, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
    """The ELBO with z at the joint posterior's mean instead of a sample: no random numbers,
    so one process and N processes must agree up to rounding."""
    posterior = model.aggregate(model.encode_experts(x, mask), mask).full_component()
    rec = model.log_likelihood(x, posterior.mean, mask)
    kl = kl_divergence(posterior, model.prior())
    return ObjectiveOutput(-(rec - kl_weight * kl).mean(), {"rec": -rec.mean(), "kl": kl.mean()})


def deterministic_run() -> Trainer:
    """The noise-free run, also made by the test in one process."""
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("mwb"), MODALITIES)
    config = TrainConfig(epochs=2, batch_size=BATCH, lr=1e-2, device=DEVICE, progress=False)
    trainer = Trainer(model, posterior_mean_elbo, tiny_dataset(N, observed=0.7), config)
    trainer.fit()
    return trainer


def random_trainer(run_dir: Path) -> Trainer:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("mwb"), MODALITIES)
    config = TrainConfig(epochs=2, batch_size=BATCH, lr=1e-2, device=DEVICE, missing_rate=0.3, progress=False)
    return Trainer(model, objective, tiny_dataset(N, observed=0.7), config, run_dir=run_dir)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def main(out: Path) -> None:
    results: dict = {}
    trainer = deterministic_run()
    rank = trainer.dist.rank
    results["deterministic"] = {"params": params(trainer), "history": trainer.history}

    full = random_trainer(out / "full")
    full.fit()
    results["full"] = params(full)

    cut = random_trainer(out / "cut")
    if rank == 1:  # only rank 1 gets the signal, after the 5th step (inside epoch 2)
        step = cut.train_step

        def train_step(x, mask):
            terms = step(x, mask)
            if cut.global_step == 4:
                cut._stop_signal = signal.SIGTERM
            return terms

        cut.train_step = train_step
    try:
        cut.fit()
        raise AssertionError("the stop request was ignored")
    except TrainingInterrupted:
        pass
    results["stopped_at"] = cut.global_step
    torch.distributed.barrier()  # rank 0's checkpoint is on disk
    resumed = random_trainer(out / "cut")
    resumed.load(out / "cut")
    resumed.fit()
    results["resumed"] = params(resumed)
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
