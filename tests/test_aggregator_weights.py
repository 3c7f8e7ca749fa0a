"""Barycentric weights as a component of the poe, mopoe, wb and mwb aggregators (issue 21, part 2).

Properties checked: weights renormalise over the observed members (a masked expert gets
weight zero and gradient zero), uniform weights are the unweighted aggregators, learned and
attention weights receive gradients through the closed forms, attention weights are
permutation-equivariant over modalities, and one-hot weights reduce every barycenter to
the chosen expert. Plus the configuration and command-line surface.
"""

from __future__ import annotations

import pytest
import torch
from helpers import MODALITIES, tiny_config, write_tiny_npz

from omnivae.aggregators import (
    AttentionWeights,
    FixedWeights,
    LearnedWeights,
    MixtureOfBarycenters,
    MixtureOfProductsOfExperts,
    ProductOfExperts,
    WassersteinBarycenter,
)
from omnivae.cli import main
from omnivae.distributions import GaussianExperts
from omnivae.errors import UserError
from omnivae.functional import bures_wasserstein_barycenter, poe, wasserstein_barycenter
from omnivae.models import build_model

M, B, D = 4, 5, 3


def _experts(seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False) -> GaussianExperts:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(M, B, D, generator=g, dtype=dtype)
    scale = torch.rand(M, B, D, generator=g, dtype=dtype) + 0.2
    if grad:
        loc.requires_grad_(True)
        scale.requires_grad_(True)
    return GaussianExperts(loc, scale)


def _mask() -> torch.Tensor:
    mask = torch.ones(M, B, dtype=torch.bool)
    mask[1, :] = False  # modality 1 missing everywhere
    mask[3, 2] = False  # and modality 3 in row 2
    return mask


def _moments(q: torch.distributions.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    return q.mean, q.variance


def _attention(seed: int = 0) -> AttentionWeights:
    torch.manual_seed(seed)
    weights = AttentionWeights(D, hidden=8).double()
    last = weights.score[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight)  # away from the uniform start
    return weights


@pytest.mark.parametrize("kind", ["fixed", "learned", "attention"])
def test_weights_renormalise_over_observed_members(kind):
    experts, mask = _experts(), _mask()
    if kind == "fixed":
        module = FixedWeights(torch.tensor([0.1, 0.5, 0.3, 0.6], dtype=torch.float64))
    elif kind == "learned":
        module = LearnedWeights(M).double()
        module.logits.data = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    else:
        module = _attention()
    raw = torch.as_tensor(module(experts, mask), dtype=torch.float64)
    raw = raw.reshape(M, *([1] * (mask.dim() - 1))).expand(M, B) if raw.dim() == 1 else raw
    lam = torch.where(mask, raw, torch.zeros(()).double())
    lam = lam / lam.sum(0, keepdim=True)
    expected_loc = (lam.unsqueeze(-1) * experts.loc).sum(0)
    expected_std = (lam.unsqueeze(-1) * experts.scale).sum(0)
    q = WassersteinBarycenter(weights=module).combine(experts, mask)
    torch.testing.assert_close(q.mean, expected_loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.stddev, expected_std, rtol=1e-12, atol=1e-12)
    # Weighted PoE: precision sum_m n lambda_m / var_m over the observed.
    n = mask.sum(0).double().unsqueeze(-1)
    precision = (n * lam.unsqueeze(-1) / experts.var).sum(0)
    q = ProductOfExperts(prior_expert=False, weights=module).combine(experts, mask)
    torch.testing.assert_close(q.variance, precision.reciprocal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        q.mean, (n * lam.unsqueeze(-1) * experts.loc / experts.var).sum(0) / precision, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("aggregator", ["wb", "poe"])
@pytest.mark.parametrize("kind", ["learned", "attention"])
def test_masked_expert_gets_zero_gradient(aggregator, kind):
    experts, mask = _experts(grad=True), _mask()
    # A degenerate masked expert must not leak NaN through 0 * inf either.
    with torch.no_grad():
        experts.scale[1] = 1e-30
    module = LearnedWeights(M).double() if kind == "learned" else _attention()
    agg = WassersteinBarycenter(weights=module) if aggregator == "wb" else ProductOfExperts(weights=module)
    q = agg.combine(experts, mask)
    (q.mean.square().sum() + q.variance.log().sum()).backward()
    assert experts.loc.grad is not None and experts.scale.grad is not None
    assert torch.isfinite(experts.loc.grad).all() and torch.isfinite(experts.scale.grad).all()
    assert (experts.loc.grad[1] == 0).all() and (experts.scale.grad[1] == 0).all()
    assert (experts.loc.grad[3, 2] == 0).all() and (experts.scale.grad[3, 2] == 0).all()
    assert experts.loc.grad[0].abs().sum() > 0


@pytest.mark.parametrize("cls", [WassersteinBarycenter, MixtureOfBarycenters, ProductOfExperts, MixtureOfProductsOfExperts])
def test_uniform_weights_equal_the_unweighted_aggregator(cls):
    experts, mask = _experts(), _mask()
    plain = cls()(experts, mask)
    ones = cls(weights=FixedWeights(torch.ones(M, dtype=torch.float64)))(experts, mask)
    zero_logits = cls(weights=LearnedWeights(M).double())(experts, mask)
    untrained_attention = cls(weights=AttentionWeights(D).double())(experts, mask)  # last layer starts at 0
    for weighted in (ones, zero_logits, untrained_attention):
        a, b = plain.full_component(), weighted.full_component()
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(a.variance, b.variance, rtol=1e-13, atol=1e-13)


def test_uniform_is_today_s_aggregator_exactly():
    """``aggregator_weights="uniform"`` builds the weightless aggregator: same parameters, same output bits."""
    model, _ = build_model(tiny_config("mwb", aggregator_weights="uniform"), MODALITIES)
    assert model.aggregator is not None and getattr(model.aggregator, "weights", "absent") is None
    assert not any(name.startswith("aggregator.") for name, _ in model.named_parameters())
    experts, mask = _experts(), _mask()
    mu, std = wasserstein_barycenter(experts.loc, experts.scale, None, mask)
    q = model.aggregator.combine(experts, mask)
    assert torch.equal(q.mean, mu) and torch.equal(q.stddev, std)
    # The closed form itself: plain averages over the observed, in float64.
    n = mask.sum(0, keepdim=True).double().unsqueeze(-1)
    m = mask.unsqueeze(-1)
    torch.testing.assert_close(mu, (experts.loc * m).sum(0) / n[0], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(std, (experts.scale * m).sum(0) / n[0], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("aggregator", ["wb", "mwb", "poe", "mopoe"])
@pytest.mark.parametrize("kind", ["learned", "attention"])
def test_learned_weights_get_gradients_through_the_model(aggregator, kind):
    model_name = "mvae" if aggregator == "poe" else aggregator
    config = tiny_config(model_name if model_name in ("wb", "mwb", "mopoe") else "wb", aggregator=aggregator,
                         aggregator_weights=kind)
    model, _ = build_model(config, MODALITIES)
    names = [name for name, _ in model.named_parameters() if name.startswith("aggregator.weights")]
    assert names, "the weights must be parameters of the model (trained by its optimizer)"
    torch.manual_seed(0)
    experts = GaussianExperts(torch.randn(3, 6, 4), torch.rand(3, 6, 4) + 0.3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, :3] = False
    q = model.aggregator(experts, mask)
    q.rsample().square().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("aggregator.weights")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_attention_is_permutation_equivariant_over_modalities():
    experts, mask = _experts(), _mask()
    module = _attention()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = GaussianExperts(experts.loc[perm], experts.scale[perm])
    w, wp = module(experts, mask), module(permuted, mask[perm])
    torch.testing.assert_close(wp, w[perm], rtol=1e-12, atol=1e-12)
    agg = WassersteinBarycenter(weights=module)
    q, qp = agg.combine(experts, mask), agg.combine(permuted, mask[perm])
    torch.testing.assert_close(qp.mean, q.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(qp.stddev, q.stddev, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [0, 2])
def test_one_hot_weights_give_that_expert(k):
    experts = _experts()
    mask = torch.ones(M, B, dtype=torch.bool)
    one_hot = torch.zeros(M, dtype=torch.float64)
    one_hot[k] = 1.0
    q = WassersteinBarycenter(weights=one_hot).combine(experts, mask)
    torch.testing.assert_close(q.mean, experts.loc[k], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(q.stddev, experts.scale[k], rtol=1e-13, atol=1e-13)
    # The weighted product is scaled so that uniform weights give the plain product: a
    # one-hot weight gives expert k's mean at n times its precision (n = 4 observed).
    q = ProductOfExperts(prior_expert=False, weights=one_hot).combine(experts, mask)
    torch.testing.assert_close(q.mean, experts.loc[k], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(q.variance, experts.var[k] / M, rtol=1e-13, atol=1e-13)
    # The Bures-Wasserstein fixed point (full covariances) takes the same weights.
    g = torch.Generator().manual_seed(1)
    a = torch.randn(M, B, D, D, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(-1, -2) + 0.5 * torch.eye(D, dtype=torch.float64)
    mean, out = bures_wasserstein_barycenter(experts.loc, cov, one_hot, mask, iters=30, tol=None)
    torch.testing.assert_close(mean, experts.loc[k], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, cov[k], rtol=1e-8, atol=1e-8)


def test_weighted_bures_wasserstein_matches_the_diagonal_closed_form():
    experts, mask = _experts(), _mask()
    lam = torch.tensor([0.1, 0.5, 0.3, 0.6], dtype=torch.float64)
    mean, cov = bures_wasserstein_barycenter(experts.loc, torch.diag_embed(experts.var), lam, mask, iters=30, tol=None)
    mu, std = wasserstein_barycenter(experts.loc, experts.scale, lam, mask)
    torch.testing.assert_close(mean, mu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cov, torch.diag_embed(std.square()), rtol=1e-8, atol=1e-8)


def test_weighted_poe_without_weights_is_unchanged():
    experts, mask = _experts(), _mask()
    a = poe(experts.loc, experts.var, mask, prior_expert=True)
    b = poe(experts.loc, experts.var, mask, prior_expert=True, weights=torch.ones(M, dtype=torch.float64))
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"aggregator_weights": "sometimes"}, "'sometimes'"),
        ({"aggregator_weights": "1,-1,1"}, "non-negative"),
        ({"aggregator_weights": "learned", "aggregator": "moe"}, "moe"),
    ],
)
def test_bad_aggregator_weights_name_the_parameter(overrides, fragment):
    with pytest.raises(UserError) as err:
        tiny_config("wb", **overrides).validate()
    assert err.value.parameter == "aggregator_weights"
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_fixed_weights_of_the_wrong_length_are_refused():
    with pytest.raises(UserError, match="2 numbers for 3 modalities"):
        build_model(tiny_config("wb", aggregator_weights="1,2"), MODALITIES)


def test_cli_trains_with_learned_weights_and_refuses_bad_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz = write_tiny_npz(tmp_path / "tiny.npz", n=32)
    base = ["train", "--model", "wb", "--dataset", f"npz:{npz}", "--backbone", "mlp", "--hidden", "16",
            "--latent-dim", "4", "--batch-size", "16", "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--aggregator-weights", "learned"]) == 0
    capsys.readouterr()
    from omnivae.train import load_run

    model = load_run(tmp_path / "ok").model
    logits = dict(model.named_parameters())["aggregator.weights.logits"]
    assert logits.shape == (3,) and not torch.equal(logits, torch.zeros(3))  # trained away from uniform
    assert main([*base, "--out", str(tmp_path / "bad"), "--aggregator-weights", "sometimes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("omnivae: error:") and "aggregator_weights" in err[0]
    assert not (tmp_path / "bad").exists()
