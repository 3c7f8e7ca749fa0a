"""TELBO (Vedantam et al. 2018): the triple ELBO by hand, masking, stages, CLI and round trip.

The contract suite (test_models.py) runs the recipe through the generic checks; here are
the properties specific to it: both stages' losses against a hand computation in float64,
zero gradient for masked entries, which parameters each stage trains (the real trainer),
training from the command line and a save/load round trip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from helpers import MODALITIES, VECTORS, gaussian_log_prob, partial_mask, tiny_config, tiny_splits, vector_batch, write_tiny_npz
from omnivae.cli import main
from omnivae.functional import subset_matrix
from omnivae.methods.telbo import TELBOVAE
from omnivae.models import build_model
from omnivae.train import TrainConfig, Trainer, load_run, train

B = 5


def vector_model(**options: object) -> tuple:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("telbo", options=options), VECTORS)
    return model.double(), objective


def kl_to_standard_normal(loc: Tensor, scale: Tensor) -> Tensor:
    return 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)


def decoded_log_prob(model: TELBOVAE, name: str, x: Tensor, z: Tensor) -> Tensor:
    base = model.decode(z, [name])[name].base_dist
    return gaussian_log_prob(x, base.loc, base.scale)


def test_joint_elbo_matches_a_hand_computation():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    beta, kl_weight = 1.5, 0.4
    objective.joint.beta = beta
    torch.manual_seed(7)
    out = objective.joint(model, x, mask, kl_weight)
    torch.manual_seed(7)
    loc, scale = model.joint_encoder(x)
    z = loc + scale * torch.empty(loc.shape, dtype=torch.float64).normal_()
    rec = sum(decoded_log_prob(model, m.name, x[m.name], z) * mask[i] for i, m in enumerate(VECTORS))
    elbo = (rec - beta * kl_weight * kl_to_standard_normal(loc, scale)) * mask.all(0)
    torch.testing.assert_close(out.loss, -elbo.sum() / B)


def test_unimodal_elbos_match_a_hand_computation():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    torch.manual_seed(7)
    out = objective.unimodal(model, x, mask, 0.5)
    torch.manual_seed(7)
    total = torch.zeros(B, dtype=torch.float64)
    for i, m in enumerate(VECTORS):
        loc, scale = model.encoders[m.name](x[m.name])[:2]
        z = loc + scale * torch.empty(loc.shape, dtype=torch.float64).normal_()
        # Each unimodal ELBO reconstructs its own modality only.
        total = total + (decoded_log_prob(model, m.name, x[m.name], z) - 0.5 * kl_to_standard_normal(loc, scale)) * mask[i]
    torch.testing.assert_close(out.loss, -total.sum() / B)
    # Called directly, the objective is the triple ELBO: the sum of both terms.
    torch.manual_seed(7)
    both = objective(model, x, mask, 0.5)
    torch.manual_seed(7)
    joint = objective.joint(model, x, mask, 0.5).loss
    unimodal = objective.unimodal(model, x, mask, 0.5).loss
    torch.testing.assert_close(both.loss, joint + unimodal)


def test_masked_entries_get_zero_gradient_and_change_nothing():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    for part in (objective.joint, objective.unimodal):
        inputs = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        torch.manual_seed(1)
        loss = part(model, inputs, mask).loss
        loss.backward()
        for i, m in enumerate(VECTORS):
            grad = inputs[m.name].grad
            assert grad is not None and bool((grad[~mask[i]] == 0).all()), m.name
            assert bool((grad[mask[i]] != 0).any()), m.name  # observed entries do train
        changed = {k: v.clone() for k, v in x.items()}
        changed["a"][1] += 5.0
        changed["b"][3] -= 3.0
        torch.manual_seed(1)
        assert torch.equal(part(model, changed, mask).loss, loss.detach())
    # No fully observed row: the joint ELBO learns nothing.
    model.zero_grad(set_to_none=True)
    none_complete = mask.clone()
    none_complete[1] = False
    out = objective.joint(model, x, none_complete)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and all(p.grad is None or bool((p.grad == 0).all()) for p in model.parameters())


def snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_trains_joint_encoder_and_decoders_stage2_only_unimodal_encoders():
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("telbo", options={"stage2_epochs": 2}), MODALITIES)
    stages = objective.stages(3)
    assert [(s.name, s.epochs) for s in stages] == [("joint VAE", 3), ("unimodal encoders", 2)]
    groups = [{id(p) for p in s.parameters(model)} for s in stages]
    assert not groups[0] & groups[1] and groups[0] | groups[1] == {id(p) for p in model.parameters()}

    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, progress=False, device="cpu")
    trainer = Trainer(model, objective, tiny_splits().train, config)
    states = [snapshot(model)]
    run_epoch = trainer._run_epoch

    def run_and_keep() -> None:
        run_epoch()
        states.append(snapshot(model))

    trainer._run_epoch = run_and_keep  # type: ignore[method-assign]
    trainer.fit()
    assert [h["stage"] for h in trainer.history] == ["joint VAE", "unimodal encoders", "unimodal encoders"]
    initial, after1, final = states[0], states[1], states[-1]
    stage1 = ("joint_encoder.", "decoders.")
    for key in initial:
        if key.startswith("encoders."):
            assert torch.equal(initial[key], after1[key]), f"{key} changed in stage 1"
        if key.startswith(stage1 + ("prior_module.",)):
            assert torch.equal(after1[key], final[key]), f"{key} changed in stage 2"
    assert any(not torch.equal(initial[k], after1[k]) for k in initial if k.startswith(stage1))
    assert any(not torch.equal(after1[k], final[k]) for k in final if k.startswith("encoders."))


def test_subset_posteriors_use_the_joint_encoder_for_the_full_set_and_encoders_for_singletons():
    model, _ = vector_model()
    model.eval()
    x = vector_batch()
    post = model.subset_posteriors(x, subset_matrix(3))
    joint_loc, _ = model.joint_encoder(x)
    subsets = subset_matrix(3)
    for s, row in enumerate(subsets.tolist()):
        if all(row):
            torch.testing.assert_close(post.mean[s], joint_loc)
        if sum(row) == 1:
            name = VECTORS[row.index(True)].name
            torch.testing.assert_close(post.mean[s], model.encoders[name](x[name])[0])


def test_save_load_round_trip(tmp_path):
    config = tiny_config("telbo", options={"stage2_epochs": 1})
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, TELBOVAE)
    assert loaded.model_config == config
    assert [(s.name, s.epochs) for s in loaded.objective.stages(1)] == [("joint VAE", 1), ("unimodal encoders", 1)]
    ours = trainer.model.eval()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_cli_trains_both_stages_and_lists_the_method(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "data.npz", n=40)
    run = tmp_path / "run"
    argv = ["train", "--model", "telbo", "--dataset", f"npz:{npz}", "--epochs", "1", "--set", "stage2_epochs=1",
            "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "after 2 epoch(s)" in out and "elbo_img" in out  # stage 2's terms: both stages ran
    assert isinstance(load_run(run).model, TELBOVAE)
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("telbo "))
    assert "Vedantam et al., ICLR 2018" in line
    bad = argv[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("stage2_epochs=1")] = "stage2_epochs=-1"
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage2_epochs" in err[0] and not (tmp_path / "bad").exists()
