"""CMVAE (Palumbo, Laguna, Chopard & Vogt, ICLR 2024): MMVAE+ with a clustered shared latent.

Palumbo, Laguna, Chopard & Vogt (2024), *Deep Generative Clustering with Multimodal
Diffusion Variational Autoencoders*, ICLR. No copy of the paper is in ``papers/``; the
model and objective below follow its Sec. 3 (the CMVAE generative model and ELBO) as
recalled and as MultiVae 1.0.3 implements them, and equation numbers are not cited because
they could not be checked offline.

Generative model: a cluster c ~ Cat(pi) with pi = softmax(theta), a shared latent
z | c ~ N(mu_c, diag sigma_c^2), private latents w_m ~ N(0, I) and x_m ~ p(x_m | z, w_m).
Inference is MMVAE+'s (:mod:`omnivae.methods.mmvaeplus`): q(z | X) = (1/M) sum_m q(z | x_m),
q(w_m | x_m), learnable auxiliary priors r_m(w) for the cross reconstructions, and the
cluster posterior q(c | z, X) = p(c | z) = pi_c N(z; mu_c, sigma_c) / p(z) (the paper's
choice, after VaDE, Jiang et al. 2017). The per-sample log-weight of component r is

    lw_r = sum_c p(c | z_r) [ sum_d lambda_d log p(x_d | z_r, w_d)
           + beta (log pi_c + log p(z_r | c) + sum_{d in S_r} log p(w_d) - log q(z_r | X)
                   - sum_{d in S_r} log q(w_d | x_d) - log p(c | z_r)) ],

averaged over r of the log-mean-exp over K samples (the "looser" stratified bound, DReG
gradients by default), the same bound MultiVae trains. Because q(c | z, X) is exactly
p(c | z), the sum over c is in closed form: sum_c p(c | z) [log pi_c + log p(z | c) -
log p(c | z)] = log p(z) with p(z) = sum_c pi_c N(z; mu_c, sigma_c), the mixture's
marginal, and the rest of the bracket does not depend on c. So the CMVAE bound is MMVAE+'s
bound with the mixture-of-Gaussians prior :class:`GaussianMixturePrior` on z, value and
gradient: :class:`CMVAEObjective` is :class:`~omnivae.methods.mmvaeplus.MMVAEPlusObjective`
reading that prior (``tests/test_cmvae.py`` checks it against the explicit sum over c in
float64).

Clusters
--------
:meth:`CMVAE.cluster_probabilities` gives q(c | x_S) = (1/|S|) sum_{m in S} p(c | mu_m),
mu_m the mean of q(z | x_m): the expectation of p(c | z) under the mixture of the members'
experts, each taken at its mean (a choice: deterministic, and defined for any subset;
MultiVae draws one z per modality and takes the majority vote of argmax_c p(c | z_m)).
:meth:`CMVAE.cluster` is its argmax, one cluster per row.
:func:`omnivae.metrics.latent_clustering` reports these assignments' NMI/ARI beside
k-means's.

Post-hoc selection of the number of clusters
--------------------------------------------
The paper trains with more clusters than expected and then selects their number after
training by an entropy criterion. :func:`select_clusters` follows MultiVae's version of it:
drop the cluster with the least mass (rows assigned to it), one at a time, scoring each
number K' by beta H_norm(p(c | z)) - (1/D) sum_c p(c | z)[log pi_c + log p(z | c) -
log p(c | z)] (mean over rows and modalities, H_norm the entropy divided by log K'), and
keep the K' of lowest score. Unlike MultiVae it scores at the experts' means rather than
one draw, so the selection is deterministic.

Out of scope: the DiffuseVAE-style diffusion decoders of the paper's title (a second,
post-hoc generative stage that refines the VAE's samples); MultiVae leaves them out too.

Design decisions
----------------
- Cluster means start uniform in [-1, 1]; cluster scales are fixed to 1 by default (as the
  authors' code, per MultiVae's note) and learnt with ``learn_cluster_scales=True``
  (log-scales soft-clamped to [-7, 5]); the logits theta start at 0 (uniform pi).
- Everything else (Gaussian posteriors, one encoder with D + W outputs, the auxiliary
  priors, DReG, the latent layout u = [z, w_1, ..., w_M]) is MMVAE+'s, by subclassing.
  The private prior p(w_m) is N(0, I) as in MMVAE+.
- The prior of z is the mixture, so the ``prior`` setting must stay ``normal``.

References:
    Palumbo, Laguna, Chopard & Vogt (2024). Deep Generative Clustering with Multimodal
    Diffusion Variational Autoencoders. ICLR.
    Palumbo, Daunhawer & Vogt (2023). MMVAE+. ICLR.
    Jiang, Zheng, Tan, Tang & Zhou (2017). Variational Deep Embedding (VaDE). IJCAI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from omnivae.aggregators import Aggregator
from omnivae.errors import UserError
from omnivae.methods.mmvaeplus import MMVAEPlus, MMVAEPlusObjective
from omnivae.modalities import ModalitySpec
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import build_decoder, build_encoder
from omnivae.priors import GaussianMixturePrior

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = [
    "GaussianMixturePrior",
    "CMVAE",
    "CMVAEObjective",
    "CMVAEOptions",
    "ClusterSelection",
    "select_clusters",
    "RECIPES",
]

class CMVAE(MMVAEPlus):
    """MMVAE+ whose shared latent has the mixture-of-Gaussians prior (Palumbo et al. 2024).

    Args are :class:`~omnivae.methods.mmvaeplus.MMVAEPlus`'s with ``prior`` a
    :class:`GaussianMixturePrior`. ``prior()`` is p(z) p(w_1) ... p(w_M) with the mixture
    as p(z); generation from the prior draws a cluster, then z from it.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: GaussianMixturePrior,
        w_dim: int,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, w_dim, likelihood_weights)

    @property
    def mixture(self) -> GaussianMixturePrior:
        """The prior p(z) over clusters."""
        prior = self.prior_module
        assert isinstance(prior, GaussianMixturePrior)
        return prior

    @property
    def num_clusters(self) -> int:
        """K, the number of clusters with pi_c > 0."""
        return int(torch.isfinite(self.mixture.logits).sum())

    def cluster_probabilities(self, x: dict[str, Tensor], members: Tensor) -> Tensor:
        """q(c | x_S) = (1/|S|) sum_{m in S} p(c | mu_m) for every element of ``members [M, *S, B]``: ``[*S, B, K]``.

        mu_m is the mean of q(z | x_m); an element with no member gets NaN.
        """
        loc = self.encode_blocks(x).shared.loc  # [M, B, D]
        per_expert = self.mixture.responsibilities(loc)  # [M, B, K]
        lead = members.shape[1:-1]
        view = (per_expert.shape[0], *([1] * len(lead)), *per_expert.shape[1:])
        weight = members.to(per_expert.dtype).unsqueeze(-1)  # [M, *S, B, 1]
        total = (per_expert.reshape(view) * weight).sum(0)
        return total / members.sum(0).unsqueeze(-1).to(per_expert.dtype)

    def cluster(self, x: dict[str, Tensor], members: Tensor) -> Tensor:
        """The most probable cluster argmax_c q(c | x_S) of every element of ``members [M, *S, B]``: ``[*S, B]``."""
        return self.cluster_probabilities(x, members).argmax(-1)


class CMVAEObjective(MMVAEPlusObjective):
    """CMVAE's bound (Palumbo et al. 2024, Sec. 3, as MultiVae's ``dreg_looser``/``iwae_looser``).

    The explicit expectation over clusters under q(c | z, X) = p(c | z) equals log p(z) of
    the mixture prior (module docstring), so the bound, its DReG gradient, the masking of
    unobserved modalities and the terms ``rec``/``kl`` are MMVAE+'s
    (:class:`~omnivae.methods.mmvaeplus.MMVAEPlusObjective`), evaluated with
    ``model.prior_module()`` = :class:`GaussianMixturePrior`. The term ``kl`` is minus the
    regulariser log p(z) - log q(z | X) + sum_d [log p(w_d) - log q(w_d | x_d)], with
    log p(z) the mixture's log-density, i.e. the explicit sum over c.
    """


@dataclass(frozen=True)
class CMVAEOptions(MethodOptions):
    """CMVAE's settings."""

    w_dim: int = option(32, "W, the size of each modality-specific latent w_m")
    number_of_clusters: int = option(10, "K, the number of Gaussian clusters of the prior on z")
    learn_cluster_scales: bool = option(False, "learn the clusters' scales (fixed to 1 as in the authors' code)")

    def check(self) -> None:
        if self.w_dim < 1:
            raise UserError(f"w_dim (CMVAE's modality-specific latent size) must be >= 1, got {self.w_dim}", parameter="w_dim")
        if self.number_of_clusters < 1:
            raise UserError(f"number_of_clusters must be >= 1, got {self.number_of_clusters}",
                            parameter="number_of_clusters")


def _build_cmvae(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> CMVAE:
    """CMVAE's networks: MMVAE+'s (encoders with D + W outputs, decoders reading (z, w_m)) and the mixture prior."""
    parts.require("covariance", "diag", "encoders give one diagonal Gaussian, split into z and w")
    parts.require("prior", "normal", "prior on z is its learned mixture of Gaussians")
    options = config.settings_as(CMVAEOptions)
    width = config.latent_dim + options.w_dim
    encoders = nn.ModuleDict(
        {m.name: build_encoder(m, width, backbone=config.backbone, hidden=config.hidden) for m in modalities}
    )
    decoders = nn.ModuleDict(
        {
            m.name: build_decoder(m, width, backbone=config.backbone, hidden=config.hidden, likelihood=config.likelihood)
            for m in modalities
        }
    )
    prior = GaussianMixturePrior(config.latent_dim, options.number_of_clusters, options.learn_cluster_scales)
    return CMVAE(modalities, encoders, decoders, parts.aggregator(), prior, options.w_dim, parts.likelihood_weights)


# -- post-hoc selection of the number of clusters -------------------------------------------


@dataclass
class ClusterSelection:
    """What :func:`select_clusters` found.

    Attributes:
        chosen: The selected number of clusters K*.
        scores: ``K' -> score`` for every K' tried (lower is better).
        removed: Clusters in the order they were removed (indices into the prior's K).
    """

    chosen: int
    scores: dict[int, float]
    removed: list[int]


def _selection_score(mixture: GaussianMixturePrior, loc: Tensor, observed: Tensor, beta: float) -> tuple[Tensor, float]:
    """(rows assigned to each cluster ``[K]``, score) of the clusters kept (finite logits).

    ``loc [M, N, D]`` are the experts' means, ``observed [M, N]`` where they count.
    """
    kept = int(torch.isfinite(mixture.logits).sum())
    log_joint = mixture.log_joint(loc)  # [M, N, K], -inf for removed clusters
    resp = torch.softmax(log_joint, -1)
    present = resp > 0
    log_resp = torch.where(present, resp, torch.ones_like(resp)).log()
    entropy = -(resp * log_resp).sum(-1) / math.log(kept) if kept > 1 else torch.zeros_like(resp[..., 0])
    # sum_c p(c | mu) [log pi_c + log p(mu | c) - log p(c | mu)] = log p(mu), per latent unit
    likelihood = (resp * torch.where(present, log_joint - log_resp, torch.zeros_like(resp))).sum(-1) / loc.shape[-1]
    weight = observed.to(resp.dtype)
    count = weight.sum(0).clamp_min(1)
    per_row = ((beta * entropy - likelihood) * weight).sum(0) / count  # [N]
    row_resp = (resp * weight.unsqueeze(-1)).sum(0) / count.unsqueeze(-1)  # [N, K]
    mass = torch.bincount(row_resp.argmax(-1), minlength=mixture.num_clusters).to(torch.float64)
    return mass.cpu(), float(per_row.mean())


def select_clusters(model: CMVAE, x: dict[str, Tensor], mask: Tensor | None = None, *, batch_size: int = 256,
                    beta: float = 1.0, min_clusters: int = 2) -> ClusterSelection:
    """Choose the number of clusters after training (Palumbo et al. 2024, post-hoc selection; MultiVae's variant).

    The experts' means mu_m of every row of ``x`` (``name -> [N, *shape]``, in the
    model's dtype and device; ``mask [M, N]`` what is observed, default everything
    present) are computed once. Then, from the prior's K clusters down to
    ``min_clusters``: score the kept clusters (module docstring), and remove the one with
    the fewest rows assigned (its logit set to -inf, so pi renormalises over the rest).
    Finally the logits of the best-scoring K* are restored: the model keeps K* clusters
    and :meth:`CMVAE.cluster` assigns rows to those only.

    Raises:
        UserError: if ``min_clusters`` is below 1 or above the number of clusters kept.
    """
    mixture = model.mixture
    start = model.num_clusters
    if not 1 <= min_clusters <= start:
        raise UserError(f"min_clusters must be in [1, {start}], got {min_clusters}", parameter="min_clusters")
    observed = model.stack_mask(x, mask)
    rows = observed.shape[1]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            locs = []
            for begin in range(0, rows, batch_size):
                part = {name: value[begin : begin + batch_size] for name, value in x.items()}
                locs.append(model.encode_blocks(part).shared.loc)
            loc = torch.cat(locs, 1)  # [M, N, D]
            scores: dict[int, float] = {}
            saved: dict[int, Tensor] = {}
            removed: list[int] = []
            kept = start
            while True:
                mass, scores[kept] = _selection_score(mixture, loc, observed, beta)
                saved[kept] = mixture.logits.detach().clone()
                if kept <= min_clusters:
                    break
                mass[~torch.isfinite(saved[kept].cpu())] = math.inf
                drop = int(mass.argmin())
                mixture.logits[drop] = -math.inf
                removed.append(drop)
                kept -= 1
            chosen = min(scores, key=lambda k: scores[k])
            mixture.logits.copy_(saved[chosen])
    finally:
        model.train(was_training)
    return ClusterSelection(chosen, scores, removed[: start - chosen])


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "cmvae",
        "CMVAE (MMVAE+ with a mixture-of-Gaussians prior on z: clustering)",
        "Palumbo, Laguna, Chopard & Vogt, ICLR 2024",
        "moe",
        lambda c: CMVAEObjective(num_samples=c.num_samples, dreg=c.dreg, beta=c.beta),
        build=_build_cmvae,
        options_type=CMVAEOptions,
    ),
)
