"""Time one training epoch per model: samples per second, peak memory, data-time share.

Each model runs in a fresh subprocess so that peak memory (max RSS on the CPU, peak
allocated memory on CUDA) belongs to that model alone. A few warm-up steps run before
the clock starts. Data time is the time spent producing batches (gather + uint8->float),
measured separately on the same epoch's batches.

Usage::

    python benchmarks/train_speed.py                      # five models, PolyMNIST conv nets, CPU
    python benchmarks/train_speed.py --backbone mlp --batch-size 128 --threads 2
    python benchmarks/train_speed.py --device cuda --models mopoe,mwb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DEFAULT_MODELS = "poe,moe,mopoe,wb,mwb"


def worker(args: argparse.Namespace) -> dict:
    import torch

    from omnivae.data import load_dataset
    from omnivae.models import ModelConfig, build_model
    from omnivae.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_dataset(args.dataset)
    hidden = [int(h) for h in args.hidden.split(",")]
    config = ModelConfig(
        model=args.worker, latent_dim=args.latent_dim, backbone=args.backbone, hidden=hidden,
        num_samples=args.num_samples,
    )
    model, objective = build_model(config, data.modalities)
    trainer = Trainer(
        model, objective, data.train,
        TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device, progress=False),
    )
    device = trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train = trainer.train_data
    names = model.names

    def run_steps(count: int) -> int:
        done = 0
        generator = torch.Generator().manual_seed(done)
        while done < count:
            for batch in train.batches(args.batch_size, shuffle=True, generator=generator, drop_last=True):
                trainer.train_step(batch.x, model.stack_mask(batch.x, batch.mask))
                done += 1
                if done == count:
                    break
        return done

    run_steps(args.warmup)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = train.num_batches(args.batch_size, drop_last=True)
    start = time.perf_counter()
    run_steps(steps)
    sync()
    step_seconds = (time.perf_counter() - start) / steps

    generator = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    count = 0
    for batch in train.batches(args.batch_size, shuffle=True, generator=generator, drop_last=True):
        model.stack_mask(batch.x, batch.mask)
        count += 1
    sync()
    data_seconds = (time.perf_counter() - start) / max(count, 1)

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": args.worker,
        "modalities": len(names),
        "samples_per_second": args.batch_size / step_seconds,
        "step_ms": 1000 * step_seconds,
        "data_ms": 1000 * data_seconds,
        "data_share": data_seconds / step_seconds,
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--dataset", default="polymnist")
    parser.add_argument("--backbone", default="auto", help="auto (PolyMNIST conv nets), mlp or resnet")
    parser.add_argument("--hidden", default="512,512")
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=1, help="K for moe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows = []
    for name in args.models.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", name]
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if result.returncode != 0:
            print(f"{name}: failed\n{result.stderr}", file=sys.stderr)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if args.json:
        return
    print(
        f"one epoch of {args.dataset}, backbone {args.backbone}, batch {args.batch_size}, "
        f"latent {args.latent_dim}, device {args.device}, {args.threads} threads"
    )
    header = f"{'model':8} {'samples/s':>10} {'step ms':>8} {'data ms':>8} {'data %':>7} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:8} {r['samples_per_second']:>10.0f} {r['step_ms']:>8.1f} {r['data_ms']:>8.2f} "
            f"{100 * r['data_share']:>6.1f}% {r['peak_mb']:>8.0f}"
        )


if __name__ == "__main__":
    main()
