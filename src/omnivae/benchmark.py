"""Benchmark: train and evaluate every model x seed, resumably, and tabulate the results.

Each run lives in ``OUT/MODEL-seedS`` (``OUT/MODEL-betaB-seedS`` in a beta sweep). A run
whose training finished and whose
``eval.json`` holds the requested metrics is skipped; a run interrupted during training
is resumed from its checkpoint; so an interrupted benchmark continues where it stopped.
Results: ``OUT/results.md`` and ``OUT/results.csv`` (mean ± std over seeds) and
``OUT/figures/metrics_vs_inputs.png`` with every model on one plot; a beta sweep adds
``OUT/figures/tradeoff_vs_reconstruction.png`` (probe and coherence from one input
against the reconstruction error from all inputs, one line per model through its betas, as in the MM-VAMP paper's
Fig. 3).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from omnivae.data import load_dataset
from omnivae.errors import UserError, unknown_name
from omnivae.evaluate import EvalOptions, evaluate_run, read_eval
from omnivae.models import MODELS, ModelConfig
from omnivae.report import benchmark_markdown, metric_curves, tradeoff_curves
from omnivae.train import TrainConfig, train
from omnivae.train.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    atomic_write_json,
    published_checkpoint,
    read_published,
)

__all__ = ["run_benchmark", "summarise_run", "options_for"]


def _mean(values: Iterable[float | None]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def summarise_run(results: dict) -> dict[str, float]:
    """The headline scalars of one run's ``eval.json``."""
    out: dict[str, float | None] = {}
    if "probe" in results:
        by_size = results["probe"]["by_size"]
        out["probe (1 input)"] = by_size.get("1")
        out["probe (all inputs)"] = by_size.get(max(by_size, key=int))
        out["probe (avg subsets)"] = _mean(results["probe"]["per_subset"].values())
    if "coherence" in results:
        coherence = results["coherence"]
        out["coherence (1 input)"] = coherence["by_size"].get("1")
        out["coherence (avg subsets)"] = _mean(coherence["per_subset_mean"].values())
        out["joint coherence"] = coherence.get("joint")
    if "likelihood" in results:
        out["log p(X)"] = results["likelihood"].get("joint")
    if "fd" in results:
        out["FD unconditional (avg)"] = _mean(results["fd"]["unconditional"].values())
    if "clustering" in results:
        out["k-means NMI (avg subsets)"] = _mean(results["clustering"]["nmi"]["per_subset"].values())
        out["k-means ARI (avg subsets)"] = _mean(results["clustering"]["ari"]["per_subset"].values())
    if "recon" in results:
        out["recon MSE self (avg)"] = _mean(results["recon"]["self"].values())
        out["recon MSE cross (avg)"] = _mean(results["recon"].get("cross", {}).values())
        out["recon MSE joint (avg)"] = _mean(results["recon"].get("joint", {}).values())
    return {k: v for k, v in out.items() if v is not None}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def options_for(name: str, model_options: dict) -> dict:
    """The :class:`ModelConfig` fields of model ``name``: ``model_options`` with its
    method-specific ``options`` cut to the keys the model has (``--set`` applies to the
    models that know the key)."""
    known = MODELS[name].options if name in MODELS else {}
    own = {k: v for k, v in (model_options.get("options") or {}).items() if k in known}
    return {**{k: v for k, v in model_options.items() if k not in ("options", "model")}, "options": own}


def _finished(run_dir: Path) -> bool:
    try:
        return bool(read_published(run_dir, Checkpoint.progress).get("finished"))
    except UserError:
        return False


def run_benchmark(
    models: Sequence[str],
    dataset: str,
    seeds: int,
    out: Path,
    model_options: dict,
    train_options: dict,
    eval_options: EvalOptions,
    data_dir: str | None = None,
    betas: Sequence[float] | None = None,
) -> dict:
    """Train and evaluate ``models`` x ``betas`` x ``range(seeds)``; returns the summary.

    Without ``betas`` every run uses ``model_options`` as given; with them, each model is
    trained once per beta and the summary is keyed ``"MODEL beta=B"``.
    """
    for name in models:
        if name not in MODELS:
            raise unknown_name("model", name, list(MODELS))
    if seeds < 1:
        raise UserError(f"seeds must be >= 1, got {seeds}", parameter="seeds")
    eval_options.validate()
    if betas is not None and (not betas or any(not (b >= 0 and math.isfinite(b)) for b in betas)):
        raise UserError(f"betas must be finite numbers >= 0, got {list(betas) if betas else betas}", parameter="betas")
    data = load_dataset(dataset, data_dir=data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_run: dict[str, list[dict]] = {}
    sweep = [(name, beta) for name in models for beta in (betas if betas is not None else [None])]
    for name, beta in sweep:
        key = name if beta is None else f"{name} beta={beta:g}"
        options = options_for(name, model_options if beta is None else {**model_options, "beta": float(beta)})
        for seed in range(seeds):
            run_dir = out / (f"{name}-seed{seed}" if beta is None else f"{name}-beta{beta:g}-seed{seed}")
            label = f"[{key} seed {seed}]"
            status = "done"
            if not _finished(run_dir):
                resume = published_checkpoint(run_dir) is not None
                model_config = ModelConfig(model=name, **options)
                defaults = {"warmup_epochs": MODELS[name].warmup_epochs}
                train_config = TrainConfig(**{**defaults, **train_options, "seed": seed})
                status = "resuming" if resume else "training"
                print(f"{label} {status} ...", flush=True)
                # A run stopped before its first checkpoint has nothing to resume: start it again.
                restart = not resume and (run_dir / "config.json").is_file()
                train(model_config, train_config, data, dataset, run_dir, resume=resume, overwrite=restart)
            results = read_eval(run_dir)
            if results is None or not set(eval_options.metrics) <= set(results.get("metrics", [])):
                print(f"{label} evaluating ...", flush=True)
                results = evaluate_run(run_dir, eval_options)
            elif status == "done":
                print(f"{label} finished earlier, skipped", flush=True)
            per_run.setdefault(key, []).append(results)
    summary = {
        name: {
            metric: _mean_std([summarise_run(r)[metric] for r in runs if metric in summarise_run(r)])
            for metric in summarise_run(runs[0])
        }
        for name, runs in per_run.items()
    }
    header = {"dataset": dataset, "seeds": seeds, "models": ", ".join(models),
              **({"betas": ", ".join(f"{b:g}" for b in betas)} if betas is not None else {}),
              "epochs": train_options.get("epochs"), "metrics": ", ".join(eval_options.metrics)}
    for key in ("aggregator", "aggregator_weights"):
        if model_options.get(key) is not None:
            header[key] = model_options[key]
    if model_options.get("options"):
        header["set"] = ", ".join(f"{k}={v}" for k, v in model_options["options"].items())
    if train_options.get("missing_rate"):
        header["missing rate"] = train_options["missing_rate"]
    atomic_write_bytes(out / "results.md", benchmark_markdown(summary, header).encode())
    atomic_write_bytes(out / "results.csv", _csv(per_run).encode())
    atomic_write_json(out / "results.json", {"header": header, "summary": summary})
    curves = _curves(per_run)
    if curves:
        chance = next((r["chance"] for runs in per_run.values() for r in runs if r.get("chance")), None)
        metric_curves(curves, out / "figures" / "metrics_vs_inputs.png", title=f"{dataset}, {seeds} seed(s)",
                      chance=chance)
    if betas is not None and len(betas) > 1:
        series = {
            name: [(float(beta), summary[f"{name} beta={beta:g}"]) for beta in betas]
            for name in models
        }
        tradeoff_curves(
            series, "recon MSE joint (avg)", ["probe (1 input)", "coherence (1 input)"],
            out / "figures" / "tradeoff_vs_reconstruction.png",
            title=f"{dataset}: beta sweep ({', '.join(f'{b:g}' for b in betas)}), {seeds} seed(s)",
        )
    return summary


def _curves(per_run: dict[str, list[dict]]) -> dict:
    """``metric -> model -> {size: (mean, std)}`` over seeds, for the by-size figure."""
    sources = {
        "latent linear probe accuracy": lambda r: r.get("probe", {}).get("by_size"),
        "conditional coherence": lambda r: r.get("coherence", {}).get("by_size"),
        "log p(X_rest | x_S)": lambda r: r.get("likelihood", {}).get("conditional_by_size"),
        "latent k-means NMI": lambda r: r.get("clustering", {}).get("nmi", {}).get("by_size"),
    }
    curves: dict = {}
    for metric, get in sources.items():
        for name, runs in per_run.items():
            tables = [get(r) for r in runs if get(r)]
            if not tables:
                continue
            sizes = tables[0].keys()
            curves.setdefault(metric, {})[name] = {s: _mean_std([t[s] for t in tables]) for s in sizes}
    return curves


def _csv(per_run: dict[str, list[dict]]) -> str:
    """Long format: model, seed, metric, value (headline scalars and per-size curves)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "seed", "metric", "value"])
    for name, runs in per_run.items():
        for seed, results in enumerate(runs):
            for metric, value in summarise_run(results).items():
                writer.writerow([name, seed, metric, repr(float(value))])
            for metric, get in (("probe", "by_size"), ("coherence", "by_size")):
                for size, value in results.get(metric, {}).get(get, {}).items():
                    writer.writerow([name, seed, f"{metric} ({size} inputs)", repr(float(value))])
    return buffer.getvalue()
