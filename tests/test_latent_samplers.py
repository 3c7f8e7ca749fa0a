"""Post-hoc latent samplers: GMM and MAF fitted to latents, stored in the run, used to generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnivae.cli import main
from omnivae.errors import RunDirError, UserError
from omnivae.latent_samplers import (
    FitSettings,
    fit_latent_sampler,
    load_latent_sampler,
    mixture_log_likelihood,
    run_latent_sampler,
    sampler_path,
    save_latent_sampler,
)
from omnivae.train import load_run
from test_evaluate import EVAL, TINY, _isolated, npz, one_error_line  # noqa: F401  (fixtures)

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-3.0, 0.0], [2.0, 2.0]])
COVARIANCES = np.array([[[1.0, 0.6], [0.6, 1.0]], [[0.5, -0.2], [-0.2, 0.3]]])


def known_mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    component = rng.choice(2, size=n, p=WEIGHTS)
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(COVARIANCES)[component], rng.normal(size=(n, 2)))
    return MEANS[component] + noise


@pytest.mark.parametrize("kind, settings, slack", [
    ("gmm", FitSettings(components=2), 0.02),
    ("maf", FitSettings(transforms=3, hidden=32, steps=500, learning_rate=3e-3), 0.1),
])
def test_fitted_sampler_recovers_a_known_mixture(kind, settings, slack):
    """On held-out points the fitted density's mean log-likelihood is near the true one's
    (the true density maximises the expected log-likelihood, so the gap is >= 0 up to noise)."""
    train, held_out = known_mixture(3000, 0), known_mixture(3000, 1)
    sampler = fit_latent_sampler(kind, torch.from_numpy(train), settings)
    truth = mixture_log_likelihood(WEIGHTS, MEANS, COVARIANCES, held_out)
    fitted = float(sampler.log_prob(torch.from_numpy(held_out)).mean())
    assert truth - slack < fitted < truth + 0.02
    # Its samples have the mixture's moments.
    draws = sampler.sample(4000).double().numpy()
    assert draws.shape == (4000, 2)
    assert np.allclose(draws.mean(0), WEIGHTS @ MEANS, atol=0.15)


@pytest.mark.parametrize("kind", ["gmm", "maf"])
def test_save_load_round_trip_is_exact(kind, tmp_path):
    z = torch.from_numpy(known_mixture(300, 2)).float()
    sampler = fit_latent_sampler(kind, z, FitSettings(components=2, transforms=1, hidden=8, steps=5))
    path = tmp_path / "s.safetensors"
    save_latent_sampler(sampler, path, {"note": 1})
    loaded, extra = load_latent_sampler(path)
    assert extra == {"note": 1} and loaded.kind == kind
    assert torch.equal(loaded.log_prob(z), sampler.log_prob(z))
    torch.manual_seed(0)
    a = sampler.sample(7)
    torch.manual_seed(0)
    assert torch.equal(loaded.sample(7), a)
    assert b"__reduce__" not in path.read_bytes() and not list(tmp_path.glob("*.tmp"))
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(RunDirError, match="delete it to refit"):
        load_latent_sampler(path)


def test_bad_settings_and_kinds_are_user_errors():
    z = torch.randn(50, 2)
    with pytest.raises(UserError, match="latent sampler"):
        fit_latent_sampler("vae", z)
    with pytest.raises(UserError, match="components"):
        fit_latent_sampler("gmm", z, FitSettings(components=0))
    with pytest.raises(UserError, match="at least that many rows"):
        fit_latent_sampler("gmm", z[:3], FitSettings(components=5))
    with pytest.raises(UserError, match="finite"):
        fit_latent_sampler("gmm", torch.full((10, 2), float("nan")))


@pytest.fixture
def run(npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mwb", "--dataset", f"npz:{npz}", "--epochs", "1", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_run_sampler_is_fitted_once_then_cached_and_refitted_on_new_settings(run):
    loaded = load_run(run)
    small = FitSettings(components=2)
    draw = run_latent_sampler(loaded, run, "gmm", settings=small)
    z = draw(5)
    assert z.shape == (5, 4) and z.dtype == loaded.model.likelihood_weights.dtype
    stamp = sampler_path(run, "gmm").stat().st_mtime_ns
    run_latent_sampler(loaded, run, "gmm", settings=small)
    assert sampler_path(run, "gmm").stat().st_mtime_ns == stamp  # reused
    run_latent_sampler(loaded, run, "gmm", settings=FitSettings(components=3))
    _, extra = load_latent_sampler(sampler_path(run, "gmm"))
    assert extra["settings"]["components"] == 3
    assert run_latent_sampler(loaded, run, "prior") is None


def test_sample_and_evaluate_with_samplers_end_to_end(run, tmp_path, capsys, monkeypatch):
    import functools

    import omnivae.latent_samplers as latent_samplers

    monkeypatch.setattr(latent_samplers, "FitSettings", functools.partial(FitSettings, steps=30))  # a quick flow
    out = tmp_path / "gmm.png"
    assert main(["sample", str(run), "--sampler", "gmm", "--n", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 1000 and sampler_path(run, "gmm").exists()
    assert "gmm sampler" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--metrics", "coherence,fd", "--sampler", "maf", "--no-figures",
                 "--joint-coherence-samples", "64", *EVAL]) == 0
    results = json.loads((run / "eval.json").read_text())
    assert results["settings"]["fd"]["latent_sampler"] == "maf"
    assert results["settings"]["coherence"]["latent_sampler"] == "maf"
    assert 0.0 <= results["coherence"]["joint"] <= 1.0
    assert "maf sampler" in (run / "report.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["sample", "RUN", "--sampler", "flow"],
    ["sample", "RUN", "--sampler", "gmm", "--given", "vec"],
    ["evaluate", "RUN", "--sampler", "flow", "--metrics", "fd"],
])
def test_bad_sampler_is_one_line_exit_2(argv, run, capsys):
    argv = [str(run) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "sampler" in line
    assert not sampler_path(run, "gmm").exists()


def test_a_read_only_run_still_samples_without_storing(run, monkeypatch):
    import errno

    import omnivae.latent_samplers as latent_samplers

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(latent_samplers, "save_latent_sampler", refuse)
    messages = []
    draw = run_latent_sampler(load_run(run), run, "gmm", settings=FitSettings(components=2), log=messages.append)
    assert draw(3).shape == (3, 4)
    assert "not stored (Permission denied)" in messages[0] and not sampler_path(run, "gmm").exists()
