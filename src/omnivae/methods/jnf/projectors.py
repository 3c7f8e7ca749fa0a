"""The shared-information projectors of JNF-Shared (stage 0): networks and objectives.

JNF-Shared conditions each unimodal posterior on a pretrained projection ``g_j(x_j)`` that
keeps what modality ``j`` shares with the others (Senellart et al., Sec. 3.4, Eq. 13-15).
The projectors are trained jointly, before the VAE, with one of two objectives:

* DCCA (Appendix B.1; Andrew et al. 2013): maximise the total canonical correlation of
  every pair of projections, :func:`cca_total_correlation` and :func:`dcca_loss`;
* multimodal contrastive learning (Appendix B.2): InfoNCE on cosine similarities between
  the projections of one sample across modalities, :func:`contrastive_loss`.

The network g_j is :class:`Projector`; the training stage is in :mod:`omnivae.methods.jnf.objectives`.
Projections are ``[N, d_j]``: ``N`` samples (a batch), one row per sample in every view.

References:
    Senellart, Chadebec & Allassonnière. Bridging the inference gap in Multimodal
    Variational Autoencoders. Sec. 3.4 and Appendix B.
    Andrew, Arora, Bilmes & Livescu (2013). Deep Canonical Correlation Analysis. ICML.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.nn import build_encoder

__all__ = ["Projector", "cca_total_correlation", "dcca_loss", "contrastive_loss"]


def _ridged(covariance: Tensor, eps: float) -> Tensor:
    """``covariance + r I`` with ``r = eps``, or the smallest ridge the precision resolves.

    A ridge below the rounding error of the covariance's largest entries is lost in the
    addition: a singular covariance (fewer samples than dimensions, as in a batch with few
    fully observed rows) of projections on the scale of 100 in float32 then fails the
    Cholesky factorisation. The floor, ``10 d u max_i Σ_ii`` (``u`` the unit roundoff),
    only takes over where ``eps`` would have no effect anyway; it carries no gradient.
    """
    d = covariance.shape[-1]
    floor = 10 * d * torch.finfo(covariance.dtype).eps * covariance.diagonal().max().detach()
    ridge = floor.clamp_min(eps)
    return covariance + ridge * torch.eye(d, dtype=covariance.dtype, device=covariance.device)


def _covariances(h1: Tensor, h2: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Centred ``Σ11 + eps I``, ``Σ22 + eps I`` and ``Σ12``, normalised by ``N - 1``."""
    n = h1.shape[0]
    c1 = h1 - h1.mean(0, keepdim=True)
    c2 = h2 - h2.mean(0, keepdim=True)
    s11 = _ridged(c1.T @ c1 / (n - 1), eps)
    s22 = _ridged(c2.T @ c2 / (n - 1), eps)
    s12 = c1.T @ c2 / (n - 1)
    return s11, s22, s12


def cca_total_correlation(
    h1: Tensor,
    h2: Tensor,
    *,
    eps: float = 1e-4,
    top_k: int | None = None,
) -> Tensor:
    """The total CCA correlation ``F(h1, h2)`` that DCCA maximises (Appendix B.1).

    With centred covariances regularised as in Andrew et al. (2013),
    ``Σ11 = cov(h1) + eps I``, ``Σ22 = cov(h2) + eps I``, ``Σ12 = cov(h1, h2)`` (``1/(N-1)``),

        T = Σ11^{-1/2} Σ12 Σ22^{-1/2},    F = Tr((T'T)^{1/2}) = sum_i σ_i(T),

    the trace norm of ``T``: the sum of the canonical correlations, the maximum of
    ``Tr(A' Σ12 B)`` under ``A'Σ11 A = B'Σ22 B = I`` (Eq. B.1). (The appendix prints
    ``Σ^{1/2}``; the whitening needs ``Σ^{-1/2}``, as in Andrew et al.) ``top_k`` sums only
    the ``k`` largest singular values.

    The singular values of ``T`` do not depend on which square root whitens each block:
    ``T̃ = L1^{-1} Σ12 L2^{-T}`` with Cholesky factors ``Σ = L L'`` equals ``U1 T U2'`` with
    ``U_i = L_i^{-1} Σ_ii^{1/2}`` orthogonal. This uses Cholesky factors and triangular
    solves rather than eigendecompositions, whose backward divides by eigenvalue gaps and
    gives NaN when a covariance has repeated eigenvalues (e.g. whitened projections).
    The backward of the singular values is ``U diag(1) V'``, finite everywhere.

    Args:
        h1: ``[N, d1]``, projections of view 1; ``h2: [N, d2]``, of view 2 (same rows).
        eps: ridge added to each view's covariance (``r1 = r2`` of Andrew et al.).
        top_k: sum the ``top_k`` largest canonical correlations (``None``: all
            ``min(d1, d2)``).

    Returns:
        Scalar tensor, in ``[0, min(d1, d2)]`` (slightly less than the unregularised value).
    """
    if h1.dim() != 2 or h2.dim() != 2 or h1.shape[0] != h2.shape[0]:
        raise UserError(
            "cca_total_correlation needs [N, d1] and [N, d2], got "
            f"{tuple(h1.shape)} and {tuple(h2.shape)}"
        )
    if h1.shape[0] < 2:
        raise UserError("cca_total_correlation needs at least 2 samples")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    s11, s22, s12 = _covariances(h1, h2, eps)
    l1 = torch.linalg.cholesky(s11)
    l2 = torch.linalg.cholesky(s22)
    t = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^{-1} Σ12
    t = torch.linalg.solve_triangular(l2.mT, t, upper=True, left=False)  # ... L2^{-T}
    singular = torch.linalg.svdvals(t)  # descending
    if top_k is not None:
        singular = singular[:top_k]
    return singular.sum()


def dcca_loss(
    projections: Sequence[Tensor], *, eps: float = 1e-4, top_k: int | None = None
) -> Tensor:
    """DCCA loss for ``M >= 2`` views: ``-sum_{i<j} F(g_i(x_i), g_j(x_j))`` (Appendix B.1).

    The sum of pairwise total correlations is the paper's extension of (D)CCA to more than
    two modalities; with two views it is ``-F(h1, h2)``, Andrew et al.'s objective.

    Args:
        projections: ``M`` tensors ``[N, d_j]``, the same ``N`` samples in every view.
        eps, top_k: as in :func:`cca_total_correlation`.

    Returns:
        Scalar tensor, to minimise.
    """
    if len(projections) < 2:
        raise UserError(f"dcca_loss needs at least 2 views, got {len(projections)}")
    pairs = itertools.combinations(projections, 2)
    return -functools.reduce(torch.add, [cca_total_correlation(a, b, eps=eps, top_k=top_k) for a, b in pairs])


def contrastive_loss(
    projections: Sequence[Tensor],
    temperature: float = 0.1,
    *,
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """Multimodal contrastive (InfoNCE) loss of Appendix B.2, Eq. B.2-B.4.

    With unit vectors ``u_a^i = g_a(x_a^i) / ||g_a(x_a^i)||`` and
    ``sim(a^i, b^j) = exp(u_a^i · u_b^j / τ)``, for two views ``a, b`` and a batch of ``K``:

        L_ab(i) = -log( sim(a^i, b^i) / sum_{j=1}^K sim(a^i, b^j) )          (B.3, B.4)
        L_ab    = sum_{i=1}^K L_ab(i) + L_ba(i)                            (B.2)

    and for ``M > 2`` views the sum of all pairwise losses, ``sum_{a<b} L_ab`` (the last
    paragraph of B.2). ``reduction="sum"`` is Eq. B.2 as printed; ``"mean"`` divides by
    ``K``. Each ``L_ab(i) >= 0``; when all projections are equal every similarity is the same
    and ``L_ab(i) = log K``, so the loss is ``M (M-1) K log K`` (``M (M-1) log K`` for mean).

    Args:
        projections: ``M >= 2`` tensors ``[K, d]`` (one width for all views), the same
            ``K`` samples in every view.
        temperature: ``τ`` (0.1 in the paper).
        reduction: ``"sum"`` (Eq. B.2) or ``"mean"`` over the batch.

    Returns:
        Scalar tensor, to minimise.
    """
    if len(projections) < 2:
        raise UserError(f"contrastive_loss needs at least 2 views, got {len(projections)}")
    if reduction not in ("sum", "mean"):
        raise UserError(f"unknown reduction {reduction!r}; choose one of: mean, sum")
    if temperature <= 0:
        raise UserError(f"temperature must be positive, got {temperature}")
    shapes = {tuple(p.shape) for p in projections}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise UserError(f"contrastive_loss needs views of one shape [K, d], got {sorted(shapes)}")
    units = [F.normalize(p, dim=-1) for p in projections]
    batch = units[0].shape[0]
    total = units[0].new_zeros(())
    for a, b in itertools.combinations(units, 2):
        logits = a @ b.T / temperature  # [K, K]: row i holds log sim(a^i, b^j)
        positives = logits.diagonal()
        # Rows give L_ab(i) (B.3), columns L_ba(i) (B.4).
        total = total + (logits.logsumexp(1) - positives).sum()
        total = total + (logits.logsumexp(0) - positives).sum()
    if reduction == "mean":
        total = total / batch
    return total


class Projector(nn.Module):
    """A projector g_j of JNF-Shared (Sec. 3.4, App. E): an encoder body and a linear map.

    The body is the one :func:`~omnivae.nn.build_encoder` builds for the modality ("the
    projectors have the same architectures as the encoders of other models", App. E).

    Args:
        spec, backbone, hidden: As for :func:`~omnivae.nn.build_encoder`.
        dim: the projection's size (App. E.1: 10).
    """

    def __init__(self, spec: ModalitySpec, dim: int, backbone: str, hidden: Sequence[int]) -> None:
        super().__init__()
        encoder = build_encoder(spec, dim, backbone=backbone, hidden=hidden)
        self.body = encoder.body
        self.out = nn.Linear(encoder.loc.in_features, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, *shape] -> g_j(x) [B, dim]``."""
        return self.out(self.body(x))
