"""The pieces a reproduction preset is made of: experiments, published tables and claims.

A preset (one module per paper) is data: the paper's protocol as :class:`Experiment`
rows run through ``omnivae benchmark``, the paper's numbers typed in as
:class:`PublishedTable` rows, and the paper's findings as :class:`Claim` objects whose
conditions compare our seed-averaged numbers with tolerances fixed before any run.
Nothing here knows a paper; the presets know nothing of running or writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "Experiment", "Extra", "PublishedTable", "Ref", "Compare", "AboveAtEqual", "Claim",
    "Check", "Preset", "Values", "by_size", "mean_std",
]

Values = Mapping[tuple[str, str, str], Sequence[float]]
"""Per-seed values keyed by ``(experiment, run, metric)``; ``run`` is a benchmark key
(``"mwb"``, ``"mmvamp beta=0.25"``) or an extra step's row name."""


def by_size(metric: str, size: int) -> str:
    """Our name of ``metric`` (``"probe"``, ``"coherence"``) from ``size`` inputs, averaged
    over the subsets of that size: ``"probe (1 input)"``, ``"coherence (3 inputs)"``."""
    return f"{metric} ({size} input{'s' if size > 1 else ''})"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


@dataclass(frozen=True)
class Experiment:
    """One ``omnivae benchmark``: ``models`` x seeds (x ``betas``) on one dataset.

    ``model_settings`` and ``train_settings`` hold what differs between the models of one
    experiment (``{"jnf-dcca": {"lr": 1e-4}}``); everything else is shared, as in the
    papers' comparisons. ``step_seconds`` is the expected seconds of one training step
    on ``"cpu"`` (2 threads) and ``"gpu"``, and ``eval_seconds`` the expected seconds of
    one run's evaluation; ``model_cost`` multiplies both for slower methods. The preset
    says how each estimate was obtained.
    """

    name: str
    dataset: str
    models: tuple[str, ...]
    epochs: int
    batch_size: int
    lr: float
    latent_dim: int
    train_size: int
    beta: float = 1.0
    betas: tuple[float, ...] | None = None
    backbone: str = "auto"
    hidden: tuple[int, ...] | None = None
    warmup_epochs: float | None = None
    rescale_likelihoods: bool = False
    model_settings: Mapping[str, Mapping] = field(default_factory=dict)
    train_settings: Mapping[str, Mapping] = field(default_factory=dict)
    metrics: tuple[str, ...] = ("probe", "coherence")
    num_train: int | None = None
    classifier_epochs: int = 20
    num_importance_samples: int = 1000
    uses_data_dir: bool = False
    step_seconds: Mapping[str, float] = field(default_factory=lambda: {"cpu": 0.05, "gpu": 0.01})
    eval_seconds: Mapping[str, float] = field(default_factory=lambda: {"cpu": 10.0, "gpu": 10.0})
    model_cost: Mapping[str, float] = field(default_factory=dict)
    protocol: str = ""
    """Where each choice comes from (table, figure, appendix), for the plan and the report."""

    def run_keys(self) -> list[str]:
        """The benchmark's keys of this experiment's rows, in order."""
        if self.betas is None:
            return list(self.models)
        return [f"{m} beta={b:g}" for m in self.models for b in self.betas]

    def model_options(self, model: str) -> dict:
        """``ModelConfig`` fields for ``model`` (without ``model`` and the swept beta)."""
        options: dict = {"latent_dim": self.latent_dim, "backbone": self.backbone,
                         "rescale_likelihoods": self.rescale_likelihoods}
        if self.betas is None:
            options["beta"] = self.beta
        if self.hidden is not None:
            options["hidden"] = list(self.hidden)
        return {**options, **self.model_settings.get(model, {})}

    def train_options(self, model: str, device: str, progress: bool) -> dict:
        """``TrainConfig`` fields for ``model`` (the seed is the benchmark's)."""
        options: dict = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                         "device": device, "progress": progress}
        if self.warmup_epochs is not None:
            options["warmup_epochs"] = self.warmup_epochs
        return {**options, **self.train_settings.get(model, {})}

    def steps_per_run(self, model: str) -> int:
        """Optimiser steps of one run (every stage of a multi-stage method)."""
        epochs = self.train_settings.get(model, {}).get("epochs", self.epochs)
        stages = 1.0
        options = self.model_settings.get(model, {}).get("options", {})
        if model.startswith("jnf"):
            stages += (options.get("stage2_epochs") or epochs) / epochs
            if model != "jnf":
                stages += (options.get("projector_epochs") or epochs) / epochs
        batches = -(-self.train_size // self.batch_size)
        return int(round(epochs * stages * batches))


@dataclass(frozen=True)
class Extra:
    """A step outside the benchmark (the JNF toy figure): writes into ``OUT/name``.

    ``run(folder, seed, progress)`` returns ``{row: {metric: value}}`` and must skip its
    work when its results are already in ``folder`` (resumable like the benchmark).
    """

    name: str
    run: Callable[[Path, int, bool], dict[str, dict[str, float]]]
    seeds: int
    seconds: Mapping[str, float]
    description: str


@dataclass(frozen=True)
class PublishedTable:
    """A table of the paper, typed in, next to our numbers for the same quantities.

    ``columns`` pairs the paper's column label with our metric name (None: no
    counterpart on our data); ``rows`` maps our run key to the paper's values as printed.
    """

    title: str
    experiment: str
    columns: tuple[tuple[str, str | None], ...]
    rows: Mapping[str, tuple[str, ...]]
    note: str = ""


@dataclass(frozen=True)
class Ref:
    """One seed-averaged number of ours: ``(experiment, run, metric)``."""

    experiment: str
    run: str
    metric: str

    def label(self) -> str:
        return f"{self.run}: {self.metric}"


@dataclass(frozen=True)
class Check:
    """The outcome of one condition: the sentence, whether it holds, and the numbers."""

    text: str
    passed: bool


def _mean(values: Values, ref: Ref) -> tuple[float, float, int] | None:
    seq = values.get((ref.experiment, ref.run, ref.metric))
    if not seq:
        return None
    mean, std = mean_std(list(seq))
    return mean, std, len(seq)


def _fmt(stat: tuple[float, float, int]) -> str:
    return f"{stat[0]:.3f} ± {stat[1]:.3f}" if stat[2] > 1 else f"{stat[0]:.3f}"


Relation = Literal["above", "at least", "about", "at most"]


class Condition(Protocol):
    def check(self, values: Values) -> Check: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Compare:
    """``left RELATION right`` on seed means, with a tolerance fixed in advance.

    - ``above``: left - right > tolerance (a margin: a tie is not "above");
    - ``at least``: left - right >= -tolerance;
    - ``about``: |left - right| <= tolerance;
    - ``at most``: left - right <= tolerance (a gain that has stopped: saturation).
    """

    left: Ref
    relation: Relation
    right: Ref
    tolerance: float

    def holds(self, difference: float) -> bool:
        if self.relation == "above":
            return difference > self.tolerance
        if self.relation == "at least":
            return difference >= -self.tolerance
        if self.relation == "about":
            return abs(difference) <= self.tolerance
        if self.relation == "at most":
            return difference <= self.tolerance
        raise ValueError(f"unknown relation {self.relation!r}")

    def describe(self) -> str:
        rule = {"above": "difference > {t}", "at least": "difference >= -{t}",
                "about": "|difference| <= {t}", "at most": "difference <= {t}"}[self.relation]
        return f"{self.left.label()} {self.relation} {self.right.label()} ({rule.format(t=f'{self.tolerance:g}')})"

    def check(self, values: Values) -> Check:
        left, right = _mean(values, self.left), _mean(values, self.right)
        if left is None or right is None:
            missing = self.left if left is None else self.right
            return Check(f"{self.describe()}: no result for {missing.label()}", False)
        difference = left[0] - right[0]
        passed = self.holds(difference)
        return Check(
            f"{self.left.label()} {_fmt(left)} {self.relation} {self.right.label()} {_fmt(right)}: "
            f"difference {difference:+.4f}, tolerance {self.tolerance:g} -> {'yes' if passed else 'no'}",
            passed,
        )


@dataclass(frozen=True)
class AboveAtEqual:
    """``model``'s ``metric`` above each baseline's at the baseline's own ``x`` (a beta sweep).

    For every baseline beta, ``model``'s metric is read off its own sweep at the
    baseline's ``x`` (linear interpolation between the two sweep points that bracket it,
    in order of ``x``). A baseline point whose ``x`` lies outside the model's range by
    more than ``x_tolerance`` (relative) is not comparable and is reported as such; the
    condition holds when at least one point is comparable and the model is above the
    baseline by more than ``margin`` at every comparable point.
    """

    experiment: str
    model: str
    baseline: str
    betas: tuple[float, ...]
    metric: str
    x: str
    margin: float
    x_tolerance: float = 0.05

    def describe(self) -> str:
        return (f"{self.model} {self.metric} above {self.baseline}'s at equal {self.x} "
                f"(interpolated along {self.model}'s beta sweep; margin {self.margin:g}, "
                f"x range widened by {self.x_tolerance:.0%})")

    def _points(self, values: Values, name: str) -> list[tuple[float, float, float]] | None:
        points = []
        for beta in self.betas:
            run = f"{name} beta={beta:g}"
            x, y = _mean(values, Ref(self.experiment, run, self.x)), _mean(values, Ref(self.experiment, run, self.metric))
            if x is None or y is None:
                return None
            points.append((beta, x[0], y[0]))
        return points

    def check(self, values: Values) -> Check:
        ours, base = self._points(values, self.model), self._points(values, self.baseline)
        if ours is None or base is None:
            return Check(f"{self.describe()}: results missing", False)
        curve = sorted((x, y) for _, x, y in ours)
        low, high = curve[0][0], curve[-1][0]
        parts, comparable, passed = [], 0, True
        for beta, x, y in base:
            if x < low * (1 - self.x_tolerance) or x > high * (1 + self.x_tolerance):
                parts.append(f"beta={beta:g}: x {x:.4g} outside [{low:.4g}, {high:.4g}]")
                continue
            ours_y = _interpolate(curve, x)
            comparable += 1
            ok = ours_y - y > self.margin
            passed &= ok
            parts.append(f"beta={beta:g}: x {x:.4g}, {self.model} {ours_y:.3f} vs {y:.3f} ({ours_y - y:+.3f})")
        passed = passed and comparable > 0
        return Check(
            f"{self.model} vs {self.baseline}, {self.metric} at equal {self.x} (margin {self.margin:g}): "
            + "; ".join(parts) + f" -> {'yes' if passed else 'no'}"
            + ("" if comparable else " (no comparable point)"),
            passed,
        )


def _interpolate(curve: Sequence[tuple[float, float]], x: float) -> float:
    """y at ``x`` on the piecewise-linear ``curve`` (sorted by x), clamped at its ends."""
    if x <= curve[0][0]:
        return curve[0][1]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


@dataclass(frozen=True)
class Claim:
    """A finding of the paper: reproduced when every condition holds."""

    statement: str
    source: str
    conditions: tuple[Condition, ...]

    def evaluate(self, values: Values) -> tuple[bool, list[Check]]:
        checks = [c.check(values) for c in self.conditions]
        return all(c.passed for c in checks), checks


@dataclass(frozen=True)
class Preset:
    """One paper at one scale: what to run, what the paper printed, what it claims."""

    paper: str
    title: str
    scale: str
    seeds: int
    experiments: tuple[Experiment, ...]
    published: tuple[PublishedTable, ...]
    claims: tuple[Claim, ...]
    extras: tuple[Extra, ...] = ()
    deviations: tuple[str, ...] = ()
    """How this scale departs from the paper's protocol, and why."""
    headline_metrics: tuple[str, ...] = ()
    """Our metrics tabulated per experiment in the report (every run key a row)."""
