"""MHVAE (Dorent et al., MICCAI 2023): a multimodal hierarchical VAE with a product of experts at every level.

Dorent, Haouchine, Kogl, Joutard, Juvekar, Torio, Golby, Ourselin, Frisken, Vercauteren
et al. (2023), "Unified Brain MR-Ultrasound Synthesis using Multi-Modal Hierarchical
Representations", MICCAI 2023, pp. 448-458 (arXiv:2309.08747); the model
MultiVae 1.0.3 implements as ``MHVAE``. It builds on ladder / deep hierarchical VAEs
(Sonderby et al. 2016, "Ladder Variational Autoencoders", NeurIPS; Vahdat & Kautz 2020,
"NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS).

The latent is split into levels z_1 (bottom, read by the decoders) ... z_L (top). The
generative model (the paper's Sec. 2; equation numbers not checked offline, the paper is
not among the project's stored papers) is

    p(x, z) = p(z_L) prod_{l<L} p(z_l | z_{l+1}) prod_m p(x_m | z_1),   p(z_L) = N(0, I),

and the posterior given the modalities S factorises top-down,
q(z | x_S) = q(z_L | x_S) prod_{l<L} q(z_l | x_S, z_{l+1}), each level a product of
Gaussian experts that includes that level's prior:

    q(z_L | x_S)          ~ p(z_L)           prod_{m in S} q_m(z_L | x_m),
    q(z_l | x_S, z_{l+1}) ~ p(z_l | z_{l+1}) prod_{m in S} q_m(z_l | x_m, z_{l+1}).

A missing modality simply leaves the product, so any subset (and a prior-only posterior)
is defined. The objective is the hierarchical ELBO with one KL per level (closed form,
both sides Gaussian given z_{l+1}; :class:`MHVAELoss`).

Networks (the diagram MultiVae documents, made concrete for omnivae's backbones), per
modality m in :class:`LadderEncoder`:

- bottom-up: d_m^1 = body_m(x_m) (the backbone of :func:`omnivae.nn.build_encoder`,
  feature width F), d_m^{l+1} = up_m^l(d_m^l) (Linear + ReLU, width W) for l < L - 1,
  and q_m(z_L | x_m) = Gaussian heads on up_m^{L-1}(d_m^{L-1}) (the deepest features);
- posterior experts q_m(z_l | x_m, z_{l+1}) = Gaussian heads on
  Linear + ReLU([h_l, d_m^l]), h_l the top-down context of level l;

shared by the modalities (in :class:`MHVAE`): the top-down blocks h_l = td_l(z_{l+1})
(Linear + ReLU) and the prior blocks p(z_l | z_{l+1}) = Gaussian heads on h_l. Every
level has ``latent_dim`` dimensions. The decoders are omnivae's, reading z_1. Log-variances
are soft-clamped to [-12, 8] as in every omnivae encoder.

Choices where the paper or MultiVae leave room:

- The hierarchy is Markov, p(z_l | z_{l+1}), and the top-down context reads z_{l+1} only,
  as in MultiVae's MHVAE (NVAE carries a deterministic state through all levels).
- Subsets (option ``subsets``): ``"all"`` averages the ELBO over every non-empty subset of
  a row's observed modalities, as MultiVae does for complete rows (its ``forward``: the
  mean over all subsets, every observed modality reconstructed from each subset's z_1);
  ``"sampled"`` draws one such subset per row uniformly, an unbiased estimate of the same
  average at the cost of one subset (for many modalities: 2^M - 1 decodes per row otherwise).
- Posterior experts are per modality (MultiVae also allows blocks shared by modalities).
- The paper's discriminator (adversarial) loss is left out, as MultiVae leaves it out.
- KL warm-up over 5 epochs by default (``--warmup-epochs``), the warm-up Sonderby et al.
  (2016) introduced for ladder VAEs; MultiVae's MHVAE has none. Without it, on
  offline mnist-text (10 epochs, latent 32, L = 3) the lower levels collapsed onto their
  priors (KL 0.006 and 0.1 nats) and cross coherence was 0.24; with it, 0.89
  (benchmarks/README.md, "MHVAE").
- The loss is averaged over the batch (MultiVae sums it); Adam is invariant to the scale.

Single-latent API: the exposed latent is the concatenation u = [z_1, ..., z_L] (size
L x latent_dim). A hierarchy has no one Gaussian latent; the concatenation is what the
generative model is a density over, so ``posterior`` returns the exact q(u | x_S) and
``prior`` the exact p(u) (:class:`LadderDistribution`: ancestral ``rsample``, exact
``log_prob``), which the likelihood metrics need, and probes see every level (the top
levels carry the most abstract content). ``decode`` reads z_1 alone. The ``mean`` of
the hierarchy is not closed form: it is the ancestral mean path (each level's mean
given the mean of the level above), what MultiVae's ``encode(return_mean=True)`` returns.
"""

from omnivae.methods.mhvae.model import MHVAE, LadderDistribution, LadderEncoder, Ladders
from omnivae.methods.mhvae.objective import MHVAELoss, MHVAEOptions, build, objective
from omnivae.models.recipe import Recipe

__all__ = ["LadderDistribution", "LadderEncoder", "Ladders", "MHVAE", "MHVAELoss", "MHVAEOptions", "RECIPES"]

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "mhvae",
        "MHVAE (hierarchical latents z_1..z_L, PoE with the prior at every level)",
        "Dorent et al., MICCAI 2023 (as MultiVae's MHVAE)",
        "poe",
        objective,
        build=build,
        warmup_epochs=5.0,
        options_type=MHVAEOptions,
        swappable=False,
    ),
)
