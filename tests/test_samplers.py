"""Tests of omnivae.samplers (HMC) and of JNF's Eq. 12 target against closed-form Gaussian targets (float64).

Moment checks use independent chains, so the tolerances come from the Monte Carlo error
of independent draws: ``z`` standard errors for a mean, ``sqrt(2/N)`` relative error for a
variance (``(1 + rho^2)/N`` for a covariance).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from omnivae.errors import UserError
from omnivae.methods.jnf.posterior import mixture_initialisation, product_of_posteriors_log_prob
from omnivae.samplers import hmc, leapfrog, log_prob_and_grad

DT = torch.float64
Z = 5.0  # standard errors allowed


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diag_normal_log_prob(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log N(z; mean, diag std^2)`` summed over the last axis; broadcasting."""
    return (-0.5 * ((z - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)


def product_moments(means: Tensor, stds: Tensor, mask: Tensor, power: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of prod_j N(m_j, s_j^2)^{mask_j} / N(0, 1)^power, per coordinate.

    ``means, stds: [M, B, D]``, ``mask: [M, B]``, ``power: [B]``.
    """
    w = mask.to(DT).unsqueeze(-1)
    precision = (w / stds**2).sum(0) - power.unsqueeze(-1)
    assert bool((precision > 0).all()), "test values must keep the precision positive"
    mean = (w * means / stds**2).sum(0) / precision
    return mean, 1 / precision


def check_moments(samples: Tensor, mean: Tensor, var: Tensor) -> None:
    """Independent draws ``samples [N, *S, D]`` vs diagonal moments ``[*S, D]``."""
    n = samples.shape[0]
    mean_error = (samples.mean(0) - mean).abs() / (var / n).sqrt()
    assert float(mean_error.max()) < Z, mean_error
    var_error = (samples.var(0) / var - 1).abs() / math.sqrt(2 / n)
    assert float(var_error.max()) < Z, var_error


# --------------------------------------------------------------------------- leapfrog


def quartic_log_prob(z: Tensor) -> Tensor:
    """A non-Gaussian, coupled target: nothing cancels by symmetry."""
    return -(z**4).sum(-1) / 4 - torch.cos(z[..., 0] * z[..., 1]) - 0.3 * z[..., 0]


def test_leapfrog_is_reversible():
    g = generator(0)
    z0 = torch.randn(50, 3, generator=g, dtype=DT)
    v0 = torch.randn(50, 3, generator=g, dtype=DT)
    forward = leapfrog(quartic_log_prob, z0, v0, step_size=0.05, num_steps=20)
    assert float((forward.position - z0).abs().max()) > 0.1  # it moved
    back = leapfrog(quartic_log_prob, forward.position, -forward.momentum, step_size=0.05, num_steps=20)
    torch.testing.assert_close(back.position, z0, rtol=0, atol=1e-11)
    torch.testing.assert_close(-back.momentum, v0, rtol=0, atol=1e-11)


def test_leapfrog_preserves_volume():
    """det of the Jacobian of (z, v) -> (z', v') is 1 (central finite differences)."""
    g = generator(1)
    state = torch.randn(4, generator=g, dtype=DT)

    def flow(s: Tensor) -> Tensor:
        out = leapfrog(quartic_log_prob, s[:2], s[2:], step_size=0.1, num_steps=7)
        return torch.cat([out.position, out.momentum])

    h = 1e-6
    eye = torch.eye(4, dtype=DT)
    jacobian = torch.stack([(flow(state + h * e) - flow(state - h * e)) / (2 * h) for e in eye], dim=1)
    assert abs(float(torch.linalg.det(jacobian)) - 1) < 1e-7
    assert float((jacobian - eye).abs().max()) > 0.1  # not trivially the identity


def test_leapfrog_energy_error_is_second_order():
    """At fixed trajectory time, halving the step quarters the energy error."""
    g = generator(2)
    z0 = torch.randn(20, 2, generator=g, dtype=DT)
    v0 = torch.randn(20, 2, generator=g, dtype=DT)

    def energy_error(eps: float, steps: int) -> Tensor:
        out = leapfrog(quartic_log_prob, z0, v0, step_size=eps, num_steps=steps)
        h0 = -quartic_log_prob(z0) + 0.5 * (v0**2).sum(-1)
        h1 = -out.log_prob + 0.5 * (out.momentum**2).sum(-1)
        return (h1 - h0).abs().mean()

    ratio = energy_error(0.02, 25) / energy_error(0.01, 50)
    assert 3.5 < float(ratio) < 4.5


def test_leapfrog_returns_value_and_grad_at_the_end():
    z0 = torch.tensor([[0.3, -0.2]], dtype=DT)
    out = leapfrog(quartic_log_prob, z0, torch.ones_like(z0), step_size=0.1, num_steps=3)
    value, grad = log_prob_and_grad(quartic_log_prob, out.position)
    torch.testing.assert_close(out.log_prob, value)
    torch.testing.assert_close(out.grad, grad)


def test_log_prob_and_grad_under_no_grad_and_inference_mode():
    weight = torch.nn.Parameter(torch.tensor([2.0, 3.0], dtype=DT))

    def target(z: Tensor) -> Tensor:
        return -0.5 * (weight * z**2).sum(-1)

    z = torch.tensor([[1.0, -1.0]], dtype=DT)
    for context in (torch.no_grad(), torch.inference_mode()):
        with context:
            value, grad = log_prob_and_grad(target, z)
        torch.testing.assert_close(grad, torch.tensor([[-2.0, 3.0]], dtype=DT))
        assert not value.requires_grad and not grad.requires_grad
    assert weight.grad is None
    with pytest.raises(UserError, match="one value per chain"):
        log_prob_and_grad(lambda z: z.sum(), z)


# ------------------------------------------------------------------ product of posteriors


def gaussian_members(means: Tensor, stds: Tensor):
    """``log_q: z [K, B, D] -> [M, K, B]`` for members ``N(means[j, b], stds[j, b]^2)``."""

    def log_q(z: Tensor) -> Tensor:
        return diag_normal_log_prob(z.unsqueeze(0), means.unsqueeze(1), stds.unsqueeze(1))

    return log_q


def mixed_problem():
    """M = 3 members, B = 4 rows with subsets of size 1, 2, 3 and 2; D = 2."""
    g = generator(3)
    m, b, d = 3, 4, 2
    means = 2 * torch.randn(m, b, d, generator=g, dtype=DT)
    stds = 0.4 + 0.5 * torch.rand(m, b, d, generator=g, dtype=DT)  # <= 0.9: precision > 0
    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [False, False, True, True]])
    return means, stds, mask


@pytest.mark.parametrize("prior_power", ["paper", "once"])
def test_product_log_prob_is_the_closed_form_gaussian_up_to_a_constant(prior_power):
    means, stds, mask = mixed_problem()
    count = mask.sum(0).to(DT)
    power = count - 1 if prior_power == "paper" else torch.ones_like(count)
    mean, var = product_moments(means, stds, mask, power)
    target = product_of_posteriors_log_prob(
        gaussian_members(means, stds), standard_normal_log_prob, mask, prior_power=prior_power
    )
    g = generator(4)
    z1, z2 = torch.randn(2, 5, 4, 2, generator=g, dtype=DT)  # C = (K=5, B=4); mask [M, B]
    got = target(z1) - target(z2)
    want = diag_normal_log_prob(z1, mean, var.sqrt()) - diag_normal_log_prob(z2, mean, var.sqrt())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def test_product_log_prob_list_form_and_masked_members():
    means, stds, _ = mixed_problem()
    members = [lambda z, j=j: diag_normal_log_prob(z, means[j], stds[j]) for j in range(3)]
    z = torch.randn(6, 4, 2, generator=generator(5), dtype=DT)
    listed = product_of_posteriors_log_prob(members, standard_normal_log_prob)
    masked = product_of_posteriors_log_prob(
        gaussian_members(means, stds), standard_normal_log_prob, torch.ones(3, 4, dtype=torch.bool)
    )
    torch.testing.assert_close(listed(z), masked(z))
    # A masked member whose log q is -inf everywhere changes neither value nor gradient.
    mask = torch.tensor([[True] * 4, [True] * 4, [False] * 4])

    def poisoned(z: Tensor) -> Tensor:
        terms = gaussian_members(means, stds)(z)
        return torch.cat([terms[:2], torch.full_like(terms[2:], -math.inf)])

    clean = product_of_posteriors_log_prob(gaussian_members(means, stds), standard_normal_log_prob, mask)
    dirty = product_of_posteriors_log_prob(poisoned, standard_normal_log_prob, mask)
    value_clean, grad_clean = log_prob_and_grad(clean, z)
    value_dirty, grad_dirty = log_prob_and_grad(dirty, z)
    torch.testing.assert_close(value_dirty, value_clean)
    torch.testing.assert_close(grad_dirty, grad_clean)


def test_empty_subset_targets_the_prior():
    means, stds, _ = mixed_problem()
    mask = torch.zeros(3, 4, dtype=torch.bool)
    z = torch.randn(2, 4, 2, generator=generator(6), dtype=DT)
    for power in ("paper", "once"):
        target = product_of_posteriors_log_prob(
            gaussian_members(means, stds), standard_normal_log_prob, mask, prior_power=power
        )
        torch.testing.assert_close(target(z), standard_normal_log_prob(z))
    with pytest.raises(UserError, match="prior_power"):
        product_of_posteriors_log_prob(
            gaussian_members(means, stds), standard_normal_log_prob, mask, prior_power="twice"
        )


# --------------------------------------------------------------------- mixture start


def test_mixture_initialisation_picks_observed_members_uniformly():
    m, k, b, d = 4, 6000, 3, 2
    samples = torch.arange(m, dtype=DT).reshape(m, 1, 1, 1).expand(m, k, b, d)
    mask = torch.tensor([[True, True, False], [False, True, False], [True, True, True], [False, True, False]])
    start = mixture_initialisation(samples, mask, generator(7))  # mask [M, B] over C = (K, B)
    assert start.shape == (k, b, d)
    assert bool((start[..., 0] == start[..., 1]).all())  # one member's whole vector
    chosen = start[..., 0].long()  # [K, B]
    for row in range(b):
        observed = mask[:, row].nonzero().flatten()
        counts = torch.bincount(chosen[:, row], minlength=m).to(DT)
        assert bool((counts[~mask[:, row]] == 0).all())
        p = 1 / len(observed)
        error = (counts[observed] / k - p).abs() / math.sqrt(p * (1 - p) / k + 1e-300)
        assert float(error.max()) < Z
    with pytest.raises(UserError, match="at least one observed"):
        mixture_initialisation(samples, torch.zeros(m, b, dtype=torch.bool))


# ------------------------------------------------------------------------------- HMC


@pytest.mark.parametrize("prior_power", ["paper", "once"])
def test_hmc_samples_the_product_of_gaussian_experts(prior_power):
    """Eq. 12 with Gaussian experts over N(0, I): precision sum_j 1/s_j^2 - c, c = |S|-1 or 1."""
    means = torch.tensor([[[0.5, -1.0]], [[1.5, 0.0]], [[-0.5, 1.0]]], dtype=DT)  # [M=3, B=1, D=2]
    stds = torch.tensor([[[0.8, 0.6]], [[0.9, 0.7]], [[0.6, 0.9]]], dtype=DT)
    mask = torch.ones(3, 1, dtype=torch.bool)
    power = torch.tensor([2.0 if prior_power == "paper" else 1.0], dtype=DT)
    mean, var = product_moments(means, stds, mask, power)
    target = product_of_posteriors_log_prob(
        gaussian_members(means, stds), standard_normal_log_prob, mask, prior_power=prior_power
    )
    k = 2000
    g = generator(8)
    draws = means.unsqueeze(1) + stds.unsqueeze(1) * torch.randn(3, k, 1, 2, generator=g, dtype=DT)
    start = mixture_initialisation(draws, mask, g)
    result = hmc(target, start, num_steps=60, leapfrog_steps=10, step_size=0.1, generator=g)
    assert result.samples.shape == (k, 1, 2)
    assert 0.5 < result.acceptance_rate <= 1
    check_moments(result.samples, mean, var)


@pytest.mark.parametrize(("step_size", "jitter"), [(0.07, 0.0), (0.1, 0.3)])
def test_hmc_recovers_a_correlated_gaussian(step_size, jitter):
    """Sd 0.32 along (1, -1): l * eps = 1 is half a period there, so without jitter a
    chain started off the mean on that axis is reflected to and fro and never mixes;
    eps = 0.07 avoids the resonance and jitter breaks it."""
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=DT)
    mean = torch.tensor([1.0, -2.0], dtype=DT)
    target_dist = torch.distributions.MultivariateNormal(mean, cov)
    n = 2000
    g = generator(9)
    result = hmc(
        target_dist.log_prob, torch.zeros(n, 2, dtype=DT), num_steps=100, step_size=step_size,
        step_size_jitter=jitter, generator=g,
    )
    x = result.samples
    mean_error = (x.mean(0) - mean).abs() / (cov.diagonal() / n).sqrt()
    assert float(mean_error.max()) < Z
    emp = torch.cov(x.T)
    # Var of the sample covariance of a bivariate normal: (s_ij^2 + s_ii s_jj) / n.
    se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert float(((emp - cov).abs() / se).max()) < Z, emp


def test_hmc_mixed_subsets_in_one_batch():
    """Rows with 1, 2, 3 and 2 members, K samples per row: each row gets its own moments."""
    means, stds, mask = mixed_problem()
    count = mask.sum(0).to(DT)
    mean, var = product_moments(means, stds, mask, count - 1)
    target = product_of_posteriors_log_prob(gaussian_members(means, stds), standard_normal_log_prob, mask)
    k = 1500
    g = generator(10)
    draws = means.unsqueeze(1) + stds.unsqueeze(1) * torch.randn(3, k, 4, 2, generator=g, dtype=DT)
    start = mixture_initialisation(draws, mask, g)
    result = hmc(target, start, num_steps=60, step_size=0.08, generator=g)
    assert result.per_chain_acceptance.shape == (k, 4)
    check_moments(result.samples, mean, var)
    # The single-member row samples that member exactly (c = |S| - 1 = 0).
    torch.testing.assert_close(mean[0], means[0, 0])


def test_hmc_acceptance_is_one_for_tiny_steps():
    g = generator(11)
    start = torch.randn(200, 3, generator=g, dtype=DT)
    result = hmc(quartic_log_prob, start, num_steps=5, leapfrog_steps=3, step_size=1e-5, generator=g)
    assert result.acceptance_rate == 1.0
    assert bool((result.per_chain_acceptance == 1).all())
    assert float((result.samples - start).abs().max()) > 0  # it still moved


def test_hmc_acceptance_falls_with_large_steps():
    g = generator(12)
    start = torch.randn(500, 2, generator=g, dtype=DT)
    small = hmc(standard_normal_log_prob, start, num_steps=20, step_size=0.2, generator=g)
    large = hmc(standard_normal_log_prob, start, num_steps=20, step_size=1.9, generator=g)
    assert 0 < large.acceptance_rate < small.acceptance_rate <= 1


def test_hmc_rejects_non_finite_proposals():
    """N(0, I) restricted to z_0 > 0: chains never leave, z_0 is half-normal."""

    def half_space(z: Tensor) -> Tensor:
        return torch.where(z[..., 0] > 0, standard_normal_log_prob(z), -math.inf)

    n = 4000
    g = generator(13)
    start = torch.cat(
        [torch.rand(n, 1, generator=g, dtype=DT) + 0.1, torch.randn(n, 1, generator=g, dtype=DT)], -1
    )
    # Trajectory time 1 (not ~pi, which would reflect z_0 into the forbidden half).
    result = hmc(
        half_space, start, num_steps=100, leapfrog_steps=5, step_size=0.2, generator=g, return_trace=True
    )
    assert result.trace is not None and result.trace.shape == (100, n, 2)
    assert bool((result.trace[..., 0] > 0).all())
    assert bool(torch.isfinite(result.trace).all())
    assert result.acceptance_rate < 1
    half_mean, half_var = math.sqrt(2 / math.pi), 1 - 2 / math.pi
    z0 = result.samples[:, 0]
    assert abs(float(z0.mean()) - half_mean) / math.sqrt(half_var / n) < Z


def test_hmc_nan_log_prob_is_rejected_without_poisoning_other_chains():
    def target(z: Tensor) -> Tensor:
        value = standard_normal_log_prob(z)
        return torch.where(z[..., 0] < 2.0, value, math.nan)

    g = generator(14)
    start = torch.zeros(300, 2, dtype=DT)
    result = hmc(target, start, num_steps=30, step_size=0.5, generator=g)
    assert bool(torch.isfinite(result.samples).all())
    assert bool((result.samples[:, 0] < 2.0).all())


def test_hmc_per_chain_step_size_and_trace():
    g = generator(15)
    start = torch.zeros(2, 3, 2, dtype=DT)  # C = (K=2, B=3)
    steps = torch.tensor([[1e-6], [0.1], [3.0]], dtype=DT)  # [B, 1], broadcasts to [K, B, 1]
    result = hmc(
        standard_normal_log_prob, start, num_steps=10, step_size=steps, generator=g, return_trace=True
    )
    assert result.trace.shape == (10, 2, 3, 2)
    torch.testing.assert_close(result.trace[-1], result.samples)
    assert bool((result.per_chain_acceptance[:, 0] == 1).all())
    assert float((result.samples[:, 0]).abs().max()) < 1e-3  # tiny steps barely move
    with pytest.raises(UserError, match="broadcast"):
        hmc(standard_normal_log_prob, start, num_steps=1, step_size=torch.ones(4, 1, dtype=DT))


def test_hmc_step_size_adaptation_reaches_the_target_acceptance():
    """A narrow target (sd 0.05) and a far too large initial step (2.0)."""
    scale = torch.tensor([0.05, 0.1], dtype=DT)

    def narrow(z: Tensor) -> Tensor:
        return diag_normal_log_prob(z, torch.zeros(2, dtype=DT), scale)

    g = generator(16)
    start = 0.05 * torch.randn(400, 2, generator=g, dtype=DT)
    fixed = hmc(narrow, start, num_steps=20, step_size=2.0, generator=g)
    adapted = hmc(narrow, start, num_steps=50, step_size=2.0, adapt_steps=100, generator=g)
    assert fixed.acceptance_rate < 0.1
    assert adapted.step_size.shape == (400, 1)
    assert float(adapted.step_size.max()) < 0.2
    assert 0.5 < adapted.acceptance_rate < 0.85
    n = 400
    assert float(((adapted.samples.var(0) / scale**2 - 1).abs() / math.sqrt(2 / n)).max()) < Z


def test_hmc_inside_no_grad_leaves_parameters_alone():
    weight = torch.nn.Parameter(torch.tensor(1.0, dtype=DT))

    def target(z: Tensor) -> Tensor:
        return -0.5 * weight * (z**2).sum(-1)

    with torch.no_grad():
        result = hmc(target, torch.zeros(10, 2, dtype=DT), num_steps=3, generator=generator(17))
    assert not result.samples.requires_grad
    assert weight.grad is None


def test_hmc_is_reproducible_with_a_generator():
    start = torch.zeros(50, 2, dtype=DT)
    a = hmc(quartic_log_prob, start, num_steps=5, generator=generator(18)).samples
    b = hmc(quartic_log_prob, start, num_steps=5, generator=generator(18)).samples
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hmc_validates_arguments():
    start = torch.zeros(3, 2, dtype=DT)
    with pytest.raises(UserError):
        hmc(standard_normal_log_prob, start, num_steps=0)
    with pytest.raises(UserError, match="positive"):
        hmc(standard_normal_log_prob, start, num_steps=1, step_size=-0.1)
    with pytest.raises(UserError, match="jitter"):
        hmc(standard_normal_log_prob, start, num_steps=1, step_size_jitter=1.0)
