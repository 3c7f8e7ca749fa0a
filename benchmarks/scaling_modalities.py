"""Step time against the number of modalities M (issue 7, item 6).

A synthetic dataset of M vector modalities (64 features each, shared latent signal)
is trained with identical small MLP nets per modality for M = 2, 4, 8, 16. MoPoE and
MWB draw one subset per row (an unbiased estimate of the sum over the 2^M - 1
subsets), so a step should cost O(M): the networks run once per modality and the
aggregation is a masked reduction over M experts. The script prints step time, time per
modality and the ratio to M = 2's, next to what 2^M growth would give.

Usage::

    python benchmarks/scaling_modalities.py --models mopoe,mwb --modalities 2,4,8,16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def synthetic(num_modalities: int, rows: int, features: int, seed: int = 0):
    from omnivae.data.base import ModalitySpec, MultimodalDataset

    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(rows, 8, generator=generator)
    specs, data = [], {}
    for m in range(num_modalities):
        mixing = torch.randn(8, features, generator=generator)
        data[f"m{m}"] = latent @ mixing + 0.1 * torch.randn(rows, features, generator=generator)
        specs.append(ModalitySpec(f"m{m}", (features,), "vector"))
    return MultimodalDataset(tuple(specs), data, name=f"synthetic-{num_modalities}")


def step_seconds(name: str, num_modalities: int, args: argparse.Namespace) -> float:
    from omnivae.models import ModelConfig, build_model
    from omnivae.train import TrainConfig, Trainer

    torch.manual_seed(0)
    data = synthetic(num_modalities, args.rows, args.features)
    model, objective = build_model(
        ModelConfig(model=name, latent_dim=16, backbone="mlp", hidden=[128, 128]), data.modalities
    )
    trainer = Trainer(model, objective, data, TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device, progress=False))
    batch = next(iter(trainer.train_data.batches(args.batch_size, shuffle=False)))
    mask = model.stack_mask(batch.x, batch.mask)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        trainer.train_step(batch.x, mask)
    sync()
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batch.x, mask)
        sync()
        samples.append((time.perf_counter() - start) / args.steps)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mopoe,mwb")
    parser.add_argument("--modalities", default="2,4,8,16")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [int(m) for m in args.modalities.split(",")]
    print(f"step time against M: {args.features} features per modality, MLP 128-128, latent 16, "
          f"batch {args.batch_size}, device {args.device}, {args.threads} threads")
    header = f"{'model':6} {'M':>3} {'step ms':>9} {'ms per modality':>16} {'x vs M=' + str(counts[0]):>10} {'linear':>7} {'2^M':>7}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        base = None
        for m in counts:
            seconds = step_seconds(name, m, args)
            base = base or seconds
            print(f"{name:6} {m:>3} {1000 * seconds:>9.2f} {1000 * seconds / m:>16.3f} {seconds / base:>10.2f} "
                  f"{m / counts[0]:>7.1f} {(2**m - 1) / (2 ** counts[0] - 1):>7.0f}", flush=True)


if __name__ == "__main__":
    main()
