"""CVAE: roles, its objective by hand in float64, gradients, the inference hook per subset,
the command line (train, bad input, evaluate) and a save/load round trip.

The contract suite (test_models.py, test_inference_hook.py, ...) runs ``cvae`` through every
generic check because it is in ``MODELS`` (consulting ``Recipe.generates``); here are the
properties specific to a model that generates one target given conditions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from helpers import VECTORS, gaussian_log_prob, tiny_batch, tiny_config, tiny_splits, vector_batch, write_tiny_npz
from omnivae.cli import main
from omnivae.errors import DataError, UserError
from omnivae.methods.cvae import CVAELoss, CVAEModel
from omnivae.models import MODELS, build_model
from omnivae.train import TrainConfig, load_run, train
from omnivae.train.checkpoint import published_checkpoint

B = 5
TINY = ["--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16", "--no-progress",
        "--device", "cpu"]


def kl_diag(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL between diagonal Gaussians, written out independently of the library."""
    return 0.5 * (var_q / var_p + (mu_p - mu_q) ** 2 / var_p - 1 + var_p.log() - var_q.log()).sum(-1)


def _model(**options) -> tuple[CVAEModel, CVAELoss]:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config("cvae", options=options), VECTORS)
    assert isinstance(model, CVAEModel) and isinstance(objective, CVAELoss)
    return model, objective


def test_recipe_declares_its_paper_and_that_it_generates_one_target():
    recipe = MODELS["cvae"]
    assert "Sohn" in recipe.reference and recipe.generates == "target"
    assert {r.generates for r in MODELS.values() if r.name != "cvae"} == {"all"}


def test_default_roles_and_networks_generate_only_the_target():
    model, _ = _model()
    assert (model.target, model.conditions, model.generated) == ("a", ("b", "c"), ("a",))
    assert list(model.decoders) == ["a"] and len(model.encoders) == 0 and model.prior_network is None
    model, _ = _model(target="c", condition="b", conditional_prior=True)
    assert (model.target, model.conditions) == ("c", ("b",))
    assert model.prior_network is not None and list(model.condition_features) == ["b"]


@pytest.mark.parametrize(
    "options, parameter, pattern",
    [
        ({"target": "nope"}, "target", "target 'nope' is not a modality; the modalities are a, b, c"),
        ({"condition": "b,nope"}, "condition", "condition 'nope' is not a modality"),
        ({"target": "b", "condition": "a,b"}, "condition", "cannot also be a condition"),
        ({"condition": "b,b"}, "condition", "twice"),
        ({"condition": "b,"}, "condition", "comma-separated"),
    ],
)
def test_bad_roles_are_one_error_naming_the_parameter(options, parameter, pattern):
    with pytest.raises(UserError, match=pattern) as err:
        build_model(tiny_config("cvae", options=options), VECTORS)
    assert err.value.parameter == parameter


def test_an_aggregator_does_not_apply():
    with pytest.raises(UserError, match="an aggregator does not apply") as err:
        build_model(tiny_config("cvae", aggregator="poe"), VECTORS)
    assert err.value.parameter == "aggregator"


def test_one_modality_is_not_enough():
    with pytest.raises(UserError, match="at least one condition"):
        build_model(tiny_config("cvae"), VECTORS[:1])


@pytest.mark.parametrize("conditional_prior", [False, True])
def test_loss_matches_a_hand_computation(conditional_prior):
    """loss = mean over complete rows of -log p(x_a | z, x_b, x_c) + a beta KL(q || p(z | x_c))."""
    model, _ = _model(conditional_prior=conditional_prior)
    model = model.double()
    objective = CVAELoss(beta=1.7)
    x = vector_batch(seed=1)
    mask = torch.ones(3, B, dtype=torch.bool)
    mask[1, 1] = False  # row 1 lacks a condition, row 3 the target: neither counts
    mask[0, 3] = False
    torch.manual_seed(5)
    out = objective(model, x, mask, kl_weight=0.5)

    with torch.no_grad():
        loc, scale = model.recognition(x)
        if conditional_prior:
            assert model.prior_network is not None
            p_loc, p_scale = model.prior_network({"b": x["b"], "c": x["c"]})
        else:
            p_loc, p_scale = torch.zeros_like(loc), torch.ones_like(scale)
        torch.manual_seed(5)
        z = loc + scale * torch.randn(B, loc.shape[-1], dtype=torch.float64)
        features = torch.cat([model.condition_features["b"](x["b"]), model.condition_features["c"](x["c"])], -1)
        decoded = model.decoders["a"](torch.cat([z, features], -1))
        rec = gaussian_log_prob(x["a"], decoded.mean, decoded.stddev)
        kl = kl_diag(loc, scale**2, p_loc, p_scale**2)
        rows = torch.tensor([True, False, True, False, True])
        expected = (-rec[rows] + 1.7 * 0.5 * kl[rows]).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["kl"], kl[rows].mean(), rtol=1e-10, atol=1e-10)


def test_conditions_are_inputs_not_reconstructed():
    """The conditions feed every network (the loss has a gradient in x_b) but only the
    target's likelihood is scored: the reconstruction term is log p(x_a | z, x_c) alone."""
    model, objective = _model()
    model = model.double()
    x = {k: v.requires_grad_(True) for k, v in vector_batch(seed=2).items()}
    mask = torch.ones(3, B, dtype=torch.bool)
    torch.manual_seed(1)
    out = objective(model, x, mask)
    out.loss.backward()
    assert x["b"].grad is not None and x["b"].grad.ne(0).any()
    torch.manual_seed(1)
    z = model.recognition_posterior(x).rsample()
    torch.testing.assert_close(out.terms["rec"], -model.target_log_prob(x, z).mean(), rtol=1e-12, atol=1e-12)
    # Every parameter learns; none belongs to a network reconstructing a condition.
    assert all(p.grad is not None and p.grad.ne(0).any() for p in model.parameters())
    assert not [n for n, _ in model.named_parameters() if n.startswith(("decoders.b", "decoders.c"))]


def test_posterior_per_subset_is_recognition_prior_given_conditions_or_standard():
    model, _ = _model(conditional_prior=True)
    model.eval()
    x = vector_batch(seed=3)
    x = {k: v.float() for k, v in x.items()}
    subsets = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        posterior = model.subset_posteriors(x, subsets)
        q = model.recognition_posterior(x)
        p = model.conditional_prior(x)
    torch.testing.assert_close(posterior.mean[0], q.mean)
    torch.testing.assert_close(posterior.mean[1], p.mean)
    torch.testing.assert_close(posterior.stddev[1], p.stddev)
    for s in (2, 3):  # a condition is missing: no network of the CVAE reads that subset
        assert torch.equal(posterior.mean[s], torch.zeros_like(posterior.mean[s]))
        assert torch.equal(posterior.stddev[s], torch.ones_like(posterior.stddev[s]))


def test_generation_reconstruction_and_imputation_of_the_target():
    model, _ = _model()
    model.eval()
    x = {k: v.float() for k, v in vector_batch(seed=4).items()}
    hidden = {"a": torch.zeros(B, dtype=torch.bool)}
    torch.manual_seed(0)
    samples = model.conditional_generate(x, hidden, num_samples=4)
    assert list(samples) == ["a"] and samples["a"].shape == (4, B, 3)
    # Without the target, z comes from p(z | x_c) = N(0, I): the value of x_a is not read.
    other = {**x, "a": x["a"] + 5}
    torch.manual_seed(0)
    assert torch.equal(model.conditional_generate(other, hidden, num_samples=4)["a"], samples["a"])
    with torch.no_grad():
        expected = model.decode_mean_given(model.recognition_posterior(x).mean, x)
        assert torch.equal(model.reconstruct(x)["a"], expected)
    mask = {"a": torch.tensor([True, False, True, False, True])}
    filled = model.impute(x, mask)
    assert torch.equal(filled["a"][mask["a"]], x["a"][mask["a"]])
    with torch.no_grad():
        prior_mean = model.decode_mean_given(torch.zeros(B, 4), x)
    torch.testing.assert_close(filled["a"][~mask["a"]], prior_mean[~mask["a"]])
    assert torch.equal(filled["b"], x["b"])
    without_target = model.impute({"b": x["b"], "c": x["c"]})
    torch.testing.assert_close(without_target["a"], prior_mean)
    with pytest.raises(DataError, match="lack 'c'"):
        model.impute(x, {"c": torch.tensor([True, True, False, True, True])})
    with pytest.raises(DataError, match="lacks c"):
        model.conditional_generate({"b": x["b"]})
    with pytest.raises(UserError, match="conditional_generate"):
        model.generate(3)


def test_importance_sampled_likelihood_is_exact_for_an_exact_posterior():
    """With one sample, log w = log p(x|z) + log p(z) - log q(z); with q = p(z | x_c) = N(0, I)
    in place of the recognition network, K samples average p(x_t | z, x_c) over the prior."""
    model, _ = _model()
    model = model.double().eval()
    x = vector_batch(seed=6)
    torch.manual_seed(0)
    estimate = model.conditional_log_likelihood(x, num_samples=4000)
    torch.manual_seed(1)
    z = torch.randn(200000, B, 4, dtype=torch.float64)
    with torch.no_grad():
        reference = torch.logsumexp(model.target_log_prob(x, z), 0) - math.log(z.shape[0])
    torch.testing.assert_close(estimate, reference, rtol=0, atol=0.1)


def test_training_then_loading_gives_back_the_same_model(tmp_path):
    config = tiny_config("cvae", options={"target": "vec", "conditional_prior": True})
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(observed=0.7), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, CVAEModel) and loaded.model.target == "vec"
    trained = trainer.model.state_dict()
    assert trained.keys() == loaded.model.state_dict().keys()
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    x = tiny_batch(6)
    loaded.model.eval()
    trainer.model.eval()
    torch.manual_seed(3)
    a = loaded.model.conditional_generate(x, {"vec": torch.zeros(6, dtype=torch.bool)}, num_samples=2)["vec"]
    torch.manual_seed(3)
    b = trainer.model.conditional_generate(x, {"vec": torch.zeros(6, dtype=torch.bool)}, num_samples=2)["vec"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def npz(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMNIVAE_CACHE", str(tmp_path / "cache"))
    return write_tiny_npz(tmp_path / "tiny.npz", n=60)


def test_train_and_evaluate_from_the_command_line(npz, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "cvae", "--dataset", f"npz:{npz}", "--epochs", "2", *TINY,
            "--set", "target=img", "--set", "condition=vec,bits", "--out", str(out)]
    assert main(argv) in (0, None)
    history = json.loads(published_checkpoint(out).path("metrics.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["model"] == "cvae" and config["options"]["target"] == "img"
    capsys.readouterr()
    evaluate = ["evaluate", str(out), "--num-importance-samples", "3", "--classifier-epochs", "1",
                "--eval-batch-size", "32", "--device", "cpu"]
    assert main(evaluate) == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["coherence"]["per_subset"] == {"vec+bits": {"img": results["coherence"]["by_size"]["2"]}}
    assert 0 <= results["coherence"]["by_size"]["2"] <= 1 and results["coherence"]["joint"] is None
    assert np.isfinite(results["likelihood"]["conditional"]["vec+bits"])
    assert set(results["recon"]["joint"]) == set(results["recon"]["cross"]) == {"img"}
    assert len(results["probe"]["per_subset"]) == 7 and "clustering" in results
    assert "fd" not in results and set(results["skipped"]) == {"joint coherence", "joint likelihood", "fd"}
    report = (out / "report.md").read_text()
    assert "Not computed for this model" in report and "vec+bits" in report
    assert any("samples_given_2" in f for f in results["figures"])
    assert all((out / f).exists() for f in results["figures"])
    # A latent sampler has nothing to sample for: one line, exit 2.
    capsys.readouterr()
    assert main([*evaluate, "--metrics", "coherence", "--sampler", "gmm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latent sampler" in err[0]


@pytest.mark.parametrize(
    "sets, pattern",
    [
        (["target=nope"], "target 'nope' is not a modality; the modalities are img, vec, bits"),
        (["condition=vec,nope"], "condition 'nope' is not a modality"),
        (["conditional_prior=maybe"], "conditional_prior must be true or false"),
    ],
)
def test_bad_options_on_the_command_line_are_one_line_exit_2_nothing_written(npz, tmp_path, capsys, sets, pattern):
    out = tmp_path / "bad"
    argv = ["train", "--model", "cvae", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY, "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_impute_from_the_command_line_refuses_data_lacking_a_condition(npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "cvae", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY,
                 "--set", "target=bits", "--out", str(out)]) in (0, None)
    data = dict(np.load(npz))
    partial = tmp_path / "partial.npz"
    np.savez(partial, img=data["img"][:8], bits=data["bits"][:8])  # no vec: a condition
    capsys.readouterr()
    code = main(["impute", str(out), "--input", str(partial), "--output", str(tmp_path / "o.npz"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks vec" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "o.npz").exists()
    full = tmp_path / "full.npz"
    np.savez(full, img=data["img"][:8], vec=data["vec"][:8])  # the target is left out: filled
    assert main(["impute", str(out), "--input", str(full), "--output", str(tmp_path / "f.npz"), "--device", "cpu"]) == 0
    filled = np.load(tmp_path / "f.npz")
    assert filled["bits"].shape == (8, 5) and np.array_equal(filled["vec"], data["vec"][:8])
