"""JNF and JNF-Shared: a joint VAE, then normalising-flow unimodal posteriors, then HMC.

Senellart, Chadebec & Allassonnière, "Bridging the inference gap in Multimodal
Variational Autoencoders" (JNF), train in separate stages (Sec. 3):

1. **joint VAE** (Sec. 3.1, Eq. 3): a joint encoder q(z | X) = N(mu(X), diag sigma(X)^2)
   reading every modality and the decoders p(x_m | z), with the beta-weighted ELBO;
2. **unimodal posteriors** (Sec. 3.2, Eq. 7-10): with the joint VAE frozen, one
   q_j(z | x_j) per modality, a Gaussian whose parameters an encoder network gives,
   transformed by a masked autoregressive flow (MAF), fitted with
   L = -sum_j E_{q(z | X)}[log q_j(z | x_j)] (Eq. 8);
3. **subsets** (Sec. 3.3, Eq. 11-12): q(z | x_S) ∝ prod_{j in S} q_j(z | x_j) / p(z)^(|S|-1),
   sampled with Hamiltonian Monte Carlo (App. F) and never trained.

JNF-Shared (Sec. 3.4, Eq. 13-15, App. B) adds a stage 0 that trains projectors g_j
(DCCA, App. B.1, or contrastive learning, App. B.2) and conditions each unimodal
posterior on the frozen projection: q_j(z | g_j(x_j)).

Decisions (where the paper leaves room):

- **Flows.** Eq. 10 writes log q_j(z | x_j) = log q_j^(0)(z_0 | x_j) - sum_k log|det df_k/dz_{k-1}|
  with z = f_K o ... o f_1(z_0): only the Gaussian q_j^(0) depends on x_j, the flows
  f_k^(j) do not (App. E: "Masked Autoregressive Flows with two MADE blocks"; the JNF
  reference code uses unconditional MAFs too, peer protocols Sec. 3). Each f^(j) is an
  unconditional :class:`zuko.flows.MAF` whose transform T = f^{-1} runs in the density
  direction: log q_j(z | x_j) = log N(T(z); mu_j(x_j), sigma_j(x_j)) + log|det dT/dz|,
  one pass per block (Papamakarios et al. 2017); sampling inverts T, sequential in D.
- **Missing modalities.** The joint encoder needs every modality, and Eq. 8 needs
  z ~ q(z | X). Stages 0-2 therefore train on the **fully observed rows** of a batch
  only (the mask selects them); rows that miss a modality contribute nothing, so a
  masked modality gets exactly zero gradient. A batch without a fully observed row has
  loss 0 and no gradient (its step changes nothing: Adam skips parameters without a
  gradient). At inference every subset of the observed modalities has a posterior.
- **Posterior used** (:class:`JNFPosterior`), per (subset, row): the joint encoder for the
  full set, the flow q_j for a single modality, Eq. 12 by HMC for 2 <= |S| < M.
- **``.mean`` and ``log_prob`` of Eq. 12.** Both come from one importance-sampling table
  per batch, built from *fixed* standard-normal draws (``mean_samples`` per unimodal
  posterior and as many for a Gaussian proposal): the draws are weighted against a
  defensive mixture of the Gaussian Eq. 12 of moment-matched unimodal posteriors and of
  the unimodal posteriors themselves (:meth:`~omnivae.methods.jnf.posterior.JNFPosterior._table_values`). The
  self-normalised weights give the mean of Eq. 12 and their average its normalising
  constant Z_S, so ``log_prob(z) = log f_S(z) - log Z_S`` is a normalised density (the
  estimate of log Z_S is consistent, biased low by Jensen for few draws). The fixed
  draws make ``.mean`` a deterministic function of the inputs and independent of how
  elements are batched, as representation and reconstruction need. ``sample`` runs HMC
  (:func:`omnivae.samplers.hmc`) from :func:`~omnivae.methods.jnf.posterior.mixture_initialisation`.

Files: :mod:`~omnivae.methods.jnf.model` (the flows of Eq. 9-10 and :class:`JNFVAE`),
:mod:`~omnivae.methods.jnf.posterior` (Eq. 12: its target, HMC start and
:class:`JNFPosterior`), :mod:`~omnivae.methods.jnf.objectives` (Eq. 3, Eq. 8/15 and the
schedule), :mod:`~omnivae.methods.jnf.projectors` (g_j and the DCCA and contrastive
losses of App. B), :mod:`~omnivae.methods.jnf.recipes` (``jnf``, ``jnf-dcca``, ``jnf-cl``).
"""

from omnivae.methods.jnf.model import JNFVAE, HMCSettings, UnimodalFlow
from omnivae.methods.jnf.objectives import (
    JNFObjective,
    JointVAELoss,
    ProjectorLoss,
    UnimodalPosteriorLoss,
)
from omnivae.methods.jnf.posterior import (
    JNFPosterior,
    mixture_initialisation,
    product_of_posteriors_log_prob,
)
from omnivae.methods.jnf.projectors import (
    Projector,
    cca_total_correlation,
    contrastive_loss,
    dcca_loss,
)
from omnivae.methods.jnf.recipes import RECIPES

__all__ = [
    "HMCSettings",
    "UnimodalFlow",
    "Projector",
    "JNFVAE",
    "JNFPosterior",
    "JointVAELoss",
    "UnimodalPosteriorLoss",
    "ProjectorLoss",
    "JNFObjective",
    "RECIPES",
    "product_of_posteriors_log_prob",
    "mixture_initialisation",
    "cca_total_correlation",
    "dcca_loss",
    "contrastive_loss",
]
