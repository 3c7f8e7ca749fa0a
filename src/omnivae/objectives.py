"""Training objectives as objects, separate from the models they train.

An objective is called as ``objective(model, x, mask, kl_weight)`` and returns an
:class:`ObjectiveOutput`: the loss to minimise (a scalar) and named terms (tensors, never
synchronised to the host inside the step). ``kl_weight`` is the schedule factor the
trainer declares for the step (beta warm-up); the objective's own ``beta`` is fixed.

The model only has to offer the :class:`MultimodalModel` protocol: per-modality experts,
its aggregator, its prior and the log-likelihood of data under a latent sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from omnivae.distributions import GaussianExperts, SubsetMixture
from omnivae.errors import UserError
from omnivae.functional import log_mean_exp

__all__ = [
    "ObjectiveOutput",
    "Objective",
    "ELBO",
    "MixtureELBO",
    "SubsampledELBO",
    "StratifiedIWAE",
    "random_subsets",
]


class MultimodalModel(Protocol):
    num_modalities: int

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts: ...

    def aggregate(self, experts: GaussianExperts, mask: Tensor) -> SubsetMixture: ...

    def prior(self) -> Distribution: ...

    def log_likelihood(
        self, x: dict[str, Tensor], z: Tensor, mask: Tensor, decode_terms: list[list[bool]] | None = None
    ) -> Tensor: ...


@dataclass
class ObjectiveOutput:
    """The loss and its named terms (per-batch means, as tensors)."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class for objectives; subclasses implement ``__call__``."""

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        raise NotImplementedError

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _check_beta(beta: float) -> None:
    if not beta >= 0:
        raise UserError(f"beta must be >= 0, got {beta}")


class ELBO(Objective):
    """The beta-weighted ELBO of one joint posterior (Qiu et al. 2025, Eq. 3; Higgins et al. 2017).

    L = E_q[log p(X | z)] - beta * KL(q(z | X) || p(z)), reconstructing only the observed
    modalities of each row. When the posterior is a mixture over subsets, one component is
    drawn per row and the KL is that component's closed-form KL: an unbiased estimate of
    the mixture ELBO of :class:`MixtureELBO`. For a one-component posterior it is exact.

    Args:
        beta: Weight of the KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        _check_beta(beta)
        self.beta = beta

    def __call__(self, model, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask)
        component = posterior.sample_component()
        z = component.rsample()
        rec = model.log_likelihood(x, z, mask)
        kl = kl_divergence(component, model.prior())
        loss = -(rec - self.beta * kl_weight * kl).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": kl.mean()})


class MixtureELBO(ELBO):
    """The mixture ELBO of MoPoE-VAE and MWB-VAE (Sutter et al. 2021, Eq. 9; Qiu et al. 2025, Remark 3).

    L = E_q[log p(X | z)] - beta * sum_k w_k KL(q_k(z | X_k) || p(z)), where q is the
    uniform mixture over subsets X_k of the barycenters q_k. The sum over the 2^M - 1
    subsets is estimated without bias by one subset drawn per row, so a step costs O(M)
    per row, as for a single barycenter.
    """


def random_subsets(mask: Tensor, count: int, min_size: int, max_size: int) -> Tensor:
    """``count`` random subsets per row of sizes uniform in [min_size, max_size]: ``[M, count, B]``.

    Members are drawn among all modalities and then intersected with ``mask [M, B]``.
    """
    num_modalities, batch = mask.shape
    device = mask.device
    size = torch.randint(min_size, max_size + 1, (count, batch), device=device)
    scores = torch.rand(num_modalities, count, batch, device=device)
    rank = scores.argsort(0).argsort(0)
    return (rank < size.unsqueeze(0)) & mask.unsqueeze(1)


class SubsampledELBO(Objective):
    """MVAE's sub-sampled training objective (Wu & Goodman 2018, Sec. 3.1, Eq. 6).

    The sum of the ELBOs of the joint posterior, of each unimodal posterior and of
    ``num_random_subsets`` random subsets of size 2..M-1 per row. Each term reconstructs
    the modalities in its subset. All terms share one encoder pass and one decoder call
    per modality (terms fold into the batch).

    Args:
        beta: Weight of the KL terms.
        num_random_subsets: The k random subsets (0 for two modalities).
    """

    def __init__(self, beta: float = 1.0, num_random_subsets: int = 0) -> None:
        _check_beta(beta)
        if num_random_subsets < 0:
            raise UserError("num_random_subsets must be >= 0")
        self.beta = beta
        self.num_random_subsets = num_random_subsets

    def decode_table(self, num_modalities: int) -> list[list[bool]]:
        """Which modalities each term may reconstruct, known before the step: ``[T][M]``."""
        table = [[True] * num_modalities]
        if num_modalities > 1:
            table += [[i == j for j in range(num_modalities)] for i in range(num_modalities)]
        if self.num_random_subsets and num_modalities > 2:
            table += [[True] * num_modalities for _ in range(self.num_random_subsets)]
        return table

    def term_masks(self, mask: Tensor) -> Tensor:
        """Masks ``[M, T, B]`` of the terms: joint, each modality, then random subsets."""
        num_modalities = mask.shape[0]
        eye = torch.eye(num_modalities, dtype=torch.bool, device=mask.device)
        singles = eye.unsqueeze(-1) & mask.unsqueeze(1)
        terms = [mask.unsqueeze(1), singles] if num_modalities > 1 else [mask.unsqueeze(1)]
        if self.num_random_subsets and num_modalities > 2:
            terms.append(random_subsets(mask, self.num_random_subsets, 2, num_modalities - 1))
        return torch.cat(terms, dim=1)

    def __call__(self, model, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        masks = self.term_masks(mask)  # [M, T, B]
        num_terms = masks.shape[1]
        posterior = model.aggregate(experts.expand_samples(torch.Size([num_terms])), masks)
        component = posterior.sample_component()
        z = component.rsample()  # [T, B, D]
        rec = model.log_likelihood(x, z, masks, self.decode_table(mask.shape[0]))  # [T, B]
        kl = kl_divergence(component, model.prior())  # [T, B]
        valid = masks.any(0)
        zero = torch.zeros((), dtype=rec.dtype, device=rec.device)
        elbo = torch.where(valid, rec - self.beta * kl_weight * kl, zero)
        loss = -elbo.sum(0).mean()
        return ObjectiveOutput(loss, {"rec": -rec[0].mean(), "kl": kl[0].mean()})


class StratifiedIWAE(Objective):
    """MMVAE's stratified importance-weighted bound, optionally with DReG gradients.

    For each mixture component r (for MoE, each observed modality) draw K samples
    z ~ q_r and weight them by log w = log p(X | z) + beta * (log p(z) - log q(z | X)),
    where q is the whole mixture; the bound is the mean over components of the
    log-mean-exp over K (Shi et al. 2019, Eq. 4, the "looser" stratified IWAE). With
    ``dreg`` the doubly reparameterised gradient estimator (Tucker et al. 2019) is used:
    q's density is evaluated with detached parameters and the sample path gets the
    squared normalised weights. Works with any aggregator (a one-component posterior gives
    the ordinary IWAE).

    Args:
        num_samples: K importance samples per component.
        dreg: Use the DReG estimator.
        beta: Weight of log p(z) - log q(z | X) (1 is the bound itself).
    """

    def __init__(self, num_samples: int = 1, dreg: bool = False, beta: float = 1.0) -> None:
        _check_beta(beta)
        if num_samples < 1:
            raise UserError(f"the number of importance samples K must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.dreg = dreg
        self.beta = beta

    def __call__(self, model, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask)
        z, log_weights = posterior.stratified_rsample(self.num_samples)  # [C, K, B, D], [C, B]
        num_components, k, batch, dim = z.shape
        density = model.aggregate(experts.detach(), mask) if self.dreg else posterior
        log_q = density.log_prob(z)  # [C, K, B]
        log_p = model.prior().log_prob(z)
        rec = model.log_likelihood(x, z.reshape(num_components * k, batch, dim), mask)
        rec = rec.reshape(num_components, k, batch)
        log_w = rec + self.beta * kl_weight * (log_p - log_q)
        valid = torch.isfinite(log_weights)  # [C, B]
        zero = torch.zeros((), dtype=log_w.dtype, device=log_w.device)
        log_w = torch.where(valid.unsqueeze(1), log_w, zero)
        per_component = log_mean_exp(log_w, dim=1)
        if self.dreg:
            normalised = torch.softmax(log_w, dim=1).detach()
            if z.requires_grad:
                z.register_hook(lambda grad: grad * normalised.unsqueeze(-1))
            surrogate = (normalised * log_w).sum(1)
            # The value stays the bound (comparable with plain IWAE); only the gradient is DReG's.
            per_component = per_component.detach() + (surrogate - surrogate.detach())
        count = valid.sum(0).clamp_min(1)
        bound = torch.where(valid, per_component, zero).sum(0) / count
        terms = {"rec": -rec.mean(), "kl": (log_q - log_p).mean()}
        return ObjectiveOutput(-bound.mean(), terms)
