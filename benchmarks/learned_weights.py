"""Learned barycenter weights: the tables of README's "Learned barycenter weights".

Runs ``omnivae benchmark`` once per kind of weights (uniform, learned, attention) for WB
and MWB, each into ``OUT/KIND``, then prints markdown tables: probe and coherence (mean ±
std over seeds) per model and kind, and the learned weights per modality (softmax of the
trained logits; for attention, the mean over the test rows of the per-sample weights with
every modality observed) beside each modality's probe accuracy alone under uniform weights.

``--dataset`` picks the protocol: ``mfeat`` is the one of ``omnivae reproduce barycentric
--scale cpu`` (20 epochs of batch 64, lr 1e-3, latent 16, beta 2.5, MLP 256-256, probe
on 500 training rows); ``polymnist`` is the CPU budget at which offline PolyMNIST learns
digit identity (see PROTOCOLS). ``--corrupt MODALITY`` trains and evaluates on
``DATASET+noise=MODALITY`` (that modality replaced by noise, train and test; see
:mod:`omnivae.data.corrupt`) and adds a table that splits probe and coherence by whether
the subset holds the noisy modality (coherence only towards clean targets: the noisy
modality's classifier is at chance) and gives the weight the noisy modality gets.

    python benchmarks/learned_weights.py --out /tmp/weights --seeds 3                      # mfeat, clean
    python benchmarks/learned_weights.py --out /tmp/noisy --seeds 3 --corrupt fac --oracle # mfeat, fac noisy
    python benchmarks/learned_weights.py --out /tmp/poly --dataset polymnist --corrupt m0 --models mwb
    python benchmarks/learned_weights.py --out /tmp/noisy --corrupt fac --table           # tabulate finished runs

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
#: With --oracle and --corrupt: fixed weights, 0.001 for the noisy modality and 1 for the others
#: (what weights could buy if they knew which modality is noise; not 0, which would leave
#: the subset of the noisy modality alone without a posterior).
ORACLE = "oracle"
MODELS = ("wb", "mwb")
PROTOCOLS = {
    "mfeat": ["--epochs", "20", "--latent-dim", "16", "--beta", "2.5", "--backbone", "mlp", "--hidden", "256,256",
              "--batch-size", "64", "--lr", "1e-3", "--metrics", "probe,coherence", "--num-train", "500"],
    "polymnist": ["--epochs", "30", "--latent-dim", "32", "--beta", "1", "--backbone", "mlp", "--hidden", "512,512",
                  "--batch-size", "64", "--lr", "1e-3", "--metrics", "probe,coherence", "--num-train", "1000"],
}
HEADLINES = ("probe (avg subsets)", "probe (all inputs)", "coherence (avg subsets)", "coherence (1 input)")


def dataset_name(dataset: str, corrupt: str | None) -> str:
    return dataset if corrupt is None else f"{dataset}+noise={corrupt}"


def run(out: Path, seeds: int, dataset: str, corrupt: str | None, models: list[str], oracle: bool,
        kinds_run: list[str], epochs: int | None) -> None:
    kinds = {kind: kind for kind in KINDS if kind in kinds_run}
    protocol = list(PROTOCOLS[dataset])
    if epochs is not None:
        protocol[protocol.index("--epochs") + 1] = str(epochs)
    if oracle and corrupt is not None:
        from omnivae.data import load_dataset

        names = [m.name for m in load_dataset(dataset).modalities]
        kinds[ORACLE] = ",".join("0.001" if name == corrupt else "1" for name in names)
    for kind, weights in kinds.items():
        cmd = ["omnivae", "benchmark", "--models", ",".join(models), "--aggregator-weights", weights,
               "--seeds", str(seeds), "--out", str(out / kind), "--dataset", dataset_name(dataset, corrupt),
               *protocol, "--no-progress"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _runs(folder: Path, model: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{model}-seed*") if (p / "eval.json").is_file())


def split_by_noisy(results: dict, noisy: str) -> dict[str, float]:
    """Probe and clean-target coherence averaged over the subsets with and without ``noisy``."""
    probe = results["probe"]["per_subset"]
    coherence = results["coherence"]["per_subset"]

    def has(subset: str) -> bool:
        return noisy in subset.split("+")

    def clean_targets(subset: str) -> list[float]:
        return [v for target, v in coherence[subset].items() if target != noisy]

    return {
        "probe with": _mean([v for s, v in probe.items() if has(s)]),
        "probe without": _mean([v for s, v in probe.items() if not has(s)]),
        "coherence with": _mean([c for s in coherence if has(s) for c in clean_targets(s)]),
        "coherence without": _mean([c for s in coherence if not has(s) for c in clean_targets(s)]),
        "coherence clean 1 input": _mean([c for s in coherence if "+" not in s and not has(s) for c in clean_targets(s)]),
    }


def mean_weights(run: Path, kind: str, test_rows: dict[str, torch.Tensor] | None) -> list[float]:
    """The weights per modality: softmax of the learned logits, or the attention weights
    averaged over the test rows with every modality observed."""
    from omnivae.train import load_run

    model = load_run(run).model
    if kind == "learned":
        return torch.softmax(dict(model.named_parameters())["aggregator.weights.logits"].detach(), 0).tolist()
    assert test_rows is not None
    n = next(iter(test_rows.values())).shape[0]
    mask = torch.ones(len(test_rows), n, dtype=torch.bool)
    with torch.no_grad():
        raw = model.aggregator.weights(model.encode_experts(test_rows, mask), mask)  # [M, B], unnormalised
    return (raw / raw.sum(0, keepdim=True)).mean(1).tolist()


def table(out: Path, dataset: str, corrupt: str | None) -> str:
    from omnivae.benchmark import summarise_run
    from omnivae.data import load_dataset
    from omnivae.train import load_run

    lines = ["| model | weights | seeds | " + " | ".join(HEADLINES) + " |", "|" + " --- |" * (3 + len(HEADLINES))]
    models = [m for m in MODELS if any(_runs(out / kind, m) for kind in KINDS)]
    for model in models:
        for kind in (*KINDS, ORACLE):
            runs = _runs(out / kind, model)
            if not runs:
                continue
            summaries = [summarise_run(json.loads((r / "eval.json").read_text())) for r in runs]
            cells = [_mean_std([s[h] for s in summaries]) for h in HEADLINES]
            lines.append(f"| {model} | {kind} | {len(runs)} | " + " | ".join(cells) + " |")
    names: list[str] = []
    alone: dict[str, list[float]] = {}
    for model in models:
        for run_dir in _runs(out / "uniform", model):
            per_subset = json.loads((run_dir / "eval.json").read_text())["probe"]["per_subset"]
            for name, value in per_subset.items():
                if "+" not in name:
                    alone.setdefault(name, []).append(value)
    test_rows = None
    if any(_runs(out / "attention", m) for m in models):
        test = load_dataset(dataset_name(dataset, corrupt)).test
        test_rows = test.batch(torch.arange(len(test))).x
    weights: dict[str, dict[str, list[float]]] = {}
    for model in models:
        for kind in ("learned", "attention"):
            for run_dir in _runs(out / kind, model):
                names = list(load_run(run_dir).model.names)
                for name, w in zip(names, mean_weights(run_dir, kind, test_rows), strict=True):
                    weights.setdefault(f"{kind} ({model})", {}).setdefault(name, []).append(w)
    if weights:
        names = names or sorted(alone)
        lines += ["", "| modality | probe alone (uniform) | " + " | ".join(f"weight: {k}" for k in weights) + " |",
                  "|" + " --- |" * (2 + len(weights))]
        for name in names:
            cells = [_mean_std(weights[k][name]) for k in weights]
            shown = f"{name} (noise)" if name == corrupt else name
            lines.append(f"| {shown} | {_mean_std(alone.get(name, [math.nan]))} | " + " | ".join(cells) + " |")
    if corrupt is not None:
        heads = ("probe with", "probe without", "coherence with", "coherence without", "coherence clean 1 input")
        lines += ["", f"| model | weights | probe, subsets with {corrupt} | probe, without | coherence, with {corrupt} "
                  f"| coherence, without | coherence, 1 clean input |", "|" + " --- |" * 7]
        for model in models:
            for kind in (*KINDS, ORACLE):
                runs = _runs(out / kind, model)
                if runs:
                    split = [split_by_noisy(json.loads((r / "eval.json").read_text()), corrupt) for r in runs]
                    lines.append(f"| {model} | {kind} | " + " | ".join(_mean_std([s[h] for s in split]) for h in heads) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dataset", choices=sorted(PROTOCOLS), default="mfeat")
    p.add_argument("--corrupt", metavar="MODALITY", help="replace this modality by noise, train and test")
    p.add_argument("--models", default=",".join(MODELS), help="comma separated, from wb,mwb (default both)")
    p.add_argument("--oracle", action="store_true",
                   help="with --corrupt: also fixed weights, 0.001 for the noisy modality and 1 for the others")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma separated, from uniform,learned,attention (default all; '' with --oracle: only the oracle)")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the protocol's")
    p.add_argument("--table", action="store_true", help="only tabulate the finished runs")
    args = p.parse_args()
    models = args.models.split(",")
    kinds = [k for k in args.kinds.split(",") if k]  # "" with --oracle: the oracle alone
    if any(m not in MODELS for m in models):
        p.error(f"--models takes {', '.join(MODELS)}")
    if any(k not in KINDS for k in kinds):
        p.error(f"--kinds takes {', '.join(KINDS)}")
    if not args.table:
        run(args.out, args.seeds, args.dataset, args.corrupt, models, args.oracle, kinds, args.epochs)
    print(table(args.out, args.dataset, args.corrupt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
