"""The aggregation family: one shared latent, one aggregator (Qiu et al. 2025, the barycentric view).

PoE-VAE, MoE-VAE, MoPoE-VAE, WB-VAE and MWB-VAE are the same model, a
:class:`~omnivae.models.MultimodalVAE`, with another aggregator
(:mod:`omnivae.aggregators`) and objective (:mod:`omnivae.objectives`); each is a
recipe alone. The equations live where their code does: the aggregators' docstrings
(PoE, Wu & Goodman 2018, Eq. 5; MoE, Shi et al. 2019, Eq. 2; MoPoE, Sutter et al. 2021,
Eq. 7; W2 barycenters, Qiu et al. 2025, Eq. 6-7, Remark 2-3) and the objectives'.
"""

from __future__ import annotations

from omnivae.models.recipe import Recipe
from omnivae.objectives import ELBO, MixtureELBO, StratifiedIWAE, SubsampledELBO

__all__ = ["RECIPES"]

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "poe", "PoE-VAE (MVAE)", "Wu & Goodman, NeurIPS 2018; Eq. 5-6", "poe",
        lambda c: SubsampledELBO(beta=c.beta, num_random_subsets=c.num_random_subsets),
        # MVAE anneals the KL weight (Wu & Goodman 2018, Sec. 5); without it the
        # product with the prior expert collapses onto the prior (train KL 0.0 nats
        # after 6 epochs on two-view MNIST, 8 nats with 3 epochs of warm-up).
        warmup_epochs=5.0,
    ),
    Recipe(
        "moe", "MoE-VAE (MMVAE)", "Shi et al., NeurIPS 2019; Eq. 2-4", "moe",
        lambda c: StratifiedIWAE(num_samples=c.num_samples, dreg=c.dreg, beta=c.beta),
    ),
    Recipe(
        "mopoe", "MoPoE-VAE", "Sutter et al., ICLR 2021; Eq. 7-9", "mopoe",
        lambda c: MixtureELBO(beta=c.beta),
    ),
    Recipe(
        "wb", "WB-VAE (Wasserstein barycenter)", "Qiu et al., AAAI 2025; Eq. 6-7", "wb",
        lambda c: ELBO(beta=c.beta),
    ),
    Recipe(
        "mwb", "MWB-VAE (mixture of Wasserstein barycenters)", "Qiu et al., AAAI 2025; Remark 3", "mwb",
        lambda c: MixtureELBO(beta=c.beta),
    ),
)
