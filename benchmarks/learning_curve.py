"""The default run's learning curve: cross coherence and linear probe against training steps.

Trains what ``omnivae train`` trains without flags (the model, dataset, batch size,
learning rate and epochs of the CLI and ``TrainConfig`` defaults), one epoch at a time,
and after each epoch (and before the first) measures, on the test split:

- conditional coherence of the samples generated for the modalities outside each subset,
  averaged by the number of inputs (:func:`omnivae.metrics.coherence.conditional_coherence`,
  the classifiers of ``omnivae evaluate``);
- the linear probe on the posterior means of every subset, by number of inputs
  (:func:`omnivae.metrics.probe.linear_probe`, fit on ``--probe-train`` training rows).

``--datasets mnist-text,polymnist`` puts other datasets through the same defaults, which
is how the README shows why the default is not PolyMNIST. Each dataset's curve is one
JSON line per evaluation in ``OUT/<dataset>.jsonl`` (training seconds exclude the
evaluations); the figure plots every file found in OUT.

``--class-gain`` prints, instead, how much knowing the class helps predict each image
modality at all, whatever the model: the test error of the best class-blind prediction
(the training split's per-pixel median for L1, the Laplace likelihood's optimum; the mean
for squared error, the Gaussian's) against the best per-class one, in percent. It is the
README's reason why PolyMNIST, where the class barely moves the pixels, is not the default.

Usage::

    python benchmarks/learning_curve.py                                  # mnist-text and polymnist
    python benchmarks/learning_curve.py --datasets polymnist --epochs 30
    python benchmarks/learning_curve.py --plot-only                      # redraw from OUT/*.jsonl
    python benchmarks/learning_curve.py --class-gain mnist-text,polymnist
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from omnivae.cli import DEFAULT_MODEL, DEFAULT_TRAIN_DATASET
from omnivae.data import load_dataset
from omnivae.metrics.classifiers import get_classifiers
from omnivae.metrics.coherence import conditional_coherence
from omnivae.metrics.probe import linear_probe
from omnivae.models import MODELS, ModelConfig
from omnivae.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
CHANCE = 0.1  # ten balanced classes in every dataset this script is meant for


def curve(dataset: str, epochs: int, threads: int, probe_train: int, seed: int, out: Path) -> None:
    torch.set_num_threads(threads)
    data = load_dataset(dataset)
    classifiers = get_classifiers(dataset, data.train, data.test, epochs=20, progress=False)
    model_config = ModelConfig(model=DEFAULT_MODEL)
    train_config = TrainConfig(
        epochs=0, seed=seed, device="cpu", progress=False, warmup_epochs=MODELS[DEFAULT_MODEL].warmup_epochs
    )
    trainer = train(model_config, train_config, data, dataset, None)
    seconds = 0.0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as file:
        for epoch in range(epochs + 1):
            if epoch:
                trainer.config.epochs = epoch
                started = time.perf_counter()
                trainer.fit()
                seconds += time.perf_counter() - started
            coherence = conditional_coherence(trainer.model, data.test, classifiers)["by_size"]
            probe = linear_probe(trainer.model, data.train, data.test, num_train=probe_train, max_iter=300)["by_size"]
            record = {
                "dataset": dataset, "model": DEFAULT_MODEL, "batch_size": train_config.batch_size,
                "lr": train_config.lr, "threads": threads, "epoch": trainer.epoch, "step": trainer.global_step,
                "train_seconds": round(seconds, 1),
                "coherence_by_inputs": {k: round(v, 4) for k, v in coherence.items()},
                "probe_by_inputs": {k: round(v, 4) for k, v in probe.items()},
                "classifier_accuracy": {k: round(v, 4) for k, v in classifiers.test_accuracy.items()},
            }
            file.write(json.dumps(record) + "\n")
            file.flush()
            print(json.dumps(record), flush=True)


def class_gain(dataset: str) -> None:
    """Print, per image modality, the best class-blind and per-class test errors (L1, squared)."""
    import numpy as np

    data = load_dataset(dataset)
    train_labels, test_labels = data.train.labels.numpy(), data.test.labels.numpy()
    for spec in data.modalities:
        if spec.kind != "image":
            continue
        x = data.train.data[spec.name].numpy().reshape(len(train_labels), -1).astype(np.float32) / 255
        t = data.test.data[spec.name].numpy().reshape(len(test_labels), -1).astype(np.float32) / 255
        l1_blind = np.abs(t - np.median(x, 0)).sum(1).mean()
        l2_blind = ((t - x.mean(0)) ** 2).sum(1).mean()
        l1_class = l2_class = 0.0
        for c in np.unique(train_labels):
            xc, tc, share = x[train_labels == c], t[test_labels == c], (test_labels == c).mean()
            l1_class += share * np.abs(tc - np.median(xc, 0)).sum(1).mean()
            l2_class += share * ((tc - xc.mean(0)) ** 2).sum(1).mean()
        print(json.dumps({
            "dataset": dataset, "modality": spec.name,
            "l1_blind": round(float(l1_blind), 1), "l1_class": round(float(l1_class), 1),
            "l1_gain_percent": round(float(100 * (l1_blind - l1_class) / l1_blind), 2),
            "sq_blind": round(float(l2_blind), 1), "sq_class": round(float(l2_class), 1),
            "sq_gain_percent": round(float(100 * (l2_blind - l2_class) / l2_blind), 2),
        }), flush=True)


def plot(folder: Path, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted(folder.glob("*.jsonl"))}
    runs = {name: rows for name, rows in runs.items() if rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, rows) in zip(colours, runs.items()):
        steps = [r["step"] for r in rows]
        first = rows[0]
        label = f"{name} (batch {first['batch_size']})"
        axes[0].plot(steps, [r["coherence_by_inputs"]["1"] for r in rows], "o-", color=colour, label=label)
        axes[1].plot(steps, [r["probe_by_inputs"]["1"] for r in rows], "o-", color=colour, label=label)
    for ax, title in zip(axes, ("cross coherence from one input", "linear probe on one input's posterior mean")):
        ax.axhline(CHANCE, color="grey", linestyle="--", linewidth=1, label="chance (0.1)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training steps")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on the test split")
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle(f"omnivae train defaults ({DEFAULT_MODEL}, 10 epochs): what the model learns per step", fontsize=11)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    print(f"wrote {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=f"{DEFAULT_TRAIN_DATASET},polymnist")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe-train", type=int, default=1000, help="training rows the probe is fit on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning_curve"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "default_learning_curve.png"))
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--class-gain", metavar="DATASETS", help="print how much the class helps predict each image modality")
    args = parser.parse_args()
    if args.class_gain:
        for dataset in args.class_gain.split(","):
            class_gain(dataset)
        return
    folder = Path(args.out)
    if not args.plot_only:
        for dataset in args.datasets.split(","):
            curve(dataset, args.epochs, args.threads, args.probe_train, args.seed, folder / f"{dataset}.jsonl")
    plot(folder, Path(args.figure))


if __name__ == "__main__":
    main()
