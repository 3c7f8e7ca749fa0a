"""Metrics of a model that generates one target modality given condition modalities (the CVAE).

Such a model (``Recipe.generates == "target"``) has no decoder for its conditions and cannot
decode a latent alone, so the subset-wise metrics of :mod:`omnivae.metrics.coherence`,
:mod:`~omnivae.metrics.likelihood` and :mod:`~omnivae.metrics.reconstruction` do not apply.
What it defines is computed here, in the same result layout (so ``report.md`` shows it):

- coherence of the target generated from the conditions (z ~ p(z | x_c), the target
  decoded with the conditions, classified), keyed by the condition set;
- log p(x_t | x_c), importance sampled with q(z | x_t, x_c) as proposal (Burda et al. 2016,
  Eq. 8, the CVAE's own likelihood; Sohn et al. 2015 report this conditional likelihood);
- the target's reconstruction error from q(z | x_t, x_c) ("joint") and from p(z | x_c)
  ("cross": generated from the conditions only).

The probe and the clustering of posterior means are the generic ones (the inference hook
covers every subset). Joint coherence, the joint likelihood and the Fréchet distances of
unconditional samples are not defined without conditions: :data:`SKIPPED` says why.

The model is duck-typed: ``target``, ``conditions``, ``conditional_generate``,
``reconstruct`` and ``conditional_log_likelihood(x, num_samples)``
(:class:`omnivae.methods.cvae.CVAEModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from omnivae.data.base import MultimodalDataset
from omnivae.errors import UserError
from omnivae.metrics.classifiers import (
    ModalityClassifiers,
    balanced_accuracy,
    mean_average_precision,
)
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    model_inputs,
    progress_bar,
    require_labels,
    seeded,
)

__all__ = [
    "SKIPPED",
    "generates_one_target",
    "sample_grid_inputs",
    "skipped",
    "target_coherence",
    "target_log_likelihood",
    "target_reconstruction_error",
]

SKIPPED: dict[str, str] = {
    "joint coherence": "the model generates its target only given its conditions; there is no unconditional sample",
    "joint likelihood": "the model has no likelihood for its conditions (they are inputs, not generated)",
    "fd": "no unconditional samples, and the conditions are not generated",
}
"""The metrics a target-only model does not define, with the reason ``eval.json`` records."""


def generates_one_target(model_name: str, sampler: str = "prior") -> bool:
    """Whether recipe ``model_name`` generates one target given conditions
    (``Recipe.generates``), so that evaluation computes the metrics here.

    Raises:
        UserError: for such a model with a latent ``sampler`` other than the prior (it has
            no unconditional samples to draw).
    """
    from omnivae.models import MODELS

    if MODELS[model_name].generates != "target":
        return False
    if sampler != "prior":
        raise UserError(f"{model_name} generates only given its conditions; a latent sampler ({sampler!r}) "
                        "has nothing to sample for; use sampler='prior'", parameter="sampler")
    return True


def skipped(metrics: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{"skipped": ...}``, the entries of :data:`SKIPPED` that belong to the requested ``metrics``."""
    return {"skipped": {name: why for name, why in SKIPPED.items() if name.split()[-1] in metrics}}


def sample_grid_inputs(model: Any) -> list[list[str]]:
    """The inputs of ``evaluate``'s sample grids: the first subset (in :func:`all_subsets`
    order) of each size 1..M-1, or, for a model that generates one target, its conditions."""
    names = list(model.names)
    if tuple(model.generated) != tuple(names):
        return [list(model.conditions)]
    table, _ = all_subsets(names)
    firsts = [int((table.sum(1) == size).nonzero()[0]) for size in range(1, len(names))]
    return [[n for n, keep in zip(names, table[i].tolist(), strict=True) if keep] for i in firsts]


def _masks(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditioned [B], target observed [B])`` of a batch."""
    observed = model.stack_mask(model_inputs(model, batch), batch.mask)
    index = {name: i for i, name in enumerate(model.names)}
    conditioned = observed[[index[c] for c in model.conditions]].all(0)
    return conditioned, observed[index[model.target]]


def _key(model: Any) -> str:
    return "+".join(model.conditions)


@torch.no_grad()
def target_coherence(
    model: Any,
    data: MultimodalDataset,
    classifiers: ModalityClassifiers,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Coherence of the target generated from the conditions (one draw per test row).

    Rows whose conditions are all observed count; the target is hidden from the model.

    Returns:
        The layout of :func:`~omnivae.metrics.conditional_coherence`, with the one subset,
        the conditions: ``{"per_subset": {"c1+c2": {target: score}}, "per_subset_mean":
        {...}, "by_size": {"K": score}, "joint": None}``.
    """
    labels = require_labels(data, "coherence").to(device)
    outputs, keep = [], []
    bar = progress_bar(data.num_batches(batch_size), "coherence (target | conditions)", progress)
    with seeded(seed, device), evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            x = model_inputs(model, batch)
            conditioned, _ = _masks(model, batch)
            mask = {name: torch.ones_like(conditioned) for name in model.conditions}
            mask[model.target] = torch.zeros_like(conditioned)
            generated = model.conditional_generate(x, mask, num_samples=1)[model.target][0]
            scored = classifiers.scores if classifiers.multilabel else classifiers.predict
            outputs.append(scored(model.target, generated))
            keep.append(conditioned)
            bar.update()
    out, rows = torch.cat(outputs), torch.cat(keep)
    if classifiers.multilabel:
        score = mean_average_precision(out[rows], labels[rows])
    else:
        score = balanced_accuracy(out[rows], labels[rows], classifiers.num_classes)
    key = _key(model)
    return {"per_subset": {key: {model.target: score}}, "per_subset_mean": {key: score},
            "by_size": {str(len(model.conditions)): score}, "joint": None}


@torch.no_grad()
def target_log_likelihood(
    model: Any,
    data: MultimodalDataset,
    *,
    num_samples: int = 1000,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    progress: bool = False,
) -> dict:
    """The mean over test rows of log p(x_t | x_c) (nats), K importance samples per row.

    Rows whose target and conditions are all observed count.

    Returns:
        ``{"conditional": {"c1+c2": v}, "conditional_by_size": {"K": v}, "joint": None}``
        (the layout of :func:`~omnivae.metrics.conditional_log_likelihoods`).
    """
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    bar = progress_bar(data.num_batches(batch_size), f"likelihood (target | conditions, K={num_samples})", progress)
    with seeded(seed, device), evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            x = model_inputs(model, batch)
            conditioned, target = _masks(model, batch)
            rows = conditioned & target
            if bool(rows.any()):
                values = model.conditional_log_likelihood(x, num_samples)
                total += values[rows].double().sum().cpu()
                count += int(rows.sum())
            bar.update()
    if count == 0:
        return {"conditional": {}, "conditional_by_size": {}, "joint": None}
    value = float(total) / count
    key = _key(model)
    return {"conditional": {key: value}, "conditional_by_size": {str(len(model.conditions)): value}, "joint": None}


@torch.no_grad()
def target_reconstruction_error(
    model: Any,
    data: MultimodalDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """Mean squared error of the target against its decoded mean, from the posterior mean
    of q(z | x_t, x_c) (``"joint"``) and of p(z | x_c) (``"cross"``, the conditions alone).

    Returns:
        ``{"self": {}, "cross": {target: mse}, "joint": {target: mse}}`` (the layout of
        :func:`~omnivae.metrics.reconstruction_error`; a CVAE has no "self" reconstruction).
    """
    sums = torch.zeros(2, dtype=torch.float64)
    count = 0
    bar = progress_bar(data.num_batches(batch_size), "recon (target)", progress)
    with evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            x = model_inputs(model, batch)
            conditioned, target = _masks(model, batch)
            rows = conditioned & target
            if bool(rows.any()):
                every = {name: torch.ones_like(rows) for name in (model.target, *model.conditions)}
                hidden = {**every, model.target: torch.zeros_like(rows)}
                for column, mask in enumerate((every, hidden)):
                    decoded = model.reconstruct(x, mask)[model.target]
                    error = (decoded - x[model.target]).pow(2).flatten(1).mean(-1)
                    sums[column] += error[rows].double().sum().cpu()
                count += int(rows.sum())
            bar.update()
    if count == 0:
        return {"self": {}, "cross": {}, "joint": {}}
    joint, cross = (sums / count).tolist()
    return {"self": {}, "cross": {model.target: cross}, "joint": {model.target: joint}}
