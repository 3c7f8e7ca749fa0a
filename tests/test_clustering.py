"""The latent clustering metric: k-means on posterior means against the labels (NMI, ARI)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from omnivae.cli import main
from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import DataError
from omnivae.metrics.clustering import cluster_scores, latent_clustering
from test_evaluate import EVAL, TINY, _isolated, npz, one_error_line  # noqa: F401  (fixtures)
from test_metrics_inference import identity_model


def clustered(n: int, seed: int, shuffle: bool = False, observed: float = 1.0) -> MultimodalDataset:
    """Two 4-d modalities, each a scaled one-hot of a 3-class label plus small noise: the
    identity model's posterior means fall in three tight, well-separated clusters."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    signal = 4.0 * nn.functional.one_hot(labels, 4).float()
    data = {name: signal + 0.1 * torch.randn(n, 4, generator=gen) for name in ("a", "b")}
    masks = {}
    if observed < 1:
        masks = {"a": torch.rand(n, generator=gen) < observed, "b": torch.ones(n, dtype=torch.bool)}
        data["a"] = data["a"] * masks["a"][:, None]
    if shuffle:
        labels = torch.randint(0, 3, (n,), generator=gen)
    specs = tuple(ModalitySpec(name, (4,), "vector") for name in ("a", "b"))
    return MultimodalDataset(modalities=specs, data=data, masks=masks, labels=labels, name="clustered")


def test_perfectly_clustered_latent_scores_one():
    out = latent_clustering(identity_model(["a", "b"], 4), clustered(150, 0), batch_size=64)
    assert set(out["nmi"]["per_subset"]) == {"a", "b", "a+b"} == set(out["ari"]["per_subset"])
    assert set(out["nmi"]["by_size"]) == {"1", "2"} and out["num_clusters"] == 3
    for table in (out["nmi"]["per_subset"], out["ari"]["per_subset"]):
        assert all(v == pytest.approx(1.0) for v in table.values())
    json.dumps(out)


def test_random_labels_score_about_zero():
    out = latent_clustering(identity_model(["a", "b"], 4), clustered(600, 1, shuffle=True), batch_size=128)
    assert all(abs(v) < 0.03 for v in out["nmi"]["per_subset"].values())
    assert all(abs(v) < 0.03 for v in out["ari"]["per_subset"].values())


def test_scores_are_invariant_to_renaming_the_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 5))
    labels = rng.integers(0, 4, size=200)
    x = centres[labels] + rng.normal(size=(200, 5))  # overlapping: scores strictly inside (0, 1)
    base = cluster_scores(x, labels, seed=0)
    renamed = cluster_scores(x, np.array([7, 2, 9, 0])[labels], seed=0)
    assert 0.2 < base[0] < 1.0 and base == pytest.approx(renamed, abs=1e-12)


def test_partially_observed_subsets_use_their_observed_rows_only():
    data = clustered(200, 2, observed=0.5)
    out = latent_clustering(identity_model(["a", "b"], 4), data, batch_size=64)
    # Rows without "a" hold zeros there: were they used, "a" would get a fourth cluster at 0.
    assert out["nmi"]["per_subset"]["a"] == pytest.approx(1.0)


def test_multilabel_and_unlabelled_data_are_refused():
    data = clustered(30, 3)
    data.labels = torch.zeros(30, 5)
    with pytest.raises(DataError, match="one class per row"):
        latent_clustering(identity_model(["a", "b"], 4), data)
    data.labels = None
    with pytest.raises(DataError, match="labels"):
        latent_clustering(identity_model(["a", "b"], 4), data)


def test_evaluate_clustering_end_to_end(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "mwb", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--metrics", "clustering,probe", *EVAL]) == 0
    results = json.loads((run / "eval.json").read_text())
    nmi = results["clustering"]["nmi"]["per_subset"]
    assert len(nmi) == 7 and all(-1e-9 <= v <= 1.0 for v in nmi.values())
    assert results["settings"]["clustering"]["num_test"] == 1000
    report = (run / "report.md").read_text()
    assert "Latent clustering" in report and "ARI" in report
    assert "figures/metrics_vs_inputs.png" in results["figures"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--metrics", "clustering,kmeans", *EVAL]) == 2
    assert "kmeans" in one_error_line(capsys)


def test_degenerate_features_score_zero_without_a_kmeans_warning():
    """A latent that is the same point for every row (a subset whose posterior is the
    prior) carries no information: NMI and ARI are 0, and k-means' warning about fewer
    distinct points than clusters does not reach the user; two distinct points that split
    the classes exactly still score 1."""
    labels = np.repeat(np.arange(4), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cluster_scores(np.zeros((20, 3)), labels) == (0.0, 0.0)
        halves = np.repeat(np.array([[0.0], [1.0]]), 10, axis=0)
        nmi, ari = cluster_scores(halves, labels // 2, num_clusters=4)
    assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
