"""Evaluate a run: the metrics of the papers, ``eval.json``, ``report.md`` and ``figures/``.

``evaluate_run`` loads a run and its dataset, computes the requested metrics (each a
function of :mod:`omnivae.metrics`), draws the figures and writes everything atomically
into the run directory. ``omnivae evaluate`` and ``omnivae benchmark`` call it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from omnivae.data import load_dataset
from omnivae.data.base import MultimodalDataset
from omnivae.data.torch_data import TorchData
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.eval_data import ALL, evaluation_rows
from omnivae.fileio import atomic_write_bytes
from omnivae.metrics import target as target_metrics
from omnivae.report import evaluation_markdown, latent_map, metric_curves, sample_grid
from omnivae.report.rows import chance_levels, row_titles, stratified_rows
from omnivae.train import load_run, resolve_device
from omnivae.train.checkpoint import atomic_write_json

T = TypeVar("T")

if TYPE_CHECKING:
    from omnivae.train.run import LoadedRun

#: The panel of the k-means NMI in ``metrics_vs_inputs.png``.
CLUSTERING_CURVE = "latent k-means NMI"

__all__ = ["METRICS", "PROTOCOLS", "ALL", "EvalOptions", "evaluate_run", "merge_results", "draw_samples"]

METRICS = ("coherence", "probe", "likelihood", "fd", "recon", "clustering")
NEEDS_LABELS = ("coherence", "probe", "fd", "clustering")
PROTOCOL_NAMES = ("fast", "paper")

#: The settings each protocol gives the options left unset. ``paper`` is the published
#: protocols: K = 1,000 importance samples on every test row (IWAE, Burda et al. 2016;
#: MMVAE's ``m_iwae``; MultiVae and bivae), the probe fit on every training row, coherence
#: classifiers trained for 30 epochs (Adam 1e-3, as MMVAE's report helper) and 10,000
#: prior samples for joint coherence (MMVAE, MultiVae). ``fast`` keeps each metric's
#: definition and shrinks only its sample sizes, so that the default evaluation of the
#: default run takes minutes on two CPU cores; its numbers carry more sampling noise (and
#: the likelihood, a lower bound, is looser with fewer samples) and are labelled as such.
PROTOCOLS: dict[str, dict[str, int | str]] = {
    "fast": {
        "num_test": 1000,
        "likelihood_num_test": 100,
        "num_importance_samples": 20,
        "num_train": 2000,
        "classifier_epochs": 8,
        "classifier_batch_size": 32,
        "joint_coherence_samples": 1000,
    },
    "paper": {
        "num_test": ALL,
        "likelihood_num_test": ALL,
        "num_importance_samples": 1000,
        "num_train": ALL,
        "classifier_epochs": 30,
        "classifier_batch_size": 128,
        "joint_coherence_samples": 10000,
    },
}
#: The settings each metric depends on, recorded with it in ``eval.json``.
METRIC_SETTINGS: dict[str, tuple[str, ...]] = {
    "coherence": ("num_test", "classifier_epochs", "classifier_batch_size", "joint_coherence_samples"),
    "probe": ("num_test", "num_train"),
    "likelihood": ("likelihood_num_test", "num_importance_samples"),
    "fd": ("num_test", "classifier_epochs", "classifier_batch_size"),
    "recon": ("num_test",),
    "clustering": ("num_test",),
}



@dataclass
class EvalOptions:
    """Settings of an evaluation.

    ``protocol`` fills every sample-size setting left at None (:data:`PROTOCOLS`): ``"fast"``
    (the default) or ``"paper"``. Row counts (``num_test``, ``likelihood_num_test``,
    ``num_train``) are a number of rows, drawn without replacement with ``seed``, or
    :data:`ALL`. :meth:`resolved` gives the settings actually used.
    """

    metrics: tuple[str, ...] = METRICS
    protocol: str = "fast"
    batch_size: int = 256
    num_importance_samples: int | None = None
    likelihood_batch_size: int = 64
    num_test: int | str | None = None
    likelihood_num_test: int | str | None = None
    num_train: int | str | None = None
    classifier_epochs: int | None = None
    classifier_batch_size: int | None = None
    joint_coherence_samples: int | None = None
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    inception: str | None = None
    figures: bool = True
    progress: bool = True
    #: Latent sampler of joint coherence and unconditional FD: prior, gmm or maf
    #: (:mod:`omnivae.latent_samplers`, fitted on first use and cached in the run).
    sampler: str = "prior"

    def resolved(self) -> EvalOptions:
        """A copy with every unset setting taken from the protocol."""
        if self.protocol not in PROTOCOLS:
            raise unknown_name("protocol", self.protocol, PROTOCOL_NAMES)
        filled: dict[str, Any] = {k: v for k, v in PROTOCOLS[self.protocol].items() if getattr(self, k) is None}
        return replace(self, **filled)

    def overrides(self) -> list[str]:
        """The settings set explicitly to something other than the protocol's."""
        defaults = PROTOCOLS.get(self.protocol, {})
        return [k for k, v in defaults.items() if getattr(self, k) is not None and getattr(self, k) != v]

    def validate(self) -> None:
        for name in self.metrics:
            if name not in METRICS:
                raise unknown_name("metric", name, METRICS)
        if self.protocol not in PROTOCOLS:
            raise unknown_name("protocol", self.protocol, PROTOCOL_NAMES)
        if self.num_importance_samples is not None and self.num_importance_samples < 1:
            raise UserError(
                "the number of importance samples K (num_importance_samples) must be >= 1, "
                f"got {self.num_importance_samples}", parameter="num_importance_samples"
            )
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}", parameter="batch_size")
        if self.likelihood_batch_size < 1:
            raise UserError(f"likelihood_batch_size must be >= 1, got {self.likelihood_batch_size}", parameter="likelihood_batch_size")
        for key in ("num_test", "likelihood_num_test", "num_train"):
            value = getattr(self, key)
            if value is not None and value != ALL and not (isinstance(value, int) and value >= 1):
                raise UserError(f"{key} must be a number of rows >= 1 or 'all', got {value}", parameter=key)
        for key in ("classifier_epochs", "classifier_batch_size", "joint_coherence_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key} must be >= 1, got {value}", parameter=key)
        from omnivae.latent_samplers import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}",
                            parameter="sampler")
        if "fd" in self.metrics:
            from omnivae.metrics.frechet import require_torchmetrics

            require_torchmetrics()
        if self.inception is not None and not Path(self.inception).expanduser().is_file():
            raise UserError(
                f"inception {self.inception}: no such file; pass a TorchScript or safetensors "
                "InceptionV3 file you have, or leave it out to use the classifier features", parameter="inception"
            )


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """``"coherence,probe"`` -> validated tuple; None -> every metric."""
    if text is None:
        return METRICS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UserError(f"metrics is empty; choose from {', '.join(METRICS)}", parameter="metrics")
    for name in names:
        if name not in METRICS:
            raise unknown_name("metric", name, METRICS)
    return names


def _given(value: T | None) -> T:
    """A setting that :meth:`EvalOptions.resolved` has filled."""
    assert value is not None
    return value


def _model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers: which model earlier results belong to."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merge_results(previous: Mapping | None, new: Mapping, computed: Sequence[str]) -> dict:
    """``eval.json`` after a run that computed ``computed``: earlier metrics kept, recomputed ones replaced.

    Each metric owns its entry and its rows in ``seconds``, ``settings`` and ``sampler``;
    the run header, the classifier accuracies (when recomputed) and the figures come from
    ``new``. Results of a different model (the run trained further since) are not kept.
    """
    merged: dict = {}
    if previous and previous.get("run", {}).get("model sha256") in (None, new["run"].get("model sha256")):
        merged = json.loads(json.dumps(previous))
    for table in ("seconds", "settings", "sampler"):
        rows = {k: v for k, v in (merged.get(table) or {}).items() if k not in computed}
        rows.update(new.get(table) or {})
        merged[table] = rows
    for key, value in new.items():
        if key not in ("seconds", "settings", "sampler", "metrics"):
            merged[key] = value
    if not merged["sampler"]:
        del merged["sampler"]
    merged["metrics"] = [m for m in METRICS if m in merged]
    return merged


def evaluate_run(
    run_dir: str | Path,
    options: EvalOptions | None = None,
    *,
    train: MultimodalDataset | TorchData | Dataset | DataLoader | None = None,
    test: MultimodalDataset | TorchData | Dataset | DataLoader | None = None,
) -> dict:
    """Compute the metrics of a run and write ``eval.json``, ``report.md`` and ``figures/``.

    Metrics already in ``eval.json`` and not recomputed now are kept
    (:func:`merge_results`); every metric records its settings, protocol, time and date.

    The data are the run's dataset (``load_dataset``), or ``train`` and ``test`` when given:
    in-memory datasets, or streamed ones (:class:`~omnivae.data.torch_data.TorchData`, a
    map-style ``Dataset`` or a ``DataLoader`` over one, of ``{modality: tensor}`` dicts).
    From a stream the evaluation reads into memory only the rows the protocol uses
    (:func:`~omnivae.data.torch_data.draw_rows`, seeded as the in-memory draw): ``num_test``
    and ``likelihood_num_test`` test rows, and ``num_train`` training rows, which then serve
    the probe, the coherence/FD classifiers and a fitted latent sampler (in memory the
    classifiers train on the whole split, so with ``num_train`` below the split's length
    coherence and FD differ from the in-memory numbers; probe, recon, likelihood and
    clustering are the same). A count whose rows exceed ``OMNIVAE_MAX_LOAD_GB`` is refused
    up front, naming the setting (``paper`` draws every row).
    """
    from omnivae.metrics import (
        conditional_coherence,
        conditional_log_likelihoods,
        generation_frechet,
        get_classifiers,
        image_features,
        joint_coherence,
        joint_log_likelihood,
        latent_clustering,
        linear_probe,
        load_inception_features,
        reconstruction_error,
    )
    from omnivae.metrics.common import require_labels

    options = options or EvalOptions()
    options.validate()
    overrides = options.overrides()
    settings = options.resolved()
    device = resolve_device(options.device)
    run = load_run(run_dir, device=device)
    if train is None and test is None:
        data = load_dataset(run.dataset_name, data_dir=options.data_dir or run.data_dir)
        if [m.to_json() for m in data.modalities] != [m.to_json() for m in run.modalities]:
            raise UserError(f"dataset {run.dataset_name!r} no longer has the modalities the run was trained on")
        chosen = evaluation_rows(run, settings, options.seed, train=data.train, test=data.test)
    else:
        chosen = evaluation_rows(run, settings, options.seed, train=train, test=test, given=True)
    train_split, test_split, probe_rows = chosen.train, chosen.test, chosen.probe_rows
    # Drawn before any metric: a count above the memory cap stops the evaluation up front.
    likelihood_test = chosen.likelihood_rows() if "likelihood" in options.metrics else None
    labelled = [name for name in options.metrics if name in NEEDS_LABELS]
    if labelled and (test_split.labels is None or train_split.labels is None):
        rest = [name for name in options.metrics if name not in NEEDS_LABELS]
        fix = f"or evaluate with metrics={','.join(rest)!r}" if rest else "or pick metrics that need none (likelihood, recon)"
        raise DataError(
            f"the {', '.join(labelled)} metric{'s need' if len(labelled) > 1 else ' needs'} labels, and dataset "
            f"{run.dataset_name!r} has none; add labels to the data {fix}", parameter="metrics"
        )
    for name in labelled:
        require_labels(test_split, name)
    if "clustering" in options.metrics and test_split.labels is not None and test_split.labels.dim() > 1:
        if tuple(options.metrics) != METRICS:
            raise DataError(f"the clustering metric needs one class per row, and dataset {run.dataset_name!r} "
                            "has several labels per row; leave clustering out of the metrics")
        options = replace(options, metrics=tuple(m for m in options.metrics if m != "clustering"))
    model = run.model
    target_only = target_metrics.generates_one_target(run.model_config.model, options.sampler)  # the CVAE
    if device.type == "cpu":
        # oneDNN runs the conv decoders ~1.4x faster with channels-last weights (same values).
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
    torch.manual_seed(options.seed)
    progress = options.progress
    test_rows = chosen.test_rows
    results: dict = {}
    timings: dict[str, float] = {}
    sampler: dict[str, dict[str, float]] = {}
    recorded: dict[str, dict] = {}
    classifiers = None
    common: dict[str, Any] = dict(batch_size=options.batch_size, device=device)
    if any(m in options.metrics for m in ("coherence", "fd")):
        started = time.perf_counter()
        classifiers = get_classifiers(
            run.dataset_name, train_split, test_split, epochs=_given(settings.classifier_epochs),
            batch_size=_given(settings.classifier_batch_size), seed=options.seed, device=device, progress=progress,
        )
        if device.type == "cpu":
            for net in classifiers.models.values():
                net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        results["classifiers"] = {"test_accuracy": classifiers.test_accuracy, "epochs": settings.classifier_epochs,
                                  "batch_size": settings.classifier_batch_size}
        timings["classifiers"] = time.perf_counter() - started

    latent_sampler = None
    if options.sampler != "prior" and any(m in options.metrics for m in ("coherence", "fd")):
        from omnivae.latent_samplers import run_latent_sampler

        latent_sampler = run_latent_sampler(
            run, run_dir, options.sampler, train_split, data_dir=options.data_dir,
            log=(lambda line: print(line, file=sys.stderr)) if progress else None,
        )
    sampled = {"latent_sampler": options.sampler}

    def record(metric: str, started: float, rows: MultimodalDataset, **extra: object) -> None:
        timings[metric] = time.perf_counter() - started
        _record_sampler(model, metric, sampler)
        entry: dict = {"protocol": options.protocol}
        if any(k in METRIC_SETTINGS[metric] for k in overrides):
            entry["overrides"] = [k for k in overrides if k in METRIC_SETTINGS[metric]]
        entry.update({k: getattr(settings, k) for k in METRIC_SETTINGS[metric]})
        entry.update(test_rows=len(rows), **extra, seed=options.seed, seconds=timings[metric],
                     computed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        recorded[metric] = entry

    if "coherence" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        assert classifiers is not None  # trained above for coherence
        coherence = (target_metrics.target_coherence if target_only else conditional_coherence)(
            model, test_rows, classifiers, seed=options.seed, progress=progress, **common)
        if not target_only:
            coherence["joint"] = joint_coherence(
                model, classifiers, num_samples=_given(settings.joint_coherence_samples), seed=options.seed,
                progress=progress, latent_sampler=latent_sampler, **common,
            )
        results["coherence"] = coherence
        record("coherence", started, test_rows, **sampled)
    if "probe" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        results["probe"] = linear_probe(
            model, train_split, test_rows, num_train=probe_rows, seed=options.seed, progress=progress, **common
        )
        record("probe", started, test_rows, train_rows=min(probe_rows or len(train_split), len(train_split)))
    if "likelihood" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        lik_options: dict[str, Any] = dict(
            num_samples=settings.num_importance_samples, batch_size=options.likelihood_batch_size,
            device=device, progress=progress,
        )
        assert likelihood_test is not None
        likelihood = (target_metrics.target_log_likelihood if target_only else conditional_log_likelihoods)(
            model, likelihood_test, **lik_options)
        if not target_only:
            likelihood["joint"] = joint_log_likelihood(model, likelihood_test, **lik_options)
        likelihood["num_samples"] = settings.num_importance_samples
        results["likelihood"] = likelihood
        record("likelihood", started, likelihood_test)
    if "fd" in options.metrics and not target_only:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        feature_fn = None
        if options.inception:
            assert classifiers is not None  # trained above for fd
            feature_fn = image_features(load_inception_features(options.inception), classifiers, run.modalities)
        results["fd"] = generation_frechet(
            model, test_rows, classifiers, seed=options.seed, feature_fn=feature_fn, progress=progress,
            latent_sampler=latent_sampler, **common
        )
        record("fd", started, test_rows, **sampled, **({"inception": options.inception} if options.inception else {}))
    if "recon" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        results["recon"] = (target_metrics.target_reconstruction_error if target_only else reconstruction_error)(
            model, test_rows, progress=progress, **common)
        record("recon", started, test_rows)
    if "clustering" in options.metrics:
        started = time.perf_counter()
        model.reset_sampler_statistics()
        results["clustering"] = latent_clustering(model, test_rows, seed=options.seed, progress=progress, **common)
        record("clustering", started, test_rows)
    results.update(target_metrics.skipped(options.metrics) if target_only else {})
    results["seconds"] = timings
    results["settings"] = recorded
    if sampler:
        results["sampler"] = sampler
    path = Path(run_dir)
    header = {
        "run": str(path),
        "model": run.model_config.model,
        "aggregator": run.model_config.aggregator or "default",
        "dataset": run.dataset_name,
        "test samples": chosen.test_length,
        "epochs trained": run.train_config.epochs,
        "model sha256": _model_digest(model),
    }
    results["run"] = header
    previous = read_eval(path)
    if not isinstance(previous, dict) or not isinstance(previous.get("run", {}), dict):
        previous = None  # not an eval.json this library wrote: replaced whole
    if previous and previous.get("run", {}).get("model sha256") not in (None, header["model sha256"]):
        print(f"{path / 'eval.json'} held results of an earlier state of the model; they are replaced",
              file=sys.stderr)
    results = merge_results(previous, results, options.metrics)
    if options.figures:
        results["figures"] = draw_figures(run, test_split, results, path / "figures", options.seed)
    atomic_write_json(path / "eval.json", results)
    atomic_write_bytes(path / "report.md", evaluation_markdown(results, header).encode())
    return results


def _record_sampler(model: Any, metric: str, into: dict[str, dict[str, float]]) -> None:
    """Keep the MCMC totals (JNF's HMC: acceptance rate, chain-steps per second) of one metric."""
    statistics = model.sampler_statistics()
    if statistics is not None:
        into[metric] = statistics


def draw_samples(run: LoadedRun, data: MultimodalDataset, given: Sequence[str], count: int, seed: int = 0) -> tuple[dict, dict, dict, list | None]:
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


def draw_figures(run: LoadedRun, test: MultimodalDataset, results: dict, folder: Path, seed: int) -> list[str]:
    """Sample grids for one subset of each size, metric curves and the latent map."""
    written = []
    for given in target_metrics.sample_grid_inputs(run.model):
        inputs, generated, observed, row_labels = draw_samples(run, test, given, 10, seed)
        file = f"samples_given_{len(given)}.png"
        sample_grid(inputs, generated, run.modalities, folder / file, observed=observed, row_labels=row_labels,
                    title=f"given {'+'.join(given)}: test examples across classes (seed {seed})")
        written.append(f"figures/{file}")
    label = run.model_config.model
    curves = {}
    if "probe" in results:
        curves["latent linear probe accuracy"] = {label: results["probe"]["by_size"]}
    if "coherence" in results:
        curves["conditional coherence"] = {label: results["coherence"]["by_size"]}
    if "clustering" in results:
        curves[CLUSTERING_CURVE] = {label: results["clustering"]["nmi"]["by_size"]}
    if "likelihood" in results and "conditional_by_size" in results["likelihood"]:
        curves["log p(X_rest | x_S)"] = {label: results["likelihood"]["conditional_by_size"]}
    if curves:
        results["chance"] = chance_levels(test.labels, len(test.label_names or []))
        if CLUSTERING_CURVE in curves:
            results["chance"][CLUSTERING_CURVE] = 0.0  # NMI of clusters independent of the classes
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
