"""Conventions shared by the metrics: subset names, per-size averages, batched no-grad passes.

Metrics are functions ``metric(model, data, ...) -> dict`` returning JSON-able values. A
subset of modalities is named by its members joined with ``+`` (``"m0+m2"``); results per
subset are averaged by subset size as in Fig. 3 of Qiu et al. (2025).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from omnivae.data.base import Batch, MultimodalDataset
from omnivae.errors import DataError
from omnivae.functional import subset_matrix

__all__ = [
    "subset_key",
    "all_subsets",
    "mean_by_size",
    "eval_batches",
    "require_labels",
    "seeded",
    "evaluating",
    "model_inputs",
    "subset_inference",
    "progress_bar",
]


def subset_key(names: Sequence[str], row: Tensor | Sequence[bool]) -> str:
    """``"m0+m2"`` for the subset ``row`` (booleans over ``names``)."""
    return "+".join(n for n, keep in zip(names, [bool(v) for v in row], strict=False) if keep)


def all_subsets(names: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, list[str]]:
    """Every non-empty subset as ``BoolTensor[2**M - 1, M]`` (by size) and its names."""
    table = subset_matrix(len(names), device=device)
    return table, [subset_key(names, row) for row in table]


def mean_by_size(values: Mapping[str, float]) -> dict[str, float]:
    """Average per-subset values by subset size: ``{"1": ..., "2": ...}`` (keys are sizes)."""
    groups: dict[int, list[float]] = {}
    for key, value in values.items():
        groups.setdefault(len(key.split("+")), []).append(float(value))
    return {str(size): sum(v) / len(v) for size, v in sorted(groups.items())}


def eval_batches(data: MultimodalDataset, batch_size: int, device: torch.device | str) -> Iterator[Batch]:
    """The dataset in order, batch by batch, on ``device`` (for use under ``torch.no_grad``)."""
    for batch in data.batches(batch_size):
        yield batch.to(device)


def require_labels(data: MultimodalDataset, metric: str) -> Tensor:
    """The labels, or a clear error naming the metric that needs them."""
    if data.labels is None:
        raise DataError(f"the {metric} metric needs labels, and dataset {data.name!r} has none; drop it from metrics",
                        parameter="metrics")
    return data.labels


@contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with the global RNG seeded, then restore the caller's RNG state.

    Metrics sample through ``Distribution.sample`` and dropout, which use the global
    generator; forking keeps a metric reproducible without disturbing training code.
    ``seed=None`` leaves the random state alone.
    """
    if seed is None:
        yield
        return
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for a block and restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def model_inputs(model: Any, batch: Batch) -> dict[str, Tensor]:
    """The batch's modalities in the model's floating dtype (batches arrive as float32)."""
    dtype = model.likelihood_weights.dtype
    return {name: value.to(dtype) for name, value in batch.x.items() if name in model.names}


def subset_inference(model: Any, batch: Batch, subsets: Tensor) -> tuple[Distribution, Tensor, Tensor, dict[str, Tensor]]:
    """Posteriors q(z | x_S) of every row of ``subsets`` from one encoder pass.

    A subset's posterior is meaningful in row b only when the whole subset is observed
    there; other rows still get a finite posterior (their encoders read the zeros the data
    layer stores for unobserved entries) so the batch stays rectangular, and callers drop
    them with ``valid``.

    Returns:
        The posterior (batch ``[S, B]``), ``valid [S, B]`` (subset observed in the row),
        the observation mask ``[M, B]`` and the inputs in the model's dtype.
    """
    x = model_inputs(model, batch)
    observed = model.stack_mask(x, batch.mask)
    posterior = model.subset_posteriors(x, subsets, torch.ones_like(observed))
    missing_member = subsets.t().unsqueeze(-1) & ~observed.unsqueeze(1)  # [M, S, B]
    return posterior, ~missing_member.any(0), observed, x


def progress_bar(total: int, desc: str, enabled: bool = False, unit: str = "batch") -> tqdm:
    """A progress bar with rate and ETA on stderr, for one metric (a no-op when disabled).

    Bars stay on screen once done, so the finished metrics and their times remain visible
    above the running one; stdout is left for results.
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                leave=True, dynamic_ncols=True)
