"""Evaluate a run: the metrics of the papers, ``eval.json``, ``report.md`` and ``figures/``.

``evaluate_run`` loads a run and its dataset, computes the requested metrics (each a
function of :mod:`omnivae.metrics`), draws the figures and writes everything atomically
into the run directory. ``omnivae evaluate`` and ``omnivae benchmark`` call it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from omnivae.data import load_dataset
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.metrics.common import all_subsets
from omnivae.report import evaluation_markdown, latent_map, metric_curves, sample_grid
from omnivae.report.figures import chance_levels, row_titles, stratified_rows
from omnivae.train import load_run, resolve_device
from omnivae.train.checkpoint import atomic_write_bytes, atomic_write_json

__all__ = ["METRICS", "EvalOptions", "evaluate_run", "draw_samples"]

METRICS = ("coherence", "probe", "likelihood", "fd", "recon")
NEEDS_LABELS = ("coherence", "probe", "fd")


@dataclass
class EvalOptions:
    """Settings of an evaluation (defaults follow the papers' protocols where they fix one)."""

    metrics: tuple[str, ...] = METRICS
    batch_size: int = 256
    num_importance_samples: int = 1000
    likelihood_batch_size: int = 64
    num_train: int | None = None
    classifier_epochs: int = 20
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    inception: str | None = None
    figures: bool = True
    progress: bool = True

    def validate(self) -> None:
        for name in self.metrics:
            if name not in METRICS:
                raise unknown_name("metric", name, METRICS)
        if self.num_importance_samples < 1:
            raise UserError(
                "the number of importance samples K (--num-importance-samples) must be >= 1, "
                f"got {self.num_importance_samples}"
            )
        if self.batch_size < 1:
            raise UserError(f"--eval-batch-size must be >= 1, got {self.batch_size}")
        if self.likelihood_batch_size < 1:
            raise UserError(f"the likelihood batch size must be >= 1, got {self.likelihood_batch_size}")
        if self.num_train is not None and self.num_train < 1:
            raise UserError(f"--num-train must be >= 1, got {self.num_train}")
        if self.classifier_epochs < 1:
            raise UserError(f"--classifier-epochs must be >= 1, got {self.classifier_epochs}")
        if self.inception is not None and not Path(self.inception).expanduser().is_file():
            raise UserError(
                f"--inception {self.inception}: no such file; pass a TorchScript or safetensors "
                "InceptionV3 file you have, or leave it out to use the classifier features"
            )


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """``"coherence,probe"`` -> validated tuple; None -> every metric."""
    if text is None:
        return METRICS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UserError(f"--metrics is empty; choose from {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise unknown_name("metric", name, METRICS)
    return names


def _log(options: EvalOptions, message: str) -> None:
    if options.progress:
        print(message, flush=True)


def evaluate_run(run_dir: str | Path, options: EvalOptions | None = None) -> dict:
    """Compute the metrics of a run and write ``eval.json``, ``report.md`` and ``figures/``."""
    from omnivae.metrics import (
        conditional_coherence,
        conditional_log_likelihoods,
        generation_frechet,
        get_classifiers,
        joint_coherence,
        joint_log_likelihood,
        linear_probe,
        load_inception_features,
        reconstruction_error,
    )
    from omnivae.metrics.common import require_labels

    options = options or EvalOptions()
    options.validate()
    device = resolve_device(options.device)
    run = load_run(run_dir, device=device)
    data = load_dataset(run.dataset_name, data_dir=options.data_dir or run.data_dir)
    if [m.to_json() for m in data.modalities] != [m.to_json() for m in run.modalities]:
        raise UserError(f"dataset {run.dataset_name!r} no longer has the modalities the run was trained on")
    labelled = [name for name in options.metrics if name in NEEDS_LABELS]
    if labelled and (data.test.labels is None or data.train.labels is None):
        rest = [name for name in options.metrics if name not in NEEDS_LABELS]
        fix = f"or evaluate with --metrics {','.join(rest)}" if rest else "or pick metrics that need none (likelihood, recon)"
        raise DataError(
            f"the {', '.join(labelled)} metric{'s need' if len(labelled) > 1 else ' needs'} labels, and dataset "
            f"{run.dataset_name!r} has none; add labels to the data {fix}"
        )
    for name in labelled:
        require_labels(data.test, name)
    model = run.model
    torch.manual_seed(options.seed)
    results: dict = {"metrics": list(options.metrics)}
    timings: dict[str, float] = {}
    sampler: dict[str, dict[str, float]] = {}
    classifiers = None
    common = dict(batch_size=options.batch_size, device=device)
    if any(m in options.metrics for m in ("coherence", "fd")):
        started = time.perf_counter()
        classifiers = get_classifiers(
            run.dataset_name, data.train, data.test, epochs=options.classifier_epochs,
            seed=options.seed, device=device, progress=options.progress,
        )
        results["classifiers"] = {"test_accuracy": classifiers.test_accuracy}
        timings["classifiers"] = time.perf_counter() - started
    if "coherence" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        _log(options, "coherence ...")
        coherence = conditional_coherence(model, data.test, classifiers, seed=options.seed, **common)
        coherence["joint"] = joint_coherence(
            model, classifiers, num_samples=len(data.test), seed=options.seed, **common
        )
        results["coherence"] = coherence
        timings["coherence"] = time.perf_counter() - started
        _record_sampler(model, "coherence", sampler)
    if "probe" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        _log(options, "latent linear probe ...")
        results["probe"] = linear_probe(
            model, data.train, data.test, num_train=options.num_train, seed=options.seed, **common
        )
        timings["probe"] = time.perf_counter() - started
        _record_sampler(model, "probe", sampler)
    if "likelihood" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        _log(options, f"log-likelihoods (K = {options.num_importance_samples}) ...")
        lik_options = dict(
            num_samples=options.num_importance_samples, batch_size=options.likelihood_batch_size, device=device
        )
        likelihood = conditional_log_likelihoods(model, data.test, **lik_options)
        likelihood["joint"] = joint_log_likelihood(model, data.test, **lik_options)
        likelihood["num_samples"] = options.num_importance_samples
        results["likelihood"] = likelihood
        timings["likelihood"] = time.perf_counter() - started
        _record_sampler(model, "likelihood", sampler)
    if "fd" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        _log(options, "Frechet distances ...")
        feature_fn = load_inception_features(options.inception) if options.inception else None
        results["fd"] = generation_frechet(
            model, data.test, classifiers, seed=options.seed, feature_fn=feature_fn, **common
        )
        timings["fd"] = time.perf_counter() - started
        _record_sampler(model, "fd", sampler)
    if "recon" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        results["recon"] = reconstruction_error(model, data.test, **common)
        timings["recon"] = time.perf_counter() - started
        _record_sampler(model, "recon", sampler)
    results["seconds"] = timings
    if sampler:
        results["sampler"] = sampler
    path = Path(run_dir)
    if options.figures:
        results["figures"] = draw_figures(run, data.test, results, path / "figures", options.seed)
    header = {
        "run": str(path),
        "model": run.model_config.model,
        "aggregator": run.model_config.aggregator or "default",
        "dataset": run.dataset_name,
        "test samples": len(data.test),
        "epochs trained": run.train_config.epochs,
    }
    results["run"] = header
    atomic_write_json(path / "eval.json", results)
    atomic_write_bytes(path / "report.md", evaluation_markdown(results, header).encode())
    return results


def _record_sampler(model, metric: str, into: dict[str, dict[str, float]]) -> None:
    """Keep the MCMC totals (JNF's HMC: acceptance rate, chain-steps per second) of one metric."""
    statistics = model.sampler_statistics()
    if statistics is not None:
        into[metric] = statistics


def draw_samples(run, data, given: Sequence[str], count: int, seed: int = 0) -> tuple[dict, dict, dict, list | None]:
    """``count`` test examples across the classes (seeded, :func:`stratified_rows`), among the
    rows with a ``given`` modality observed: their ``given`` inputs, one sample of every
    modality, which inputs are observed, and each row's label for the grid."""
    device = run.model.device
    observed_any = torch.stack([data.masks[name] for name in given]).any(0)
    rows = stratified_rows(data.labels, count, seed, eligible=observed_any)
    if len(rows) == 0:
        raise DataError(f"no test example has any of {', '.join(given)} observed; give other modalities")
    torch.manual_seed(seed)
    batch = data.batch(rows).to(device)
    inputs = {name: batch.x[name] for name in given}
    observed = {name: batch.mask[name] for name in given}
    generated = run.model.conditional_generate(inputs, observed, num_samples=1)
    labels = row_titles(None if data.labels is None else data.labels[rows], data.label_names)
    return ({k: v.cpu() for k, v in inputs.items()}, {k: v[0].cpu() for k, v in generated.items()},
            {k: v.cpu() for k, v in observed.items()}, labels)


def draw_figures(run, test, results: dict, folder: Path, seed: int) -> list[str]:
    """Sample grids for one subset of each size, metric curves and the latent map."""
    names = run.model.names
    table, keys = all_subsets(names)
    written = []
    for size in range(1, len(names)):
        index = int((table.sum(1) == size).nonzero()[0])
        given = [n for n, keep in zip(names, table[index].tolist()) if keep]
        inputs, generated, observed, row_labels = draw_samples(run, test, given, 10, seed)
        file = f"samples_given_{size}.png"
        sample_grid(inputs, generated, run.modalities, folder / file, observed=observed, row_labels=row_labels,
                    title=f"given {keys[index]}: test examples across classes (seed {seed})")
        written.append(f"figures/{file}")
    label = run.model_config.model
    curves = {}
    if "probe" in results:
        curves["latent linear probe accuracy"] = {label: results["probe"]["by_size"]}
    if "coherence" in results:
        curves["conditional coherence"] = {label: results["coherence"]["by_size"]}
    if "likelihood" in results and "conditional_by_size" in results["likelihood"]:
        curves["log p(X_rest | x_S)"] = {label: results["likelihood"]["conditional_by_size"]}
    if curves:
        results["chance"] = chance_levels(test.labels, len(test.label_names or []))
        metric_curves(curves, folder / "metrics_vs_inputs.png", title=label, chance=results["chance"])
        written.append("figures/metrics_vs_inputs.png")
    device = run.model.device
    means = []
    with torch.no_grad():
        for batch in test.batches(256):
            batch = batch.to(device)
            means.append(run.model.encode(batch.x, batch.mask).mean.cpu())
    latent_map(torch.cat(means), test.labels, folder / "latent.png",
               title=f"{label}: joint posterior means (PCA)", label_names=test.label_names, seed=seed)
    written.append("figures/latent.png")
    return written


def read_eval(run_dir: Path) -> dict | None:
    """A run's ``eval.json``, or None when absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / "eval.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
