"""What the figures show: which test rows (stratified by class), their titles, and the
chance level of each curve. No drawing here; :mod:`omnivae.report.figures` draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Panel names of the by-size curves that are fractions in [0, 1] with a chance level.

PROBE_CURVE = "latent linear probe accuracy"
COHERENCE_CURVE = "conditional coherence"


def _class_keys(labels: Tensor) -> Tensor:
    """One integer class per row; multi-label rows (CelebA) are keyed by their first attribute."""
    labels = labels.detach().cpu()
    return (labels[:, 0] > 0).long() if labels.dim() > 1 else labels.long()


def stratified_rows(labels: Tensor | None, count: int, seed: int = 0, eligible: Tensor | None = None) -> Tensor:
    """Indices of ``count`` rows spread over the classes, ordered by class.

    The classes are visited in a seeded random order, round robin, each giving its next row
    from a seeded shuffle of its rows, so ``count`` rows cover ``min(count, classes)``
    classes and no class has two rows more than another (unless it runs out of rows). A
    different ``seed`` picks other rows (and, for fewer rows than classes, other classes).

    Args:
        labels: ``[N]`` class per row, ``[N, A]`` multi-label (stratified by the first
            attribute), or None (a seeded random draw).
        count: Rows wanted; fewer come back when fewer rows are eligible.
        seed: Seed of the draw.
        eligible: Optional ``BoolTensor[N]``: only these rows may be drawn (e.g. rows with
            at least one conditioning modality observed).

    Example:
        >>> stratified_rows(torch.tensor([0, 0, 0, 1, 1, 2]), 3).tolist()  # one row per class
        [2, 3, 5]
    """
    if labels is None and eligible is None:
        raise ValueError("stratified_rows needs labels or an eligible mask to know the number of rows")
    if labels is not None:
        total = len(labels)
    else:
        assert eligible is not None  # checked above
        total = len(eligible)
    candidates = torch.arange(total) if eligible is None else eligible.detach().cpu().bool().nonzero().flatten()
    generator = torch.Generator().manual_seed(int(seed))
    shuffled = candidates[torch.randperm(len(candidates), generator=generator)]
    count = min(int(count), len(shuffled))
    if labels is None:
        return shuffled[:count].sort().values
    keys = _class_keys(labels)[shuffled]
    classes = keys.unique()
    classes = classes[torch.randperm(len(classes), generator=generator)]
    queues = [shuffled[keys == c].tolist() for c in classes.tolist()]
    chosen: list[tuple[int, int]] = []
    depth = 0
    while len(chosen) < count:
        for key, queue in zip(classes.tolist(), queues, strict=False):
            if depth < len(queue) and len(chosen) < count:
                chosen.append((key, queue[depth]))
        depth += 1
    return torch.tensor([row for _, row in sorted(chosen)], dtype=torch.long)


def row_titles(labels: Tensor | None, label_names: Sequence[str] | None = None) -> list[str] | None:
    """``"class 3"`` (or the label's name) for each row; None without labels."""
    if labels is None:
        return None
    labels = labels.detach().cpu()
    if labels.dim() > 1:
        first = label_names[0] if label_names else "attribute 0"
        return [first if bool(v > 0) else f"not {first}" for v in labels[:, 0]]
    names = list(label_names or [])
    return [names[int(v)] if 0 <= int(v) < len(names) else f"class {int(v)}" for v in labels]


def chance_levels(labels: Tensor | None, num_classes: int | None = None) -> dict[str, float]:
    """Chance levels of the by-size accuracy curves, from the test labels.

    Coherence is a class-balanced accuracy, so any guess that ignores the input scores
    ``1 / num_classes``; the probe is a plain accuracy, which a constant guess of the most
    frequent class already reaches (the majority-class rate). For multi-label data both are
    a mean average precision, whose chance level is the mean rate of positives.

    Example:
        >>> chance_levels(torch.tensor([0, 0, 0, 1]))
        {'latent linear probe accuracy': 0.75, 'conditional coherence': 0.5}
    """
    if labels is None or len(labels) == 0:
        return {}
    labels = labels.detach().cpu()
    if labels.dim() > 1:
        positives = float((labels > 0).float().mean())
        return {PROBE_CURVE: positives, COHERENCE_CURVE: positives}
    counts = torch.bincount(labels.long() - int(labels.min()))
    classes = max(int((counts > 0).sum()), num_classes or 0)
    return {PROBE_CURVE: float(counts.max()) / len(labels), COHERENCE_CURVE: 1.0 / classes}
