"""MM-VAMP VAE, independent VAEs and the aggregated VAE (Sutter et al. 2024).

Closed forms are computed by hand in float64; the KL to a mixture, which has none, by
quadrature in one dimension.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from helpers import MODALITIES, NAMES, tiny_batch, tiny_config, tiny_splits
from omnivae.aggregators import MixtureOfExperts
from omnivae.distributions import ConcatenatedBlocks, GaussianExperts, diagonal_normal
from omnivae.errors import UserError
from omnivae.functional import subset_matrix, wasserstein_barycenter
from omnivae.methods.mmvamp import (
    RECIPES,
    BlockLatentVAE,
    IndependentELBO,
    MMVAMPELBO,
    masked_experts,
    mixture_kl_bound,
    mixture_kl_mc,
)
from omnivae.models import MODELS, build_model

M, B, D = len(NAMES), 6, 4
L = M * D
LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The recipes in the registry (``config.option`` and ``build_model`` read it)."""
    for recipe in RECIPES:
        monkeypatch.setitem(MODELS, recipe.name, recipe)


def _model(name: str = "mmvamp", dtype=torch.float64, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model, objective = build_model(tiny_config(name, **overrides), MODALITIES)
    return model.to(dtype), objective


def _batch(dtype=torch.float64, seed: int = 0) -> dict[str, Tensor]:
    return {k: v.to(dtype) for k, v in tiny_batch(B, seed).items()}


def _partial_mask() -> Tensor:
    """Rows 0-3 miss one modality each (row 3 two), rows 4-5 observe everything."""
    mask = torch.ones(M, B, dtype=torch.bool)
    mask[0, 0] = False
    mask[1, 1] = False
    mask[2, 2] = False
    mask[0, 3] = mask[2, 3] = False
    return mask


def _normal_log_density(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(z; loc, diag scale^2) summed over the last axis, written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def _kl_normal(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """KL(N(loc_q, scale_q^2) || N(loc_p, scale_p^2)), diagonal, summed over the last axis."""
    ratio = (scale_q / scale_p) ** 2
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1 - ratio.log()).sum(-1)


def _hand_experts(model: BlockLatentVAE, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Encoder outputs ``[M, B, D]`` straight from the networks."""
    outputs = [model.encoders[name](x[name]) for name in NAMES]
    return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])


def _random_experts(seed: int, shape=(M, B, D)) -> GaussianExperts:
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    scale = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.3
    return GaussianExperts(loc, scale)


def _quadrature_kl(loc: float, scale: float, components: list[tuple[float, float]]) -> float:
    """KL(N(loc, scale^2) || (1/K) sum_k N(l_k, s_k^2)) in one dimension by the trapezoid rule."""
    grid = torch.linspace(-40.0, 40.0, 400_001, dtype=torch.float64)
    log_q = -0.5 * ((grid - loc) / scale) ** 2 - math.log(scale) - 0.5 * LOG_2PI
    log_parts = torch.stack(
        [-0.5 * ((grid - l) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI for l, s in components]
    )
    log_h = torch.logsumexp(log_parts, 0) - math.log(len(components))
    return float(torch.trapezoid(log_q.exp() * (log_q - log_h), grid))


# -- the block posterior ----------------------------------------------------------------


def test_block_posterior_mean_and_log_prob_are_the_block_closed_forms():
    model, _ = _model()
    experts = _random_experts(1)
    mask = _partial_mask()
    posterior = model.block_posterior(experts, mask)
    assert isinstance(posterior, ConcatenatedBlocks)
    assert posterior.batch_shape == (B,) and posterior.event_shape == (L,)
    z = torch.randn(3, B, L, dtype=torch.float64)
    assert posterior.sample(torch.Size([5])).shape == (5, B, L)

    expected_mean = torch.empty(B, L, dtype=torch.float64)
    expected_log_prob = torch.zeros(3, B, dtype=torch.float64)
    for b in range(B):
        members = [j for j in range(M) if mask[j, b]]
        for m in range(M):
            block = slice(m * D, (m + 1) * D)
            if mask[m, b]:
                expected_mean[b, block] = experts.loc[m, b]
                expected_log_prob[:, b] += _normal_log_density(z[:, b, block], experts.loc[m, b], experts.scale[m, b])
            else:
                expected_mean[b, block] = sum(experts.loc[j, b] for j in members) / len(members)
                per_member = torch.stack(
                    [_normal_log_density(z[:, b, block], experts.loc[j, b], experts.scale[j, b]) for j in members]
                )
                expected_log_prob[:, b] += torch.logsumexp(per_member, 0) - math.log(len(members))
    torch.testing.assert_close(posterior.mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(posterior.log_prob(z), expected_log_prob, rtol=1e-12, atol=1e-12)


def test_mixture_blocks_sample_observed_members_only_and_uniformly():
    model, _ = _model()
    loc = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64).reshape(M, 1, 1).expand(M, 2, D).clone()
    scale = torch.full((M, 2, D), 1e-3, dtype=torch.float64)
    loc[1, 0] = -1e6  # unobserved in row 0: must never be drawn
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    torch.manual_seed(0)
    z = model.block_posterior(GaussianExperts(loc, scale), mask).sample(torch.Size([4000]))  # [N, 2, L]
    # Row 0 misses modality 1: its block holds draws of q_0 (near 10) or q_2 (near 30).
    block = z[:, 0, D : 2 * D]
    near_0, near_2 = (block - 10).abs() < 0.1, (block - 30).abs() < 0.1
    assert bool((near_0 | near_2).all())
    assert bool((near_0.all(-1) | near_2.all(-1)).all()), "one member per draw, for the whole block"
    assert 0.45 < near_0.all(-1).double().mean() < 0.55
    # Row 1 misses modality 2: its block comes from q_0 or q_1 (near 10 or 20).
    block = z[:, 1, 2 * D :]
    near = ((block - 10).abs() < 0.1) | ((block - 20).abs() < 0.1)
    assert bool(near.all())
    # Observed blocks are their own posteriors.
    assert bool(((z[:, 0, :D] - 10).abs() < 0.1).all()) and bool(((z[:, 0, 2 * D :] - 30).abs() < 0.1).all())


def test_decoders_read_their_own_block():
    model, _ = _model()
    z = torch.randn(B, L, dtype=torch.float64)
    other = z.clone()
    other[:, D:] += 1.0  # every block but the first
    assert torch.equal(model.decode_mean(z, ["img"])["img"], model.decode_mean(other, ["img"])["img"])
    assert not torch.equal(model.decode_mean(z, ["vec"])["vec"], model.decode_mean(other, ["vec"])["vec"])
    x = _batch()
    log_p = model.modality_log_likelihood("vec", x["vec"], z.expand(2, B, L))
    expected = model.decoders["vec"](z[:, D : 2 * D]).log_prob(x["vec"])
    torch.testing.assert_close(log_p, expected.expand(2, B))


def test_subset_posteriors_shape_and_unimodal_representations():
    model, _ = _model()
    x = _batch()
    subsets = subset_matrix(M)
    posterior = model.subset_posteriors(x, subsets)
    assert posterior.batch_shape == (subsets.shape[0], B)
    assert posterior.mean.shape == (subsets.shape[0], B, L)
    assert posterior.sample().shape == (subsets.shape[0], B, L)
    assert posterior.log_prob(posterior.sample(torch.Size([2]))).shape == (2, subsets.shape[0], B)
    loc, _ = _hand_experts(model, x)
    for m in range(M):  # the singleton {m}: q(z_m | x_m)'s mean in every block
        torch.testing.assert_close(posterior.mean[m], loc[m].repeat(1, M))
    full = posterior.mean[-1]
    torch.testing.assert_close(full, loc.movedim(0, 1).reshape(B, L))
    assert model.prior().event_shape == (L,)
    assert model.generate(3)["img"].shape == (3, 3, 28, 28)


def test_joint_posterior_uses_the_prior_on_unobserved_blocks():
    model, _ = _model()
    x = _batch()
    mask = _partial_mask()
    proposal = model.joint_posterior(x, mask)
    loc, scale = _hand_experts(model, x)
    z = proposal.sample(torch.Size([3]))
    expected = torch.zeros(3, B, dtype=torch.float64)
    for m in range(M):
        block = z[..., m * D : (m + 1) * D]
        own = _normal_log_density(block, loc[m], scale[m])
        standard = _normal_log_density(block, torch.zeros(()), torch.ones(()))
        expected += torch.where(mask[m], own, standard)
    torch.testing.assert_close(proposal.log_prob(z), expected, rtol=1e-12, atol=1e-12)


# -- the KL to the mixture prior --------------------------------------------------------


@pytest.mark.parametrize("observed", [[True, True, True], [True, False, True]])
def test_mc_kl_is_unbiased_for_the_quadrature_kl(observed):
    loc = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64).reshape(M, 1, 1)
    scale = torch.tensor([0.6, 1.3, 0.8], dtype=torch.float64).reshape(M, 1, 1)
    mask = torch.tensor(observed).reshape(M, 1)
    experts = masked_experts(GaussianExperts(loc, scale), mask)
    prior = MixtureOfExperts()(experts, mask)
    posterior = diagonal_normal(experts.loc, experts.scale)
    torch.manual_seed(0)
    n = 200_000
    z = posterior.sample(torch.Size([n]))  # [N, M, 1, 1]
    estimates = mixture_kl_mc(posterior, prior, z)[..., 0]  # [N, M]
    members = [(float(loc[j]), float(scale[j])) for j in range(M) if observed[j]]
    for m in range(M):
        if not observed[m]:
            continue
        exact = _quadrature_kl(float(loc[m]), float(scale[m]), members)
        mean, error = estimates[:, m].mean(), estimates[:, m].std() / math.sqrt(n)
        assert abs(float(mean) - exact) < 5 * float(error) + 1e-6, (m, float(mean), exact)


def test_pairwise_bound_is_the_average_pairwise_kl_and_upper_bounds_the_kl():
    for seed in range(5):
        experts = _random_experts(seed, shape=(M, 1, 1))
        mask = torch.tensor([True, True, seed % 2 == 0]).reshape(M, 1)
        prior = MixtureOfExperts()(experts, mask)
        bound = mixture_kl_bound(diagonal_normal(experts.loc, experts.scale), prior)[:, 0]  # [M]
        members = [j for j in range(M) if mask[j, 0]]
        for m in members:
            pairwise = sum(
                float(_kl_normal(experts.loc[m, 0], experts.scale[m, 0], experts.loc[j, 0], experts.scale[j, 0]))
                for j in members
            ) / len(members)
            assert float(bound[m]) == pytest.approx(pairwise, rel=1e-12, abs=1e-14)
            exact = _quadrature_kl(
                float(experts.loc[m, 0]), float(experts.scale[m, 0]),
                [(float(experts.loc[j, 0]), float(experts.scale[j, 0])) for j in members],
            )
            assert float(bound[m]) >= exact - 1e-9


# -- the objectives ---------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["pairwise", "mc"])
def test_mmvamp_loss_equals_a_hand_computation(estimator):
    model, _ = _model(rescale_likelihoods=True, beta=0.7, options={"kl_estimator": estimator})
    objective = MMVAMPELBO(beta=0.7, kl_estimator=estimator)
    x, mask, kl_weight = _batch(), _partial_mask(), 0.5
    torch.manual_seed(5)
    out = objective(model, x, mask, kl_weight)

    loc, scale = _hand_experts(model, x)
    keep = mask.unsqueeze(-1)
    loc, scale = torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)
    torch.manual_seed(5)
    # Normal.rsample draws its noise with Tensor.normal_ on the sample's shape.
    z = loc + scale * torch.empty(M, B, D, dtype=torch.float64).normal_()
    weights = model.likelihood_weights
    total = torch.zeros(B, dtype=torch.float64)
    rec_total = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        members = [j for j in range(M) if mask[j, b]]
        for m in members:
            rec = weights[m] * model.decoders[NAMES[m]](z[m, b : b + 1]).log_prob(x[NAMES[m]][b : b + 1])[0]
            if estimator == "pairwise":
                kl = sum(_kl_normal(loc[m, b], scale[m, b], loc[j, b], scale[j, b]) for j in members) / len(members)
            else:
                log_h = torch.logsumexp(
                    torch.stack([_normal_log_density(z[m, b], loc[j, b], scale[j, b]) for j in members]), 0
                ) - math.log(len(members))
                kl = _normal_log_density(z[m, b], loc[m, b], scale[m, b]) - log_h
            total[b] += rec - 0.7 * kl_weight * kl
            rec_total[b] += rec
    torch.testing.assert_close(out.loss, -total.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["rec"], -rec_total.mean(), rtol=1e-12, atol=1e-12)


def test_independent_is_mmvamp_with_the_standard_normal_prior():
    model, _ = _model(beta=1.3)
    x, mask = _batch(), _partial_mask()
    torch.manual_seed(2)
    independent = IndependentELBO(beta=1.3)(model, x, mask, 0.8)
    # Annealing starts from the standard normal prior: lambda = 0 at the first call.
    annealed = MMVAMPELBO(beta=1.3, prior_annealing_steps=4)
    torch.manual_seed(2)
    first = annealed(model, x, mask, 0.8)
    torch.testing.assert_close(first.loss, independent.loss, rtol=1e-14, atol=1e-14)
    assert float(first.terms["lambda"]) == 0.0

    loc, scale = _hand_experts(model, x)
    keep = mask.unsqueeze(-1)
    loc, scale = torch.where(keep, loc, 0.0), torch.where(keep, scale, 1.0)
    torch.manual_seed(2)
    z = loc + scale * torch.empty(M, B, D, dtype=torch.float64).normal_()
    total = torch.zeros(B, dtype=torch.float64)
    for m, name in enumerate(NAMES):
        rec = model.decoders[name](z[m]).log_prob(x[name])
        kl = _kl_normal(loc[m], scale[m], torch.zeros(()), torch.ones(()))
        total += torch.where(mask[m], rec - 1.3 * 0.8 * kl, 0.0)
    torch.testing.assert_close(independent.loss, -total.mean(), rtol=1e-12, atol=1e-12)


def test_prior_annealing_ramps_linearly_and_counts_training_calls_only():
    model, _ = _model()
    x, mask = _batch(), _partial_mask()
    objective = MMVAMPELBO(prior_annealing_steps=4)
    weights = [float(objective(model, x, mask).terms["lambda"]) for _ in range(6)]
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert int(model.annealing_step) == 6
    model.eval()
    objective(model, x, mask)
    with torch.no_grad():
        model.train()
        objective(model, x, mask)
    assert int(model.annealing_step) == 6, "evaluation calls do not advance the schedule"
    # Past the ramp the loss is the plain MM-VAMP loss.
    torch.manual_seed(3)
    annealed = objective(model, x, mask)
    torch.manual_seed(3)
    plain = MMVAMPELBO()(model, x, mask)
    torch.testing.assert_close(annealed.loss, plain.loss, rtol=1e-14, atol=1e-14)
    assert "annealing_step" in model.state_dict()


@pytest.mark.parametrize("estimator", ["pairwise", "mc"])
def test_masked_experts_get_exactly_zero_gradient_through_the_mixture_prior(estimator):
    experts = _random_experts(3)
    mask = _partial_mask()
    loc = experts.loc.clone()
    scale = experts.scale.clone()
    # Extreme values in masked entries must not leak NaN or inf into anything.
    loc[~mask] = 1e30
    scale[~mask] = 1e-30
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    clean = masked_experts(GaussianExperts(loc, scale), mask)
    posterior = diagonal_normal(clean.loc, clean.scale)
    prior = MixtureOfExperts()(clean, mask)
    torch.manual_seed(0)
    z = posterior.rsample()
    kl = mixture_kl_mc(posterior, prior, z) if estimator == "mc" else mixture_kl_bound(posterior, prior)
    total = torch.where(mask, kl, 0.0).sum()
    assert torch.isfinite(total)
    total.backward()
    for grad in (loc.grad, scale.grad):
        assert torch.isfinite(grad).all()
        assert bool((grad[~mask] == 0).all())
        assert bool((grad[mask] != 0).any())


@pytest.mark.parametrize("name, options", [("mmvamp", {}), ("mmvamp", {"kl_estimator": "mc"}),
                                           ("mmvamp", {"prior_annealing_steps": 3}), ("independent", {})])
def test_a_modality_masked_everywhere_gets_zero_gradient(name, options):
    model, objective = _model(name, options=options)
    mask = torch.ones(M, B, dtype=torch.bool)
    mask[2] = False
    mask[0, :2] = False
    torch.manual_seed(1)
    objective(model, _batch(), mask).loss.backward()
    for param_name, param in model.named_parameters():
        if param_name.startswith(("encoders.bits.", "decoders.bits.")):
            assert param.grad is None or bool((param.grad == 0).all()), param_name
        else:
            assert param.grad is not None and bool((param.grad != 0).any()), param_name


# -- the aggregated VAE -----------------------------------------------------------------


def test_aggregated_posterior_is_the_average_of_means_and_standard_deviations():
    model, objective = _model("aggregated")
    assert type(model).__name__ == "MultimodalVAE"
    x, mask = _batch(), _partial_mask()
    loc, scale = _hand_experts(model, x)
    weights = mask.to(torch.float64) / mask.sum(0)  # [M, B], equal over the observed
    expected_loc = (weights.unsqueeze(-1) * loc).sum(0)  # Eq. 15
    expected_scale = (weights.unsqueeze(-1) * scale).sum(0)  # Eq. 16 (mean of the sigma_m)
    posterior = model.encode(x, mask).full_component()
    torch.testing.assert_close(posterior.mean, expected_loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(posterior.base_dist.scale, expected_scale, rtol=1e-12, atol=1e-12)
    # ... which is the diagonal 2-Wasserstein barycenter with equal weights (Qiu et al. 2025, Eq. 7),
    bar_loc, bar_scale = wasserstein_barycenter(loc, scale, mask=mask)
    torch.testing.assert_close(bar_loc, expected_loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bar_scale, expected_scale, rtol=1e-12, atol=1e-12)
    # ... trained with the ELBO, the same model and objective as ``wb``.
    wb, wb_objective = _model("wb")
    assert type(objective) is type(wb_objective) and objective.config() == wb_objective.config()
    assert torch.equal(wb.encode(x, mask).mean, model.encode(x, mask).mean)
    # Its unimodal representations (App. B.2.3) are the singleton subsets' posteriors.
    singles = model.subset_posteriors(x, torch.eye(M, dtype=torch.bool)).mean
    torch.testing.assert_close(singles, loc, rtol=1e-12, atol=1e-12)


# -- generic metrics and configuration --------------------------------------------------


@pytest.mark.parametrize("name", ["mmvamp", "independent"])
@pytest.mark.parametrize("observed", [1.0, 0.7])
def test_generic_metrics_run_unchanged(name, observed, tmp_path: Path):
    from omnivae.metrics.classifiers import get_classifiers
    from omnivae.metrics.coherence import conditional_coherence, joint_coherence
    from omnivae.metrics.likelihood import conditional_log_likelihoods, joint_log_likelihood
    from omnivae.metrics.probe import linear_probe
    from omnivae.metrics.reconstruction import reconstruction_error

    splits = tiny_splits(48, 24, observed=observed)
    model, _ = _model(name, dtype=torch.float32)
    probe = linear_probe(model, splits.train, splits.test)
    assert set(probe["by_size"]) == {"1", "2", "3"}
    clf = get_classifiers("tiny", splits.train, splits.test, epochs=1, batch_size=16, cache=tmp_path, progress=False)
    coherence = conditional_coherence(model, splits.test, clf, batch_size=10)
    assert all(0.0 <= v <= 1.0 for v in coherence["per_subset_mean"].values())
    assert 0.0 <= joint_coherence(model, clf, num_samples=20, batch_size=10) <= 1.0
    assert math.isfinite(joint_log_likelihood(model, splits.test, num_samples=3, batch_size=10))
    conditional = conditional_log_likelihoods(model, splits.test, num_samples=3, batch_size=10)
    assert all(math.isfinite(v) for v in conditional["conditional"].values())
    errors = reconstruction_error(model, splits.test, batch_size=10)
    assert set(errors["cross"]) == set(NAMES)
    assert model.training


def test_options_and_unsupported_settings_are_refused_clearly():
    assert {r.name for r in RECIPES} == {"mmvamp", "independent", "aggregated"}
    assert MODELS["mmvamp"].options == {"kl_estimator": "pairwise", "prior_annealing_steps": 0}
    _, objective = _model("mmvamp")
    assert objective.kl_estimator == "pairwise" and objective.prior_annealing_steps == 0
    with pytest.raises(UserError, match="kl_estimator"):
        _model("mmvamp", options={"kl_estimator": "exact"})
    with pytest.raises(UserError, match="prior_annealing_steps of mmvamp must be an integer"):
        _model("mmvamp", options={"prior_annealing_steps": 1.5})
    with pytest.raises(UserError, match="prior_annealing_steps"):
        _model("mmvamp", options={"prior_annealing_steps": -1})
    with pytest.raises(UserError, match="no option"):
        _model("independent", options={"kl_estimator": "mc"})
    with pytest.raises(UserError, match="diag"):
        _model("mmvamp", covariance="lowrank", rank=2)
    with pytest.raises(UserError, match="prior=.normal."):
        _model("independent", prior="laplace")
