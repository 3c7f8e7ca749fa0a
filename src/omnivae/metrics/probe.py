"""Latent linear probe: how linearly the label can be read from each subset's posterior mean.

For every non-empty subset S of the modalities, a logistic regression is fitted on the
posterior means E[z | x_S] of training points and scored on the test split, as in MoPoE's
representation metric (Sutter et al. 2021, Sec. 4; peer protocols, "Latent linear
probe") and Table 1a / Fig. 3 of Qiu et al. (2025). Two deliberate differences from
MoPoE's code: training rows are drawn *without* replacement, and features are
standardised before the fit so that ``max_iter`` means the same at any latent scale.

The private helpers here (evaluation mode, dtype, subset posteriors with validity) are
shared with :mod:`omnivae.metrics.likelihood` and :mod:`omnivae.metrics.reconstruction`.

References:
    Sutter, Daunhawer & Vogt (2021). Generalized Multimodal ELBO. ICLR.
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from omnivae.data.base import MultimodalDataset
from omnivae.errors import DataError, UserError
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    mean_by_size,
    progress_bar,
    require_labels,
    subset_inference,
)
from omnivae.models import MultimodalVAE

__all__ = ["linear_probe"]


# -- the probe ----------------------------------------------------------------------------
def _subset_means(
    model: MultimodalVAE,
    data: MultimodalDataset,
    subsets: Tensor,
    batch_size: int,
    device: torch.device | str,
    bar: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means ``[S, N, D]`` of every subset and their validity ``[S, N]``."""
    means, valid = [], []
    for batch in eval_batches(data, batch_size, device):
        posterior, ok, _, _ = subset_inference(model, batch, subsets)
        means.append(posterior.mean)
        valid.append(ok)
        if bar is not None:
            bar.update()
    return torch.cat(means, 1).cpu().numpy(), torch.cat(valid, 1).cpu().numpy()


def linear_probe(
    model: MultimodalVAE,
    train: MultimodalDataset,
    test: MultimodalDataset,
    *,
    num_train: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_iter: int = 1000,
    progress: bool = False,
) -> dict:
    """Test accuracy of a logistic regression on the posterior mean of every subset.

    The protocol of MoPoE (Sutter et al. 2021, Sec. 4; Qiu et al. 2025, Table 1a and
    Fig. 3): features are the means of the inference posteriors q(z | x_S) (one
    ``subset_posteriors`` call per batch gives every subset), standardised, and the
    classifier is ``LogisticRegression(max_iter=max_iter)``, one per subset.

    On partially observed data, subset S uses only the rows where every member of S is
    observed, in both splits; a subset with no such test row is left out.

    Args:
        model: A trained model; its device must be ``device``.
        train: Split the classifiers are fitted on; needs labels.
        test: Split they are scored on; needs labels.
        num_train: Number of training rows, drawn without replacement with ``seed``
            (all rows when None or larger than the split). MoPoE uses 500.
        batch_size: Rows per encoder pass.
        device: Where batches are sent.
        seed: Seed of the training-row draw and of the classifier.
        max_iter: Iterations of the lbfgs solver (MoPoE: 1000).
        progress: Show a progress bar (encoder batches, then one step per subset's fit) on stderr.

    Returns:
        ``{"per_subset": {"m0": acc, "m0+m1": acc, ...}, "by_size": {"1": acc, ...}}``
        with accuracies in [0, 1]; for multi-label data (labels ``[N, A]``, CelebA), the
        mean average precision over attributes of one regression per attribute.

    Raises:
        DataError: if a split has no labels, or a subset's training rows hold one class.

    Example:
        >>> result = linear_probe(model, splits.train, splits.test, num_train=500)  # doctest: +SKIP
        >>> result["by_size"]["1"]  # doctest: +SKIP
        0.93
    """
    require_labels(train, "probe")
    test_labels = require_labels(test, "probe").cpu().numpy()
    if num_train is not None:
        if num_train < 1:
            raise UserError(f"the probe needs at least one training row, got num_train={num_train}")
        if num_train < len(train):
            generator = torch.Generator().manual_seed(seed)
            train = train.subset(torch.randperm(len(train), generator=generator)[:num_train])
    train_labels = require_labels(train, "probe").cpu().numpy()

    subsets, keys = all_subsets(model.names, device=model.device)
    steps = train.num_batches(batch_size) + test.num_batches(batch_size) + len(keys)
    with progress_bar(steps, "probe", progress, unit="step") as bar:
        with torch.no_grad(), evaluating(model):
            train_means, train_valid = _subset_means(model, train, subsets, batch_size, device, bar)
            test_means, test_valid = _subset_means(model, test, subsets, batch_size, device, bar)
        per_subset = _fit_probes(
            keys, train_means, train_valid, train_labels, test_means, test_valid, test_labels, max_iter, seed, bar
        )
    return {"per_subset": per_subset, "by_size": mean_by_size(per_subset)}


def _fit_probes(
    keys: list[str],
    train_means: np.ndarray,
    train_valid: np.ndarray,
    train_labels: np.ndarray,
    test_means: np.ndarray,
    test_valid: np.ndarray,
    test_labels: np.ndarray,
    max_iter: int,
    seed: int,
    bar: Any,
) -> dict[str, float]:
    """One standardised logistic regression per subset, scored on the test rows."""
    per_subset: dict[str, float] = {}
    for index, key in enumerate(keys):
        score = _fit_one(key, train_means[index][train_valid[index]], train_labels[train_valid[index]],
                         test_means[index][test_valid[index]], test_labels[test_valid[index]], max_iter, seed)
        if score is not None:
            per_subset[key] = score
        bar.update()
    return per_subset


def _fit_one(
    key: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, max_iter: int, seed: int
) -> float | None:
    """The probe of one subset; None when it has no test row."""
    if test_x.shape[0] == 0:
        return None
    if train_y.ndim == 2:
        return _multilabel_probe(train_x, train_y, test_x, test_y, max_iter, seed)
    if np.unique(train_y).size < 2:
        raise DataError(
            f"the probe of subset {key!r} has {train_y.size} training rows with fewer than two "
            "classes; use more training rows (num_train) or a split with several classes"
        )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    classifier.fit(train_x, train_y)
    return float(np.mean(classifier.predict(test_x) == test_y))


def _multilabel_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, max_iter: int, seed: int
) -> float:
    """Mean average precision of one logistic regression per attribute (CelebA's protocol:
    MoPoE scores its 40 attributes by average precision). Attributes with a single class
    in either split are skipped, as their precision is undefined."""
    from sklearn.metrics import average_precision_score

    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    scores = []
    for column in range(train_y.shape[1]):
        fit_target = train_y[:, column] > 0
        test_target = test_y[:, column] > 0
        if fit_target.all() or not fit_target.any() or test_target.all() or not test_target.any():
            continue
        classifier = LogisticRegression(max_iter=max_iter, random_state=seed).fit(train_x, fit_target)
        scores.append(average_precision_score(test_target, classifier.decision_function(test_x)))
    if not scores:
        raise DataError("no attribute has both classes in the probe's training and test rows; use more rows")
    return float(np.mean(scores))
