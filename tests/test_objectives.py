"""Objectives against closed forms (a linear-Gaussian model) and against each other."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, MultivariateNormal, Normal

from helpers import MODALITIES, tiny_batch, tiny_config
from omnivae.aggregators import build_aggregator
from omnivae.data.base import ModalitySpec
from omnivae.errors import UserError
from omnivae.models import MultimodalVAE, build_model
from omnivae.objectives import ELBO, MixtureELBO, StratifiedIWAE, SubsampledELBO, random_subsets
from omnivae.priors import StandardNormalPrior

# -- a linear-Gaussian model: p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I) -----------------
#
# W has orthogonal columns, so the exact posterior N(S W^T (x - b) / s^2, S) with
# S = (I + W^T W / s^2)^-1 is diagonal and a diagonal encoder can represent it.
W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
BIAS = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
NOISE = 1.0
POST_VAR = 1.0 / (1.0 + (W * W).sum(0) / NOISE**2)  # diag of S: [0.2, 0.5]


class LinearEncoder(nn.Module):
    """q(z | x) = N(A x + c, diag(exp(2 log_std))), starting at the exact posterior."""

    def __init__(self, shift: float = 0.0, std_factor: float = 1.0) -> None:
        super().__init__()
        a = POST_VAR.unsqueeze(1) * W.t() / NOISE**2
        self.a = nn.Parameter(a.clone())
        self.c = nn.Parameter(-a @ BIAS + shift)
        self.log_std = nn.Parameter(0.5 * POST_VAR.log() + math.log(std_factor))

    def forward(self, x: Tensor):
        loc = x @ self.a.t() + self.c
        return loc, self.log_std.exp().expand_as(loc), None


class LinearDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(W.clone())
        self.b = nn.Parameter(BIAS.clone())

    def forward(self, z: Tensor):
        return Independent(Normal(z @ self.w.t() + self.b, NOISE), 1)


def linear_model(shift: float = 0.0, std_factor: float = 1.0) -> MultimodalVAE:
    spec = ModalitySpec("x", (3,), "vector")
    model = MultimodalVAE(
        [spec],
        nn.ModuleDict({"x": LinearEncoder(shift, std_factor)}),
        nn.ModuleDict({"x": LinearDecoder()}),
        build_aggregator("wb"),  # the barycenter of one expert is that expert
        StandardNormalPrior(2),
    )
    return model.double()


def log_evidence(x: Tensor) -> Tensor:
    """log p(x) = log N(x; b, W W^T + s^2 I)."""
    cov = W @ W.t() + NOISE**2 * torch.eye(3, dtype=torch.float64)
    return MultivariateNormal(BIAS, covariance_matrix=cov).log_prob(x)


def kl_to_standard(mu: Tensor, var: Tensor) -> Tensor:
    return 0.5 * (var + mu**2 - 1 - var.log()).sum(-1)


def linear_data(batch: int, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, 3, generator=gen, dtype=torch.float64) * 2}


def ones_mask(batch: int) -> Tensor:
    return torch.ones(1, batch, dtype=torch.bool)


@pytest.mark.parametrize("k", [1, 7])
@pytest.mark.parametrize("dreg", [False, True])
def test_iwae_with_the_exact_posterior_is_the_log_evidence(k, dreg):
    # With q the true posterior every importance weight equals p(x): no variance at all.
    model = linear_model()
    x = linear_data(5)
    torch.manual_seed(0)
    out = StratifiedIWAE(num_samples=k, dreg=dreg)(model, x, ones_mask(5))
    assert torch.allclose(out.loss, -log_evidence(x["x"]).mean(), atol=1e-9)


def test_elbo_matches_its_closed_form():
    # ELBO = E_q[log p(x | z)] - KL(q || p); for a Gaussian q that is off the posterior,
    # log p(x) - ELBO = KL(q || p(z | x)), all in closed form.
    shift, std_factor = 0.7, 1.5
    model = linear_model(shift, std_factor)
    one = linear_data(1, seed=3)["x"]
    n = 40000
    x = {"x": one.expand(n, 3)}
    with torch.no_grad():
        mu_q = model.encoders["x"](one)[0][0]
    var_q = POST_VAR * std_factor**2
    mu_post = mu_q - shift

    torch.manual_seed(0)
    out = ELBO()(model, x, ones_mask(n))
    expected_kl = kl_to_standard(mu_q, var_q)
    assert torch.allclose(out.terms["kl"], expected_kl, atol=1e-9), "the KL term is closed form"
    gap = 0.5 * (var_q / POST_VAR + (mu_q - mu_post) ** 2 / POST_VAR - 1 - (var_q / POST_VAR).log()).sum()
    expected_elbo = log_evidence(one)[0] - gap
    # The reconstruction term is a Monte Carlo mean over n copies; its standard error here
    # is about 0.01.
    assert abs(float(-out.loss.detach() - expected_elbo)) < 0.05
    mean = W @ mu_q + BIAS
    expected_rec = (
        -0.5 * ((one[0] - mean) ** 2).sum() / NOISE**2
        - 0.5 * (W**2 @ var_q).sum() / NOISE**2
        - 1.5 * math.log(2 * math.pi * NOISE**2)
    )
    assert abs(float(-out.terms["rec"].detach() - expected_rec)) < 0.05
    assert float(expected_elbo) < float(log_evidence(one)[0]) - 0.1


def test_iwae_bound_grows_with_k_towards_the_evidence():
    model = linear_model(shift=0.8, std_factor=2.0)
    n = 4000
    one = linear_data(1, seed=5)["x"]
    x = {"x": one.expand(n, 3)}
    bounds = []
    for k in (1, 5, 50):
        torch.manual_seed(k)
        bounds.append(-float(StratifiedIWAE(num_samples=k)(model, x, ones_mask(n)).loss.detach()))
    evidence = float(log_evidence(one)[0])
    assert bounds[0] + 0.1 < bounds[1] < bounds[2] < evidence + 0.01
    assert evidence - bounds[2] < evidence - bounds[0]


def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior():
    # DReG drops the score term, whose per-sample value is what keeps IWAE's encoder
    # gradient noisy at the optimum (Tucker et al. 2019); decoder gradients are the same.
    x = linear_data(16)
    grads = {}
    for dreg in (False, True):
        model = linear_model()
        torch.manual_seed(0)
        StratifiedIWAE(num_samples=4, dreg=dreg)(model, x, ones_mask(16)).loss.backward()
        grads[dreg] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[True].items():
        if name.startswith("encoders."):
            assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-10), name
            assert grads[False][name].abs().max() > 1e-3, name
        else:
            assert torch.allclose(grad, grads[False][name], atol=1e-10), name


@pytest.mark.parametrize("dreg", [False, True])
def test_iwae_gradients_match_an_independent_computation(dreg):
    # Off the exact posterior, with the draws of the objective itself: plain IWAE is the
    # gradient of log-mean-exp of the weights; DReG weights the sample path by the squared
    # normalised weights with q's parameters held fixed, and the decoder by the weights.
    k, batch = 6, 5
    x = linear_data(batch, seed=2)
    mask = ones_mask(batch)
    model = linear_model(shift=0.6, std_factor=1.7)
    torch.manual_seed(11)
    StratifiedIWAE(num_samples=k, dreg=dreg)(model, x, mask).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = linear_model(shift=0.6, std_factor=1.7)
    encoder, decoder = reference.encoders["x"], reference.decoders["x"]
    loc, scale, _ = encoder(x["x"])
    torch.manual_seed(11)  # the same draws: the objective samples through this same call
    z, _ = reference.aggregate(reference.encode_experts(x, mask), mask).stratified_rsample(k)
    z = z[0]  # one component: [K, B, D]
    q_loc, q_scale = (loc.detach(), scale.detach()) if dreg else (loc, scale)
    log_q = Normal(q_loc, q_scale).log_prob(z).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    mean = z @ decoder.w.t() + decoder.b
    rec = Normal(mean, NOISE).log_prob(x["x"]).sum(-1)
    log_w = rec + log_p - log_q  # [K, B]
    encoder_params = list(encoder.parameters())
    decoder_params = list(decoder.parameters())
    if dreg:
        weights = torch.softmax(log_w, 0).detach()
        enc_grads = torch.autograd.grad(-(weights**2 * log_w).sum(0).mean(), encoder_params, retain_graph=True)
        dec_grads = torch.autograd.grad(-(weights * log_w).sum(0).mean(), decoder_params)
    else:
        bound = (torch.logsumexp(log_w, 0) - math.log(k)).mean()
        enc_grads = torch.autograd.grad(-bound, encoder_params, retain_graph=True)
        dec_grads = torch.autograd.grad(-bound, decoder_params)
    names = [f"encoders.x.{n}" for n, _ in encoder.named_parameters()]
    names += [f"decoders.x.{n}" for n, _ in decoder.named_parameters()]
    for name, expected in zip(names, [*enc_grads, *dec_grads]):
        assert torch.allclose(got[name], expected, atol=1e-9, rtol=1e-7), name
        assert expected.abs().max() > 1e-4, name


# -- objectives on the tiny multimodal models ---------------------------------------------


def _tiny(model_name: str = "moe", **overrides):
    torch.manual_seed(0)
    return build_model(tiny_config(model_name, **overrides), MODALITIES)


def _mask(batch: int) -> Tensor:
    mask = torch.ones(3, batch, dtype=torch.bool)
    mask[0, ::3] = False
    mask[2, 1::3] = False
    return mask


def test_stratified_iwae_with_more_samples_is_a_tighter_bound():
    model, _ = _tiny("moe")
    x = tiny_batch(8)
    mask = _mask(8)

    def mean_bound(k: int) -> float:
        values = []
        with torch.no_grad():
            for seed in range(6):
                torch.manual_seed(seed)
                values.append(-float(StratifiedIWAE(num_samples=k)(model, x, mask).loss))
        return sum(values) / len(values)

    assert mean_bound(50) > mean_bound(1)


@pytest.mark.parametrize("model_name", ["moe", "mwb", "wb"])
def test_dreg_and_iwae_report_the_same_loss(model_name):
    model, _ = _tiny(model_name)
    x = tiny_batch(8)
    mask = _mask(8)
    torch.manual_seed(4)
    plain = StratifiedIWAE(num_samples=3)(model, x, mask)
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(4)
    dreg = StratifiedIWAE(num_samples=3, dreg=True)(model, x, mask)
    dreg.loss.backward()
    assert torch.allclose(plain.loss, dreg.loss, rtol=1e-6, atol=1e-4)
    for name in plain.terms:
        assert torch.allclose(plain.terms[name], dreg.terms[name], rtol=1e-6, atol=1e-4)
    # Only the encoders' gradients differ.
    encoders_differ = False
    for name, param in model.named_parameters():
        if name.startswith("decoders."):
            assert torch.allclose(param.grad, plain_grads[name], rtol=1e-4, atol=1e-4), name
        elif name.startswith("encoders.") and not torch.allclose(param.grad, plain_grads[name]):
            encoders_differ = True
    assert encoders_differ


def test_subsampled_elbo_term_masks():
    m, batch, k = 4, 300, 3
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(m, batch, generator=gen) < 0.7
    mask[0] |= ~mask.any(0)
    mask[:, :50] = True  # some fully observed rows
    torch.manual_seed(0)
    masks = SubsampledELBO(num_random_subsets=k).term_masks(mask)
    assert masks.shape == (m, 1 + m + k, batch)
    assert masks.dtype == torch.bool
    assert torch.equal(masks[:, 0], mask), "term 0 is the joint (observed) set"
    for j in range(m):
        expected = torch.zeros(m, batch, dtype=torch.bool)
        expected[j] = mask[j]
        assert torch.equal(masks[:, 1 + j], expected), f"term {1 + j} is modality {j} alone"
    randoms = masks[:, 1 + m :]
    assert not (randoms & ~mask.unsqueeze(1)).any(), "random subsets stay inside the observed set"
    sizes = randoms.sum(0)
    assert sizes.max() <= m - 1
    full_sizes = sizes[:, :50]
    assert full_sizes.min() >= 2
    assert set(full_sizes.unique().tolist()) == set(range(2, m))
    # Random subsets differ between rows.
    assert len({tuple(randoms[:, 0, b].tolist()) for b in range(50)}) > 1


def test_subsampled_elbo_has_no_random_subsets_for_two_modalities():
    mask = torch.ones(2, 5, dtype=torch.bool)
    masks = SubsampledELBO(num_random_subsets=4).term_masks(mask)
    assert masks.shape == (2, 3, 5)
    one = SubsampledELBO().term_masks(torch.ones(1, 5, dtype=torch.bool))
    assert one.shape == (1, 1, 5)


def test_random_subsets_sizes():
    mask = torch.ones(5, 2000, dtype=torch.bool)
    torch.manual_seed(0)
    subsets = random_subsets(mask, 2, 2, 4)
    assert subsets.shape == (5, 2, 2000)
    assert set(subsets.sum(0).unique().tolist()) == {2, 3, 4}


def test_subsampled_elbo_counts_every_term():
    # The loss is minus the sum of the terms' ELBOs; with beta = 0 and a unimodal batch,
    # the joint term and that modality's singleton term are the same posterior.
    model, _ = _tiny("poe")
    x = tiny_batch(8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[1] = True  # only vec observed
    torch.manual_seed(0)
    out = SubsampledELBO(beta=0.0)(model, x, mask)
    torch.manual_seed(0)
    joint_only = ELBO(beta=0.0)(model, x, mask)
    # Two of the four terms (joint, vec alone) are valid; the other singletons are empty.
    assert torch.allclose(out.loss, 2 * joint_only.loss, rtol=0.05)


@pytest.mark.parametrize("objective_cls", [ELBO, MixtureELBO])
def test_kl_weight_zero_leaves_only_the_reconstruction(objective_cls):
    model, _ = _tiny("mwb")
    x = tiny_batch(8)
    mask = _mask(8)
    torch.manual_seed(0)
    out = objective_cls(beta=3.0)(model, x, mask, kl_weight=0.0)
    assert torch.equal(out.loss, out.terms["rec"])
    assert out.terms["kl"] > 0
    torch.manual_seed(0)
    weighted = objective_cls(beta=3.0)(model, x, mask, kl_weight=0.5)
    assert torch.allclose(weighted.loss, weighted.terms["rec"] + 1.5 * weighted.terms["kl"], rtol=1e-5)


@pytest.mark.parametrize(
    "objective",
    [ELBO(beta=2.0), MixtureELBO(beta=2.0), SubsampledELBO(beta=2.0, num_random_subsets=1), StratifiedIWAE(3, beta=2.0)],
    ids=["elbo", "mixture", "subsampled", "iwae"],
)
def test_kl_weight_zero_equals_beta_zero(objective):
    model, _ = _tiny("mopoe")
    x = tiny_batch(8)
    mask = _mask(8)
    torch.manual_seed(0)
    no_kl = objective(model, x, mask, kl_weight=0.0).loss
    zero_beta = type(objective)(**{**objective.config(), "beta": 0.0})
    torch.manual_seed(0)
    assert torch.allclose(no_kl, zero_beta(model, x, mask).loss, rtol=1e-6)
    torch.manual_seed(0)
    assert not torch.allclose(no_kl, objective(model, x, mask).loss)


@pytest.mark.parametrize("cls", [ELBO, MixtureELBO, SubsampledELBO, StratifiedIWAE])
@pytest.mark.parametrize("beta", [-1.0, -1e-9, math.nan])
def test_negative_beta_is_a_user_error(cls, beta):
    with pytest.raises(UserError, match="beta"):
        cls(beta=beta)


def test_sample_counts_are_checked():
    with pytest.raises(UserError, match="K"):
        StratifiedIWAE(num_samples=0)
    with pytest.raises(UserError):
        SubsampledELBO(num_random_subsets=-1)


def test_subsampled_elbo_decodes_only_what_its_terms_reconstruct():
    """Skipping the decoder outputs that the term masks remove leaves the loss unchanged."""
    model, _ = build_model(tiny_config("poe"), MODALITIES)
    objective = SubsampledELBO(num_random_subsets=2)
    x = tiny_batch(6)
    mask = model.stack_mask(x)
    mask[1, :3] = False
    calls = []
    for name, decoder in model.decoders.items():
        decoder.body.register_forward_hook(lambda module, args, out, name=name: calls.append((name, args[0].shape[0])))
    torch.manual_seed(3)
    selective = objective(model, x, mask).loss
    rows_decoded = sum(n for _, n in calls)
    calls.clear()
    original = model.log_likelihood
    model.log_likelihood = lambda x, z, mask, decode_terms=None: original(x, z, mask)
    torch.manual_seed(3)
    everything = objective(model, x, mask).loss
    assert torch.equal(selective, everything)
    # joint + 2 random subsets decode all 3 modalities, each unimodal term only its own.
    assert rows_decoded == 6 * (3 * 3 + 3) and sum(n for _, n in calls) == 6 * 6 * 3
