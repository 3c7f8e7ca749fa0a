"""DMVAE (Lee & Pavlovic 2021): the objective by hand, masking, the latent layout, CLI and round trip.

The contract suite (test_models.py) runs the recipe through the generic checks; here are
the properties specific to it: the loss against a hand computation in float64 (PoE of the
shared parts with the prior expert, self- and cross-modal reconstructions, KL terms, the
private KLs once in each of the row's 1 + |O| ELBOs),
zero gradient for masked entries, the posterior's private blocks, training from the
command line and a save/load round trip.
"""

from __future__ import annotations


import torch
from torch import Tensor

from helpers import LATENT, VECTORS, gaussian_log_prob, partial_mask, tiny_config, tiny_splits, vector_batch, write_tiny_npz
from omnivae.cli import main
from omnivae.methods.dmvae import DMVAEModel
from omnivae.models import build_model
from omnivae.train import TrainConfig, load_run, train

B, P = 5, 2


def vector_model(**options: object) -> tuple:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("dmvae", options={"private_dim": P, **options}), VECTORS)
    return model.double(), objective


def kl_to_standard_normal(loc: Tensor, scale: Tensor) -> Tensor:
    return 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)


def normal(shape: tuple[int, ...]) -> Tensor:
    return torch.empty(shape, dtype=torch.float64).normal_()


def test_objective_matches_a_hand_computation():
    model, objective = vector_model()
    objective.beta = 1.5
    x, mask = vector_batch(), partial_mask()
    kl_weight = 0.4
    torch.manual_seed(7)
    out = objective(model, x, mask, kl_weight)

    torch.manual_seed(7)
    enc = [model.encoders[m.name](x[m.name])[:2] for m in VECTORS]
    s_loc = [loc[:, :LATENT] for loc, _ in enc]
    s_scale = [scale[:, :LATENT] for _, scale in enc]
    p_loc = [loc[:, LATENT:] for loc, _ in enc]
    p_scale = [scale[:, LATENT:] for _, scale in enc]
    eps = normal((3, B, P))
    z_p = [p_loc[i] + p_scale[i] * eps[i] for i in range(3)]
    # PoE with the prior expert over the observed modalities of each row.
    precision = 1 + sum(mask[i, :, None] / s_scale[i] ** 2 for i in range(3))
    poe_scale = precision.rsqrt()
    poe_loc = sum(mask[i, :, None] * s_loc[i] / s_scale[i] ** 2 for i in range(3)) / precision
    sources = [(poe_loc, poe_scale)] + list(zip(s_loc, s_scale, strict=True))
    valid = [torch.ones(B, dtype=torch.bool)] + [mask[j] for j in range(3)]
    total = torch.zeros(B, dtype=torch.float64)
    w = 1.5 * kl_weight
    for (loc, scale), ok in zip(sources, valid, strict=True):
        z_s = loc + scale * normal((B, LATENT))
        rec = torch.zeros(B, dtype=torch.float64)
        for i, m in enumerate(VECTORS):
            dist = model.decoders[m.name](torch.cat([z_s, z_p[i]], -1)).base_dist
            rec = rec + mask[i] * gaussian_log_prob(x[m.name], dist.loc, dist.scale)
        total = total + ok * (rec - w * kl_to_standard_normal(loc, scale))
    # Every ELBO of the row (joint + one per observed source) holds the private KLs: 1 + |O| times.
    elbos = 1 + mask.sum(0)
    total = total - w * elbos * sum(mask[i] * kl_to_standard_normal(p_loc[i], p_scale[i]) for i in range(3))
    torch.testing.assert_close(out.loss, -total.sum() / B)


def test_masked_entries_get_zero_gradient_and_change_nothing():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    inputs = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    torch.manual_seed(1)
    loss = objective(model, inputs, mask).loss
    loss.backward()
    for i, m in enumerate(VECTORS):
        grad = inputs[m.name].grad
        assert grad is not None and bool((grad[~mask[i]] == 0).all()), m.name
        assert bool((grad[mask[i]] != 0).any()), m.name
    changed = {k: v.clone() for k, v in x.items()}
    changed["a"][1] += 5.0
    changed["b"][3] -= 3.0
    torch.manual_seed(1)
    assert torch.equal(objective(model, changed, mask).loss, loss.detach())


def test_posterior_blocks_and_decoder_inputs():
    model, _ = vector_model()
    model.eval()
    x = vector_batch()
    assert model.latent_dim == LATENT + 3 * P
    members = torch.zeros(3, B, dtype=torch.bool)
    members[1] = True  # condition on "b" alone
    mean = model.posterior(x, members).mean
    loc, scale = model.encoders["b"](x["b"])[:2]
    torch.testing.assert_close(mean[:, model.private_slice("b")], loc[:, LATENT:])
    assert bool((mean[:, model.private_slice("a")] == 0).all())  # the prior's mean
    # PoE with the prior expert of one expert: precision 1 + 1 / s^2.
    s_loc, s_scale = loc[:, :LATENT], scale[:, :LATENT]
    torch.testing.assert_close(mean[:, :LATENT], s_loc / s_scale**2 / (1 + 1 / s_scale**2))
    u = torch.arange(model.latent_dim, dtype=torch.float64)
    assert model.decoder_input("c", u).tolist() == [*range(LATENT), *range(LATENT + 2 * P, LATENT + 3 * P)]


def test_save_load_round_trip(tmp_path):
    config = tiny_config("dmvae", options={"private_dim": 3})
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, DMVAEModel) and loaded.model.private_dim == 3
    assert loaded.model_config == config
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_cli_trains_and_lists_the_method(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "data.npz", n=40)
    run = tmp_path / "run"
    argv = ["train", "--model", "dmvae", "--dataset", f"npz:{npz}", "--epochs", "2", "--set", "private_dim=3",
            "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "after 2 epoch(s)" in out and "rec_cross" in out
    assert isinstance(load_run(run).model, DMVAEModel)
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dmvae "))
    assert "Lee & Pavlovic" in line
    bad = argv[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("private_dim=3")] = "private_dim=0"
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "private_dim" in err[0] and not (tmp_path / "bad").exists()
