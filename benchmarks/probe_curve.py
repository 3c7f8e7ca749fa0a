"""Latent linear-probe accuracy against training steps: when does a model learn the label?

Trains one model in chunks of epochs and, after each chunk, fits the MoPoE linear probe
(logistic regression on posterior means of every subset) and prints one JSON line with
the probe averaged by subset size. Useful to tell "not learnt yet" from "cannot learn".

Usage::

    python benchmarks/probe_curve.py --model mopoe --dataset polymnist --chunks 12 --epochs-per-chunk 5
    python benchmarks/probe_curve.py --model mwb --backbone mlp --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from omnivae.data import load_dataset
from omnivae.metrics.probe import linear_probe
from omnivae.models import MODELS, ModelConfig
from omnivae.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mopoe")
    parser.add_argument("--dataset", default="polymnist")
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--epochs-per-chunk", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=1000, help="probe training rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    model_config = ModelConfig(model=args.model, latent_dim=args.latent_dim, backbone=args.backbone)
    train_config = TrainConfig(
        epochs=0, batch_size=args.batch_size, seed=args.seed, device="cpu", progress=False,
        warmup_epochs=MODELS[args.model].warmup_epochs,
    )
    trainer = train(model_config, train_config, data, args.dataset, None)
    for chunk in range(args.chunks + 1):
        seconds = 0.0
        if chunk:
            trainer.config.epochs += args.epochs_per_chunk
            started = time.perf_counter()
            trainer.fit()
            seconds = time.perf_counter() - started
        probe = linear_probe(trainer.model, data.train, data.test, num_train=args.num_train, max_iter=300)
        print(json.dumps({
            "epoch": trainer.epoch,
            "step": trainer.global_step,
            "train_seconds": round(seconds, 1),
            "loss": trainer.history[-1]["train_loss"] if trainer.history else None,
            "probe_by_size": probe["by_size"],
        }), flush=True)


if __name__ == "__main__":
    main()
