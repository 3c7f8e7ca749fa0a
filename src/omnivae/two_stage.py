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
  the unimodal posteriors themselves (:meth:`JNFPosterior._table_values`). The
  self-normalised weights give the mean of Eq. 12 and their average its normalising
  constant Z_S, so ``log_prob(z) = log f_S(z) - log Z_S`` is a normalised density (the
  estimate of log Z_S is consistent, biased low by Jensen for few draws). The fixed
  draws make ``.mean`` a deterministic function of the inputs and independent of how
  elements are batched, as representation and reconstruction need. ``sample`` runs HMC
  (:func:`omnivae.samplers.hmc`) from :func:`~omnivae.samplers.mixture_initialisation`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from omnivae.data.base import ModalitySpec
from omnivae.distributions import GaussianExperts, diagonal_normal, kl_divergence
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.models import ModelConfig, ModelParts, MultimodalVAE, PriorDividedProduct, Recipe
from omnivae.nn import MLP, GaussianEncoder, JointEncoder, build_encoder, build_joint_encoder
from omnivae.objectives import Objective, ObjectiveOutput
from omnivae.projectors import contrastive_loss, dcca_loss
from omnivae.samplers import hmc, mixture_initialisation, product_of_posteriors_log_prob
from omnivae.stages import Stage

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
]

PriorPower = Literal["paper", "once"]
_FIXED_DRAWS_SEED = 20240611  # any constant: the draws behind .mean and log Z_S
_PROPOSAL_INFLATION = 2.0
_PlanEntry = tuple[int, Tensor, Tensor, Tensor]  # member j, positions, base loc, base scale  # variance factor of the Gaussian importance proposal for Eq. 12


# -- settings -------------------------------------------------------------------------------
@dataclass
class HMCSettings:
    """How JNF samples and summarises the subset posteriors of Eq. 12 (App. F).

    Attributes:
        num_steps: HMC steps per sample (App. F: 100).
        leapfrog_steps: leapfrog steps per proposal (reference code: 10).
        step_size: the leapfrog step (reference code: 0.01); the start of the adaptation
            when ``adapt_steps > 0``.
        adapt_steps: burn-in steps that tune each chain's step size (0: none, as the paper).
        prior_power: ``"paper"`` divides by p(z)^(|S|-1) (Eq. 12), ``"once"`` by p(z)
            (Eq. F.3 and the reference code).
        mean_samples: draws per unimodal posterior behind ``.mean`` and log Z_S.
    """

    num_steps: int = 100
    leapfrog_steps: int = 10
    step_size: float = 0.01
    adapt_steps: int = 0
    prior_power: PriorPower = "paper"
    mean_samples: int = 64

    def validate(self) -> None:
        if self.num_steps < 1 or self.leapfrog_steps < 1 or self.adapt_steps < 0:
            raise UserError(
                "JNF's HMC needs hmc_steps >= 1, hmc_leapfrog >= 1 and hmc_adapt_steps >= 0, got "
                f"{self.num_steps}, {self.leapfrog_steps}, {self.adapt_steps}"
            )
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise UserError(f"hmc_step_size must be a positive number, got {self.step_size}")
        if self.prior_power not in ("paper", "once"):
            raise unknown_name("hmc_prior_power", str(self.prior_power), ("paper", "once"))
        if self.mean_samples < 2:
            raise UserError(f"mean_samples must be >= 2, got {self.mean_samples}")


# -- networks -------------------------------------------------------------------------------
class UnimodalFlow(nn.Module):
    r"""The flow f^(j) of one unimodal posterior (JNF paper, Eq. 9-10): an unconditional MAF.

    ``transform`` is T = f^{-1}, the density direction: for ``z [*, D]``,
    ``normalise(z)`` returns ``(z_0, log|det dT/dz|)`` with ``z_0 [*, D]`` and the log
    determinant ``[*]`` in one pass per block; ``generate(z_0)`` returns ``f(z_0) = T^{-1}(z_0)``
    (``D`` sequential passes per block). With ``blocks = 0`` the flow is the identity and
    q_j is the Gaussian q_j^(0) (JMVAE's unimodal posterior).

    Args:
        latent_dim: ``D``.
        blocks: MADE blocks ``K`` (App. E: 2); orders alternate between blocks.
        hidden: width of each MADE's two hidden layers.
    """

    def __init__(self, latent_dim: int, blocks: int = 2, hidden: int = 128) -> None:
        super().__init__()
        if blocks < 0 or hidden < 1:
            raise UserError(f"flow_blocks must be >= 0 and flow_hidden >= 1, got {blocks} and {hidden}")
        self.blocks = blocks
        self.transform: nn.Module | None = None
        if blocks:
            import zuko  # imported here: only JNF needs it

            self.transform = zuko.flows.MAF(
                features=latent_dim, context=0, transforms=blocks, hidden_features=(hidden, hidden)
            ).transform

    def normalise(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [*, D] -> (T(z) [*, D], log|det dT/dz| [*])``."""
        if self.transform is None:
            return z, z.new_zeros(z.shape[:-1])
        return self.transform().call_and_ladj(z)

    def generate(self, z0: Tensor) -> Tensor:
        """``z_0 [*, D] -> T^{-1}(z_0) [*, D]``, the sample path of Eq. 10."""
        if self.transform is None:
            return z0
        return self.transform().inv(z0)


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


# -- the model ------------------------------------------------------------------------------
class JNFVAE(MultimodalVAE):
    """JNF (and JNF-Shared): joint encoder, decoders, flow posteriors, HMC for subsets.

    Senellart et al., Sec. 3. Parameter groups, trained one stage each:

    - ``projectors.<name>``: g_j of JNF-Shared (stage 0; ``None`` for plain JNF);
    - ``joint_encoder``, ``decoders.<name>``, the prior's parameters: the joint VAE (stage 1);
    - ``encoders.<name>`` (q_j^(0)'s network, reading x_j or g_j(x_j)) and
      ``flows.<name>`` (f^(j)): the unimodal posteriors (stage 2).

    Inference (:meth:`encode`, :meth:`subset_posteriors`, :meth:`joint_posterior`) returns
    :class:`JNFPosterior`. ``hmc`` holds the sampler's settings (mutable, so evaluation
    may change them on a loaded model); ``last_hmc_acceptance`` is the acceptance rate
    of the latest HMC run, ``hmc_chain_steps`` and ``hmc_seconds`` add up all runs since
    :meth:`reset_sampler_statistics` (:meth:`sampler_statistics` sums them up), and
    ``last_improper_fraction`` is the share of Eq. 12 targets of the latest ``mean`` or
    ``log_prob`` table that look improper (:attr:`JNFPosterior.improper`).

    Args:
        modalities, decoders, prior, likelihood_weights: As for :class:`MultimodalVAE`.
        encoders: ``name -> module(h [B, *]) -> (loc [B, D], scale [B, D], None)``, the
            base Gaussians q_j^(0); ``h`` is x_j, or g_j(x_j) with projectors.
        joint_encoder: ``joint_encoder(X) -> (loc [B, D], scale [B, D])``.
        flows: ``name -> UnimodalFlow``.
        projectors: ``name -> Projector`` for JNF-Shared, else ``None``.
        hmc: The sampler's settings.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        prior: nn.Module,
        joint_encoder: JointEncoder,
        flows: nn.ModuleDict,
        projectors: nn.ModuleDict | None = None,
        likelihood_weights: dict[str, float] | None = None,
        hmc: HMCSettings | None = None,
    ) -> None:
        # The aggregator is the Gaussian limit of Eq. 12 (flows with zero blocks); JNF's
        # own inference never calls it, but the base class keeps one.
        super().__init__(modalities, encoders, decoders, PriorDividedProduct(), prior, likelihood_weights, 0)
        self.joint_encoder = joint_encoder
        self.flows = flows
        self.projectors = projectors
        self.hmc = hmc or HMCSettings()
        self.hmc.validate()
        self.last_hmc_acceptance: float | None = None
        self.last_improper_fraction: float | None = None
        self.reset_sampler_statistics()

    def reset_sampler_statistics(self) -> None:
        self.hmc_chain_steps = 0
        self.hmc_sampling_chain_steps = 0
        self.hmc_accepted_chain_steps = 0.0
        self.hmc_seconds = 0.0
        self.hmc_runs = 0

    def sampler_statistics(self) -> dict[str, float] | None:
        """HMC totals of the Eq. 12 subset posteriors: acceptance rate (accepted over all
        sampling chain-steps), chain-steps, seconds, chain-steps per second, runs and the
        sampler's settings; ``None`` when no subset needed HMC."""
        if self.hmc_runs == 0:
            return None
        return {
            "acceptance_rate": self.hmc_accepted_chain_steps / max(self.hmc_sampling_chain_steps, 1),
            "chain_steps": float(self.hmc_chain_steps),
            "seconds": self.hmc_seconds,
            "chain_steps_per_second": self.hmc_chain_steps / self.hmc_seconds if self.hmc_seconds > 0 else float("nan"),
            "runs": float(self.hmc_runs),
            "hmc_steps": float(self.hmc.num_steps),
            "leapfrog_steps": float(self.hmc.leapfrog_steps),
            "step_size": float(self.hmc.step_size),
        }

    # -- pieces -------------------------------------------------------------------------
    def has_every_modality(self, x: dict[str, Tensor]) -> bool:
        return all(name in x for name in self.names)

    def complete_rows(self, x: dict[str, Tensor], mask: Tensor) -> Tensor:
        """``LongTensor[n]``: the rows with every modality observed (what stages 0-2 train on)."""
        if not self.has_every_modality(x):
            return torch.zeros(0, dtype=torch.long, device=mask.device)
        return mask.all(0).nonzero().squeeze(-1)

    def encode_joint(self, x: dict[str, Tensor]) -> Distribution:
        """The joint encoder's q(z | X) (Sec. 3.1), batch ``[B]``; needs every modality."""
        loc, scale = self.joint_encoder(x)
        return diagonal_normal(loc, scale)

    def project(self, name: str, x: Tensor) -> Tensor:
        """g_j(x_j) ``[B, P]`` of JNF-Shared (Sec. 3.4)."""
        if self.projectors is None:
            raise UserError(f"{self.__class__.__name__} has no projectors (it is plain JNF)")
        return self.projectors[name](x)

    def base_posterior(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc [B, D], scale [B, D])`` of q_j^(0)(z_0 | x_j) (Eq. 10), or of
        q_j^(0)(z_0 | g_j(x_j)) with a frozen (detached) projection (Eq. 15)."""
        h = x
        if self.projectors is not None:
            h = self.project(name, x).detach()
        loc, scale, _ = self.encoders[name](h)
        return loc, scale

    def flow_log_prob(self, index: int, z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """log q_j(z | x_j) of Eq. 10 for modality ``index``: ``z [*, n, D]``, base
        ``loc, scale [n, D]`` (broadcast) -> ``[*, n]``."""
        z0, ladj = self.flows[self.names[index]].normalise(z)
        return torch.distributions.Normal(loc, scale, validate_args=False).log_prob(z0).sum(-1) + ladj

    def flow_sample(self, index: int, loc: Tensor, scale: Tensor, noise: Tensor) -> Tensor:
        """z = f^(j)(loc + scale * noise), a draw of q_j(z | x_j) for ``noise ~ N(0, I)``:
        ``[*, n, D]`` with ``loc, scale [n, D]``."""
        return self.flows[self.names[index]].generate(loc + scale * noise)

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """The base Gaussians q_j^(0) ``[M, B, D]`` of the unimodal posteriors (Eq. 10).

        Modalities absent from ``x`` get N(0, I) placeholders; they are never members.
        """
        batch = self.batch_size(x)
        locs, scales = [], []
        for name in self.names:
            if name in x:
                loc, scale = self.base_posterior(name, x[name])
            else:
                loc = torch.zeros(batch, self.latent_dim, device=self.device, dtype=self.likelihood_weights.dtype)
                scale = torch.ones_like(loc)
            locs.append(loc)
            scales.append(scale)
        return GaussianExperts(torch.stack(locs), torch.stack(scales))

    # -- inference ----------------------------------------------------------------------
    def posterior(self, x: dict[str, Tensor], members: Tensor) -> "JNFPosterior":
        """:class:`JNFPosterior` for ``members [M, *batch]`` (last axis: the rows of ``x``)."""
        members = members.to(self.device, torch.bool)
        if not bool(members.any(0).all()):
            raise DataError("a posterior needs at least one observed modality in every row and subset")
        experts = self.encode_experts(x, members.reshape(members.shape[0], -1))
        joint = None
        if self.has_every_modality(x) and bool(members.all(0).any()):
            joint = self.joint_encoder(x)
        return JNFPosterior(self, members, experts.loc, experts.scale, joint)

    def encode(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The posterior of each row's observed modalities, batch ``[B]``: the joint encoder
        (all observed), the flow (one), Eq. 12 by HMC (several)."""
        mask_tensor = self.stack_mask(x, mask)
        if not bool(mask_tensor.any(0).all()):
            raise DataError("every row needs at least one observed modality to encode")
        return self.posterior(x, mask_tensor)

    def subset_posteriors(
        self, x: dict[str, Tensor], subsets: Tensor, mask: dict[str, Tensor] | Tensor | None = None
    ) -> Distribution:
        """Posteriors of many subsets from one pass of each encoder: batch ``[S, B]``.

        Args:
            x: ``name -> [B, *shape]``.
            subsets: ``BoolTensor[S, M]``; each is intersected with ``mask``.
            mask: What is observed in ``x`` (default: everything present).
        """
        observed = self.stack_mask(x, mask)
        masks = self.subset_masks(subsets, observed)  # [M, S, B]
        return self.posterior(x, masks)

    def joint_posterior(self, x: dict[str, Tensor], mask: dict[str, Tensor] | Tensor | None = None) -> Distribution:
        """The importance-sampling proposal: the joint encoder q(z | X) on fully observed
        rows (as the reference protocols, peer protocols "Test log-likelihood"); on other
        rows the posterior of the observed modalities (:meth:`encode`)."""
        return self.encode(x, mask)


def _fixed_normal(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard-normal draws that are the same at every call (a fixed seed, on the CPU)."""
    generator = torch.Generator().manual_seed(_FIXED_DRAWS_SEED)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(like.device, like.dtype)


class JNFPosterior(Distribution):
    r"""JNF's inference posterior for a batch of (subset, row) pairs (Sec. 3.1-3.3).

    Element ``e`` of the batch has observed members ``S_e`` (``members[:, e]``) and
    uses

    - ``S_e`` = every modality: the joint encoder N(mu(X), sigma(X)^2);
    - ``|S_e| = 1``: the flow posterior q_j (Eq. 10), exact ``log_prob``;
    - otherwise Eq. 12, f_S(z) = prod_{j in S} q_j(z | x_j) / p(z)^c, c = |S| - 1
      (``prior_power="paper"``) or 1 (``"once"``): ``sample`` by HMC, ``mean`` and
      ``log_prob`` from the importance-sampling table (module docstring).

    Args:
        model: The :class:`JNFVAE` (flows, prior, HMC settings).
        members: ``BoolTensor[M, *batch]``; the last axis indexes the rows.
        loc, scale: The base Gaussians ``[M, B, D]``.
        joint: ``(loc [B, D], scale [B, D])`` of the joint encoder, or ``None`` when no
            element observes every modality.

    ``batch_shape`` is ``members.shape[1:]``, ``event_shape`` ``[D]``. ``sample`` is not
    differentiable (``has_rsample`` is False).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        model: JNFVAE,
        members: Tensor,
        loc: Tensor,
        scale: Tensor,
        joint: tuple[Tensor, Tensor] | None,
    ) -> None:
        self.model = model
        self.num_members = members.shape[0]
        batch = members.shape[1:]
        self.members = members.reshape(self.num_members, -1)  # [M, N]
        count = self.members.sum(0)
        rows = loc.shape[1]
        self.rows = torch.arange(self.members.shape[1], device=members.device) % rows
        self.loc = loc
        self.scale = scale
        self.joint = joint
        full = self.members.all(0) if joint is not None else torch.zeros_like(count, dtype=torch.bool)
        self.kind = torch.where(full, 0, torch.where(count == 1, 1, 2))  # joint, flow, Eq. 12
        self.count = count
        self.by_kind = [(self.kind == k).nonzero().squeeze(-1) for k in range(3)]
        self._mean: Tensor | None = None
        self._table: tuple[Tensor, Tensor, Tensor] | None = None
        self._improper = torch.zeros(len(self.by_kind[2]), dtype=torch.bool, device=members.device)
        super().__init__(batch_shape=batch, event_shape=loc.shape[-1:], validate_args=False)

    # -- helpers ------------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return int(self.loc.shape[-1])

    def _power(self, elements: Tensor) -> Tensor:
        """The prior's exponent c of Eq. 12 for each element (0 for a single member)."""
        count = self.count[elements].to(self.loc.dtype)
        if self.model.hmc.prior_power == "paper":
            return count - 1
        return torch.where(count > 1, 1.0, 0.0).to(self.loc.dtype)

    def _member_log_probs(self, z: Tensor, elements: Tensor, plan: list[_PlanEntry] | None = None) -> Tensor:
        """log q_j(z | x_j) ``[M, *L, n]`` for ``z [*L, n, D]`` at ``elements [n]``; zero
        where j is not a member (only members' flows are evaluated)."""
        plan = plan if plan is not None else self._plan(elements)
        columns = [z.new_zeros(z.shape[:-1]) for _ in range(self.num_members)]
        for j, position, loc, scale in plan:
            value = self.model.flow_log_prob(j, z[..., position, :], loc, scale)
            columns[j] = columns[j].index_copy(-1, position, value)
        return torch.stack(columns)

    def _plan(self, elements: Tensor, detach: bool = False) -> list[_PlanEntry]:
        """Per member j: the positions in ``elements`` where j is a member and their base
        ``loc, scale``; computed once per call so HMC's inner loop does not search."""
        plan = []
        members = self.members[:, elements]
        for j in range(self.num_members):
            position = members[j].nonzero().squeeze(-1)
            if position.numel():
                rows = self.rows[elements[position]]
                loc, scale = self.loc[j, rows], self.scale[j, rows]
                if detach:
                    loc, scale = loc.detach(), scale.detach()
                plan.append((j, position, loc, scale))
        return plan

    def _table_values(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(log Z [n], mean [n, D], ess [n])`` for the non-joint elements, in the order
        ``by_kind[1]`` then ``by_kind[2]``; ``ess`` is a fraction of the draws used.

        Every observed modality i of a row gets ``K = mean_samples`` draws
        z_ik = f^(i)(mu_i + sigma_i eps_ik) from fixed standard-normal ``eps``. A single
        member's mean is their average (Z = 1). For Eq. 12, f_S = prod_{j in S} q_j / p^c,
        the draws are importance-weighted against the defensive proposal

            r = 1/2 g + 1/2 (1/|S|) sum_{i in S} q_i,

        where g is the Gaussian of Eq. 12 for Gaussians moment-matched to each q_j
        (precision sum_j 1/var_j - c, as :class:`~omnivae.models.PriorDividedProduct`)
        with its variance doubled, sampled with ``K`` more fixed draws. The stratified
        weights w = (component weight / K) f_S / r give Z_S = sum w and the
        self-normalised mean sum w z / sum w. The mixture alone is a poor proposal where
        the experts overlap little (most of the product's mass is in all their tails);
        g sits on the product, and the mixture keeps the weights bounded in its tails.
        """
        if self._table is not None:
            return self._table
        model = self.model
        single, several = self.by_kind[1], self.by_kind[2]
        num, k_draws, dim = self.num_members, model.hmc.mean_samples, self.latent_dim
        rows = self.loc.shape[1]
        log_zs, means, esses = [], [], []
        with torch.no_grad():
            draws = _fixed_normal((num + 1, k_draws, 1, dim), self.loc)
            used = self.members[:, torch.cat([single, several])].any(1).tolist()
            z = self.loc.new_zeros(num, k_draws, rows, dim)  # [M(i), K, B, D]
            for i in range(num):
                if used[i]:
                    z[i] = model.flow_sample(i, self.loc[i], self.scale[i], draws[i])
            if single.numel():
                member = self.members[:, single].to(self.loc.dtype).argmax(0)
                means.append(z[member, :, self.rows[single]].mean(1))
                log_zs.append(self.loc.new_zeros(len(single)))
                esses.append(self.loc.new_ones(len(single)))
            if several.numel():
                log_z, mean, ess = self._product_weights(several, z, draws[num], used)
                log_zs.append(log_z)
                means.append(mean)
                esses.append(ess)
                model.last_improper_fraction = float(self._improper.to(z.dtype).mean())
        self._table = (torch.cat(log_zs), torch.cat(means), torch.cat(esses))
        return self._table

    def _product_weights(
        self, elements: Tensor, z: Tensor, draws: Tensor, used: list[bool]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Importance sampling of Eq. 12 for ``elements`` (see :meth:`_table_values`):
        ``z [M, K, B, D]`` the members' draws, ``draws [K, 1, D]`` fixed normals for g.

        log q_j at the members' draws is computed per row (shared by every subset of the
        row), at g's draws per element and member only.
        """
        model = self.model
        num, k_draws, dim = z.shape[0], z.shape[1], z.shape[-1]
        n = len(elements)
        members = self.members[:, elements]  # [M, n]
        rows = self.rows[elements]
        count = self.count[elements].to(z.dtype)
        power = self._power(elements)
        zero = z.new_zeros(())
        # g: Eq. 12 for Gaussians with the members' moments, variance doubled.
        precision = torch.where(members.unsqueeze(-1), z.var(1)[:, rows].clamp_min(1e-12).reciprocal(), zero)
        total = precision.sum(0) - power.unsqueeze(-1)  # [n, D]
        self._improper = (total <= 0).any(-1)
        total = total.clamp_min(1e-2)
        centre = (precision * z.mean(1)[:, rows]).sum(0) / total  # [n, D]
        spread = (_PROPOSAL_INFLATION / total).sqrt()
        z_g = centre + spread * draws  # [K, n, D]
        # log q_j at every candidate: [M(j), M + 1 (q_1..q_M, g), K, n].
        chosen = [i for i in range(num) if used[i]]
        row_table = z.new_zeros(num, num, k_draws, z.shape[2])
        for j in chosen:
            row_table[chosen, j] = model.flow_log_prob(j, z[chosen], self.loc[j], self.scale[j])
        log_q = torch.cat([row_table[..., rows].transpose(0, 1), z.new_zeros(num, 1, k_draws, n)], 1)
        for j, position, loc, scale in self._plan(elements, detach=True):
            value = model.flow_log_prob(j, z_g[:, position], loc, scale)  # [K, n_j]
            log_q[j, num] = log_q[j, num].index_copy(-1, position, value)
        candidates = torch.cat([z[:, :, rows], z_g.unsqueeze(0)])  # [M + 1, K, n, D]
        member_j = members[:, None, None, :]
        log_f = torch.where(member_j, log_q, zero).sum(0) - power * model.prior().log_prob(candidates)
        log_mixture = torch.where(member_j, log_q, -math.inf).logsumexp(0) - count.log()
        log_g = diagonal_normal(centre, spread).log_prob(candidates)  # [M + 1, K, n]
        log_r = torch.logaddexp(log_g, log_mixture) - math.log(2)
        # Stratified: q_i (i in S) with probability 1/(2|S|), g with 1/2, K draws each.
        component = torch.cat([torch.where(members, -(count.log()), -math.inf), torch.zeros_like(count)[None]])
        log_w = component.unsqueeze(1) - math.log(2 * k_draws) + log_f - log_r  # [M + 1, K, n]
        flat = log_w.permute(2, 0, 1).reshape(n, -1)
        weights = torch.softmax(flat, -1)
        keep = torch.cat([members, torch.ones_like(members[:1])]).t().repeat_interleave(k_draws, 1).unsqueeze(-1)
        samples = torch.where(keep, candidates.permute(2, 0, 1, 3).reshape(n, -1, dim), zero)
        mean = (weights.unsqueeze(-1) * samples).sum(1)
        ess = weights.pow(2).sum(-1).reciprocal() / ((count + 1) * k_draws)
        return flat.logsumexp(-1), mean, ess

    def _table_for(self, elements: Tensor) -> tuple[Tensor, Tensor]:
        """log Z and mean of non-joint ``elements`` (indices into the batch)."""
        log_z, mean, _ = self._table_values()
        order = torch.cat([self.by_kind[1], self.by_kind[2]])
        position = torch.empty(self.members.shape[1], dtype=torch.long, device=order.device)
        position[order] = torch.arange(len(order), device=order.device)
        return log_z[position[elements]], mean[position[elements]]

    # -- the Distribution API -----------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """``[*batch, D]``: the joint encoder's mean; for flows and Eq. 12, the
        importance-sampling estimate with ``mean_samples`` fixed draws per member."""
        if self._mean is None:
            out = self.loc.new_zeros(self.members.shape[1], self.latent_dim)
            joint = self.by_kind[0]
            if joint.numel():
                out[joint] = self.joint[0][self.rows[joint]].detach()
            other = torch.cat([self.by_kind[1], self.by_kind[2]])
            if other.numel():
                out[other] = self._table_for(other)[1]
            self._mean = out.reshape(*self.batch_shape, self.latent_dim)
        return self._mean

    @property
    def importance_ess(self) -> Tensor:
        """Effective sample size of the importance weights behind ``mean``/``log_prob`` of
        each Eq. 12 element, as a fraction of its (|S| + 1) * ``mean_samples`` draws: ``[n_hmc]``."""
        _, _, ess = self._table_values()
        return ess[len(self.by_kind[1]):]

    @property
    def improper(self) -> Tensor:
        """``BoolTensor[n_hmc]``: Eq. 12 elements whose target looks improper, i.e. the
        Gaussian Eq. 12 of moment-matched unimodal posteriors has a non-positive precision
        in some dimension (sum_j 1/var_j <= c: the members are together broader than the
        prior's power). Exact for Gaussian q_j; there HMC chains drift away and
        ``mean``/``log_prob`` mean nothing."""
        self._table_values()
        return self._improper

    def log_prob(self, value: Tensor) -> Tensor:
        """``value [*L, *batch, D] -> [*L, *batch]``: exact for the joint encoder and the
        flows; log f_S(z) - log Z_S (estimated normaliser) for Eq. 12."""
        lead = value.shape[: value.dim() - 1 - len(self.batch_shape)]
        flat = value.reshape(*lead, -1, self.latent_dim)  # [*L, N, D]
        out = flat.new_zeros(flat.shape[:-1])
        joint = self.by_kind[0]
        if joint.numel():
            loc, scale = self.joint[0][self.rows[joint]], self.joint[1][self.rows[joint]]
            out = out.index_copy(-1, joint, diagonal_normal(loc, scale).log_prob(flat[..., joint, :]))
        other = torch.cat([self.by_kind[1], self.by_kind[2]])
        if other.numel():
            z = flat[..., other, :]
            total = self._member_log_probs(z, other).sum(0)
            log_z, _ = self._table_for(other)
            value_other = total - self._power(other) * self.model.prior().log_prob(z) - log_z
            out = out.index_copy(-1, other, value_other)
        return out.reshape(*lead, *self.batch_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """``[*sample_shape, *batch, D]``: the joint encoder and the flows directly, HMC
        (Eq. 12, App. F) for the other elements, one chain per draw and element."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            count = self.members.shape[1]
            out = self.loc.new_zeros(*shape, count, self.latent_dim)
            joint = self.by_kind[0]
            if joint.numel():
                rows = self.rows[joint]
                noise = torch.randn(*shape, len(joint), self.latent_dim, dtype=out.dtype, device=out.device)
                out[..., joint, :] = self.joint[0][rows] + self.joint[1][rows] * noise
            single = self.by_kind[1]
            if single.numel():
                out[..., single, :] = self._flow_samples(single, shape)[0]
            several = self.by_kind[2]
            if several.numel():
                out[..., several, :] = self._hmc(several, shape)
        return out.reshape(*shape, *self.batch_shape, self.latent_dim)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        raise NotImplementedError("JNF's inference posteriors are sampled by flows and HMC without reparameterisation")

    # -- sampling -----------------------------------------------------------------------
    def _flow_samples(self, elements: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """One draw of each member's flow per element: ``(the first member's, all [M, *L, n, D])``.

        For a single-member element the first member is its only one.
        """
        n = len(elements)
        per_member = self.loc.new_zeros(self.num_members, *shape, n, self.latent_dim)
        for j, position, loc, scale in self._plan(elements, detach=True):
            noise = torch.randn(*shape, len(position), self.latent_dim, dtype=loc.dtype, device=loc.device)
            per_member[j][..., position, :] = self.model.flow_sample(j, loc, scale, noise)
        first = self.members[:, elements].to(self.loc.dtype).argmax(0)  # [n]
        index = first.view(1, *([1] * len(shape)), n, 1).expand(1, *shape, n, self.latent_dim)
        return per_member.gather(0, index).squeeze(0), per_member

    def _hmc(self, elements: Tensor, shape: torch.Size) -> Tensor:
        """HMC chains ``[*L, n, D]`` targeting Eq. 12 for ``elements``, started from the
        mixture of the members' flows (:func:`~omnivae.samplers.mixture_initialisation`)."""
        model, settings = self.model, self.model.hmc
        members = self.members[:, elements]
        _, per_member = self._flow_samples(elements, shape)
        initial = mixture_initialisation(per_member, members)
        plan = self._plan(elements, detach=True)

        def log_q(z: Tensor) -> Tensor:
            return self._member_log_probs(z, elements, plan)

        target = product_of_posteriors_log_prob(
            log_q, model.prior().log_prob, members, prior_power=settings.prior_power
        )
        started = time.perf_counter()
        result = hmc(
            target,
            initial,
            num_steps=settings.num_steps,
            leapfrog_steps=settings.leapfrog_steps,
            step_size=settings.step_size,
            adapt_steps=settings.adapt_steps,
        )
        model.hmc_seconds += time.perf_counter() - started
        chains = initial[..., 0].numel()
        model.hmc_chain_steps += chains * (settings.num_steps + settings.adapt_steps)
        model.hmc_sampling_chain_steps += chains * settings.num_steps
        model.hmc_accepted_chain_steps += result.acceptance_rate * chains * settings.num_steps
        model.hmc_runs += 1
        model.last_hmc_acceptance = result.acceptance_rate
        return result.samples


# -- objectives -----------------------------------------------------------------------------
def _no_gradient_loss(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Loss 0 for a batch with nothing to learn from: a leaf, so no parameter gets a gradient."""
    return torch.zeros((), device=device, dtype=dtype, requires_grad=True)


def _rows(x: dict[str, Tensor], names: Sequence[str], rows: Tensor) -> dict[str, Tensor]:
    return {name: x[name][rows] for name in names}


class JointVAELoss(Objective):
    """Stage 1 of JNF: the beta-ELBO of the joint VAE (JNF paper, Sec. 3.1, Eq. 3).

    L = -mean_rows [sum_m w_m log p(x_m | z) - a beta KL(q(z | X) || p(z))], z ~ q(z | X)
    (one reparameterised draw), over the fully observed rows of the batch only (the
    joint encoder reads every modality); a the trainer's KL warm-up factor. A batch
    without such a row gives loss 0 and no gradient. The KL is in closed form for the
    normal prior, a one-draw estimate log q(z | X) - log p(z) otherwise.

    Args:
        beta: Weight of the KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        if not beta >= 0:
            raise UserError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def __call__(self, model: JNFVAE, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        rows = model.complete_rows(x, mask)
        if not rows.numel():
            zero = _no_gradient_loss(mask.device, model.likelihood_weights.dtype)
            return ObjectiveOutput(zero, {"rec": zero.detach(), "kl": zero.detach()})
        xc = _rows(x, model.names, rows)
        posterior = model.encode_joint(xc)
        loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
        z = loc + scale * torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)  # reparameterised
        rec = model.log_likelihood(xc, z, mask[:, rows])
        prior = model.prior()
        try:
            kl = kl_divergence(posterior, prior)
        except NotImplementedError:
            kl = posterior.log_prob(z) - prior.log_prob(z)
        loss = -(rec - self.beta * kl_weight * kl).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": kl.mean()})


class UnimodalPosteriorLoss(Objective):
    r"""Stage 2 of JNF: Eq. 8 (equivalently Eq. 7; Eq. 15 for JNF-Shared).

    L = -(1 / (n K)) sum_rows sum_{k=1}^K sum_j log q_j(z_k | x_j),  z_k ~ q(z | X),

    with q(z | X) the frozen joint encoder (the draws z_k are detached, so this loss never
    trains it) and q_j the flow posteriors of Eq. 10, over the n fully observed rows of the
    batch (q(z | X) needs every modality); a batch without one gives loss 0 and no
    gradient. With projectors, q_j reads the detached g_j(x_j). ``kl_weight`` is unused.

    Args:
        num_samples: K, draws of q(z | X) per row.
    """

    def __init__(self, num_samples: int = 1) -> None:
        if num_samples < 1:
            raise UserError(f"stage2_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples

    def __call__(self, model: JNFVAE, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        rows = model.complete_rows(x, mask)
        if not rows.numel():
            zero = _no_gradient_loss(mask.device, model.likelihood_weights.dtype)
            return ObjectiveOutput(zero, {"uni": zero.detach()})
        xc = _rows(x, model.names, rows)
        with torch.no_grad():
            loc, scale = model.joint_encoder(xc)
            noise = torch.randn(self.num_samples, *loc.shape, dtype=loc.dtype, device=loc.device)
            z = loc + scale * noise  # [K, n, D]
        terms: dict[str, Tensor] = {}
        total = z.new_zeros(z.shape[:-1])
        for index, name in enumerate(model.names):
            base_loc, base_scale = model.base_posterior(name, xc[name])
            log_q = model.flow_log_prob(index, z, base_loc, base_scale)  # [K, n]
            total = total + log_q
            terms[f"nll_{name}"] = -log_q.detach().mean()
        loss = -total.mean()
        terms["uni"] = loss.detach()
        return ObjectiveOutput(loss, terms)


class ProjectorLoss(Objective):
    """Stage 0 of JNF-Shared: train the projectors g_j (Sec. 3.4, App. B).

    ``method="dcca"``: the negated sum of pairwise total CCA correlations (App. B.1,
    :func:`~omnivae.projectors.dcca_loss`); ``"contrastive"``: the pairwise InfoNCE loss
    of App. B.2 (:func:`~omnivae.projectors.contrastive_loss`) averaged over the batch.
    On the fully observed rows only; fewer than two give loss 0 and no gradient.

    Args:
        method: ``"dcca"`` or ``"contrastive"``.
        temperature: tau of the contrastive loss (0.1 in the paper).
    """

    def __init__(self, method: Literal["dcca", "contrastive"], temperature: float = 0.1) -> None:
        if method not in ("dcca", "contrastive"):
            raise unknown_name("projector objective", method, ("dcca", "contrastive"))
        if not temperature > 0:
            raise UserError(f"temperature must be positive, got {temperature}")
        self.method = method
        self.temperature = temperature

    def __call__(self, model: JNFVAE, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        rows = model.complete_rows(x, mask)
        if rows.numel() < 2 or model.num_modalities < 2:
            zero = _no_gradient_loss(mask.device, model.likelihood_weights.dtype)
            return ObjectiveOutput(zero, {self.method: zero.detach()})
        projections = [model.project(name, x[name][rows]) for name in model.names]
        if self.method == "dcca":
            loss = dcca_loss(projections)
        else:
            loss = contrastive_loss(projections, self.temperature, reduction="mean")
        return ObjectiveOutput(loss, {self.method: loss.detach()})


def _projector_parameters(model: JNFVAE) -> Iterator[nn.Parameter]:
    """Stage 0: the projectors g_j."""
    return model.projectors.parameters()


def _joint_parameters(model: JNFVAE) -> Iterator[nn.Parameter]:
    """Stage 1: the joint encoder, the decoders and the prior (theta and phi of Eq. 3)."""
    return itertools.chain(
        model.joint_encoder.parameters(), model.decoders.parameters(), model.prior_module.parameters()
    )


def _unimodal_parameters(model: JNFVAE) -> Iterator[nn.Parameter]:
    """Stage 2: the base encoders and the flows of the unimodal posteriors (phi_j of Eq. 8)."""
    return itertools.chain(model.encoders.parameters(), model.flows.parameters())


_PROJECTOR_STAGE = {"dcca": "projectors (DCCA)", "contrastive": "projectors (contrastive)"}


class JNFObjective(Objective):
    """JNF's training schedule (Sec. 3.1-3.2, 3.4) and, called directly, the sum of its losses.

    :meth:`stages` gives the stages the trainer runs, each with its own parameters:
    [``"projectors (DCCA)"`` | ``"projectors (contrastive)"``] (JNF-Shared only),
    ``"joint VAE"`` (:class:`JointVAELoss`, ``--epochs`` epochs), ``"unimodal posteriors"``
    (:class:`UnimodalPosteriorLoss`, ``stage2_epochs`` or ``--epochs``). Calling the
    objective sums the stages' losses on one batch (each loss only reaches its own
    parameters), a diagnostic; training goes through :meth:`stages`.

    Args:
        beta: Weight of the KL term of stage 1.
        stage2_epochs: Epochs of stage 2; 0 means ``--epochs``.
        stage2_samples: Draws of q(z | X) per row in Eq. 8.
        projector: ``"dcca"`` or ``"contrastive"`` for JNF-Shared, None for JNF.
        projector_epochs: Epochs of stage 0; 0 means ``--epochs``.
        temperature: The contrastive loss's tau.
    """

    def __init__(
        self,
        beta: float = 1.0,
        stage2_epochs: int = 0,
        stage2_samples: int = 1,
        projector: Literal["dcca", "contrastive"] | None = None,
        projector_epochs: int = 0,
        temperature: float = 0.1,
    ) -> None:
        if stage2_epochs < 0 or projector_epochs < 0:
            raise UserError(
                "stage2_epochs and projector_epochs must be >= 0 (0: as --epochs), got "
                f"{stage2_epochs} and {projector_epochs}"
            )
        self.joint = JointVAELoss(beta)
        self.unimodal = UnimodalPosteriorLoss(stage2_samples)
        self.projector = None if projector is None else ProjectorLoss(projector, temperature)
        self.stage2_epochs = stage2_epochs
        self.projector_epochs = projector_epochs

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        schedule: list[Stage] = []
        if self.projector is not None:
            schedule.append(
                Stage(
                    _PROJECTOR_STAGE[self.projector.method], self.projector, self.projector_epochs or epochs,
                    parameters=_projector_parameters, warmup=False,
                )
            )
        schedule.append(Stage("joint VAE", self.joint, epochs, parameters=_joint_parameters))
        schedule.append(
            Stage(
                "unimodal posteriors", self.unimodal, self.stage2_epochs or epochs,
                parameters=_unimodal_parameters, warmup=False,
            )
        )
        return tuple(schedule)

    def __call__(self, model: JNFVAE, x, mask, kl_weight: float = 1.0) -> ObjectiveOutput:
        parts = [self.joint, self.unimodal] + ([self.projector] if self.projector is not None else [])
        loss: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for part in parts:
            out = part(model, x, mask, kl_weight)
            loss = out.loss if loss is None else loss + out.loss
            terms.update(out.terms)
        assert loss is not None
        return ObjectiveOutput(loss, terms)


# -- recipes --------------------------------------------------------------------------------
def _hmc_settings(config: ModelConfig) -> HMCSettings:
    settings = HMCSettings(
        num_steps=int(config.option("hmc_steps")),
        leapfrog_steps=int(config.option("hmc_leapfrog")),
        step_size=float(config.option("hmc_step_size")),
        adapt_steps=int(config.option("hmc_adapt_steps")),
        prior_power=str(config.option("hmc_prior_power")),  # type: ignore[arg-type]
        mean_samples=int(config.option("mean_samples")),
    )
    settings.validate()
    return settings


def _build_jnf(
    config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts, shared: bool = False
) -> JNFVAE:
    """JNF's networks (App. E): the shared decoders, a joint encoder, flows, [projectors]."""
    if config.aggregator not in (None, "poe"):
        raise UserError(
            f"{config.model} infers subsets with Eq. 12 of its paper (a product of flow posteriors, by HMC); "
            "it takes no --aggregator"
        )
    if config.covariance != "diag":
        raise UserError(f"{config.model}'s encoders are diagonal Gaussians (then flows); use --covariance diag")
    hmc_settings = _hmc_settings(config)
    blocks, width = int(config.option("flow_blocks")), int(config.option("flow_hidden"))
    joint = build_joint_encoder(
        modalities, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    flows = nn.ModuleDict({m.name: UnimodalFlow(config.latent_dim, blocks, width) for m in modalities})
    projectors = None
    encoders = parts.encoders
    if shared:
        dim = int(config.option("projection_dim"))
        if dim < 1:
            raise UserError(f"projection_dim must be >= 1, got {dim}")
        projectors = nn.ModuleDict(
            {m.name: Projector(m, dim, config.backbone, config.hidden) for m in modalities}
        )
        # App. E.1: "simple networks with two linear hidden layers" on the projection.
        hidden = int(config.hidden[-1]) if config.hidden else 512
        encoders = nn.ModuleDict(
            {
                m.name: GaussianEncoder(MLP(dim, (hidden,), hidden, final_activation=True), hidden, config.latent_dim)
                for m in modalities
            }
        )
    return JNFVAE(
        modalities, encoders, parts.decoders, parts.prior, joint, flows, projectors,
        parts.likelihood_weights, hmc_settings,
    )


def _build_jnf_shared(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> JNFVAE:
    return _build_jnf(config, modalities, parts, shared=True)


def _objective(config: ModelConfig, projector: Literal["dcca", "contrastive"] | None = None) -> JNFObjective:
    extra = {}
    if projector is not None:
        extra["projector_epochs"] = int(config.option("projector_epochs"))
    if projector == "contrastive":
        extra["temperature"] = float(config.option("temperature"))
    return JNFObjective(
        beta=config.beta,
        stage2_epochs=int(config.option("stage2_epochs")),
        stage2_samples=int(config.option("stage2_samples")),
        projector=projector,
        **extra,
    )


_OPTIONS: dict = {
    "flow_blocks": 2,  # App. E: MAF with two MADE blocks
    "flow_hidden": 128,  # width of each MADE's two hidden layers
    "stage2_epochs": 0,  # 0: as --epochs
    "stage2_samples": 1,  # draws of q(z | X) per row in Eq. 8
    "hmc_steps": 100,  # App. F: "100 steps per sampling"
    "hmc_leapfrog": 10,  # reference code
    "hmc_step_size": 0.01,  # reference code
    "hmc_adapt_steps": 0,  # step-size adaptation before sampling (0: none)
    "hmc_prior_power": "paper",  # "paper" (Eq. 12) or "once" (Eq. F.3, reference code)
    "mean_samples": 64,  # draws per unimodal posterior for .mean and log Z of Eq. 12
}
_SHARED_OPTIONS: dict = {**_OPTIONS, "projection_dim": 10, "projector_epochs": 0}  # App. E.1: dimension 10

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "jnf", "JNF (joint VAE, then flow posteriors; subsets: Eq. 12 by HMC)",
        "Senellart et al. 2024 (JNF); Eq. 3, 8, 10, 12", "poe",
        _objective,
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf,
        swappable=False,
        complete_rows_only=True,
        options=dict(_OPTIONS),
    ),
    Recipe(
        "jnf-dcca", "JNF-Shared (DCCA projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.1", "poe",
        lambda c: _objective(c, "dcca"),
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options=dict(_SHARED_OPTIONS),
    ),
    Recipe(
        "jnf-cl", "JNF-Shared (contrastive projectors, then JNF on projections)",
        "Senellart et al. 2024 (JNF); Eq. 3, 10, 12, 15, App. B.2", "poe",
        lambda c: _objective(c, "contrastive"),
        aggregator_factory=PriorDividedProduct,
        build=_build_jnf_shared,
        swappable=False,
        complete_rows_only=True,
        options={**_SHARED_OPTIONS, "temperature": 0.1},
    ),
)
