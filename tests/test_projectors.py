"""Tests of omnivae.methods.jnf.projectors against closed forms and a NumPy reference (float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from omnivae.errors import UserError
from omnivae.methods.jnf.projectors import cca_total_correlation, contrastive_loss, dcca_loss

DT = torch.float64


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def correlated_views(n: int, d1: int, d2: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two views sharing a 2-D latent through random linear maps, plus noise and offsets."""
    g = generator(seed)
    shared = torch.randn(n, 2, generator=g, dtype=DT)
    h1 = shared @ torch.randn(2, d1, generator=g, dtype=DT) + 0.7 * torch.randn(n, d1, generator=g, dtype=DT)
    h2 = shared @ torch.randn(2, d2, generator=g, dtype=DT) + 0.9 * torch.randn(n, d2, generator=g, dtype=DT)
    return h1 + 3.0, h2 - 1.0


def numpy_canonical_correlations(h1: np.ndarray, h2: np.ndarray, eps: float) -> np.ndarray:
    """Whiten each block with its symmetric inverse square root (eigh), then SVD."""

    def inv_sqrt(s: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(s)
        return (vectors / np.sqrt(values)) @ vectors.T

    n = h1.shape[0]
    c1, c2 = h1 - h1.mean(0), h2 - h2.mean(0)
    s11 = c1.T @ c1 / (n - 1) + eps * np.eye(h1.shape[1])
    s22 = c2.T @ c2 / (n - 1) + eps * np.eye(h2.shape[1])
    s12 = c1.T @ c2 / (n - 1)
    return np.linalg.svd(inv_sqrt(s11) @ s12 @ inv_sqrt(s22), compute_uv=False)


# ------------------------------------------------------------------------------ DCCA


@pytest.mark.parametrize("eps", [1e-4, 0.3])
def test_total_correlation_matches_the_numpy_reference(eps):
    h1, h2 = correlated_views(40, 3, 5)
    reference = numpy_canonical_correlations(h1.numpy(), h2.numpy(), eps)
    assert reference.shape == (3,)
    got = cca_total_correlation(h1, h2, eps=eps)
    assert abs(float(got) - reference.sum()) < 1e-12
    for k in (1, 2):
        top = cca_total_correlation(h1, h2, eps=eps, top_k=k)
        assert abs(float(top) - np.sort(reference)[::-1][:k].sum()) < 1e-12


def test_total_correlation_is_affine_invariant():
    h1, h2 = correlated_views(300, 3, 4, seed=1)
    g = generator(2)
    a1 = torch.randn(3, 3, generator=g, dtype=DT) + 2 * torch.eye(3, dtype=DT)
    a2 = torch.randn(4, 4, generator=g, dtype=DT) + 2 * torch.eye(4, dtype=DT)
    before = cca_total_correlation(h1, h2, eps=1e-12)
    after = cca_total_correlation(h1 @ a1 - 5.0, h2 @ a2 + torch.randn(4, generator=g, dtype=DT), eps=1e-12)
    assert 0.5 < float(before) < 2.0
    assert abs(float(after - before)) < 1e-8
    # With a real ridge the invariance is lost (eps acts in each view's own units).
    ridge = cca_total_correlation(h1, h2, eps=0.5)
    assert abs(float(cca_total_correlation(100 * h1, h2, eps=0.5) - ridge)) > 1e-3


def test_identical_views_closed_form():
    """h2 = h1: T = (Σ + eps)^{-1/2} Σ (Σ + eps)^{-1/2}, so F = sum_i λ_i / (λ_i + eps)."""
    h, _ = correlated_views(60, 4, 1, seed=3)
    eps = 0.05
    c = h - h.mean(0)
    eigenvalues = torch.linalg.eigvalsh(c.T @ c / (h.shape[0] - 1))
    want = (eigenvalues / (eigenvalues + eps)).sum()
    torch.testing.assert_close(cca_total_correlation(h, h, eps=eps), want, rtol=1e-12, atol=0)
    assert abs(float(cca_total_correlation(h, h, eps=1e-10)) - 4) < 1e-7
    # A rank-2 linear image of a view: two perfectly correlated directions.
    w = torch.randn(4, 2, generator=generator(4), dtype=DT)
    assert abs(float(cca_total_correlation(h, h @ w, eps=1e-10)) - 2) < 1e-7


def test_equicorrelated_views_sum_their_correlations():
    """h1 = Z, h2 = (rho Z + sqrt(1 - rho^2) E) R: every canonical correlation is rho."""
    n, d, rho = 20000, 3, 0.6
    g = generator(5)
    z = torch.randn(n, d, generator=g, dtype=DT)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    h2 = (rho * z + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g, dtype=DT)) @ rotation
    got = float(cca_total_correlation(z, h2))
    # Each sample correlation has sd about (1 - rho^2) / sqrt(n) = 0.0045.
    assert abs(got - d * rho) < 0.05


def test_independent_views_have_near_zero_total_correlation():
    n, d = 20000, 4
    g = generator(6)
    h1, h2 = torch.randn(2, n, d, generator=g, dtype=DT)
    got = float(cca_total_correlation(h1, h2))
    # Sample canonical correlations of independent views are O(sqrt(d / n)) = 0.014 each.
    assert 0 <= got < 0.15


def test_total_correlation_gradient_is_correct():
    h1, h2 = correlated_views(12, 2, 3, seed=7)
    h1.requires_grad_(True)
    h2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cca_total_correlation(a, b, eps=1e-3), (h1, h2))
    assert torch.autograd.gradcheck(lambda a, b: cca_total_correlation(a, b, eps=1e-3, top_k=1), (h1, h2))


def test_gradient_is_finite_with_repeated_eigenvalues():
    """Views with isotropic covariances and equal canonical correlations: an eigh-based
    whitening has 0/0 in its backward here (NaN on the exact case, often on the QR one)."""
    exact = torch.zeros(8, 2, dtype=DT)  # cov = (4/7) I exactly
    exact[:4, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=DT)
    exact[4:, 1] = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=DT)
    q, _ = torch.linalg.qr(torch.randn(32, 4, generator=generator(8), dtype=DT))
    q, _ = torch.linalg.qr(q - q.mean(0))  # orthonormal, centred columns: cov = I / (n - 1)
    for views in (exact, q):
        for dtype in (torch.float32, torch.float64):
            h1 = views.to(dtype).clone().requires_grad_(True)
            h2 = views.to(dtype).clone().requires_grad_(True)
            value = cca_total_correlation(h1, h2)
            value.backward()
            variance = float(views[:, 0].var())  # every eigenvalue of both covariances
            want = views.shape[1] * variance / (variance + 1e-4)
            assert abs(float(value.detach()) - want) < 1e-5
            assert bool(torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all())


def test_adam_on_linear_projectors_increases_total_correlation():
    torch.manual_seed(0)
    g = generator(9)
    n = 256
    shared = torch.randn(n, 2, generator=g)
    x1 = torch.cat([shared @ torch.randn(2, 3, generator=g), 3 * torch.randn(n, 5, generator=g)], 1)
    x2 = torch.cat([5 * torch.randn(n, 4, generator=g), shared @ torch.randn(2, 2, generator=g)], 1)
    x1 = x1 + 0.3 * torch.randn(x1.shape, generator=g)
    x2 = x2 + 0.3 * torch.randn(x2.shape, generator=g)
    g1, g2 = torch.nn.Linear(8, 2), torch.nn.Linear(6, 2)
    optimiser = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=0.05)
    with torch.no_grad():
        start = float(cca_total_correlation(g1(x1), g2(x2)))
    for _ in range(60):
        optimiser.zero_grad()
        loss = dcca_loss([g1(x1), g2(x2)])
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in [*g1.parameters(), *g2.parameters()])
        optimiser.step()
    with torch.no_grad():
        end = float(cca_total_correlation(g1(x1), g2(x2)))
    # No pair of 2-D linear projections beats the top two canonical correlations of the inputs.
    optimum = float(cca_total_correlation(x1.double(), x2.double(), eps=1e-6, top_k=2))
    assert end > start + 0.3
    assert 0.95 * optimum < end < optimum + 0.01


def test_dcca_loss_sums_pairwise_total_correlations():
    h1, h2 = correlated_views(50, 3, 4, seed=10)
    h3 = h1[:, :2] + torch.randn(50, 2, generator=generator(11), dtype=DT)
    want = -(cca_total_correlation(h1, h2) + cca_total_correlation(h1, h3) + cca_total_correlation(h2, h3))
    torch.testing.assert_close(dcca_loss([h1, h2, h3]), want)
    torch.testing.assert_close(dcca_loss([h1, h2]), -cca_total_correlation(h1, h2))
    with pytest.raises(UserError, match="at least 2 views"):
        dcca_loss([h1])
    with pytest.raises(UserError):
        cca_total_correlation(h1, h2[:10])


# ------------------------------------------------------------------------ contrastive


def numpy_contrastive(views: list[np.ndarray], tau: float) -> float:
    """Eq. B.2-B.4 term by term, summed over pairs of views."""
    units = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in views]
    k = units[0].shape[0]
    total = 0.0
    for a, b in itertools.combinations(units, 2):
        for first, second in ((a, b), (b, a)):
            for i in range(k):
                sims = np.exp(first[i] @ second.T / tau)
                total += -np.log(sims[i] / sims.sum())
    return total


def test_contrastive_loss_matches_the_equations():
    g = generator(12)
    views = [torch.randn(6, 3, generator=g, dtype=DT) for _ in range(3)]
    views[1] = views[1] + 2 * views[0]  # not symmetric between views
    want = numpy_contrastive([v.numpy() for v in views], 0.1)
    torch.testing.assert_close(contrastive_loss(views), torch.tensor(want, dtype=DT), rtol=1e-12, atol=0)
    torch.testing.assert_close(contrastive_loss(views, reduction="mean"), torch.tensor(want / 6, dtype=DT))
    want_tau = numpy_contrastive([v.numpy() for v in views[:2]], 0.5)
    torch.testing.assert_close(contrastive_loss(views[:2], temperature=0.5), torch.tensor(want_tau, dtype=DT))


@pytest.mark.parametrize("num_views", [2, 3])
def test_contrastive_loss_of_constant_projections_is_log_k(num_views):
    k = 8
    constant = torch.tensor([0.3, -1.2, 2.0], dtype=DT).expand(k, 3)
    loss = contrastive_loss([constant * (j + 1) for j in range(num_views)])
    want = num_views * (num_views - 1) * k * math.log(k)
    assert abs(float(loss) - want) < 1e-10
    mean = contrastive_loss([constant] * num_views, reduction="mean")
    assert abs(float(mean) - num_views * (num_views - 1) * math.log(k)) < 1e-12


def simplex(k: int) -> Tensor:
    """``k`` unit vectors in R^k with pairwise cosine -1/(k-1) (a centred regular simplex)."""
    points = torch.eye(k, dtype=DT) - 1 / k
    return points / points.norm(dim=1, keepdim=True)


def test_contrastive_loss_of_coinciding_separated_projections():
    """Same sample coincides across views, samples spread apart: the loss is its closed form
    2 K log(1 + (K - 1) exp((c - 1) / tau)), c the cosine between different samples."""
    k, tau = 5, 0.1
    orthogonal = torch.eye(k, dtype=DT)
    want = 2 * k * math.log1p((k - 1) * math.exp(-1 / tau))
    assert abs(float(contrastive_loss([orthogonal, orthogonal])) - want) < 1e-12
    spread = simplex(k)
    best = 2 * k * math.log1p((k - 1) * math.exp((-1 / (k - 1) - 1) / tau))
    got = float(contrastive_loss([spread, spread]))
    assert abs(got - best) < 1e-12
    assert 0 < got < want < 1e-2
    g = generator(13)
    for _ in range(5):
        random_views = [torch.randn(k, k, generator=g, dtype=DT) for _ in range(2)]
        assert float(contrastive_loss(random_views)) > got


def test_contrastive_loss_is_invariant_to_positive_rescaling():
    g = generator(14)
    views = [torch.randn(7, 4, generator=g, dtype=DT) for _ in range(3)]
    scaled = [v * (0.01 + 10 * torch.rand(7, 1, generator=g, dtype=DT)) for v in views]
    torch.testing.assert_close(contrastive_loss(scaled), contrastive_loss(views), rtol=1e-12, atol=0)
    flipped = [views[0], -views[1], views[2]]
    assert abs(float(contrastive_loss(flipped) - contrastive_loss(views))) > 1e-3


def test_contrastive_loss_gradient_reaches_every_view():
    g = generator(15)
    views = [torch.randn(6, 4, generator=g, dtype=DT).requires_grad_(True) for _ in range(3)]
    contrastive_loss(views).backward()
    for view in views:
        assert bool(torch.isfinite(view.grad).all())
        assert float(view.grad.norm(dim=1).min()) > 1e-6  # every sample of every view
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss([a, b], temperature=0.5), (views[0], views[1]))


def test_contrastive_loss_validates():
    x = torch.randn(4, 3)
    with pytest.raises(UserError, match="at least 2 views"):
        contrastive_loss([x])
    with pytest.raises(UserError, match="one shape"):
        contrastive_loss([x, torch.randn(5, 3)])
    with pytest.raises(UserError, match="reduction"):
        contrastive_loss([x, x], reduction="max")
    with pytest.raises(UserError, match="temperature"):
        contrastive_loss([x, x], temperature=0.0)
