"""Corrupted modalities (``DATASET+noise=MODALITY``): noise of the right kind, shape and
range, nothing else changed, the same draws on every load, and a run that keeps them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_splits, write_tiny_npz

from omnivae.cli import main
from omnivae.data import load_dataset
from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.corrupt import corrupt_with_noise, split_corruption
from omnivae.errors import DataError
from omnivae.train import load_run


def test_the_name_splits_into_dataset_and_modalities():
    assert split_corruption("mfeat+noise=fou") == ("mfeat", ["fou"])
    assert split_corruption("npz:/a+b/x.npz+noise=img,vec") == ("npz:/a+b/x.npz", ["img", "vec"])
    assert split_corruption("polymnist") == ("polymnist", [])
    for bad in ("mfeat+noise=", "+noise=fou", "mfeat+noise=a/b", "mfeat+noise=a,,b", "mfeat+noise=a,a"):
        with pytest.raises(DataError):
            split_corruption(bad)


def test_only_the_named_modality_changes_and_keeps_shape_dtype_and_range():
    clean = tiny_splits(n_train=400, n_test=100)
    noisy = corrupt_with_noise(clean, ["img", "bits"], "tiny")
    for split in ("train", "test"):
        a, b = getattr(clean, split), getattr(noisy, split)
        assert torch.equal(a.values("vec"), b.values("vec"))
        assert torch.equal(a.labels, b.labels)
        for name in a.modality_names:
            assert torch.equal(a.masks[name], b.masks[name])
        for name in ("img", "bits"):
            before, after = a.values(name), b.values(name)
            assert after.shape == before.shape and after.dtype == before.dtype
            assert not torch.equal(after, before)
    image = noisy.train.values("img")
    assert int(image.min()) == 0 and int(image.max()) == 255  # uniform over the uint8 range
    assert abs(float(image.float().mean()) - 127.5) < 2.0
    # Bernoulli at each feature's training rate; independent of the label it used to follow
    rate = clean.train.values("bits").float().mean(0)
    assert torch.allclose(noisy.train.values("bits").float().mean(0), rate, atol=0.1)
    labels = noisy.train.labels.float()
    corner = noisy.train.values("img")[:, :, :8, :8].float().mean((2, 3))  # the label-dependent corner, before
    for values in (noisy.train.values("bits").float(), corner):
        corr = torch.corrcoef(torch.cat([labels[None], values.T]))[0, 1:]
        assert float(corr.abs().max()) < 0.2


def test_vector_noise_matches_each_features_mean_and_std():
    spec = ModalitySpec("v", (3,), "vector")
    train = torch.tensor([[0.0, 10.0, -5.0]]) + torch.tensor([[1.0, 0.1, 3.0]]) * torch.randn(20_000, 3)
    splits = DatasetSplits(*(MultimodalDataset((spec, ModalitySpec("w", (1,), "vector")),
                                               {"v": x, "w": torch.zeros(len(x), 1)}) for x in (train, train[:10])))
    noisy = corrupt_with_noise(splits, ["v"], "toy").train.values("v")
    assert torch.allclose(noisy.mean(0), train.mean(0), atol=0.05)
    assert torch.allclose(noisy.std(0), train.std(0), rtol=0.03)
    assert float(torch.corrcoef(torch.stack([noisy[:, 0], train[:, 0]]))[0, 1]) < 0.05


def test_categorical_indices_and_shared_rows_are_replaced():
    text = ModalitySpec("text", (4, 5), "categorical")
    image = ModalitySpec("img", (1, 2, 2), "image")
    stored = torch.randint(0, 256, (3, 1, 2, 2), dtype=torch.uint8)
    rows = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    data = MultimodalDataset((text, image), {"text": torch.randint(0, 5, (8, 4)), "img": stored}, rows={"img": rows})
    noisy = corrupt_with_noise(DatasetSplits(data, data), ["text"], "toy")
    assert noisy.train.values("text").shape == (8, 4) and int(noisy.train.values("text").max()) < 5
    assert torch.equal(noisy.train.values("img"), data.values("img"))  # the clean one keeps its rows
    noisy = corrupt_with_noise(DatasetSplits(data, data), ["img"], "toy")
    assert "img" not in noisy.train.rows and noisy.train.values("img").shape == (8, 1, 2, 2)
    batch = noisy.train.batch(torch.arange(8))
    assert batch.x["text"].shape == (8, 4, 5)


def test_unknown_or_every_modality_is_refused():
    clean = tiny_splits(n_train=16, n_test=8)
    with pytest.raises(DataError, match="cannot corrupt 'audio'"):
        corrupt_with_noise(clean, ["audio"], "tiny")
    with pytest.raises(DataError, match="leave one clean"):
        corrupt_with_noise(clean, ["img", "vec", "bits"], "tiny")


def test_loads_are_identical_and_a_run_keeps_its_corrupted_data(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))
    npz = write_tiny_npz(tmp_path / "d.npz", n=40)
    name = f"npz:{npz}+noise=vec"
    first, second, clean = load_dataset(name), load_dataset(name), load_dataset(f"npz:{npz}")
    assert torch.equal(first.train.values("vec"), second.train.values("vec"))
    assert torch.equal(first.test.values("vec"), second.test.values("vec"))
    assert not torch.equal(first.train.values("vec"), clean.train.values("vec"))
    assert not torch.equal(first.train.values("vec")[:8], first.test.values("vec")[:8])  # fresh draws for test
    assert np.array_equal(first.train.values("img").numpy(), clean.train.values("img").numpy())
    run = tmp_path / "run"
    argv = ["train", "--model", "wb", "--dataset", name, "--backbone", "mlp", "--hidden", "8", "--latent-dim", "2",
            "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    assert load_run(run).dataset_name == name
    saved = json.loads((run / "config.json").read_text())["dataset"]
    assert saved["name"] == name
    assert main(["evaluate", str(run), "--metrics", "recon", "--device", "cpu", "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0  # same data: no refusal


def test_rows_where_the_modality_is_missing_keep_their_values_and_do_not_bias_the_noise():
    """Noise goes only where the modality is observed, drawn from the statistics of the
    observed training rows: the zeros stored for missing rows neither move nor shift it."""
    spec = ModalitySpec("v", (2,), "vector")
    n = 20_000
    values = torch.tensor([[10.0, -4.0]]) + torch.randn(n, 2)
    observed = torch.arange(n) % 2 == 0
    values[~observed] = 0.0
    data = MultimodalDataset((spec, ModalitySpec("w", (1,), "vector")), {"v": values, "w": torch.zeros(n, 1)},
                             masks={"v": observed, "w": torch.ones(n, dtype=torch.bool)})
    noisy = corrupt_with_noise(DatasetSplits(data, data), ["v"], "toy").train.values("v")
    assert torch.equal(noisy[~observed], values[~observed])
    assert torch.allclose(noisy[observed].mean(0), torch.tensor([10.0, -4.0]), atol=0.05)
    assert torch.allclose(noisy[observed].std(0), torch.ones(2), rtol=0.05)
