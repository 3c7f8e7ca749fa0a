"""Generation metrics: classifiers, coherence and Frechet distances.

The coherence and Frechet tests use stand-in models built from the real
:class:`MultimodalVAE` with hand-made encoders and decoders: the "perfect" one encodes a
one-hot label and decodes it unchanged, so its generations carry the label exactly; the
"random" one decodes noise. Classifiers that read the one-hot vector directly judge them,
so the metric code runs unchanged and the expected scores are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

import omnivae.metrics.classifiers as classifiers_module
from helpers import MODALITIES, tiny_config, tiny_dataset
from omnivae.aggregators import build_aggregator
from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import DataError, UserError
from omnivae.metrics.classifiers import (
    ConvClassifier,
    MLPClassifier,
    ModalityClassifiers,
    balanced_accuracy,
    build_classifier,
    classifier_cache_key,
    get_classifiers,
    mean_average_precision,
)
from omnivae.metrics.coherence import conditional_coherence, joint_coherence
from omnivae.metrics.frechet import generation_frechet, load_inception_features
from omnivae.models import MultimodalVAE, build_model
from omnivae.priors import PRIORS

K = 4  # classes of the stand-in data
NAMES = ["m0", "m1", "m2"]


# -- stand-ins ------------------------------------------------------------------------------------
class CopyEncoder(nn.Module):
    """q(z | x_m) = N(x_m, 0.01^2 I): the latent is the modality itself."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, None]:
        return x, torch.full_like(x, 0.01), None


class CopyDecoder(nn.Module):
    """p(x_m | z) with mean z: generations repeat the latent."""

    def forward(self, z: Tensor) -> Independent:
        return Independent(Normal(z, 1.0), 1)


class NoiseDecoder(nn.Module):
    """p(x_m | z) with a mean that ignores z."""

    def forward(self, z: Tensor) -> Independent:
        return Independent(Normal(torch.randn_like(z), 1.0), 1)


class Reader(nn.Module):
    """A 'classifier' whose logits and features are its input."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        return self.gain * x

    def features(self, x: Tensor) -> Tensor:
        return x


def stand_in(decoder: type[nn.Module], dim: int = K) -> MultimodalVAE:
    specs = [ModalitySpec(n, (dim,), "vector") for n in NAMES]
    return MultimodalVAE(
        specs,
        nn.ModuleDict({n: CopyEncoder() for n in NAMES}),
        nn.ModuleDict({n: decoder() for n in NAMES}),
        build_aggregator("wb"),  # the barycenter of identical one-hot experts is that one-hot
        PRIORS["normal"](dim),
    )


def readers(multilabel: bool = False, gain: float = 1.0) -> ModalityClassifiers:
    return ModalityClassifiers({n: Reader(gain) for n in NAMES}, {n: 1.0 for n in NAMES}, K, multilabel)


def onehot_data(n: int, seed: int = 0, observed: float = 1.0) -> MultimodalDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=gen)
    x = nn.functional.one_hot(labels, K).float()
    masks = {}
    if observed < 1:
        stacked = torch.rand(len(NAMES), n, generator=gen) < observed
        stacked[0] |= ~stacked.any(0)
        masks = {name: stacked[i].clone() for i, name in enumerate(NAMES)}
    data = {n_: torch.where(masks[n_][:, None], x, 0.0) if masks else x.clone() for n_ in NAMES}
    return MultimodalDataset(
        tuple(ModalitySpec(n_, (K,), "vector") for n_ in NAMES), data, masks, labels, name="onehot"
    )


def separable_data(n: int, seed: int) -> MultimodalDataset:
    """Three classes: a bright block whose position is the class, and a noisy one-hot vector."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    img = (torch.rand(n, 1, 28, 28, generator=gen) * 60).to(torch.uint8)
    for c in range(3):
        img[labels == c, :, 9 * c : 9 * c + 9, 4:24] = 255
    vec = 3 * nn.functional.one_hot(labels, 3).float() + 0.3 * torch.randn(n, 3, generator=gen)
    specs = (ModalitySpec("img", (1, 28, 28), "image"), ModalitySpec("vec", (3,), "vector"))
    return MultimodalDataset(specs, {"img": img, "vec": vec}, labels=labels, name="separable")


# -- balanced accuracy -----------------------------------------------------------------------------
def test_balanced_accuracy_perfect_constant_and_imbalanced() -> None:
    target = torch.arange(100) % 10
    assert balanced_accuracy(target, target, 10) == 1.0
    assert balanced_accuracy(torch.zeros(100, dtype=torch.long), target, 10) == pytest.approx(0.1)
    # 6 of class 0 (4 right), 2 of class 1 (1 right), class 2 absent: (4/6 + 1/2) / 2.
    target = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 0, 1, 2, 1, 0])
    assert balanced_accuracy(pred, target, 3) == pytest.approx((4 / 6 + 1 / 2) / 2)
    assert math.isnan(balanced_accuracy(pred[:0], target[:0], 3))


def test_mean_average_precision_matches_hand_computation() -> None:
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    # label 0: ranks 0.9(+) 0.8(-) 0.3(+) -> AP = (1 + 2/3) / 2; label 1: 0.9(-) 0.7(+) -> 1/2.
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert mean_average_precision(scores, targets.clone().fill_(0) + torch.tensor([1, 0])) == pytest.approx(1.0)


# -- coherence -------------------------------------------------------------------------------------
def test_coherence_of_a_perfect_model_is_one_everywhere() -> None:
    data = onehot_data(300)
    result = conditional_coherence(stand_in(CopyDecoder), data, readers(), batch_size=64)
    expected = {"m0": ["m1", "m2"], "m1": ["m0", "m2"], "m2": ["m0", "m1"],
                "m0+m1": ["m2"], "m0+m2": ["m1"], "m1+m2": ["m0"]}
    assert {k: sorted(v) for k, v in result["per_subset"].items()} == expected
    assert list(result["per_subset"]) == list(expected)  # ordered by subset size
    assert all(score == 1.0 for scores in result["per_subset"].values() for score in scores.values())
    assert result["by_size"] == {"1": 1.0, "2": 1.0}
    with_self = conditional_coherence(stand_in(CopyDecoder), data, readers(), include_self=True)
    assert sorted(with_self["per_subset"]["m0+m1+m2"]) == NAMES
    assert with_self["by_size"] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert joint_coherence(stand_in(CopyDecoder), readers(), num_samples=500, batch_size=128) == 1.0
    json.dumps(result)


def test_coherence_of_random_generations_is_chance() -> None:
    data = onehot_data(4000, seed=1)
    result = conditional_coherence(stand_in(NoiseDecoder), data, readers(), batch_size=1000)
    for scores in result["per_subset"].values():
        for score in scores.values():
            assert abs(score - 1 / K) < 0.04
    # Three independent uniform predictions agree with probability 1/K^2.
    joint = joint_coherence(stand_in(NoiseDecoder), readers(), num_samples=4000, batch_size=1000)
    assert abs(joint - 1 / K**2) < 0.03


def test_coherence_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    data = onehot_data(200, seed=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = conditional_coherence(stand_in(NoiseDecoder), data, readers(), seed=5)
    after = torch.rand(1)
    second = conditional_coherence(stand_in(NoiseDecoder), data, readers(), seed=5)
    assert torch.equal(before, after)
    assert first == second


def test_coherence_counts_only_rows_whose_subset_is_observed() -> None:
    data = onehot_data(400, seed=3, observed=0.6)
    result = conditional_coherence(stand_in(CopyDecoder), data, readers(), batch_size=100)
    # Unobserved modalities hold zeros; conditioning on them would give argmax 0, not the label.
    assert all(score == 1.0 for scores in result["per_subset"].values() for score in scores.values())
    assert len(result["per_subset"]) == 6


def test_multilabel_coherence_is_mean_average_precision() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(600, K, generator=gen) < 0.4).long()
    x = 2.0 * labels.float() - 1  # +1 for a present attribute, -1 for an absent one
    data = MultimodalDataset(
        tuple(ModalitySpec(n, (K,), "vector") for n in NAMES), {n: x.clone() for n in NAMES}, labels=labels
    )
    perfect = conditional_coherence(stand_in(CopyDecoder), data, readers(multilabel=True, gain=5.0))
    assert perfect["by_size"] == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    noisy = conditional_coherence(stand_in(NoiseDecoder), data, readers(multilabel=True), multilabel=True)
    prevalence = float(labels.float().mean())
    for scores in noisy["per_subset"].values():
        for score in scores.values():
            assert abs(score - prevalence) < 0.1  # a random ranking's AP is about the positive rate


def test_metrics_need_labels() -> None:
    data = onehot_data(20)
    data.labels = None
    with pytest.raises(DataError, match="coherence"):
        conditional_coherence(stand_in(CopyDecoder), data, readers())
    with pytest.raises(DataError, match="classifier"):
        get_classifiers("onehot", data, data, epochs=1, progress=False)


# -- Frechet distance ------------------------------------------------------------------------------
def _exact_fd(real: np.ndarray, fake: np.ndarray) -> float:
    """The textbook FD from whole-set float64 moments, with scipy's sqrtm."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = np.cov(real.T), np.cov(fake.T)
    return float(((real.mean(0) - fake.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy_linalg.sqrtm(c1 @ c2).real))


def test_generation_frechet_equals_the_exact_distance_of_the_feature_sets() -> None:
    """torchmetrics' FD with omnivae's features equals the whole-set formula (float64),
    over batches, masks (unobserved rows left out) and the per-subset sets."""
    base = onehot_data(300, seed=2, observed=0.8)
    noise = torch.Generator().manual_seed(5)
    x = {n: (v + 0.3 * torch.randn(v.shape, generator=noise)) * base.masks[n][:, None] for n, v in base.data.items()}
    data = MultimodalDataset(base.modalities, x, base.masks, base.labels, name="noisy")  # full-rank features
    model = stand_in(CopyDecoder)
    lift = torch.randn(K, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    feature_fn = lambda name, x: torch.tanh(x.to(torch.float64) @ lift)  # noqa: E731
    result = generation_frechet(model, data, None, feature_fn=feature_fn, batch_size=64, seed=3)
    # The copy model decodes q(z | x_S)'s sample; rebuild the sets the metric saw.
    with torch.no_grad():
        from omnivae.metrics.common import all_subsets

        subsets, keys = all_subsets(NAMES)
        torch.manual_seed(3)
        real = {n: [] for n in NAMES}
        fake = {}
        for batch in data.batches(64):
            observed = model.stack_mask(batch.x, batch.mask)
            z = model.subset_posteriors(batch.x, subsets).sample()
            model.prior().sample(torch.Size([len(batch)]))  # the prior draw, in the same order
            for m, name in enumerate(NAMES):
                real[name].append(feature_fn(name, batch.x[name][observed[m]]))
            for s, row in enumerate(subsets):
                valid = observed[row].all(0)
                for m, name in enumerate(NAMES):
                    if not row[m]:
                        fake.setdefault((keys[s], name), []).append(feature_fn(name, z[s][valid]))
    for (key, name), parts in fake.items():
        expected = _exact_fd(torch.cat(real[name]).numpy(), torch.cat(parts).numpy())
        assert result["conditional"][key][name] == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_generation_frechet_without_torchmetrics_is_one_clear_line(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torchmetrics(name, *args, **kwargs):
        if name.startswith("torchmetrics"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchmetrics)
    with pytest.raises(UserError, match=r"needs torchmetrics.*pip install 'torchmetrics>=1.0'"):
        generation_frechet(stand_in(CopyDecoder), onehot_data(20, seed=0), readers())


def test_generation_frechet_separates_faithful_from_random_generations() -> None:
    data = onehot_data(600, seed=4)
    good = generation_frechet(stand_in(CopyDecoder), data, readers(), batch_size=200)
    bad = generation_frechet(stand_in(NoiseDecoder), data, readers(), batch_size=200)
    assert sorted(good["conditional"]) == ["m0", "m0+m1", "m0+m2", "m1", "m1+m2", "m2"]
    assert sorted(good["conditional"]["m0+m1"]) == ["m2"]
    assert sorted(good["unconditional"]) == NAMES
    assert set(good["conditional_by_size"]) == {"1", "2"}
    for size, value in good["conditional_by_size"].items():
        assert value < 0.01 < 1.0 < bad["conditional_by_size"][size]
    # Prior samples N(0, I) are far from one-hot vectors, whatever the decoder.
    assert all(v > 1.0 for v in good["unconditional"].values())
    only = generation_frechet(stand_in(CopyDecoder), data, None, feature_fn=lambda n, x: 2 * x, targets=["m1"])
    assert list(only["unconditional"]) == ["m1"] and sorted(only["conditional"]) == ["m0", "m0+m2", "m2"]
    json.dumps(good)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_inception_loader_never_downloads_and_resizes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_inception_features(str(tmp_path / "missing.pt"))

    class Probe(nn.Module):
        """Reports the channel means and the spatial size it was given."""

        def forward(self, x: Tensor) -> Tensor:
            size = torch.full((x.shape[0], 1), float(x.shape[-1]))
            return torch.cat([x.mean((2, 3)), size], 1)

    path = tmp_path / "probe.pt"
    torch.jit.script(Probe()).save(str(path))
    features = load_inception_features(str(path), batch_size=3)
    out = features(torch.full((5, 1, 28, 28), 0.75))
    assert out.shape == (5, 4)
    assert torch.allclose(out[:, :3], torch.full((5, 3), 0.5))  # gray repeated, [0, 1] -> [-1, 1]
    assert torch.all(out[:, 3] == 299)


# -- classifiers -----------------------------------------------------------------------------------
def test_classifier_architectures() -> None:
    conv = build_classifier(ModalitySpec("m0", (3, 28, 28), "image"), 10)
    assert isinstance(conv, ConvClassifier)
    assert conv.body[7].in_features == 980
    assert conv(torch.rand(2, 3, 28, 28)).shape == (2, 10)
    assert conv.features(torch.rand(2, 3, 28, 28)).shape == (2, 128)
    mlp = build_classifier(ModalitySpec("v", (8, 5), "categorical"), 3)
    assert isinstance(mlp, MLPClassifier)
    assert mlp(torch.rand(2, 8, 5)).shape == (2, 3) and mlp.features(torch.rand(2, 8, 5)).shape == (2, 128)


def test_classifiers_learn_cache_and_retrain_when_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = separable_data(240, 0), separable_data(60, 1)
    options = dict(epochs=6, batch_size=32, cache=tmp_path, progress=False)
    first = get_classifiers("separable", train, test, **options)
    assert all(acc >= 0.9 for acc in first.test_accuracy.values()), first.test_accuracy
    batch = test.batch(torch.arange(60))
    assert (first.predict("img", batch.x["img"]) == test.labels).float().mean() >= 0.9
    assert first.features("vec", batch.x["vec"]).shape == (60, 128)

    calls = []
    real_train = classifiers_module.train_classifiers

    def refuse(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(classifiers_module, "train_classifiers", refuse)
    second = get_classifiers("separable", train, test, **options)
    assert second.test_accuracy == first.test_accuracy
    for name in first.models:
        a, b = first.models[name].state_dict(), second.models[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not calls

    folder = next((tmp_path / "classifiers").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "weights.safetensors"]
    (folder / "weights.safetensors").write_bytes(b"not a safetensors file")

    def count(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(classifiers_module, "train_classifiers", count)
    with pytest.warns(UserWarning, match="unusable"):
        third = get_classifiers("separable", train, test, **options)
    assert calls == [1]
    assert third.test_accuracy == first.test_accuracy  # the same seed trains the same weights


def test_cache_key_follows_the_data(tmp_path: Path) -> None:
    train, test = separable_data(30, 0), separable_data(12, 1)
    key = classifier_cache_key("separable", train, test, epochs=1, batch_size=8, seed=0)
    assert key == classifier_cache_key("separable", train, test, epochs=1, batch_size=8, seed=0)
    changed = separable_data(30, 0)
    changed.labels = changed.labels.roll(1)
    assert key != classifier_cache_key("separable", changed, test, epochs=1, batch_size=8, seed=0)
    assert key != classifier_cache_key("separable", train, test, epochs=2, batch_size=8, seed=0)
    npz = tmp_path / "my data.npz"
    npz.write_bytes(b"1234")
    npz_key = classifier_cache_key(f"npz:{npz}", train, test, epochs=1, batch_size=8, seed=0)
    assert npz_key.startswith("npz-my-data-") and "/" not in npz_key
    npz.write_bytes(b"12345")
    assert npz_key != classifier_cache_key(f"npz:{npz}", train, test, epochs=1, batch_size=8, seed=0)


def test_metrics_run_on_a_real_model_with_masked_images(tmp_path: Path) -> None:
    train, test = tiny_dataset(48, seed=0, observed=0.7), tiny_dataset(24, seed=9, observed=0.7)
    clf = get_classifiers("tiny", train, test, epochs=1, batch_size=16, cache=tmp_path, progress=False)
    model, _ = build_model(tiny_config("mopoe"), MODALITIES)
    coherence = conditional_coherence(model, test, clf, batch_size=10)
    assert set(coherence["by_size"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in coherence["per_subset_mean"].values())
    assert 0.0 <= joint_coherence(model, clf, num_samples=50, batch_size=20) <= 1.0
    fd = generation_frechet(model, test, clf, batch_size=10)
    assert set(fd["unconditional"]) == {"img", "vec", "bits"}
    assert all(math.isfinite(v) and v >= 0 for v in fd["unconditional"].values())
    assert model.training  # restored after evaluation
