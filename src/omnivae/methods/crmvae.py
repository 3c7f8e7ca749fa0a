"""CRMVAE (Suzuki & Matsuo 2022): the joint ELBO plus unimodal reconstructions and KLs.

Suzuki & Matsuo, *Mitigating the Limitations of Multimodal VAEs with Coordination-Based
Approach* (arXiv 2022 / OpenReview, ICLR 2023 submission), as MultiVae implements it under
the name CRMVAE. The model is a plain :class:`~omnivae.models.MultimodalVAE` whose joint
posterior is the product of the observed unimodal experts without a N(0, I) expert
(:class:`~omnivae.aggregators.ProductOfExperts`, ``prior_expert=False``, as MultiVae);
the method is its objective, :class:`CRMVAELoss`. No copy of the paper is in
``papers/``: the formula below is the objective as MultiVae trains it (peer protocols).
Issue 21 found the submission's text (OpenReview id Rn8u4MYgeNJ, the id MultiVae cites)
only in part: its abstract confirms the construction (a coordination-based model, the
unimodal posteriors pulled towards the joint one as in JMVAE-kl, plus reconstructions of
each modality from its unimodal posterior, which the earlier coordination-based models
lack), but its equations could not be read offline, so their numbers are not cited and
the normalisations below are MultiVae's, not checked against the paper.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from omnivae.aggregators import ProductOfExperts
from omnivae.distributions import kl_divergence
from omnivae.models.recipe import Recipe
from omnivae.objectives import MultimodalModel, Objective, ObjectiveOutput, check_beta, expert_kl

__all__ = ["CRMVAELoss", "RECIPES"]


class CRMVAELoss(Objective):
    """The CRMVAE objective (Suzuki & Matsuo 2022, as implemented by MultiVae's CRMVAE).

    For a row with observed modalities S (M = \\|S\\|), z ~ q(z | X) (the model's
    aggregated posterior of S) and z_m ~ q(z | x_m):

        L = 1 / (2 (M + 1)) sum_{m in S} w_m [log p(x_m | z) + log p(x_m | z_m)]
            - a beta / (M + 1) [KL(q(z | X) || p(z)) + sum_{m in S} KL(q(z | X) || q(z | x_m))],

    with a the trainer's KL warm-up factor. The first line is the joint reconstruction
    plus each decoder reconstructing its modality from that modality's own posterior
    (the "coordination" of the unimodal encoders with the decoders, which a JMVAE-style
    objective lacks); the second the joint KL plus the KLs that pull each unimodal
    posterior towards the joint one, as in JMVAE-kl.

    Choices where MultiVae and the paper leave room:

    - the normalisations 1 / (2 (M + 1)) and 1 / (M + 1) are MultiVae's; with missing
      modalities M counts the row's **observed** modalities (MultiVae divides by the total
      number), so a row is scored as a CRMVAE over its own views;
    - q(z | X) is the product of the observed experts without a prior expert (MultiVae);
      ``--aggregator`` swaps it as for any model, a mixture contributing one drawn
      component per row, as in :class:`~omnivae.objectives.ELBO`.

    Unobserved modalities add nothing to any term and get zero gradient.

    Args:
        beta: Weight of the KL bracket (MultiVae's ``beta``).
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(
        self, model: MultimodalModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        experts = model.encode_experts(x, mask)
        posterior = model.aggregate(experts, mask).sample_component()
        num = experts.num_modalities
        # One decoder call per modality: slice 0 holds the joint sample, slice 1 + m the
        # sample of q(z | x_m), which only decoder m reads.
        samples = [posterior.rsample()] + [experts.select(m).rsample() for m in range(num)]
        z = torch.stack(samples)
        decode_terms = [[True] * num] + [[m == j for j in range(num)] for m in range(num)]
        rec_by_source = model.log_likelihood(x, z, mask, decode_terms)  # [M + 1, B]
        rec_joint, rec_unimodal = rec_by_source[0], rec_by_source[1:].sum(0)
        kl = kl_divergence(posterior, model.prior())
        kl_unimodal = expert_kl(posterior, experts, mask)
        count = mask.sum(0).to(rec_joint.dtype)
        objective = (rec_joint + rec_unimodal) / (2 * (count + 1)) - self.beta * kl_weight * (kl + kl_unimodal) / (
            count + 1
        )
        terms = {
            "rec": -rec_joint.mean(),
            "rec_unimod": -rec_unimodal.mean(),
            "kl": kl.mean(),
            "kl_unimodal": kl_unimodal.mean(),
        }
        return ObjectiveOutput(-objective.mean(), terms)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "crmvae", "CRMVAE (PoE without prior expert; joint + unimodal reconstructions)",
        "Suzuki & Matsuo, arXiv 2022 (coordination-based approach)", "poe",
        lambda c: CRMVAELoss(beta=c.beta),
        aggregator_factory=partial(ProductOfExperts, prior_expert=False),
    ),
)
