"""Learned barycenter weights on mfeat: the table of README's "Learned barycenter weights".

Runs ``omnivae benchmark`` once per kind of weights (uniform, learned, attention) for WB
and MWB with the mfeat protocol of ``omnivae reproduce barycentric --scale cpu`` (20
epochs of batch 64, lr 1e-3, latent 16, beta 2.5, MLP 256-256, MoPoE probe on 500 rows),
each into ``OUT/KIND``, then prints a markdown table: probe and coherence (mean ± std over
seeds) per model and kind, and the learned weights per view (softmax of the trained
logits, mean over seeds) beside each view's probe accuracy alone under uniform weights.

    python benchmarks/learned_weights.py --out /tmp/weights --seeds 3           # train, evaluate, tabulate
    python benchmarks/learned_weights.py --out /tmp/weights --seeds 3 --table   # tabulate finished runs

Runs are resumable (``omnivae benchmark`` skips finished ones).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

KINDS = ("uniform", "learned", "attention")
MODELS = ("wb", "mwb")
PROTOCOL = ["--dataset", "mfeat", "--epochs", "20", "--latent-dim", "16", "--beta", "2.5", "--backbone", "mlp",
            "--hidden", "256,256", "--batch-size", "64", "--lr", "1e-3", "--metrics", "probe,coherence",
            "--num-train", "500", "--no-progress"]
HEADLINES = ("probe (avg subsets)", "probe (all inputs)", "coherence (avg subsets)", "coherence (1 input)")


def run(out: Path, seeds: int) -> None:
    for kind in KINDS:
        cmd = ["omnivae", "benchmark", "--models", ",".join(MODELS), "--aggregator-weights", kind,
               "--seeds", str(seeds), "--out", str(out / kind), *PROTOCOL]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def _runs(folder: Path, model: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{model}-seed*") if (p / "eval.json").is_file())


def table(out: Path) -> str:
    from omnivae.benchmark import summarise_run
    from omnivae.train import load_run

    lines = ["| model | weights | seeds | " + " | ".join(HEADLINES) + " |", "|" + " --- |" * (3 + len(HEADLINES))]
    for model in MODELS:
        for kind in KINDS:
            runs = _runs(out / kind, model)
            if not runs:
                continue
            summaries = [summarise_run(json.loads((r / "eval.json").read_text())) for r in runs]
            cells = [_mean_std([s[h] for s in summaries]) for h in HEADLINES]
            lines.append(f"| {model} | {kind} | {len(runs)} | " + " | ".join(cells) + " |")
    names: list[str] = []
    alone: dict[str, list[float]] = {}
    for run in _runs(out / "uniform", "wb") + _runs(out / "uniform", "mwb"):
        per_subset = json.loads((run / "eval.json").read_text())["probe"]["per_subset"]
        for name, value in per_subset.items():
            if "+" not in name:
                alone.setdefault(name, []).append(value)
    learned: dict[str, dict[str, list[float]]] = {}
    for model in MODELS:
        for run in _runs(out / "learned", model):
            loaded = load_run(run).model
            names = list(loaded.names)
            weights = torch.softmax(dict(loaded.named_parameters())["aggregator.weights.logits"].detach(), 0)
            for name, w in zip(names, weights.tolist(), strict=True):
                learned.setdefault(model, {}).setdefault(name, []).append(w)
    if learned:
        names = names or sorted(alone)
        lines += ["", "| view | probe alone (uniform wb+mwb) | " + " | ".join(f"learned weight ({m})" for m in learned) + " |",
                  "|" + " --- |" * (2 + len(learned))]
        for name in names:
            cells = [_mean_std(learned[m][name]) for m in learned]
            lines.append(f"| {name} | {_mean_std(alone.get(name, [math.nan]))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--table", action="store_true", help="only tabulate the finished runs")
    args = p.parse_args()
    if not args.table:
        run(args.out, args.seeds)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
