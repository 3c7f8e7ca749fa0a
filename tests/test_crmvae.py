"""CRMVAE: its objective by hand in float64, masking, the command line and a save/load round trip.

The contract suite (test_models.py, test_inference_hook.py) runs ``crmvae`` through every
generic check because it is in ``MODELS``; here are the properties specific to it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from helpers import MODALITIES, NAMES, VECTORS, tiny_batch, tiny_config, tiny_splits, vector_batch, write_tiny_npz
from omnivae.aggregators import ProductOfExperts
from omnivae.cli import main
from omnivae.methods.crmvae import CRMVAELoss
from omnivae.models import MODELS, build_model
from omnivae.train import TrainConfig, load_run, train
from omnivae.train.checkpoint import published_checkpoint

B = 5


def kl_diag(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL between diagonal Gaussians, written out independently of the library."""
    return 0.5 * (var_q / var_p + (mu_p - mu_q) ** 2 / var_p - 1 + var_p.log() - var_q.log()).sum(-1)


def test_recipe_is_registered_with_its_paper_and_a_product_without_prior_expert():
    recipe = MODELS["crmvae"]
    assert "Suzuki & Matsuo" in recipe.reference
    model, objective = build_model(tiny_config("crmvae"), VECTORS)
    assert isinstance(objective, CRMVAELoss)
    assert type(model.aggregator) is ProductOfExperts and not model.aggregator.prior_expert
    swapped, _ = build_model(tiny_config("crmvae", aggregator="wb"), VECTORS)
    assert type(swapped.aggregator) is not ProductOfExperts


@pytest.mark.parametrize("mask_kind", ["full", "partial"])
def test_crmvae_loss_matches_a_hand_computation(mask_kind):
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("crmvae", rescale_likelihoods=True, beta=1.7), VECTORS)
    model = model.double()
    x = vector_batch(seed=1)
    mask = torch.ones(3, B, dtype=torch.bool)
    if mask_kind == "partial":  # row 1 misses a; row 3 observes only a
        mask[0, 1] = False
        mask[1, 3] = mask[2, 3] = False
    torch.manual_seed(5)
    out = objective(model, x, mask, kl_weight=0.5)

    with torch.no_grad():
        encoded = [model.encoders[n](x[n]) for n in model.names]
        loc_e = torch.stack([e[0] for e in encoded])
        var_e = torch.stack([e[1] for e in encoded]) ** 2
        m = mask.unsqueeze(-1).double()
        var = 1 / (m / var_e).sum(0)  # product of the observed experts, no prior expert
        loc = (m * loc_e / var_e).sum(0) * var
        # The objective draws the joint sample first, then one sample per modality, in order.
        torch.manual_seed(5)
        z = loc + var.sqrt() * torch.randn(B, loc.shape[-1], dtype=torch.float64)
        z_uni = [loc_e[j] + var_e[j].sqrt() * torch.randn(B, loc.shape[-1], dtype=torch.float64) for j in range(3)]
        weights = model.likelihood_weights
        rec = torch.zeros(B, dtype=torch.float64)
        for j, name in enumerate(model.names):
            log_p = model.decoders[name](z).log_prob(x[name]) + model.decoders[name](z_uni[j]).log_prob(x[name])
            rec = rec + torch.where(mask[j], weights[j] * log_p, 0.0)
        kl = kl_diag(loc, var, torch.zeros_like(loc), torch.ones_like(var))
        kl_uni = sum(torch.where(mask[j], kl_diag(loc, var, loc_e[j], var_e[j]), 0.0) for j in range(3))
        count = mask.sum(0).double()
        value = rec / (2 * (count + 1)) - 1.7 * 0.5 * (kl + kl_uni) / (count + 1)
        loss = -value.mean()
    if mask_kind == "partial":
        assert count.tolist() == [3, 2, 3, 1, 3]
    assert weights.tolist() == pytest.approx([4 / 3, 1.0, 2.0])
    torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["kl"], kl.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["kl_unimodal"], kl_uni.mean(), rtol=1e-12, atol=1e-12)


def test_a_row_with_one_view_is_half_its_unimodal_elbo_with_doubled_reconstruction():
    """M = 1: q(z | X) = q(z | x_m), its own KL vanishes, L = (rec(z) + rec(z_m)) / 4 - beta KL / 2."""
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("crmvae"), VECTORS)
    model = model.double()
    x = vector_batch(seed=2)
    mask = torch.zeros(3, B, dtype=torch.bool)
    mask[1] = True
    torch.manual_seed(3)
    out = objective(model, x, mask)
    assert out.terms["kl_unimodal"].abs().item() < 1e-12
    with torch.no_grad():
        loc, scale, _ = model.encoders["b"](x["b"])
        torch.manual_seed(3)
        z1 = loc + scale * torch.randn_like(loc)
        torch.randn_like(loc)  # the sample of q(z | x_a), drawn but never decoded
        z2 = loc + scale * torch.randn_like(loc)
        rec = model.decoders["b"](z1).log_prob(x["b"]) + model.decoders["b"](z2).log_prob(x["b"])
        kl = kl_diag(loc, scale**2, torch.zeros_like(loc), torch.ones_like(loc))
    torch.testing.assert_close(out.loss.detach(), -(rec / 4 - kl / 2).mean(), rtol=1e-12, atol=1e-12)


def test_kl_weight_zero_leaves_the_reconstructions_alone():
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("crmvae"), MODALITIES)
    x, mask = tiny_batch(6), torch.ones(3, 6, dtype=torch.bool)
    torch.manual_seed(2)
    silent = objective(model, x, mask, kl_weight=0.0)
    expected = (silent.terms["rec"] + silent.terms["rec_unimod"]) / (2 * (3 + 1))
    torch.testing.assert_close(silent.loss, expected, rtol=1e-6, atol=1e-6)
    torch.manual_seed(2)
    assert objective(model, x, mask, kl_weight=1.0).loss > silent.loss


@pytest.mark.parametrize("masked", NAMES)
def test_a_modality_masked_everywhere_gets_zero_gradient_in_its_networks(masked):
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("crmvae"), MODALITIES)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[NAMES.index(masked)] = False
    torch.manual_seed(1)
    loss = objective(model, tiny_batch(6), mask).loss
    assert torch.isfinite(loss)
    loss.backward()
    checked = 0
    for pname, param in model.named_parameters():
        if pname.startswith((f"encoders.{masked}.", f"decoders.{masked}.")):
            checked += 1
            assert param.grad is None or param.grad.eq(0).all(), pname
    assert checked > 0
    others = [p.grad for n, p in model.named_parameters() if n.startswith(("encoders.", "decoders.")) and masked not in n]
    assert any(g is not None and g.ne(0).any() for g in others)


def test_training_then_loading_gives_back_the_same_model(tmp_path):
    config = tiny_config("crmvae")
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(observed=0.7), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.objective, CRMVAELoss)
    trained = trainer.model.state_dict()
    assert trained.keys() == loaded.model.state_dict().keys()
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    x, mask = tiny_batch(6), torch.ones(3, 6, dtype=torch.bool)
    mask[0, :3] = False
    loaded.model.eval()
    trainer.model.eval()
    with torch.no_grad():
        a = loaded.model.encode(x, mask).mean
        b = trainer.model.encode(x, mask).mean
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_from_the_command_line_and_bad_option(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "tiny.npz", n=40)
    flags = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--epochs", "2",
             "--no-progress", "--device", "cpu"]
    out = tmp_path / "run"
    assert main(["train", "--model", "crmvae", "--dataset", f"npz:{npz}", *flags, "--out", str(out)]) in (0, None)
    history = json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    assert json.loads((out / "config.json").read_text())["model"]["model"] == "crmvae"
    capsys.readouterr()
    # CRMVAE declares no options: a --set key is a user mistake, one line, exit 2, nothing written.
    bad = tmp_path / "bad"
    argv = ["train", "--model", "crmvae", "--dataset", f"npz:{npz}", *flags, "--set", "alpha=0.1", "--out", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "alpha" in err and "Traceback" not in err
    assert not bad.exists()
