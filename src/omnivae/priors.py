"""Priors p(z): modules whose ``forward()`` returns a distribution over the latent space."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Laplace

from omnivae.distributions import diagonal_normal

__all__ = ["StandardNormalPrior", "LearnableLaplacePrior", "PRIORS"]


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


PRIORS: dict[str, type[nn.Module]] = {
    "normal": StandardNormalPrior,
    "laplace": LearnableLaplacePrior,
}
