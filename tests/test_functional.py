"""Tests of omnivae.functional against closed forms, torch.distributions and POT."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from omnivae import functional as F

DTYPES = [torch.float32, torch.float64]



def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_experts(shape, dtype=torch.float64, seed=0):
    """Means and variances (positive, away from zero) of the given shape ``[M, *B, D]``."""
    g = generator(seed)
    mu = torch.randn(shape, generator=g, dtype=dtype)
    var = 0.2 + 2 * torch.rand(shape, generator=g, dtype=dtype)
    return mu, var


def random_spd(shape, dim, dtype=torch.float64, seed=0):
    """Well-conditioned random SPD matrices ``[*shape, dim, dim]``."""
    g = generator(seed)
    x = torch.randn(*shape, dim, dim, generator=g, dtype=dtype)
    return x @ x.transpose(-1, -2) / dim + 0.3 * torch.eye(dim, dtype=dtype)


def random_mask(shape, seed=0):
    """A ``[M, *B]`` mask with at least one observed and one masked expert per row."""
    g = generator(seed)
    mask = torch.rand(shape, generator=g) < 0.5
    mask[0] = True
    mask[-1] = False
    return mask


def sqrtm(a: torch.Tensor) -> torch.Tensor:
    """Independent reference square root of SPD matrices (plain eigh, no custom backward)."""
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.transpose(-1, -2)


def tight(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


# --- product of experts -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_matches_closed_form(dtype, prior_expert):
    mu, var = random_experts((3, 4, 5), dtype)
    out_mu, out_var = F.poe(mu, var, prior_expert=prior_expert)
    precision = torch.full_like(mu[0], 1.0 if prior_expert else 0.0)
    eta = torch.zeros_like(mu[0])  # the prior expert has mean 0: adds no eta
    for m in range(mu.shape[0]):
        precision = precision + 1 / var[m]
        eta = eta + mu[m] / var[m]
    torch.testing.assert_close(out_var, 1 / precision, **tight(dtype))
    torch.testing.assert_close(out_mu, eta / precision, **tight(dtype))
    assert out_mu.dtype == dtype and out_var.dtype == dtype


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_masked_experts_drop_out_exactly(prior_expert):
    mu, var = random_experts((5, 7, 3))
    mask = random_mask((5, 7), seed=1)
    out_mu, out_var = F.poe(mu, var, mask, prior_expert=prior_expert)
    for b in range(mask.shape[1]):
        keep = mask[:, b]
        ref_mu, ref_var = F.poe(mu[keep, b], var[keep, b], prior_expert=prior_expert)
        torch.testing.assert_close(out_mu[b], ref_mu, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(out_var[b], ref_var, rtol=1e-14, atol=1e-14)


EXTREMES = {
    "tiny_var": (0.0, 1e-30),
    "huge_mean": (1e30, 1.0),
    "huge_mean_tiny_var": (1e30, 1e-30),
    "zero_var": (0.0, 0.0),
    "nan": (math.nan, math.nan),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extreme", list(EXTREMES), ids=list(EXTREMES))
@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_masked_experts_get_zero_gradient(dtype, extreme, prior_expert):
    mu, var = random_experts((3, 4, 2), dtype)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 0] = mask[2, 3] = False
    clean_mu, clean_var = F.poe(mu, var, mask, prior_expert=prior_expert)
    mu, var = mu.clone(), var.clone()
    mu[~mask], var[~mask] = EXTREMES[extreme]
    mu.requires_grad_(True)
    var.requires_grad_(True)
    out_mu, out_var = F.poe(mu, var, mask, prior_expert=prior_expert)
    assert torch.equal(out_mu, clean_mu) and torch.equal(out_var, clean_var)
    (out_mu.pow(2).sum() + out_var.sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(var.grad).all()
    assert (mu.grad[~mask] == 0).all() and (var.grad[~mask] == 0).all()
    # The observed experts do receive gradient (the check above is not vacuous).
    assert (mu.grad[mask] != 0).any(-1).all() and (var.grad[mask] != 0).any(-1).all()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_poe_of_identical_experts(k):
    mu, var = random_experts((1, 6, 3))
    out_mu, out_var = F.poe(mu.expand(k, -1, -1), var.expand(k, -1, -1), prior_expert=False)
    torch.testing.assert_close(out_var, var[0] / k, rtol=1e-14, atol=0)
    torch.testing.assert_close(out_mu, mu[0], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("prior_expert", [True, False])
def test_poe_row_with_every_expert_masked_is_standard_normal(prior_expert):
    mu, var = random_experts((3, 4, 2))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 2] = False
    out_mu, out_var = F.poe(mu, var, mask, prior_expert=prior_expert)
    assert torch.isfinite(out_mu).all() and torch.isfinite(out_var).all()
    assert torch.equal(out_mu[2], torch.zeros_like(out_mu[2]))
    assert torch.equal(out_var[2], torch.ones_like(out_var[2]))


# --- diagonal Wasserstein barycenter (Remark 2, Eq. 7) ---------------------------------


def weight_cases(m, batch):
    g = generator(3)
    return {
        "uniform": None,
        "per_modality": 0.1 + torch.rand(m, generator=g, dtype=torch.float64),
        "per_row": 0.1 + torch.rand(m, *batch, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("kind", ["uniform", "per_modality", "per_row"])
def test_wasserstein_barycenter_remark2(kind):
    mu, var = random_experts((4, 3, 5))
    std = var.sqrt()
    weights = weight_cases(4, (3,))[kind]
    out_mu, out_std = F.wasserstein_barycenter(mu, std, weights)
    if weights is None:
        lam = torch.full((4, 3), 0.25, dtype=torch.float64)
    else:
        w = weights if weights.dim() == 2 else weights[:, None].expand(4, 3)
        lam = w / w.sum(0)
    ref_mu = sum(lam[m, :, None] * mu[m] for m in range(4))
    ref_std = sum(lam[m, :, None] * std[m] for m in range(4))
    torch.testing.assert_close(out_mu, ref_mu, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out_std, ref_std, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", ["uniform", "per_modality", "per_row"])
def test_wasserstein_barycenter_renormalises_weights_over_observed(kind):
    mu, var = random_experts((5, 6, 3))
    std = var.sqrt()
    mask = random_mask((5, 6), seed=4)
    weights = weight_cases(5, (6,))[kind]
    out_mu, out_std = F.wasserstein_barycenter(mu, std, weights, mask)
    for b in range(6):
        keep = mask[:, b]
        if weights is None:
            w = None
        else:
            w = (weights if weights.dim() == 1 else weights[:, b])[keep]
            w = w / w.sum()
        ref_mu, ref_std = F.wasserstein_barycenter(mu[keep, b], std[keep, b], w)
        torch.testing.assert_close(out_mu[b], ref_mu, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(out_std[b], ref_std, rtol=1e-13, atol=1e-14)
    if weights is not None:  # scaling every weight changes nothing
        again = F.wasserstein_barycenter(mu, std, 7.5 * weights, mask)
        torch.testing.assert_close(again[0], out_mu, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(again[1], out_std, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("m, d", [(1, 3), (2, 2), (4, 5)])
def test_bures_agrees_with_remark2_on_diagonal_covariances(m, d, use_mask):
    mu, var = random_experts((m, 3, d), seed=m + d)
    weights = 0.1 + torch.rand(m, generator=generator(5), dtype=torch.float64)
    mask = random_mask((m, 3), seed=6) if use_mask and m > 1 else None
    ref_mu, ref_std = F.wasserstein_barycenter(mu, var.sqrt(), weights, mask)
    out_mu, out_cov = F.bures_wasserstein_barycenter(mu, torch.diag_embed(var), weights, mask)
    torch.testing.assert_close(out_mu, ref_mu, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out_cov, torch.diag_embed(ref_std**2), rtol=1e-12, atol=1e-13)


# --- Bures-Wasserstein barycenter (Eq. 6) -----------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("m, batch, d", [(2, (), 2), (3, (), 4), (4, (3,), 3), (3, (2, 2), 5), (6, (2,), 6)])
def test_bures_matches_pot(m, batch, d, weighted):
    seed = 10 * m + d
    means = torch.randn(m, *batch, d, generator=generator(seed), dtype=torch.float64)
    covs = random_spd((m, *batch), d, seed=seed + 1)
    weights = torch.rand(m, generator=generator(seed + 2), dtype=torch.float64) + 0.1 if weighted else None
    out_mean, out_cov = F.bures_wasserstein_barycenter(means, covs, weights, iters=500, tol=1e-14)
    lam = None if weights is None else (weights / weights.sum()).numpy()
    for index in itertools.product(*(range(n) for n in batch)):
        sel = (slice(None), *index)
        ref_mean, ref_cov = ot.gaussian.bures_wasserstein_barycenter(
            means[sel].numpy(), covs[sel].numpy(), lam, num_iter=5000, eps=1e-13
        )
        np.testing.assert_allclose(out_mean[index].numpy(), ref_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out_cov[index].numpy(), ref_cov, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_barycenter_of_identical_distributions_is_that_distribution(m):
    mean = torch.randn(4, 3, generator=generator(7), dtype=torch.float64)
    cov = random_spd((4,), 3, seed=8)
    weights = torch.rand(m, generator=generator(9), dtype=torch.float64) + 0.1
    out_mean, out_cov = F.bures_wasserstein_barycenter(mean.expand(m, -1, -1), cov.expand(m, -1, -1, -1), weights)
    torch.testing.assert_close(out_mean, mean, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out_cov, cov, rtol=1e-10, atol=1e-12)
    std = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    wb_mu, wb_std = F.wasserstein_barycenter(mean.expand(m, -1, -1), std.expand(m, -1, -1), weights)
    torch.testing.assert_close(wb_mu, mean, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(wb_std, std, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("full", [False, True], ids=["diag", "full"])
def test_barycenters_are_invariant_to_permuting_experts(full):
    m, b, d = 5, 3, 3
    mu, var = random_experts((m, b, d), seed=11)
    weights = torch.rand(m, b, generator=generator(12), dtype=torch.float64) + 0.1
    mask = random_mask((m, b), seed=13)
    perm = torch.randperm(m, generator=generator(14))
    assert not torch.equal(perm, torch.arange(m))
    if full:
        covs = random_spd((m, b), d, seed=15)
        run = lambda p: F.bures_wasserstein_barycenter(mu[p], covs[p], weights[p], mask[p], tol=1e-13, iters=200)
        tol = dict(rtol=1e-10, atol=1e-12)
    else:
        run = lambda p: F.wasserstein_barycenter(mu[p], var[p].sqrt(), weights[p], mask[p])
        tol = dict(rtol=1e-13, atol=1e-14)
    for got, want in zip(run(perm), run(torch.arange(m))):
        torch.testing.assert_close(got, want, **tol)


def test_bures_masked_experts_drop_out():
    m, b, d = 4, 5, 3
    means = torch.randn(m, b, d, generator=generator(16), dtype=torch.float64)
    covs = random_spd((m, b), d, seed=17)
    mask = random_mask((m, b), seed=18)
    out_mean, out_cov = F.bures_wasserstein_barycenter(means, covs, mask=mask, iters=200, tol=1e-13)
    for row in range(b):
        keep = mask[:, row]
        ref_mean, ref_cov = F.bures_wasserstein_barycenter(means[keep, row], covs[keep, row], iters=200, tol=1e-13)
        torch.testing.assert_close(out_mean[row], ref_mean, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(out_cov[row], ref_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bures_masked_experts_extreme_values_change_nothing_and_get_zero_gradient(dtype):
    m, b, d = 3, 4, 2
    means = torch.randn(m, b, d, generator=generator(19), dtype=dtype)
    covs = random_spd((m, b), d, dtype=dtype, seed=20)
    mask = torch.ones(m, b, dtype=torch.bool)
    mask[1, 0] = mask[0, 2] = mask[2, 2] = False
    clean = F.bures_wasserstein_barycenter(means, covs, mask=mask, tol=None, iters=10)
    means, covs = means.clone(), covs.clone()
    means[~mask] = math.nan
    covs[~mask] = math.nan
    means.requires_grad_(True)
    covs.requires_grad_(True)
    out_mean, out_cov = F.bures_wasserstein_barycenter(means, covs, mask=mask, tol=None, iters=10)
    assert torch.equal(out_mean, clean[0]) and torch.equal(out_cov, clean[1])
    (out_mean.sum() + out_cov.sum()).backward()
    assert (means.grad[~mask] == 0).all() and (covs.grad[~mask] == 0).all()
    assert torch.isfinite(means.grad).all() and torch.isfinite(covs.grad).all()


@pytest.mark.parametrize("full", [False, True], ids=["diag", "full"])
def test_barycenter_row_with_every_expert_masked_is_standard_normal(full):
    mu, var = random_experts((3, 4, 2), seed=36)
    mask = random_mask((3, 4), seed=37)
    mask[:, 1] = False
    if full:
        mean, cov = F.bures_wasserstein_barycenter(mu, torch.diag_embed(var), mask=mask, tol=None, iters=5)
        assert torch.isfinite(mean).all() and torch.isfinite(cov).all()
        torch.testing.assert_close(cov[1], torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-14)
    else:
        mean, std = F.wasserstein_barycenter(mu, var.sqrt(), mask=mask)
        assert torch.equal(std[1], torch.ones(2, dtype=torch.float64))
    assert torch.equal(mean[1], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("m, d", [(2, 2), (3, 4), (5, 3)])
def test_bures_barycenter_solves_eq6(m, d):
    covs = random_spd((m, 2), d, seed=21 + d)
    weights = torch.rand(m, generator=generator(22), dtype=torch.float64) + 0.1
    lam = weights / weights.sum()
    _, bar = F.bures_wasserstein_barycenter(torch.zeros(m, 2, d, dtype=torch.float64), covs, weights, iters=500, tol=1e-14)
    root = sqrtm(bar)
    rhs = sum(lam[i] * sqrtm(root @ covs[i] @ root) for i in range(m))
    torch.testing.assert_close(rhs, bar, rtol=1e-10, atol=1e-12)
    # The covariances do not commute, so the answer is not the closed-form start.
    start = sum(lam[i] * sqrtm(covs[i]) for i in range(m)).matrix_power(2)
    assert (start - bar).abs().max() > 1e-6


# --- gradients of the Bures barycenter and psd_sqrt -------------------------------------


@pytest.mark.parametrize(
    "variances",
    [[[1.0] * 3, [4.0] * 3], [[2.0] * 3, [2.0] * 3, [2.0] * 3], [[1.0, 1.0, 3.0], [0.5, 2.0, 2.0]]],
    ids=["isotropic", "identical_isotropic", "repeated_and_distinct"],
)
def test_bures_gradient_is_finite_and_matches_remark2_for_repeated_eigenvalues(variances):
    v = torch.tensor(variances, dtype=torch.float64)  # [M, D]
    m, d = v.shape
    weights = torch.rand(m, generator=generator(23), dtype=torch.float64) + 0.1
    probe = torch.randn(d, d, generator=generator(24), dtype=torch.float64)

    # Gradient with respect to every entry of the full covariance matrices: finite.
    covs = torch.diag_embed(v).requires_grad_(True)
    _, cov = F.bures_wasserstein_barycenter(torch.zeros(m, d, dtype=torch.float64), covs, weights, tol=None, iters=5)
    (cov * probe).sum().backward()
    assert torch.isfinite(covs.grad).all()

    # Along diagonal directions the covariances keep commuting: the gradient is Remark 2's.
    v1 = v.clone().requires_grad_(True)
    _, cov = F.bures_wasserstein_barycenter(torch.zeros(m, d, dtype=torch.float64), torch.diag_embed(v1), weights, tol=None, iters=5)
    (cov.diagonal() * probe.diagonal()).sum().backward()
    v2 = v.clone().requires_grad_(True)
    _, std = F.wasserstein_barycenter(torch.zeros(m, d, dtype=torch.float64), v2.sqrt(), weights)
    (std.pow(2) * probe.diagonal()).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "isotropic", "repeated"])
def test_psd_sqrt_gradcheck(kind):
    d = 4
    if kind == "random":
        a = random_spd((), d, seed=25)
    elif kind == "isotropic":
        a = 3.0 * torch.eye(d, dtype=torch.float64)
    else:
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator(26), dtype=torch.float64))
        a = q @ torch.diag(torch.tensor([1.0, 1.0, 2.5, 2.5], dtype=torch.float64)) @ q.T
    root = F.psd_sqrt(a)
    torch.testing.assert_close(root @ root, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(root, root.T, rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(root).min() > 0
    # psd_sqrt reads a symmetric matrix; differentiate through a symmetrisation so that
    # finite differences perturb symmetric matrices only.
    x = a.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: F.psd_sqrt(0.5 * (t + t.T)), (x,), eps=1e-6, atol=1e-7)


# --- subset matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 6])
def test_subset_matrix(m):
    table = F.subset_matrix(m)
    assert table.dtype == torch.bool and table.shape == (2**m - 1, m)
    rows = {tuple(r) for r in table.tolist()}
    assert len(rows) == 2**m - 1
    assert table.any(1).all()
    sizes = table.sum(1)
    assert (sizes[1:] >= sizes[:-1]).all()
    assert torch.equal(table[:m], torch.eye(m, dtype=torch.bool))
    assert table[-1].all()


def test_subset_matrix_rejects_zero_modalities():
    with pytest.raises(ValueError):
        F.subset_matrix(0)


# --- KL divergences, log-mean-exp, log-density ------------------------------------------


def diag(mu, var):
    return Independent(Normal(mu, var.sqrt()), 1)


def test_kl_normal_normal_matches_torch():
    (mu_q, mu_p), (var_q, var_p) = random_experts((2, 3, 4, 5), seed=27)
    got = F.kl_normal_normal(mu_q, var_q, mu_p, var_p)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, kl_divergence(diag(mu_q, var_q), diag(mu_p, var_p)), rtol=1e-12, atol=1e-12)


def test_kl_normal_standard_matches_torch():
    (mu,), (var,) = random_experts((1, 3, 4, 5), seed=28)
    standard = diag(torch.zeros_like(mu), torch.ones_like(var))
    got = F.kl_normal_standard(mu, var)
    torch.testing.assert_close(got, kl_divergence(diag(mu, var), standard), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, F.kl_normal_normal(mu, var, torch.zeros_like(mu), torch.ones_like(var)))


def test_kl_mvn_matches_torch_and_diagonal_case():
    d = 4
    mu_q, mu_p = torch.randn(2, 3, 2, d, generator=generator(29), dtype=torch.float64)
    cov_q, cov_p = random_spd((2, 3, 2), d, seed=30)
    got = F.kl_mvn(mu_q, cov_q, mu_p, cov_p)
    want = kl_divergence(MultivariateNormal(mu_q, cov_q), MultivariateNormal(mu_p, cov_p))
    assert got.shape == (3, 2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (got > 0).all()
    torch.testing.assert_close(F.kl_mvn(mu_q, cov_q, mu_q, cov_q), torch.zeros(3, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    (mq, mp), (vq, vp) = random_experts((2, 3, d), seed=31)
    torch.testing.assert_close(
        F.kl_mvn(mq, torch.diag_embed(vq), mp, torch.diag_embed(vp)), F.kl_normal_normal(mq, vq, mp, vp), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dim, keepdim", [(0, False), (1, True), (-1, False)])
def test_log_mean_exp_small_inputs(dim, keepdim):
    x = torch.randn(4, 5, 6, generator=generator(32), dtype=torch.float64)
    want = x.exp().mean(dim, keepdim=keepdim).log()
    torch.testing.assert_close(F.log_mean_exp(x, dim, keepdim), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_log_mean_exp_huge_inputs(dtype, offset):
    small = torch.randn(7, 3, generator=generator(33), dtype=torch.float64)
    got = F.log_mean_exp((small + offset).to(dtype), dim=0)
    assert torch.isfinite(got).all()
    want = offset + small.exp().mean(0).log()
    torch.testing.assert_close(got.double(), want, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)


def test_gaussian_log_prob_matches_torch():
    (mu,), (var,) = random_experts((1, 3, 4), seed=34)
    x = torch.randn(3, 4, generator=generator(35), dtype=torch.float64)
    torch.testing.assert_close(F.gaussian_log_prob(x, mu, var), diag(mu, var).log_prob(x), rtol=1e-13, atol=1e-13)
