"""Property tests (hypothesis) of the functional core and every aggregator, and their
numerical health at extreme expert variances.

Strategies draw the shapes (1-5 modalities, batch 1-4, latent 1-3), expert means and
log-variances from wide ranges and masks with at least one observed modality per row;
everything runs in float64. Properties:

- permuting modalities (experts and mask together) leaves the aggregate's mean,
  covariance and log-density unchanged;
- a masked expert's parameters, whatever they are (huge, zero, negative, inf, NaN),
  change nothing;
- the product of K identical experts has K times the precision (plus one with the prior
  expert), and the barycenter of identical distributions is that distribution;
- the mixtures' densities integrate to one (1-D and 2-D quadrature);
- products and barycenters stay finite and correct when an expert is extremely confident
  (variance 1e-8) or extremely vague (1e8), and mixture densities of components far apart
  stay finite (log-sum-exp).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import Distribution, Independent, MultivariateNormal

from omnivae.aggregators import AGGREGATORS, Aggregator, build_aggregator
from omnivae.distributions import GaussianExperts, SubsetMixture
from omnivae.functional import (
    bures_wasserstein_barycenter,
    gaussian_log_prob,
    log_mean_exp,
    poe,
    wasserstein_barycenter,
)
from omnivae.models import PriorDividedProduct
from omnivae.nn import GaussianEncoder, soft_clamp

Tensor = torch.Tensor

DTYPE = torch.float64
# Every registered aggregator, plus the one models.py defines for JMVAE's subsets.
AGGREGATOR_NAMES = [*AGGREGATORS, "prior-divided"]
# Aggregators that take experts with a low-rank covariance factor.
FULL_COVARIANCE = ("moe", "wb", "mwb")
MIXTURES = [name for name, cls in AGGREGATORS.items() if cls.subsets != "full"]

# Variances from 1e-8 to 1e8, as the brief of the numerical-health checks asks.
LOGVAR_WIDE = (math.log(1e-8), math.log(1e8))
LOC_WIDE = 1e3

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(name: str) -> Aggregator:
    if name == "prior-divided":
        return PriorDividedProduct()
    return build_aggregator(name)


# -- strategies ---------------------------------------------------------------------------


@st.composite
def expert_sets(
    draw,
    max_m: int = 5,
    max_b: int = 4,
    max_d: int = 3,
    min_m: int = 1,
    loc: float = LOC_WIDE,
    logvar: tuple[float, float] = LOGVAR_WIDE,
    rank: int = 0,
    factor: float = 2.0,
    d: int | None = None,
) -> tuple[GaussianExperts, Tensor]:
    """Experts ``[M, B, D]`` (a low-rank factor when ``rank``) and a mask with one
    observed modality at least per row."""
    m = draw(st.integers(min_m, max_m))
    b = draw(st.integers(1, max_b))
    d = draw(st.integers(1, max_d)) if d is None else d
    floats = dict(allow_nan=False, allow_infinity=False)
    locs = draw(arrays(np.float64, (m, b, d), elements=st.floats(-loc, loc, **floats)))
    logvars = draw(arrays(np.float64, (m, b, d), elements=st.floats(*logvar, **floats)))
    mask = draw(arrays(np.bool_, (m, b)))
    keep = draw(arrays(np.int64, (b,), elements=st.integers(0, m - 1)))
    mask[keep, np.arange(b)] = True
    cov_factor = None
    if rank:
        cov_factor = torch.from_numpy(
            draw(arrays(np.float64, (m, b, d, rank), elements=st.floats(-factor, factor, **floats)))
        )
    scale = torch.from_numpy(logvars).mul(0.5).exp()
    return GaussianExperts(torch.from_numpy(locs), scale, cov_factor), torch.from_numpy(mask)


def permutations(m: int):
    return st.permutations(list(range(m)))


# -- helpers ------------------------------------------------------------------------------


def components(q: Distribution) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
    """(mean, covariance) of every component and the log-weights (None for one Gaussian)."""

    def moments(dist: Distribution) -> tuple[Tensor, Tensor]:
        if isinstance(dist, MultivariateNormal):
            return dist.loc.expand(dist.batch_shape + dist.event_shape), dist.covariance_matrix
        assert isinstance(dist, Independent)
        return dist.mean, torch.diag_embed(dist.variance)

    if isinstance(q, SubsetMixture):
        if isinstance(q.subsets, str) and q.subsets == "full":
            return moments(q.full_component()), None
        comps, log_weights = q.all_components()
        return moments(comps), log_weights
    return moments(q), None


def mixture_moments(q: Distribution) -> tuple[Tensor, Tensor]:
    """Mean ``[B, D]`` and covariance ``[B, D, D]`` of a Gaussian or a Gaussian mixture,
    with the spread of the means taken about the mixture mean (no cancellation)."""
    (mean, cov), log_weights = components(q)
    if log_weights is None:
        return mean, cov
    w = log_weights.exp()  # [S, B]
    total = (w.unsqueeze(-1) * mean).sum(0)
    centred = mean - total
    spread = cov + centred.unsqueeze(-1) * centred.unsqueeze(-2)
    return total, (w[..., None, None] * spread).sum(0)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-8) -> None:
    """Relative closeness, with an absolute floor scaled to the tensors' magnitude."""
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    scale = 1.0 + expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * 1e-2 * scale)


def probe_points(experts: GaussianExperts, q: Distribution) -> Tensor:
    """Where to compare densities: every expert's mean and the aggregate's mean, ``[M + 1, B, D]``."""
    return torch.cat([experts.loc, mixture_moments(q)[0].unsqueeze(0)])


def permute(experts: GaussianExperts, mask: Tensor, order: list[int]) -> tuple[GaussianExperts, Tensor]:
    index = torch.tensor(order)
    factor = None if experts.cov_factor is None else experts.cov_factor[index]
    return GaussianExperts(experts.loc[index], experts.scale[index], factor), mask[index]


def supports(name: str, experts: GaussianExperts) -> bool:
    return experts.is_diagonal or name in FULL_COVARIANCE


def posteriors(name: str, experts: GaussianExperts, mask: Tensor) -> list[Distribution]:
    aggregator = make(name)
    return [aggregator(experts, mask), aggregator.infer(experts, mask)]


# -- permutation invariance ---------------------------------------------------------------


def check_permutation(name: str, experts: GaussianExperts, mask: Tensor, order: list[int], rtol: float) -> None:
    shuffled, shuffled_mask = permute(experts, mask, order)
    for q, p in zip(posteriors(name, experts, mask), posteriors(name, shuffled, shuffled_mask)):
        mean_q, cov_q = mixture_moments(q)
        mean_p, cov_p = mixture_moments(p)
        close(mean_p, mean_q, rtol)
        close(cov_p, cov_q, rtol)
        points = probe_points(experts, q)
        close(p.log_prob(points), q.log_prob(points), rtol)


@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
@FAST
@given(data=st.data())
def test_permuting_modalities_changes_nothing(name, data):
    experts, mask = data.draw(expert_sets())
    order = data.draw(permutations(experts.num_modalities))
    check_permutation(name, experts, mask, order, rtol=1e-8)


@pytest.mark.parametrize("name", FULL_COVARIANCE)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_permuting_modalities_changes_nothing_full_covariance(name, data):
    # The Bures-Wasserstein fixed point runs eigendecompositions, whose rounding grows
    # with the condition number: variances span e^-4..e^4 here.
    experts, mask = data.draw(expert_sets(max_m=4, loc=10.0, logvar=(-4.0, 4.0), rank=1))
    order = data.draw(permutations(experts.num_modalities))
    check_permutation(name, experts, mask, order, rtol=1e-6)


@FAST
@given(data=st.data())
def test_functional_core_is_permutation_invariant(data):
    experts, mask = data.draw(expert_sets())
    order = torch.tensor(data.draw(permutations(experts.num_modalities)))
    for prior_expert in (True, False):
        a = poe(experts.loc, experts.var, mask, prior_expert=prior_expert)
        b = poe(experts.loc[order], experts.var[order], mask[order], prior_expert=prior_expert)
        for x, y in zip(a, b):
            close(y, x)
    weights = torch.from_numpy(
        data.draw(arrays(np.float64, (experts.num_modalities,), elements=st.floats(0.1, 10.0)))
    )
    a = wasserstein_barycenter(experts.loc, experts.scale, weights, mask)
    b = wasserstein_barycenter(experts.loc[order], experts.scale[order], weights[order], mask[order])
    for x, y in zip(a, b):
        close(y, x)


# -- masked experts drop out --------------------------------------------------------------

GARBAGE = [0.0, -1.0, 1e-300, 1e300, -1e300, math.inf, -math.inf, math.nan]


def corrupt(experts: GaussianExperts, mask: Tensor, data) -> GaussianExperts:
    """Experts whose masked entries are replaced by arbitrary values, finite or not."""
    hidden = ~mask

    def fill(t: Tensor) -> Tensor:
        values = torch.tensor(
            data.draw(st.lists(st.sampled_from(GARBAGE), min_size=t.numel(), max_size=t.numel())),
            dtype=t.dtype,
        ).reshape(t.shape)
        where = hidden.reshape(*hidden.shape, *([1] * (t.dim() - hidden.dim())))
        return torch.where(where, values, t)

    factor = None if experts.cov_factor is None else fill(experts.cov_factor)
    return GaussianExperts(fill(experts.loc), fill(experts.scale), factor)


def check_masked(name: str, experts: GaussianExperts, mask: Tensor, data, rtol: float) -> None:
    garbage = corrupt(experts, mask, data)
    for q, p in zip(posteriors(name, experts, mask), posteriors(name, garbage, mask)):
        mean_q, cov_q = mixture_moments(q)
        mean_p, cov_p = mixture_moments(p)
        # The masked entries are not used at all, so the results are identical, not close.
        assert torch.equal(mean_p, mean_q) and torch.equal(cov_p, cov_q)
        points = probe_points(experts, q)
        assert torch.equal(p.log_prob(points), q.log_prob(points))
        z = p.rsample(torch.Size([2]))
        assert torch.isfinite(z).all()


@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
@FAST
@given(data=st.data())
def test_masked_experts_change_nothing_whatever_their_values(name, data):
    experts, mask = data.draw(expert_sets(min_m=2))
    check_masked(name, experts, mask, data, rtol=0)


@pytest.mark.parametrize("name", FULL_COVARIANCE)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_masked_full_covariance_experts_change_nothing(name, data):
    experts, mask = data.draw(expert_sets(min_m=2, max_m=4, loc=10.0, logvar=(-4.0, 4.0), rank=1))
    check_masked(name, experts, mask, data, rtol=0)


@FAST
@given(data=st.data())
def test_functional_masked_experts_change_nothing(data):
    experts, mask = data.draw(expert_sets(min_m=2))
    garbage = corrupt(experts, mask, data)
    for prior_expert in (True, False):
        a = poe(experts.loc, experts.var, mask, prior_expert=prior_expert)
        b = poe(garbage.loc, garbage.var, mask, prior_expert=prior_expert)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    a = wasserstein_barycenter(experts.loc, experts.scale, None, mask)
    b = wasserstein_barycenter(garbage.loc, garbage.scale, None, mask)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# -- closed forms -------------------------------------------------------------------------


@FAST
@given(data=st.data(), k=st.integers(1, 5))
def test_product_of_identical_experts_adds_precisions(data, k):
    experts, _ = data.draw(expert_sets(max_m=1))
    loc = experts.loc.expand(k, *experts.loc.shape[1:])
    var = experts.var.expand(k, *experts.var.shape[1:])
    mu, out_var = poe(loc, var, prior_expert=False)
    close(out_var, experts.var[0] / k)
    close(mu, experts.loc[0])
    mu, out_var = poe(loc, var, prior_expert=True)
    precision = k / experts.var[0] + 1.0
    close(out_var, precision.reciprocal())
    close(mu, (k * experts.loc[0] / experts.var[0]) / precision)
    # The aggregators agree: poe with its prior expert, mopoe's full set without it.
    mask = torch.ones(k, loc.shape[1], dtype=torch.bool)
    same = GaussianExperts(loc, experts.scale.expand_as(loc))
    _, cov = mixture_moments(make("poe").infer(same, mask))
    close(cov, torch.diag_embed(precision.reciprocal()))
    _, cov = mixture_moments(make("mopoe").infer(same, mask))
    close(cov, torch.diag_embed(experts.var[0] / k))


@FAST
@given(data=st.data(), k=st.integers(1, 5))
def test_barycenter_of_identical_distributions_is_that_distribution(data, k):
    experts, _ = data.draw(expert_sets(max_m=1))
    loc = experts.loc.expand(k, *experts.loc.shape[1:])
    scale = experts.scale.expand_as(loc)
    mask = torch.ones(k, loc.shape[1], dtype=torch.bool)
    mu, std = wasserstein_barycenter(loc, scale, None, mask)
    close(mu, experts.loc[0])
    close(std, experts.scale[0])
    for name in ("wb", "mwb", "moe"):
        q = make(name)(GaussianExperts(loc, scale), mask)
        mean, cov = mixture_moments(q)
        close(mean, experts.loc[0])
        close(cov, torch.diag_embed(experts.var[0]))


@settings(max_examples=15, deadline=None)
@given(data=st.data(), k=st.integers(1, 4))
def test_full_covariance_barycenter_of_identical_distributions(data, k):
    experts, _ = data.draw(expert_sets(max_m=1, loc=100.0, logvar=(-6.0, 6.0), rank=2))
    loc = experts.loc.expand(k, *experts.loc.shape[1:])
    same = GaussianExperts(loc, experts.scale.expand_as(loc), experts.cov_factor.expand(k, *experts.cov_factor.shape[1:]))
    target = experts.covariance()[0]
    mask = torch.ones(k, loc.shape[1], dtype=torch.bool)
    mean, cov = bures_wasserstein_barycenter(same.loc, same.covariance(), None, mask, iters=10, tol=None)
    close(mean, experts.loc[0])
    close(cov, target, rtol=1e-7)
    for name in FULL_COVARIANCE:
        mean, cov = mixture_moments(make(name)(same, mask))
        close(mean, experts.loc[0])
        close(cov, target, rtol=1e-7)


# -- mixtures are normalised ----------------------------------------------------------------


def quadrature_mass(q: Distribution, d: int, batch: int) -> Tensor:
    if d == 1:
        x = torch.linspace(-16, 16, 3201, dtype=DTYPE)
        density = q.log_prob(x[:, None, None].expand(-1, batch, 1)).exp()
        return torch.trapezoid(density, x, dim=0)
    x = torch.linspace(-13, 13, 261, dtype=DTYPE)
    grid = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)
    density = q.log_prob(grid[:, :, None, :].expand(-1, -1, batch, -1)).exp()
    return torch.trapezoid(torch.trapezoid(density, x, dim=0), x, dim=0)


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_densities_integrate_to_one(name, d, data):
    # Components with standard deviations above ~0.4 (so the grid resolves them) whose
    # mass lies well inside the grid.
    # The product over the prior is clamped (not normalisable) when its experts are
    # together broader than the prior: keep them no broader than it.
    logvar = (-0.5, 0.0) if name == "prior-divided" else (-0.5, 1.0)
    experts, mask = data.draw(expert_sets(max_m=3, max_b=2, d=d, loc=3.0, logvar=logvar))
    for q in posteriors(name, experts, mask):
        mass = quadrature_mass(q, d, experts.loc.shape[1])
        torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FULL_COVARIANCE)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_full_covariance_densities_integrate_to_one(name, data):
    experts, mask = data.draw(expert_sets(max_m=3, max_b=2, d=2, loc=3.0, logvar=(-0.5, 1.0), rank=1, factor=1.0))
    for q in posteriors(name, experts, mask):
        mass = quadrature_mass(q, 2, experts.loc.shape[1])
        torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=1e-6)


# -- numerical health ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_with_an_extremely_confident_and_an_extremely_vague_expert(dtype, prior_expert):
    # Expert 0 is sure (var 1e-8), expert 1 knows nothing (var 1e8), expert 2 is ordinary.
    loc = torch.tensor([[[1.0]], [[-500.0]], [[3.0]]], dtype=dtype, requires_grad=True)
    var = torch.tensor([[[1e-8]], [[1e8]], [[1.0]]], dtype=dtype, requires_grad=True)
    mask = torch.ones(3, 1, dtype=torch.bool)
    mu, out_var = poe(loc, var, mask, prior_expert=prior_expert)
    precision = 1e8 + 1e-8 + 1.0 + (1.0 if prior_expert else 0.0)
    expected_mu = (1.0 * 1e8 - 500.0 * 1e-8 + 3.0) / precision
    torch.testing.assert_close(out_var, torch.full_like(out_var, 1 / precision), rtol=1e-6, atol=0)
    torch.testing.assert_close(mu, torch.full_like(mu, expected_mu), rtol=1e-6, atol=0)
    (mu.sum() + out_var.log().sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(var.grad).all()
    # The vague expert alone (with or without the prior) is vague; the sure one is sure.
    only_vague = torch.tensor([[False], [True], [False]])
    _, v = poe(loc, var, only_vague, prior_expert=prior_expert)
    expected = 1 / (1e-8 + 1.0) if prior_expert else 1e8
    torch.testing.assert_close(v, torch.full_like(v, expected), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_aggregators_stay_finite_with_extreme_experts(name, dtype):
    # Rows: sure + vague, sure alone, vague alone, vague + ordinary, all three.
    loc = torch.tensor([[2.0, 1e3], [-1e3, 0.5], [0.0, -2.0]], dtype=dtype)  # [M=3, D=2]
    loc = loc[:, None, :].expand(3, 5, 2).clone()
    scale = torch.tensor([1e-4, 1e4, 1.0], dtype=dtype)[:, None, None].expand(3, 5, 2).clone()
    mask = torch.tensor(
        [[1, 1, 0, 0, 1], [1, 0, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool
    )
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    experts = GaussianExperts(loc, scale)
    aggregator = make(name)
    q = aggregator(experts, mask)
    z = q.rsample(torch.Size([3]))
    log_q = q.log_prob(z)
    mean, cov = mixture_moments(q)
    for t in (z, log_q, mean, cov):
        assert torch.isfinite(t).all(), name
    (log_q.sum() + z.sum() + mean.sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    # The sure expert alone is returned as it is, by every barycenter.
    single = aggregator.infer(experts, mask)
    mean, cov = mixture_moments(single)
    torch.testing.assert_close(mean[1], loc[0, 1].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cov[1].diagonal(), scale[0, 1].detach().pow(2), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_barycenters_of_extreme_experts_are_correct(dtype):
    loc = torch.tensor([[[1.0]], [[-3.0]]], dtype=dtype)
    std = torch.tensor([[[1e-4]], [[1e4]]], dtype=dtype)
    mu, out = wasserstein_barycenter(loc, std)
    torch.testing.assert_close(mu, torch.full_like(mu, -1.0))
    torch.testing.assert_close(out, torch.full_like(out, (1e-4 + 1e4) / 2))
    # Full covariances: a sure and a vague isotropic expert commute, so the answer is Remark 2.
    covs = torch.stack([1e-8 * torch.eye(2, dtype=dtype), 1e8 * torch.eye(2, dtype=dtype)])
    mean, cov = bures_wasserstein_barycenter(torch.zeros(2, 2, dtype=dtype), covs, iters=10, tol=None)
    expected = ((1e-4 + 1e4) / 2) ** 2 * torch.eye(2, dtype=dtype)
    assert torch.isfinite(cov).all()
    torch.testing.assert_close(cov, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", MIXTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_density_of_components_far_apart_stays_finite(name, dtype):
    # Two narrow components 1e3 apart: at either one's mean the other has density
    # exp(-5e5); a mixture summed in linear space would give log(0 + ...) problems
    # only if computed naively, and -inf between them.
    loc = torch.tensor([[[-500.0]], [[500.0]]], dtype=dtype)
    scale = torch.full_like(loc, 1e-2)
    mask = torch.ones(2, 1, dtype=torch.bool)
    q = make(name)(GaussianExperts(loc, scale), mask)
    points = torch.tensor([[[-500.0]], [[500.0]], [[0.0]], [[1e4]]], dtype=dtype)
    log_q = q.log_prob(points)
    assert torch.isfinite(log_q).all()
    # At a component's mean: its own density times its weight (1/2 for moe, 1/3 for the
    # subset mixtures), the other components contributing exp(-huge) = 0.
    weight = 0.5 if name == "moe" else 1.0 / 3.0
    own = -math.log(1e-2) - 0.5 * math.log(2 * math.pi) + math.log(weight)
    torch.testing.assert_close(log_q[:2, 0], torch.full((2,), own, dtype=dtype), rtol=1e-5, atol=1e-4)


def test_log_mean_exp_and_gaussian_log_prob_are_stable():
    x = torch.tensor([-1e4, -1e4 + 1.0, 1e4, 1e4 - 2.0], dtype=DTYPE)
    out = log_mean_exp(x.reshape(2, 2), dim=1)
    expected = torch.tensor([-1e4 + math.log((math.exp(-1) + 1) / 2) + 1.0, 1e4 + math.log((1 + math.exp(-2)) / 2)], dtype=DTYPE)
    torch.testing.assert_close(out, expected)
    lp = gaussian_log_prob(torch.tensor([1e3]), torch.tensor([0.0]), torch.tensor([1e-8]))
    assert torch.isfinite(lp).all()


@pytest.mark.parametrize("scale_inputs", [1.0, 1e3, 1e6])
def test_encoder_scales_are_bounded_whatever_the_inputs(scale_inputs):
    torch.manual_seed(0)
    encoder = GaussianEncoder(torch.nn.Identity(), 8, 4)
    with torch.no_grad():
        encoder.logvar.weight.mul_(100.0)
    x = scale_inputs * torch.randn(64, 8)
    loc, scale, _ = encoder(x)
    low = math.exp(0.5 * GaussianEncoder.logvar_min)
    high = math.exp(0.5 * GaussianEncoder.logvar_max)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert scale.min() >= low * (1 - 1e-6) and scale.max() <= high * (1 + 1e-6)
    loss = scale.log().sum() + loc.sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


@given(x=st.floats(-1e30, 1e30, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_soft_clamp_stays_in_its_interval(x):
    low, high = -12.0, 8.0
    out = soft_clamp(torch.tensor([x], dtype=DTYPE), low, high).item()
    # The nested softplus can undershoot ``low`` by at most softplus(low - high) = 2e-9.
    assert low - math.log1p(math.exp(low - high)) <= out <= high
    if low + 2 < x < high - 2:
        assert abs(out - x) < 0.2
