"""Contract suite for omnivae.aggregators: one parametrised body per property, run over every
registered aggregator (diagonal experts) and the low-rank/full-covariance W2 modes."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import omnivae.distributions as distributions_module
from omnivae.aggregators import AGGREGATORS, Aggregator, build_aggregator
from omnivae.distributions import GaussianExperts, SubsetMixture
from omnivae.errors import UserError
from omnivae.functional import subset_matrix


# Aggregators that accept experts with a low-rank covariance factor (W2 barycenters, and
# MoE, whose components are single experts).
FULL_COVARIANCE = ("moe", "wb", "mwb")
MIXTURES = [name for name, cls in AGGREGATORS.items() if cls.subsets != "full"]
ALL_SUBSETS = [name for name, cls in AGGREGATORS.items() if cls.subsets == "all"]


@dataclass(frozen=True)
class Case:
    name: str
    full: bool

    def __str__(self) -> str:
        return f"{self.name}-full" if self.full else self.name

    def build(self) -> Aggregator:
        return build_aggregator(self.name)

    def experts(self, m=4, batch=(5,), d=3, dtype=torch.float32, seed=0, rank=2) -> GaussianExperts:
        g = torch.Generator().manual_seed(seed)
        loc = torch.randn(m, *batch, d, generator=g, dtype=dtype)
        scale = 0.5 + torch.rand(m, *batch, d, generator=g, dtype=dtype)
        factor = 0.5 * torch.randn(m, *batch, d, rank, generator=g, dtype=dtype) if self.full else None
        return GaussianExperts(loc, scale, factor)


CASES = [Case(name, False) for name in AGGREGATORS] + [Case(name, True) for name in FULL_COVARIANCE]
MIXTURE_CASES = [c for c in CASES if c.name in MIXTURES]
ids = [str(c) for c in CASES]

# Rows: all observed, one missing, a single one, two and two: [M=4, B=5].
MASK = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool).T


def leaves(experts: GaussianExperts) -> GaussianExperts:
    """Copies of the expert parameters that require grad."""
    factor = None if experts.cov_factor is None else experts.cov_factor.clone().requires_grad_(True)
    return GaussianExperts(experts.loc.clone().requires_grad_(True), experts.scale.clone().requires_grad_(True), factor)


def params(experts: GaussianExperts) -> list[torch.Tensor]:
    return [t for t in (experts.loc, experts.scale, experts.cov_factor) if t is not None]


def subsets_of_table(case: Case, m: int) -> torch.Tensor:
    subsets = AGGREGATORS[case.name].subsets
    if subsets == "all":
        return subset_matrix(m)
    if subsets == "singletons":
        return torch.eye(m, dtype=torch.bool)
    return torch.ones(1, m, dtype=torch.bool)


def test_cases_cover_the_registry():
    assert {c.name for c in CASES} == set(AGGREGATORS)
    assert set(MIXTURES) >= {"moe", "mopoe", "mwb"} and set(ALL_SUBSETS) >= {"mopoe", "mwb"}


# --- the returned distribution ----------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_distribution_shapes_and_finiteness(case):
    torch.manual_seed(0)
    experts = case.experts()
    agg = case.build()
    b, d, s = 5, 3, 6
    for q in (agg(experts, MASK), agg.infer(experts, MASK)):
        z = q.rsample(torch.Size([s]))
        assert z.shape == (s, b, d) and torch.isfinite(z).all()
        assert q.rsample().shape == (b, d)
        assert q.sample(torch.Size([2])).shape == (2, b, d)
        log_prob = q.log_prob(z)
        assert log_prob.shape == (s, b) and torch.isfinite(log_prob).all()
        assert q.log_prob(z[0]).shape == (b,)
        assert q.mean.shape == (b, d) and torch.isfinite(q.mean).all()
    assert isinstance(agg(experts, MASK), SubsetMixture)


INFER_CASES = [(c, None) for c in CASES if c.name not in MIXTURES] + [
    (c, inference) for c in MIXTURE_CASES for inference in ("barycenter", "mixture")
]


@pytest.mark.parametrize("case, inference", INFER_CASES, ids=[f"{c}-{i}" for c, i in INFER_CASES])
def test_infer_is_the_observed_set_barycenter_or_the_mixture(case, inference):
    experts = case.experts(dtype=torch.float64)
    agg = build_aggregator(case.name, **({} if inference is None else {"inference": inference}))
    posterior = agg.infer(experts, MASK)
    # The barycenter of every observed expert, or (inference="mixture") the training mixture.
    want = agg(experts, MASK) if inference == "mixture" else agg.combine(experts, MASK)
    z = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(posterior.log_prob(z), want.log_prob(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(posterior.mean, want.mean, rtol=1e-12, atol=1e-12)


# --- masked modalities ------------------------------------------------------------------

# Masked experts' (loc, scale, cov_factor) replaced by extreme values. NaN is checked in the
# forward pass only: no masking can give a NaN scale a zero gradient, because the chain rule
# of scale**2 already yields 0 * NaN (and an encoder that emits NaN poisons its own weights).
EXTREMES = {"huge": (1e30, 1e-15, 1e15), "zero": (0.0, 0.0, 0.0), "nan": (math.nan, math.nan, math.nan)}
GRADIENT_EXTREMES = ["huge", "zero"]


def with_masked(experts: GaussianExperts, mask: torch.Tensor, extreme: str) -> GaussianExperts:
    """A copy of ``experts`` whose masked experts hold extreme values."""
    replaced = []
    for tensor, value in zip((experts.loc, experts.scale, experts.cov_factor), EXTREMES[extreme]):
        if tensor is not None:
            tensor = tensor.clone()
            tensor[~mask] = value
        replaced.append(tensor)
    return GaussianExperts(*replaced)


@pytest.mark.parametrize("extreme", list(EXTREMES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_masked_experts_change_nothing(case, dtype, extreme):
    experts = case.experts(dtype=dtype)
    other = with_masked(experts, MASK, extreme)
    agg = case.build()
    results = []
    for e in (experts, other):
        q = agg(e, MASK)
        torch.manual_seed(1)
        z = q.rsample(torch.Size([4]))
        results.append((z, q.log_prob(z), q.mean, agg.infer(e, MASK).mean))
    for clean, changed in zip(*results):
        assert torch.isfinite(clean).all()
        assert torch.equal(clean, changed)


@pytest.mark.parametrize("source", ["rsample", "log_prob"])
@pytest.mark.parametrize("extreme", GRADIENT_EXTREMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_masked_experts_get_zero_gradient_and_observed_ones_get_some(case, dtype, extreme, source):
    experts = leaves(with_masked(case.experts(dtype=dtype), MASK, extreme))
    q = case.build()(experts, MASK)
    torch.manual_seed(2)
    if source == "rsample":
        # 64 draws per row: every observed expert is in some drawn subset.
        loss = q.rsample(torch.Size([64])).pow(2).sum()
    else:
        z = q.sample(torch.Size([3]))
        loss = q.log_prob(z).sum()
    loss.backward()
    for p in params(experts):
        assert torch.isfinite(p.grad).all()
        assert (p.grad[~MASK] == 0).all()
    for p in (experts.loc, experts.scale):  # reach every observed expert
        assert (p.grad[MASK].flatten(1) != 0).any(1).all()
    if experts.cov_factor is not None:
        assert (experts.cov_factor.grad[MASK].flatten(1) != 0).any(1).all()


# --- mixture densities ------------------------------------------------------------------

DENSITY_MASK = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool).T  # [M=3, B=3]


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("case", MIXTURE_CASES, ids=[str(c) for c in MIXTURE_CASES])
def test_mixture_log_prob_integrates_to_one(case, d):
    experts = case.experts(m=3, batch=(3,), d=d, dtype=torch.float64, seed=3, rank=1)
    q = case.build()(experts, DENSITY_MASK)
    if d == 1:
        x = torch.linspace(-14, 14, 5601, dtype=torch.float64)
        density = q.log_prob(x[:, None, None].expand(-1, 3, 1)).exp()  # [G, B]
        mass = torch.trapezoid(density, x, dim=0)
    else:
        x = torch.linspace(-11, 11, 441, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(x, x, indexing="ij"), -1)  # [G, G, 2]
        density = q.log_prob(grid[:, :, None, :].expand(-1, -1, 3, -1)).exp()  # [G, G, B]
        mass = torch.trapezoid(torch.trapezoid(density, x, dim=0), x, dim=0)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-7)


def normal_density(z, mean, std):
    """log N(z; mean, diag std^2) written out by hand."""
    return (-0.5 * ((z - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_component(name, loc, scale):
    """(mean, std) of a subset's barycenter from its experts ``[k, D]``, by hand."""
    if name == "moe":
        assert loc.shape[0] == 1
        return loc[0], scale[0]
    if name == "mopoe":  # product of the subset's experts, no prior expert
        precision = sum(1 / s**2 for s in scale)
        return sum(mu / s**2 for mu, s in zip(loc, scale)) / precision, precision.rsqrt()
    if name == "mwb":  # Remark 2 with uniform weights
        return loc.mean(0), scale.mean(0)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["moe", "mopoe", "mwb"])
def test_mixture_log_prob_and_mean_match_hand_computation(name):
    case = Case(name, False)
    m, b, d = 4, 5, 3
    experts = case.experts(m=m, batch=(b,), d=d, dtype=torch.float64, seed=4)
    q = case.build()(experts, MASK)
    z = q.sample(torch.Size([6]))
    got, got_mean = q.log_prob(z), q.mean
    sizes = [1] if name == "moe" else range(1, m + 1)
    for row in range(b):
        observed = [i for i in range(m) if MASK[i, row]]
        components = [
            hand_component(name, experts.loc[list(s), row], experts.scale[list(s), row])
            for k in sizes
            for s in itertools.combinations(observed, k)
        ]
        log_densities = torch.stack([normal_density(z[:, row], mu, std) for mu, std in components])
        want = log_densities.exp().mean(0).log()
        torch.testing.assert_close(got[:, row], want, rtol=1e-10, atol=1e-10)
        want_mean = torch.stack([mu for mu, _ in components]).mean(0)
        torch.testing.assert_close(got_mean[row], want_mean, rtol=1e-12, atol=1e-12)


# --- subset sampling --------------------------------------------------------------------

CUSTOM_TABLE = torch.tensor(
    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.bool
)
SAMPLING_MASK = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool).T


@pytest.mark.parametrize("mode", ["all", "singletons", "table"])
def test_draw_masks_is_uniform_over_valid_subsets(mode):
    torch.manual_seed(5)
    experts = Case("wb", False).experts(m=4, batch=(4,))
    subsets = CUSTOM_TABLE if mode == "table" else mode
    q = SubsetMixture(experts, SAMPLING_MASK, combine=None, subsets=subsets)
    table = q.subset_table()
    n = 20_000
    draws = q.draw_masks(torch.Size([n]))  # [M, N, B]
    assert draws.shape == (4, n, 4) and draws.dtype == torch.bool
    assert draws.any(0).all(), "an empty subset was drawn"
    assert not (draws & ~SAMPLING_MASK[:, None, :]).any(), "an unobserved modality was drawn"
    for row in range(SAMPLING_MASK.shape[1]):
        observed = SAMPLING_MASK[:, row]
        valid = [tuple(t.tolist()) for t in table if not (t & ~observed).any()]
        counts: dict[tuple, int] = {}
        for draw in draws[:, :, row].T.tolist():
            counts[tuple(draw)] = counts.get(tuple(draw), 0) + 1
        assert set(counts) == set(valid)
        p = 1 / len(valid)
        for subset in valid:
            assert abs(counts[subset] - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1e-9, (subset, counts)


def test_draw_masks_full_is_the_observed_set():
    q = SubsetMixture(Case("wb", False).experts(m=4, batch=(4,)), SAMPLING_MASK, combine=None, subsets="full")
    draws = q.draw_masks(torch.Size([3]))
    assert torch.equal(draws, SAMPLING_MASK[:, None, :].expand(4, 3, 4))


def standard_normal_like(component):
    d = component.event_shape[-1]
    dtype = component.mean.dtype
    if isinstance(component, MultivariateNormal):
        return MultivariateNormal(torch.zeros(d, dtype=dtype), torch.eye(d, dtype=dtype))
    return Independent(Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)), 1)


@pytest.mark.parametrize("case", MIXTURE_CASES, ids=[str(c) for c in MIXTURE_CASES])
def test_sample_component_kl_is_unbiased(case):
    torch.manual_seed(6)
    m, d = 4, 2
    n = 1500 if case.full else 3000  # full covariances: a Bures fixed point per draw
    mask = SAMPLING_MASK
    agg = case.build()
    experts = case.experts(m=m, batch=(4,), d=d, dtype=torch.float64, seed=7)
    q = agg(experts, mask)
    component = q.sample_component(torch.Size([n]))
    assert component.batch_shape == (n, 4)
    kl = kl_divergence(component, standard_normal_like(component))  # [N, B]
    table = subsets_of_table(case, m)
    for row in range(4):
        sub_masks = [t for t in table if not (t & ~mask[:, row]).any()]
        exact = torch.stack(
            [
                kl_divergence(c, standard_normal_like(c))
                for c in (agg.combine(experts, t[:, None].expand(m, 4)) for t in sub_masks)
            ]
        )[:, row]
        sigma = exact.std(unbiased=False) / math.sqrt(n)
        assert abs(kl[:, row].mean() - exact.mean()) <= 5 * sigma + 1e-9, (row, kl[:, row].mean(), exact)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_stratified_rsample(case):
    torch.manual_seed(8)
    m, b, d, k = 4, 5, 3, 7
    q = case.build()(case.experts(), MASK)
    z, log_weights = q.stratified_rsample(k)
    table = subsets_of_table(case, m)
    c = table.shape[0]
    assert z.shape == (c, k, b, d) and torch.isfinite(z).all()
    assert log_weights.shape == (c, b)
    if AGGREGATORS[case.name].subsets == "full":
        valid = torch.ones(1, b, dtype=torch.bool)
    else:
        valid = ~(table[:, :, None] & ~MASK[None]).any(1)  # [C, B]
    assert torch.equal(torch.isneginf(log_weights), ~valid)
    torch.testing.assert_close(log_weights[valid], (-valid.sum(0).float().log()).expand(c, b)[valid])
    torch.testing.assert_close(log_weights.logsumexp(0), torch.zeros(b))


# --- errors -------------------------------------------------------------------------------


def test_unknown_aggregator_name_lists_valid_names():
    with pytest.raises(UserError) as info:
        build_aggregator("no-such-aggregator")
    for name in AGGREGATORS:
        assert name in str(info.value)


def test_build_aggregator_forwards_options():
    assert build_aggregator("poe", prior_expert=False).prior_expert is False
    assert isinstance(build_aggregator("mwb"), AGGREGATORS["mwb"])


@pytest.mark.parametrize("name", ["poe", "mopoe"])
def test_product_of_experts_rejects_low_rank_experts(name):
    q = build_aggregator(name)(Case(name, True).experts(), MASK)
    with pytest.raises(UserError):
        q.rsample()


# --- sampling does not enumerate subsets --------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ALL_SUBSETS], ids=str)
def test_all_subset_sampling_does_not_enumerate(case, monkeypatch):
    m, b, d = 12, 3, 2
    mask = torch.ones(m, b, dtype=torch.bool)
    mask[::3, 1] = False
    mask[1:, 2] = False
    experts = case.experts(m=m, batch=(b,), d=d)

    def forbidden(*args, **kwargs):
        raise RuntimeError("subset_matrix called while sampling")

    monkeypatch.setattr(distributions_module, "subset_matrix", forbidden)
    q = case.build()(experts, mask)
    assert q.rsample(torch.Size([5])).shape == (5, b, d)
    assert q.sample_component(torch.Size([5])).batch_shape == (5, b)
    draws = q.draw_masks(torch.Size([5]))
    assert draws.any(0).all() and not (draws & ~mask[:, None]).any()
    with pytest.raises(RuntimeError, match="subset_matrix called"):  # the trap is armed
        q.log_prob(torch.zeros(b, d))
