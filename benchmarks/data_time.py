"""Data time per training step, per dataset: is the input pipeline ever the bottleneck?

For each dataset, the same shuffled batches are timed twice: once only producing them
(index gather, shared-storage rows, uint8 -> float scaling, one-hot expansion of text),
and once through a full training step of the default model (MWB-VAE, default networks).
The data share is data time / step time. The goal (issue 4) is under 5%.

Usage::

    python benchmarks/data_time.py                               # every offline dataset
    python benchmarks/data_time.py --datasets polymnist,mfeat --steps 30 --threads 2
    python benchmarks/data_time.py --datasets mnist-svhn-text --data-dir ~/data
"""

from __future__ import annotations

import argparse
import time

import torch

from omnivae.data import DATASETS, load_dataset
from omnivae.models import ModelConfig, build_model
from omnivae.train import TrainConfig, Trainer


def measure(name: str, data_dir: str | None, steps: int, batch_size: int, model: str) -> dict:
    started = time.perf_counter()
    data = load_dataset(name, data_dir=data_dir)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(0)
    network, objective = build_model(ModelConfig(model=model), data.modalities)
    trainer = Trainer(network, objective, data.train, TrainConfig(batch_size=batch_size, device="cpu", progress=False))

    def batches():
        generator = torch.Generator().manual_seed(0)
        return data.train.batches(batch_size, shuffle=True, generator=generator)

    # Warm-up (allocator, first-call costs), then the timed passes over identical batches.
    for _, batch in zip(range(2), batches()):
        trainer.train_step(batch.x, network.stack_mask(batch.x, batch.mask))
    started = time.perf_counter()
    count = 0
    for _, batch in zip(range(steps), batches()):
        count += len(batch)
    data_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _, batch in zip(range(steps), batches()):
        trainer.train_step(batch.x, network.stack_mask(batch.x, batch.mask))
    step_seconds = time.perf_counter() - started
    return {
        "dataset": name,
        "train": len(data.train),
        "load_s": load_seconds,
        "data_ms": 1000 * data_seconds / steps,
        "step_ms": 1000 * step_seconds / steps,
        "share": data_seconds / step_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    offline = ",".join(name for name, info in DATASETS.items() if info.offline and info.status() == "ready")
    parser.add_argument("--datasets", default=offline)
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="mwb")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'dataset':24} {'train':>7} {'load s':>7} {'data ms':>8} {'step ms':>8} {'share':>7}")
    for name in args.datasets.split(","):
        row = measure(name.strip(), args.data_dir, args.steps, args.batch_size, args.model)
        print(
            f"{row['dataset']:24} {row['train']:>7} {row['load_s']:>7.2f} {row['data_ms']:>8.2f} "
            f"{row['step_ms']:>8.1f} {100 * row['share']:>6.2f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
