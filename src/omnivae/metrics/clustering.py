"""Latent clustering: how well k-means on each subset's posterior means recovers the classes.

For every non-empty subset S of the modalities, k-means with as many clusters as there
are classes is run on the posterior means E[z | x_S] of the test rows where S is observed,
and its clusters are compared with the labels by normalised mutual information (NMI: the
mutual information divided by the arithmetic mean of the two entropies, scikit-learn's
default; Strehl & Ghosh 2002 divide by their geometric mean) and the adjusted Rand index
(ARI, Hubert & Arabie 1985). Both are 1 for a clustering equal to the
classes up to renaming, and about 0 (ARI exactly 0 in expectation) for one independent of
them. MultiVae has a clustering metric of this kind; the subsets follow the linear probe
(:mod:`omnivae.metrics.probe`).

A model that clusters by itself (a ``cluster(x, members)`` method giving one cluster per
row and a ``num_clusters`` attribute, as CMVAE, :mod:`omnivae.methods.cmvae`) is also
scored on its own assignments, with the same subsets, rows and scores, under the key
``"model"``: its clusters need not number as many as the classes.

Choices: k-means runs on the raw means, not standardised ones, since standardising would
blow up the latent units a VAE leaves inactive (means near 0 for every row) to the scale of
the informative ones; ``n_init`` restarts from k-means++ seeds, seeded.

References:
    Strehl & Ghosh (2002). Cluster Ensembles. JMLR 3 (NMI).
    Hubert & Arabie (1985). Comparing Partitions. Journal of Classification 2 (ARI).
    Sutter, Daunhawer & Vogt (2021). Generalized Multimodal ELBO. ICLR (the subsets).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from omnivae.data.base import MultimodalDataset
from omnivae.errors import DataError, UserError
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    mean_by_size,
    model_inputs,
    progress_bar,
    require_labels,
)
from omnivae.metrics.probe import _subset_means
from omnivae.models import MultimodalVAE

__all__ = ["latent_clustering", "cluster_scores"]


def cluster_scores(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, n_init: int = 10,
                   num_clusters: int | None = None) -> tuple[float, float]:
    """(NMI, ARI) of k-means on ``features [N, D]`` against integer ``labels [N]``.

    Args:
        features: Points to cluster.
        labels: Class of each point.
        seed: Seed of the k-means++ initialisations.
        n_init: Restarts; the clustering with the lowest inertia is kept.
        num_clusters: Clusters; default: the number of distinct labels.

    Example:
        >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
        >>> cluster_scores(x, np.array([1, 1, 0, 0]))
        (1.0, 1.0)
    """
    k = num_clusters or int(np.unique(labels).size)
    if k < 2:
        raise DataError("clustering needs at least two classes among the labels", parameter="data")
    if features.shape[0] < k:
        raise DataError(f"clustering {features.shape[0]} rows into {k} clusters needs at least {k} rows")
    points = features.astype(np.float64)
    distinct, inverse = np.unique(points, axis=0, return_inverse=True)
    if distinct.shape[0] <= k:
        # Fewer distinct points than clusters (a subset whose posterior is the prior for
        # every row, as a CVAE's without its target): each distinct point is its own
        # cluster, which is what k-means would find, without its degenerate-data warning.
        assigned = inverse.reshape(-1)
    else:
        assigned = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(points)
    return (float(normalized_mutual_info_score(labels, assigned)),
            float(adjusted_rand_score(labels, assigned)))


def _own_assignments(
    model: MultimodalVAE, data: MultimodalDataset, subsets: torch.Tensor, batch_size: int, device: torch.device | str,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's own clusters ``[S, N]`` of every subset and their validity ``[S, N]``."""
    assign, valid = [], []
    for batch in eval_batches(data, batch_size, device):
        x = model_inputs(model, batch)
        observed = model.stack_mask(x, batch.mask)
        members = model.subset_masks(subsets, torch.ones_like(observed))  # [M, S, B]
        assign.append(model.cluster(x, members))  # type: ignore[operator]
        valid.append(~(members & ~observed.unsqueeze(1)).any(0))
    return torch.cat(assign, 1).cpu().numpy(), torch.cat(valid, 1).cpu().numpy()


def latent_clustering(
    model: MultimodalVAE,
    data: MultimodalDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    n_init: int = 10,
    progress: bool = False,
) -> dict:
    """NMI and ARI of k-means on every subset's posterior means against the labels.

    Args:
        model: A trained model; its device must be ``device``.
        data: The rows to cluster (the test split in ``evaluate``); needs one class per row.
        batch_size: Rows per encoder pass.
        device: Where batches are sent.
        seed: Seed of k-means.
        n_init: k-means restarts per subset.
        progress: Show a progress bar (encoder batches, then one step per subset) on stderr.

    Returns:
        ``{"nmi": {"per_subset": {"m0": ..., "m0+m1": ...}, "by_size": {"1": ...}},
        "ari": {...}, "num_clusters": K}``; a subset with fewer than K observed rows is
        left out. A model with its own ``cluster`` method adds ``"model": {"nmi": ...,
        "ari": ..., "num_clusters": its K}``, its assignments scored likewise.

    Raises:
        DataError: without labels, with multi-label data (CelebA's attributes have no
            single class to cluster by) or with fewer than two classes.
    """
    if n_init < 1:
        raise UserError(f"n_init must be >= 1, got {n_init}", parameter="n_init")
    labels = require_labels(data, "clustering").cpu().numpy()
    if labels.ndim != 1:
        raise DataError(
            f"the clustering metric needs one class per row, and dataset {data.name!r} has "
            f"{labels.shape[1]} labels per row; leave clustering out of the metrics"
        )
    k = int(np.unique(labels).size)
    subsets, keys = all_subsets(model.names, device=model.device)
    nmi: dict[str, float] = {}
    ari: dict[str, float] = {}
    with progress_bar(data.num_batches(batch_size) + len(keys), "clustering", progress, unit="step") as bar:
        with torch.no_grad(), evaluating(model):
            means, valid = _subset_means(model, data, subsets, batch_size, device, bar)
        for index, key in enumerate(keys):
            rows = valid[index]
            if rows.sum() >= max(k, 2):
                nmi[key], ari[key] = cluster_scores(means[index][rows], labels[rows], seed=seed,
                                                    n_init=n_init, num_clusters=k)
            bar.update()
    out: dict = {"nmi": {"per_subset": nmi, "by_size": mean_by_size(nmi)},
                 "ari": {"per_subset": ari, "by_size": mean_by_size(ari)},
                 "num_clusters": k}
    if callable(getattr(model, "cluster", None)):
        with torch.no_grad(), evaluating(model):
            assigned, ok = _own_assignments(model, data, subsets, batch_size, device)
        own_nmi: dict[str, float] = {}
        own_ari: dict[str, float] = {}
        for index, key in enumerate(keys):
            rows = ok[index]
            if rows.sum() >= max(k, 2):
                own_nmi[key] = float(normalized_mutual_info_score(labels[rows], assigned[index][rows]))
                own_ari[key] = float(adjusted_rand_score(labels[rows], assigned[index][rows]))
        out["model"] = {"nmi": {"per_subset": own_nmi, "by_size": mean_by_size(own_nmi)},
                        "ari": {"per_subset": own_ari, "by_size": mean_by_size(own_ari)},
                        "num_clusters": int(getattr(model, "num_clusters", 0))}
    return out
