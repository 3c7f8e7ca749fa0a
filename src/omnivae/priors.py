"""Priors p(z): modules whose ``forward()`` returns a distribution over the latent space."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Laplace, MixtureSameFamily

from omnivae.distributions import diagonal_normal
from omnivae.errors import UserError
from omnivae.nn import soft_clamp

__all__ = ["StandardNormalPrior", "LearnableLaplacePrior", "GaussianMixturePrior", "PRIORS"]

_LOG_2PI = math.log(2 * math.pi)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) (Kingma & Welling 2014)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.loc: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> Distribution:
        return diagonal_normal(self.loc, self.scale)


class LearnableLaplacePrior(nn.Module):
    """p(z) = Laplace(0, softmax(theta) * D) with learnable theta (MMVAE; Shi et al. 2019, Sec. 4)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.logits = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> Distribution:
        scale = torch.softmax(self.logits, -1) * self.latent_dim
        return Independent(Laplace(torch.zeros_like(scale), scale, validate_args=False), 1)


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2), pi = softmax(theta) (CMVAE's prior on z).

    Args:
        latent_dim: D.
        num_clusters: K.
        learn_scales: Learn the sigma_c (else fixed to 1, as the authors' code).

    Attributes:
        logits: theta ``[K]`` (0 at start). A cluster removed by :func:`select_clusters`
            has logit -inf, so pi_c = 0 exactly.
        loc: mu ``[K, D]``, uniform in [-1, 1] at start.
        log_scale: log sigma ``[K, D]``; a parameter when learnt, else a buffer of zeros
            (the same state-dict key either way).
    """

    log_scale: Tensor

    def __init__(self, latent_dim: int, num_clusters: int, learn_scales: bool = False) -> None:
        super().__init__()
        if num_clusters < 1:
            raise UserError(f"number_of_clusters must be >= 1, got {num_clusters}", parameter="number_of_clusters")
        self.latent_dim = int(latent_dim)
        self.num_clusters = int(num_clusters)
        self.learn_scales = bool(learn_scales)
        self.logits = nn.Parameter(torch.zeros(num_clusters))
        self.loc = nn.Parameter(2 * torch.rand(num_clusters, latent_dim) - 1)
        if learn_scales:
            self.log_scale = nn.Parameter(torch.zeros(num_clusters, latent_dim))
        else:
            self.register_buffer("log_scale", torch.zeros(num_clusters, latent_dim))

    def weights(self) -> Tensor:
        """pi = softmax(theta), ``[K]``."""
        return torch.softmax(self.logits, -1)

    def scale(self) -> Tensor:
        """sigma ``[K, D]`` (soft-clamped when learnt)."""
        return soft_clamp(self.log_scale, -7.0, 5.0).exp() if self.learn_scales else self.log_scale.exp()

    def log_joint(self, z: Tensor) -> Tensor:
        """log pi_c + log N(z; mu_c, sigma_c) for every cluster: ``z [..., D]`` -> ``[..., K]``."""
        scale = self.scale().to(z.dtype)
        diff = (z.unsqueeze(-2) - self.loc.to(z.dtype)) / scale
        log_normal = -0.5 * (diff.pow(2) + _LOG_2PI).sum(-1) - scale.log().sum(-1)
        return torch.log_softmax(self.logits.to(z.dtype), -1) + log_normal

    def responsibilities(self, z: Tensor) -> Tensor:
        """p(c | z) = pi_c p(z | c) / p(z): ``z [..., D]`` -> ``[..., K]``."""
        return torch.softmax(self.log_joint(z), -1)

    def forward(self) -> Distribution:
        components = diagonal_normal(self.loc, self.scale())
        return MixtureSameFamily(Categorical(logits=self.logits), components, validate_args=False)


PRIORS: dict[str, type[nn.Module]] = {
    "normal": StandardNormalPrior,
    "laplace": LearnableLaplacePrior,
}
