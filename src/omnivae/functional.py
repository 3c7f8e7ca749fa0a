"""Pure tensor maths for multimodal VAEs: products of experts, Wasserstein barycenters,
subset matrices, closed-form Gaussian KL divergences and log-mean-exp.

Conventions: expert tensors put the modality axis first, batch axes next and the latent
axis last (``mu: [M, *B, D]``); masks are ``[M, *B]`` booleans, True = observed. Every
function is differentiable and works in float32 and float64. Masked experts are removed
with :func:`torch.where`, never multiplied by zero, so that they receive exactly zero
gradient even if their parameters are extreme.

References:
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI.
    Wu & Goodman (2018). Multimodal Generative Models for Scalable Weakly-Supervised
    Learning. NeurIPS.
    Alvarez-Esteban et al. (2016). A fixed-point approach to barycenters in Wasserstein
    space. J. Math. Anal. Appl.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "poe",
    "wasserstein_barycenter",
    "bures_wasserstein_barycenter",
    "psd_sqrt",
    "subset_matrix",
    "normalize_weights",
    "kl_normal_normal",
    "kl_normal_standard",
    "kl_mvn",
    "log_mean_exp",
    "gaussian_log_prob",
]


def _expand_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """A ``[M, *B]`` mask broadcast to ``[M, *B, 1]`` against ``like: [M, *B, D]``."""
    if mask is None:
        return None
    return mask.unsqueeze(-1).expand(*like.shape[:-1], 1)


def poe(
    mu: Tensor,
    var: Tensor,
    mask: Tensor | None = None,
    prior_expert: bool = True,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts, optionally with a standard normal prior expert.

    The product of diagonal Gaussians N(mu_m, var_m) is Gaussian with precision
    sum_m 1/var_m and mean var * sum_m mu_m/var_m (Wu & Goodman 2018, Eq. 5; in the
    barycentric view the reverse-KL barycenter, Qiu et al. 2025, Theorem 1).

    Args:
        mu: Expert means ``[M, *B, D]``.
        var: Expert variances ``[M, *B, D]``, positive.
        mask: ``[M, *B]`` booleans; False experts are left out. ``None`` keeps all.
        prior_expert: Multiply in N(0, I) as one more expert.
        weights: Weights lambda_m, ``[M]`` or ``[M, *B]``, renormalised over the observed
            experts; ``None`` gives the plain product. Expert m then enters with precision
            n * lambda_m / var_m, n the number of observed experts: the weighted geometric
            mean prod_m q_m^lambda_m (the reverse-KL barycenter with weights lambda, Qiu
            et al. 2025, Theorem 1) raised to the power n, so that uniform weights give
            the plain product (the prior expert keeps weight 1).

    Returns:
        ``(mu, var)`` of the product, each ``[*B, D]``. A row with no expert at all (every
        modality masked and no prior expert) gets N(0, I) rather than an infinite variance.

    Example:
        >>> mu, var = poe(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), prior_expert=False)
        >>> var[0, 0].item()
        0.5
    """
    m = _expand_mask(mask, mu)
    if m is not None:
        # Replace masked experts before any arithmetic, not only after it: a where placed
        # after 1/var still back-propagates 0 * inf = NaN into an expert whose var is ~0.
        zero = torch.zeros((), dtype=mu.dtype, device=mu.device)
        mu = torch.where(m, mu, zero)
        var = torch.where(m, var, torch.ones((), dtype=var.dtype, device=var.device))
        precision = torch.where(m, var.reciprocal(), zero)
    else:
        precision = var.reciprocal()
    if weights is not None:
        lam = normalize_weights(weights, mask, mu.shape[:-1], mu.dtype, mu.device)
        count = lam.new_tensor(mu.shape[0]) if mask is None else mask.sum(0, keepdim=True).to(mu.dtype)
        precision = precision * (lam * count).unsqueeze(-1)
    weighted_mu = mu * precision
    total_precision = precision.sum(0)
    total_eta = weighted_mu.sum(0)
    if prior_expert:
        total_precision = total_precision + 1.0
    else:
        empty = total_precision == 0
        total_precision = torch.where(empty, torch.ones_like(total_precision), total_precision)
    out_var = total_precision.reciprocal()
    return total_eta * out_var, out_var


def normalize_weights(
    weights: Tensor | None, mask: Tensor | None, shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Barycentric weights ``[M, *B]`` that sum to one over the observed experts.

    ``weights`` may be ``None`` (uniform), ``[M]`` or ``[M, *B]``. Rows with no observed
    expert get all-zero weights.
    """
    if weights is None:
        w = torch.ones(shape, dtype=dtype, device=device)
    else:
        w = weights.to(dtype=dtype, device=device)
        while w.dim() < len(shape):
            w = w.unsqueeze(-1)
        w = w.expand(shape)
    if mask is not None:
        w = torch.where(mask, w, torch.zeros((), dtype=dtype, device=device))
    total = w.sum(0, keepdim=True)
    return w / torch.where(total > 0, total, torch.ones_like(total))


def wasserstein_barycenter(
    mu: Tensor,
    std: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """2-Wasserstein barycenter of diagonal Gaussians, in closed form.

    For N(mu_m, diag(std_m^2)) the barycenter is N(sum_m l_m mu_m, diag((sum_m l_m std_m)^2))
    (Qiu et al. 2025, Remark 2, Eq. 7): means and standard deviations are averaged
    dimension by dimension, because diagonal covariances commute.

    Args:
        mu: Expert means ``[M, *B, D]``.
        std: Expert standard deviations ``[M, *B, D]``.
        weights: Barycentric weights, ``[M]`` or ``[M, *B]``; uniform when ``None``.
            Renormalised over the observed experts.
        mask: ``[M, *B]`` booleans; False experts are left out.

    Returns:
        ``(mu, std)`` of the barycenter, each ``[*B, D]``.

    Example:
        >>> mu, std = wasserstein_barycenter(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))
        >>> (mu.item(), std.item())
        (1.0, 2.0)
    """
    w = normalize_weights(weights, mask, mu.shape[:-1], mu.dtype, mu.device).unsqueeze(-1)
    m = _expand_mask(mask, mu)
    if m is not None:
        zero = torch.zeros((), dtype=mu.dtype, device=mu.device)
        mu = torch.where(m, mu, zero)
        std = torch.where(m, std, zero)
    out_mu = (w * mu).sum(0)
    out_std = (w * std).sum(0)
    if mask is not None:
        # A row with no observed expert falls back to N(0, I) instead of a zero scale.
        empty = ~mask.any(0).unsqueeze(-1)
        out_std = torch.where(empty, torch.ones_like(out_std), out_std)
    return out_mu, out_std


class _PSDSqrt(torch.autograd.Function):
    """Square root of symmetric positive semi-definite matrices with a stable gradient.

    The gradient of S = A^(1/2) solves the Sylvester equation S X + X S = G. In the
    eigenbasis of A this is X_ij = G_ij / (s_i + s_j), which stays finite for repeated
    eigenvalues, unlike differentiating through ``eigh`` (its gradient divides by the
    eigenvalue gaps, which are zero for isotropic covariances).
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor) -> Tensor:
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        root = eigenvalues.clamp_min(0).sqrt()
        ctx.save_for_backward(eigenvectors, root)
        return (eigenvectors * root.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        eigenvectors, root = ctx.saved_tensors
        grad = 0.5 * (grad + grad.transpose(-1, -2))
        rotated = eigenvectors.transpose(-1, -2) @ grad @ eigenvectors
        denominator = (root.unsqueeze(-1) + root.unsqueeze(-2)).clamp_min(
            torch.finfo(root.dtype).tiny ** 0.5
        )
        return eigenvectors @ (rotated / denominator) @ eigenvectors.transpose(-1, -2)


def psd_sqrt(matrix: Tensor) -> Tensor:
    """Principal square root of symmetric PSD matrices ``[..., D, D]`` (batched)."""
    return _PSDSqrt.apply(matrix)


def bures_wasserstein_barycenter(
    means: Tensor,
    covs: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    iters: int = 50,
    tol: float | None = 1e-7,
) -> tuple[Tensor, Tensor]:
    """2-Wasserstein (Bures-Wasserstein) barycenter of Gaussians with full covariances.

    The barycenter of N(mu_m, C_m) with weights l_m is N(sum_m l_m mu_m, S) where S solves
    the fixed-point equation of Qiu et al. (2025), Eq. 6:
    S = sum_m l_m (S^(1/2) C_m S^(1/2))^(1/2).
    We iterate the map of Alvarez-Esteban et al. (2016, Theorem 4.2),
    S <- S^(-1/2) (sum_m l_m (S^(1/2) C_m S^(1/2))^(1/2))^2 S^(-1/2), whose fixed points are
    exactly those of Eq. 6 and which converges from any positive definite start. The start
    is (sum_m l_m C_m^(1/2))^2, the exact answer when the covariances commute (e.g. diagonal
    ones, where the result is Remark 2), so few iterations are needed in practice.
    Every step is differentiable (gradients flow through the unrolled iterations).

    Args:
        means: ``[M, *B, D]``.
        covs: ``[M, *B, D, D]``, symmetric positive definite.
        weights: ``[M]`` or ``[M, *B]``; uniform when ``None``; renormalised over observed.
        mask: ``[M, *B]`` booleans; False experts are left out.
        iters: Maximum number of fixed-point iterations.
        tol: Stop when the largest relative change of S falls below this (checking it
            synchronises with the device once per iteration); ``None`` runs all ``iters``.

    Returns:
        ``(mean [*B, D], cov [*B, D, D])``.

    Example:
        >>> covs = torch.stack([torch.eye(2), 4 * torch.eye(2)])
        >>> mean, cov = bures_wasserstein_barycenter(torch.zeros(2, 2), covs)
        >>> round(cov[0, 0].item(), 4)
        2.25
    """
    dim = means.shape[-1]
    w = normalize_weights(weights, mask, means.shape[:-1], means.dtype, means.device)
    if mask is not None:
        # A zero weight does not remove a NaN or infinite mean (0 * inf = NaN).
        means = torch.where(mask.unsqueeze(-1), means, torch.zeros((), dtype=means.dtype, device=means.device))
    mean = (w.unsqueeze(-1) * means).sum(0)
    identity = torch.eye(dim, dtype=covs.dtype, device=covs.device)
    if mask is not None:
        # Masked experts get the identity, so that their (unused) square roots stay finite.
        covs = torch.where(mask[..., None, None], covs, identity)
    w2 = w[..., None, None]
    bar = ((w2 * psd_sqrt(covs)).sum(0)).matrix_power(2)
    if mask is not None:
        bar = torch.where(mask.any(0)[..., None, None], bar, identity)
    for _ in range(iters):
        root = psd_sqrt(bar)
        inv_root = torch.linalg.inv(root)
        inner = psd_sqrt(root.unsqueeze(0) @ covs @ root.unsqueeze(0))
        average = (w2 * inner).sum(0)
        if mask is not None:
            average = torch.where(mask.any(0)[..., None, None], average, bar)
        new = inv_root @ average @ average @ inv_root
        new = 0.5 * (new + new.transpose(-1, -2))
        if tol is not None:
            change = (new - bar).norm(dim=(-2, -1)) / bar.norm(dim=(-2, -1))
            bar = new
            if bool(change.max() < tol):
                break
        else:
            bar = new
    return mean, bar


def subset_matrix(num_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """All non-empty subsets of ``M`` modalities as a ``BoolTensor[2**M - 1, M]``.

    Rows are ordered by subset size, then lexicographically, so the first ``M`` rows are
    the singletons and the last row is the full set.

    Example:
        >>> subset_matrix(2).int().tolist()
        [[1, 0], [0, 1], [1, 1]]
    """
    if num_modalities < 1:
        raise ValueError("subset_matrix needs at least one modality")
    rows = []
    for size in range(1, num_modalities + 1):
        for members in itertools.combinations(range(num_modalities), size):
            row = [False] * num_modalities
            for j in members:
                row[j] = True
            rows.append(row)
    return torch.tensor(rows, dtype=torch.bool, device=device)


def kl_normal_normal(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mu_q, diag var_q) || N(mu_p, diag var_p)), summed over the last axis."""
    ratio = var_q / var_p
    return 0.5 * (ratio + (mu_q - mu_p).pow(2) / var_p - 1.0 - ratio.log()).sum(-1)


def kl_normal_standard(mu: Tensor, var: Tensor) -> Tensor:
    """KL(N(mu, diag var) || N(0, I)), summed over the last axis (Kingma & Welling 2014, App. B)."""
    return 0.5 * (var + mu.pow(2) - 1.0 - var.log()).sum(-1)


def kl_mvn(mu_q: Tensor, cov_q: Tensor, mu_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(mu_q, cov_q) || N(mu_p, cov_p)) for full covariances ``[..., D, D]``."""
    dim = mu_q.shape[-1]
    chol_p = torch.linalg.cholesky(cov_p)
    chol_q = torch.linalg.cholesky(cov_q)
    solved = torch.linalg.solve_triangular(chol_p, chol_q, upper=False)
    trace = solved.pow(2).sum((-2, -1))
    diff = torch.linalg.solve_triangular(chol_p, (mu_p - mu_q).unsqueeze(-1), upper=False)
    mahalanobis = diff.pow(2).sum((-2, -1))
    log_det_p = 2 * chol_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = 2 * chol_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - dim + log_det_p - log_det_q)


def log_mean_exp(x: Tensor, dim: int = 0, keepdim: bool = False) -> Tensor:
    """log(mean(exp(x))) along ``dim``, computed stably with logsumexp."""
    return torch.logsumexp(x, dim=dim, keepdim=keepdim) - math.log(x.shape[dim])


def gaussian_log_prob(x: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    """log N(x; mu, diag var), summed over the last axis."""
    return -0.5 * ((x - mu).pow(2) / var + var.log() + math.log(2 * math.pi)).sum(-1)
