"""``omnivae reproduce PAPER``: run a paper's protocol and set our numbers beside its own.

One preset module per paper (:mod:`.barycentric`, :mod:`.jnf`, :mod:`.mmvamp`) holds
the protocol at two scales, the paper's published numbers and its claims; this module
runs a preset through :func:`omnivae.benchmark.run_benchmark` (resumable: finished runs
are skipped) and :mod:`.report` writes ``OUT/reproduce.md``. Nothing here is specific to
a paper.

Example:
    >>> from omnivae.reproduce import get_preset, plan
    >>> print(plan(get_preset("mmvamp", "cpu")).splitlines()[0])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from omnivae.errors import UserError, unknown_name
from omnivae.reproduce import barycentric, jnf, mmvamp
from omnivae.reproduce.report import reproduce_markdown
from omnivae.reproduce.spec import Experiment, Preset, by_size

__all__ = ["PAPERS", "SCALES", "get_preset", "plan", "reproduce", "collect_values"]

PAPERS: dict[str, Callable[[str], Preset]] = {
    "barycentric": barycentric.preset,
    "jnf": jnf.preset,
    "mmvamp": mmvamp.preset,
}
SCALES = ("cpu", "full")


def get_preset(paper: str, scale: str) -> Preset:
    """The preset of ``paper`` at ``scale``; an unknown name is a :class:`UserError`."""
    if paper not in PAPERS:
        raise unknown_name("paper", paper, list(PAPERS))
    if scale not in SCALES:
        error = unknown_name("scale", scale, SCALES)
        error.parameter = "scale"
        raise error
    return PAPERS[paper](scale)


def _runs(experiment: Experiment, seeds: int) -> int:
    return len(experiment.run_keys()) * seeds


def _hours(experiment: Experiment, seeds: int, device: str) -> float:
    """Expected hours of ``experiment`` on ``device`` (``"cpu"`` or ``"gpu"``), from the preset's per-step costs."""
    per_beta = 1 if experiment.betas is None else len(experiment.betas)
    seconds = 0.0
    for model in experiment.models:
        cost = experiment.model_cost.get(model, 1.0)
        per_run = experiment.steps_per_run(model) * experiment.step_seconds[device] * cost
        per_run += experiment.eval_seconds[device] * cost
        seconds += per_run * per_beta * seeds
    return seconds / 3600


def plan(preset: Preset, seeds: int | None = None) -> str:
    """The exact plan of ``preset`` as text: runs, epochs, steps, expected hours."""
    seeds = preset.seeds if seeds is None else seeds
    lines = [f"omnivae reproduce {preset.paper} --scale {preset.scale}: {preset.title}", ""]
    total_cpu = total_gpu = 0.0
    total_runs = 0
    for exp in preset.experiments:
        runs = _runs(exp, seeds)
        cpu, gpu = _hours(exp, seeds, "cpu"), _hours(exp, seeds, "gpu")
        total_cpu, total_gpu, total_runs = total_cpu + cpu, total_gpu + gpu, total_runs + runs
        betas = "" if exp.betas is None else f" x {len(exp.betas)} betas ({', '.join(f'{b:g}' for b in exp.betas)})"
        lines.append(f"[{exp.name}] {exp.dataset}: {len(exp.models)} models ({', '.join(exp.models)}){betas} "
                     f"x {seeds} seeds = {runs} runs")
        lines.append(f"  protocol: {exp.protocol}")
        warmup = "each method's own" if exp.warmup_epochs is None else f"{exp.warmup_epochs:g} epochs"
        lines.append(f"  batch {exp.batch_size}, lr {exp.lr:g}, latent {exp.latent_dim}, "
                     + (f"beta {exp.beta:g}, " if exp.betas is None else "")
                     + f"backbone {exp.backbone}{'' if exp.hidden is None else ' ' + '-'.join(map(str, exp.hidden))}, "
                     f"warm-up {warmup}, "
                     f"metrics {', '.join(exp.metrics)}"
                     + ("" if exp.num_train is None else f", probe on {exp.num_train} training rows"))
        for model in exp.models:
            steps = exp.steps_per_run(model)
            settings = {**exp.model_settings.get(model, {}), **exp.train_settings.get(model, {})}
            extra = f"; {json.dumps(settings)}" if settings else ""
            lines.append(f"  {model}: {exp.train_options(model, 'cpu', False)['epochs']} epochs, "
                         f"{steps:,} steps per run (all stages){extra}")
        lines.append("  untrained reference: 1 run per model (0 epochs, seed 0), evaluated only")
        lines.append(f"  expected: {cpu:.2f} h on 2 CPU threads, {gpu:.2f} h on one GPU")
    for step in preset.extras:
        cpu, gpu = step.seconds["cpu"] * step.seeds / 3600, step.seconds["gpu"] * step.seeds / 3600
        total_cpu, total_gpu = total_cpu + cpu, total_gpu + gpu
        lines.append(f"[{step.name}] {step.description}: expected {cpu:.2f} h on CPU, {gpu:.2f} h on GPU")
    lines.append("")
    lines.append(f"total: {total_runs} benchmark runs, expected {total_cpu:.2f} h on 2 CPU threads, "
                 f"{total_gpu:.2f} h on one GPU")
    lines.append("estimates: steps per run x seconds per step (+ metrics per run) from the preset; CPU seconds "
                 "measured on this project's 2-core machine where stated in the preset, GPU seconds assumed, not "
                 "measured (see each preset module)")
    if preset.deviations:
        lines.append("departures from the paper's protocol:")
        lines.extend(f"  - {d}" for d in preset.deviations)
    lines.append("claims checked (tolerances fixed in the preset):")
    lines.extend(f"  - {c.statement} [{c.source}]" for c in preset.claims)
    return "\n".join(lines)


def _run_dir(folder: Path, model: str, seed: int, beta: float | None) -> Path:
    # The benchmark's layout (omnivae.benchmark): OUT/MODEL-seedS, OUT/MODEL-betaB-seedS.
    return folder / (f"{model}-seed{seed}" if beta is None else f"{model}-beta{beta:g}-seed{seed}")


def run_metrics(results: dict) -> dict[str, float]:
    """Every scalar the claims and tables may name, from one run's ``eval.json``."""
    from omnivae.benchmark import summarise_run

    out = dict(summarise_run(results))
    for metric in ("probe", "coherence"):
        block = results.get(metric, {})
        for size, value in block.get("by_size", {}).items():
            out[by_size(metric, int(size))] = float(value)
    for subset, value in results.get("probe", {}).get("per_subset", {}).items():
        out[f"probe [{subset}]"] = float(value)
    coherence = results.get("coherence", {})
    for subset, value in coherence.get("per_subset_mean", {}).items():
        out[f"coherence [{subset}]"] = float(value)
    for subset, targets in coherence.get("per_subset", {}).items():
        for target, value in targets.items():
            out[f"coherence [{subset}->{target}]"] = float(value)
    return out


def collect_values(preset: Preset, out: Path, seeds: int) -> tuple[dict, dict]:
    """Per-seed values ``{(experiment, run key, metric): [...]}`` read from ``out``'s runs,
    and the untrained references ``{(experiment, model, metric): value}``."""
    from omnivae.evaluate import read_eval

    values: dict[tuple[str, str, str], list[float]] = {}
    untrained: dict[tuple[str, str, str], float] = {}
    for exp in preset.experiments:
        folder = out / exp.name
        for model in exp.models:
            for beta in exp.betas if exp.betas is not None else [None]:
                key = model if beta is None else f"{model} beta={beta:g}"
                for seed in range(seeds):
                    results = read_eval(_run_dir(folder, model, seed, beta))
                    if results is None:
                        continue
                    for metric, value in run_metrics(results).items():
                        values.setdefault((exp.name, key, metric), []).append(value)
            results = read_eval(_run_dir(folder / "untrained", model, 0, None))
            if results is not None:
                for metric, value in run_metrics(results).items():
                    untrained[(exp.name, model, metric)] = value
    return values, untrained


def _check_data(preset: Preset, data_dir: str | None) -> None:
    from omnivae.data.registry import DATASETS

    for exp in preset.experiments:
        info = DATASETS.get(exp.dataset)
        if info is None or info.status() == "ready" or (data_dir is not None and exp.uses_data_dir):
            continue
        needs = f" ({info.needs})" if info.needs else ""
        raise UserError(
            f"the {preset.paper} preset at scale {preset.scale!r} needs the dataset {exp.dataset}, which is not "
            f"available here{needs}; give its files with data_dir"
            + ("" if preset.scale == "full" else ", or use another paper's preset"),
            parameter="data_dir",
        )


def reproduce(
    preset: Preset,
    out: Path,
    seeds: int | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> str:
    """Run ``preset`` into ``out`` (resuming what is there) and write ``out/reproduce.md``.

    Each experiment is one benchmark folder ``out/EXPERIMENT`` (with its ``results.md``)
    plus ``out/EXPERIMENT/untrained``: every model evaluated before training, the
    reference that shows a trained model is past the learning trough. Returns the
    markdown.
    """
    from omnivae.benchmark import run_benchmark
    from omnivae.evaluate import EvalOptions
    from omnivae.fileio import atomic_write_bytes
    from omnivae.models import ModelConfig
    from omnivae.train import TrainConfig

    seeds = preset.seeds if seeds is None else seeds
    if seeds < 1:
        raise UserError(f"seeds must be >= 1, got {seeds}", parameter="seeds")
    _check_data(preset, data_dir)
    # Every setting is checked before anything is written.
    for exp in preset.experiments:
        for model in exp.models:
            ModelConfig(model=model, **exp.model_options(model)).validate()
            TrainConfig(**exp.train_options(model, device, progress)).validate()
    out = Path(out)
    started = time.perf_counter()
    wall: dict[str, float] = {}
    for exp in preset.experiments:
        exp_started = time.perf_counter()
        folder = out / exp.name
        data_dir_here = data_dir if exp.uses_data_dir else None
        options = EvalOptions(
            metrics=exp.metrics, num_train=exp.num_train, classifier_epochs=exp.classifier_epochs,
            num_importance_samples=exp.num_importance_samples, device=device, data_dir=data_dir_here,
            figures=False, progress=progress,
        )
        for model in exp.models:
            print(f"== {preset.paper} / {exp.name} / {model}", flush=True)
            run_benchmark([model], exp.dataset, seeds, folder, exp.model_options(model),
                          exp.train_options(model, device, progress), options, data_dir=data_dir_here, betas=exp.betas)
            # The untrained reference: same networks, same seed, no step taken.
            untrained_options = {k: v for k, v in exp.model_options(model).items()}
            run_benchmark([model], exp.dataset, 1, folder / "untrained", untrained_options,
                          {**exp.train_options(model, device, progress), "epochs": 0, "warmup_epochs": 0.0},
                          options, data_dir=data_dir_here)
        # One table of every model (all finished above, so nothing is retrained).
        first = exp.models[0]
        run_benchmark(list(exp.models), exp.dataset, seeds, folder, exp.model_options(first),
                      exp.train_options(first, device, progress), options, data_dir=data_dir_here, betas=exp.betas)
        wall[exp.name] = time.perf_counter() - exp_started
    extra_values: dict[tuple[str, str, str], list[float]] = {}
    for extra in preset.extras:
        extra_started = time.perf_counter()
        for seed in range(extra.seeds):
            print(f"== {preset.paper} / {extra.name} / seed {seed}", flush=True)
            for row, metrics in extra.run(out / extra.name, seed, progress).items():
                for metric, value in metrics.items():
                    extra_values.setdefault((extra.name, row, metric), []).append(float(value))
        wall[extra.name] = time.perf_counter() - extra_started
    values, untrained = collect_values(preset, out, seeds)
    values.update(extra_values)
    meta = {
        "seeds": seeds,
        "wall_seconds": time.perf_counter() - started,
        "step_seconds": wall,
        "command": f"omnivae reproduce {preset.paper} --scale {preset.scale} --out {out}"
        + ("" if seeds == preset.seeds else f" --seeds {seeds}"),
    }
    text = reproduce_markdown(preset, values, untrained, meta)
    atomic_write_bytes(out / "reproduce.md", text.encode())
    return text
