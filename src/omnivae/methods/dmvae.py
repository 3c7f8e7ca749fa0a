"""DMVAE (Lee & Pavlovic, CVPR Workshops 2021, "Private-shared disentangled multimodal VAE
for learning of latent representations").

Each modality m has a private latent z_p^m (dimension P, option ``private_dim``) and a
view of the shared latent z_s (dimension D = ``latent_dim``): its encoder gives
q(z_s | x_m) q(z_p^m | x_m), and its decoder reads (z_s, z_p^m). The shared posterior of
the observed set is the product of experts with the prior expert,
q(z_s | X) ~ p(z_s) prod_m q(z_s | x_m) (Wu & Goodman 2018, Eq. 5).

The objective (the paper's Sec. 3: the joint ELBO plus the cross-modal ELBOs, each a full
ELBO of every modality; written here for any M, with the observed set O of a row):

    L = sum_{c in {X} u O} ELBO_c,
    ELBO_c = sum_{i in O} [lambda_i E log p(x_i | z_s^c, z_p^i) - beta KL(q(z_p^i | x_i) || p(z_p))]
             - beta KL(q_c(z_s) || p(z_s)),

with q_X(z_s) = q(z_s | X) (the PoE) and q_j(z_s) = q(z_s | x_j): every modality is
reconstructed from its own private latent and the shared latent of the joint posterior
and of each single modality (self- and cross-modal reconstruction). Each ELBO holds the
private KLs, so they enter 1 + |O| times; the shared KL of a source enters once.

Sources checked (the paper's PDF is not among the project's stored papers and could not be
read offline, so its equation numbers are not cited): the authors' code
(github.com/seqam-lab/DMVAE, ``mnist_svhn/main.py``: one ELBO per (modality, shared
source) pair, each with the private and the shared KL) and MultiVae's DMVAE, whose loss
sums M + 1 full ELBOs as above (its private KLs are in every ELBO). omnivae's version
before issue 21 counted the private KLs once; it now follows the sum of full ELBOs
(tests/test_dmvae.py checks the count). Differences that remain, by choice:

- the authors' code writes one ELBO per (modality, source) pair, so a shared KL enters
  once per reconstructed modality, and uses a beta-TCVAE decomposition of the KL
  (probtorch's ``mws_tcvae``); omnivae keeps the plain KL of the sum of ELBOs above
  (MultiVae's form);
- ``beta`` weights every KL here; MultiVae weights the shared KL by ``beta`` and the
  private ones by per-modality betas (1 by default): equal for beta = 1.

Choices the paper leaves open:

- One draw of each z_p^i and of each z_s^c per row, shared by the terms that read it
  (MultiVae draws z_p^i afresh in each ELBO: the same expectation).
- Gaussian posteriors everywhere; p(z_p) = N(0, I); p(z_s) is ``--prior`` (a KL without
  closed form, Laplace, is the one-draw estimate).
- ``private_dim`` defaults to 10 (a choice; set it per dataset).
- Missing modalities: sources and reconstructions over the observed set only, so an
  unobserved entry gets zero gradient.

Multi-latent model in the single-latent API: the latent is u = [z_s, z_p^1, ..., z_p^M]
(size D + M P); decoder m reads (z_s, z_p^m). The posterior given a subset S is the
aggregator's inference posterior of z_s (PoE for the recipe) concatenated with
q(z_p^m | x_m) for m in S and p(z_p) for m outside S, so a cross generation to m draws
its private part from the prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from omnivae.aggregators import Aggregator
from omnivae.distributions import (
    ConcatenatedBlocks,
    GaussianExperts,
    diagonal_normal,
    kl_divergence,
)
from omnivae.errors import UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import build_decoder, build_encoder
from omnivae.objectives import Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["DMVAEModel", "DMVAEObjective", "DMVAEOptions", "RECIPES"]


class DMVAEModel(MultimodalVAE):
    """DMVAE's model: latent u = [z_s, z_p^1, ..., z_p^M] (Lee & Pavlovic 2021).

    Args:
        modalities, decoders, aggregator, prior, likelihood_weights: As for
            :class:`~omnivae.models.MultimodalVAE`; ``prior`` is p(z_s), ``aggregator``
            combines the experts q(z_s | x_m).
        encoders: ``name -> module`` giving ``(loc, scale, None)`` of size D + P: the first
            D entries parameterise q(z_s | x_m), the last P q(z_p^m | x_m).
        private_dim: P.
    """

    private_prior_loc: Tensor
    private_prior_scale: Tensor

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator,
        prior: nn.Module,
        private_dim: int,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, likelihood_weights, 0)
        if private_dim < 1:
            raise UserError(f"private_dim must be >= 1, got {private_dim}", parameter="private_dim")
        self.shared_dim = int(cast(int, prior.latent_dim))
        self.private_dim = int(private_dim)
        size = len(self.names) * self.private_dim
        self.register_buffer("private_prior_loc", torch.zeros(size))
        self.register_buffer("private_prior_scale", torch.ones(size))

    @property
    def latent_dim(self) -> int:
        """D + M P, the size of u."""
        return self.shared_dim + self.num_modalities * self.private_dim

    def private_slice(self, name: str) -> slice:
        """Where z_p^name lies in u."""
        begin = self.shared_dim + self.names.index(name) * self.private_dim
        return slice(begin, begin + self.private_dim)

    def decoder_input(self, name: str, u: Tensor) -> Tensor:
        """(z_s, z_p^name) of ``u [..., D + M P]``."""
        return torch.cat([u[..., : self.shared_dim], u[..., self.private_slice(name)]], -1)

    def encode_parts(self, x: dict[str, Tensor]) -> tuple[GaussianExperts, Tensor, Tensor]:
        """One pass of every present encoder: shared experts ``[M, B, D]`` and the private
        posteriors' ``(loc, scale)``, each ``[M, B, P]`` (N(0, I) placeholders for absent modalities)."""
        loc, scale = self.run_encoders(x, self.shared_dim + self.private_dim, self.gaussian_encoding)
        d = self.shared_dim
        return GaussianExperts(loc[..., :d], scale[..., :d]), loc[..., d:], scale[..., d:]

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """The experts q(z_s | x_m) of the shared latent, ``[M, B, D]``."""
        return self.encode_parts(x)[0]

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """q(u | x_S) for ``members [M, *S, B]``: the shared block from the aggregator, block
        z_p^m from q(z_p^m | x_m) for a member m and from p(z_p) otherwise."""
        shared_experts, loc, scale = self.encode_parts(x)
        experts = self.expand_experts(shared_experts, members)
        shared = self.aggregate(experts, members) if proposal else self.require_aggregator().infer(experts, members)
        lead = members.shape[1:-1]
        view = (loc.shape[0], *([1] * len(lead)), *loc.shape[1:])
        keep = members.unsqueeze(-1)
        loc = torch.where(keep, loc.reshape(view), torch.zeros((), dtype=loc.dtype, device=loc.device))
        scale = torch.where(keep, scale.reshape(view), torch.ones((), dtype=scale.dtype, device=scale.device))
        private = diagonal_normal(loc.movedim(0, -2).flatten(-2), scale.movedim(0, -2).flatten(-2))
        return ConcatenatedBlocks([shared, private])

    def prior(self) -> Distribution:
        """p(u) = p(z_s) N(z_p; 0, I)."""
        return ConcatenatedBlocks(
            [self.prior_module(), diagonal_normal(self.private_prior_loc, self.private_prior_scale)]
        )


def _kl(posterior: Distribution, prior: Distribution, z: Tensor) -> Tensor:
    """KL(q || p) in closed form, or the one-draw estimate log q(z) - log p(z)."""
    try:
        return kl_divergence(posterior, prior)
    except NotImplementedError:
        return posterior.log_prob(z) - prior.log_prob(z)


class DMVAEObjective(Objective):
    """DMVAE's loss: the joint ELBO with the PoE shared posterior plus one cross-modal ELBO
    per observed modality's shared posterior, each with the private KLs (see the module
    docstring for the formula),
    averaged over the batch and negated; a (``kl_weight``) the KL warm-up factor.

    Args:
        beta: Weight of every KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(self, model: DMVAEModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        shared_experts, loc, scale = model.encode_parts(x)
        zero = loc.new_zeros(())
        private_q = diagonal_normal(loc, scale)  # batch [M, B]
        z_private = private_q.rsample()  # [M, B, P]
        private_kl = kl_divergence(private_q, diagonal_normal(torch.zeros_like(loc), torch.ones_like(scale)))
        private_kl = torch.where(mask, private_kl, zero).sum(0)  # [B]

        prior = model.prior_module()
        sources = [model.aggregate(shared_experts, mask).sample_component()]
        sources += [shared_experts.select(j) for j in range(model.num_modalities)]
        valid = torch.cat([mask.any(0, keepdim=True), mask])  # [1 + M, B]
        z_shared = torch.stack([q.rsample() for q in sources])  # [1 + M, B, D]
        shared_kl = torch.stack([_kl(q, prior, z) for q, z in zip(sources, z_shared, strict=True)])  # [1 + M, B]

        rec = torch.zeros_like(shared_kl)
        for index, name in enumerate(model.names):
            if name not in x:
                continue
            inputs = torch.cat([z_shared, z_private[index].expand(len(sources), -1, -1)], -1)
            log_p = model.likelihood_weights[index] * model.decoder_log_prob(name, x[name], inputs)  # [1 + M, B]
            rec = rec + torch.where(mask[index], log_p, zero)
        weight = self.beta * kl_weight
        # Each of the row's 1 + |O| ELBOs (joint, one per observed source) holds the private KLs.
        private_count = valid.sum(0).to(private_kl.dtype)
        elbo = torch.where(valid, rec - weight * shared_kl, zero).sum(0) - weight * private_count * private_kl
        loss = -elbo.mean()
        terms = {
            "rec_joint": -rec[0].mean(),
            "rec_cross": -torch.where(valid[1:], rec[1:], zero).sum(0).mean(),
            "kl_shared": torch.where(valid, shared_kl, zero).sum(0).mean(),
            "kl_private": private_kl.mean(),
        }
        return ObjectiveOutput(loss, terms)


@dataclass(frozen=True)
class DMVAEOptions(MethodOptions):
    """DMVAE's setting."""

    private_dim: int = option(10, "P, the size of each modality's private latent z_p^m")

    def check(self) -> None:
        if self.private_dim < 1:
            raise UserError(f"private_dim must be >= 1, got {self.private_dim}", parameter="private_dim")


def _build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> DMVAEModel:
    """DMVAE's networks: encoders with D + P outputs, decoders reading (z_s, z_p^m)."""
    parts.require("covariance", "diag", "encoders give one diagonal Gaussian, split into shared and private parts")
    private_dim = config.settings_as(DMVAEOptions).private_dim
    width = config.latent_dim + private_dim
    encoders = nn.ModuleDict(
        {m.name: build_encoder(m, width, backbone=config.backbone, hidden=config.hidden) for m in modalities}
    )
    decoders = nn.ModuleDict(
        {
            m.name: build_decoder(m, width, backbone=config.backbone, hidden=config.hidden, likelihood=config.likelihood)
            for m in modalities
        }
    )
    return DMVAEModel(modalities, encoders, decoders, parts.aggregator(), parts.prior(), private_dim, parts.likelihood_weights)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "dmvae", "DMVAE (shared z_s by PoE + private z_p^m; cross-modal reconstruction)",
        "Lee & Pavlovic, CVPR Workshops 2021", "poe",
        lambda c: DMVAEObjective(beta=c.beta),
        build=_build,
        options_type=DMVAEOptions,
    ),
)
