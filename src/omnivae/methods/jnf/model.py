"""JNF's model (Senellart et al., Sec. 3): the unimodal flows of Eq. 9-10 and :class:`JNFVAE`.

The flows f^(j) (Eq. 10) and the sampler settings of Eq. 12 (App. F); the family's
decisions are in :mod:`omnivae.methods.jnf`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from omnivae.distributions import GaussianExperts
from omnivae.errors import DataError, UserError, unknown_name
from omnivae.methods.jnf.posterior import JNFPosterior
from omnivae.modalities import ModalitySpec
from omnivae.models.joint import JointEncoderBase
from omnivae.nn import JointEncoder

__all__ = ["HMCSettings", "UnimodalFlow", "JNFVAE"]

PriorPower = Literal["paper", "once"]


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
            bad = "hmc_steps" if self.num_steps < 1 else "hmc_leapfrog" if self.leapfrog_steps < 1 else "hmc_adapt_steps"
            raise UserError(
                "JNF's HMC needs hmc_steps >= 1, hmc_leapfrog >= 1 and hmc_adapt_steps >= 0, got "
                f"{self.num_steps}, {self.leapfrog_steps}, {self.adapt_steps}",
                parameter=bad,
            )
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise UserError(f"hmc_step_size must be a positive number, got {self.step_size}", parameter="hmc_step_size")
        if self.prior_power not in ("paper", "once"):
            raise unknown_name("hmc_prior_power", str(self.prior_power), ("paper", "once"))
        if self.mean_samples < 2:
            raise UserError(f"mean_samples must be >= 2, got {self.mean_samples}", parameter="mean_samples")


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
            raise UserError(
                f"flow_blocks must be >= 0 and flow_hidden >= 1, got {blocks} and {hidden}",
                parameter="flow_blocks" if blocks < 0 else "flow_hidden",
            )
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


# -- the model ------------------------------------------------------------------------------
class JNFVAE(JointEncoderBase):
    """JNF (and JNF-Shared): joint encoder, decoders, flow posteriors, HMC for subsets.

    Senellart et al., Sec. 3. Parameter groups, trained one stage each:

    - ``projectors.<name>``: g_j of JNF-Shared (stage 0; ``None`` for plain JNF);
    - ``joint_encoder``, ``decoders.<name>``, the prior's parameters: the joint VAE (stage 1);
    - ``encoders.<name>`` (q_j^(0)'s network, reading x_j or g_j(x_j)) and
      ``flows.<name>`` (f^(j)): the unimodal posteriors (stage 2).

    Inference (:meth:`posterior`, behind :meth:`encode`, :meth:`subset_posteriors` and
    :meth:`joint_posterior`) returns :class:`JNFPosterior`. JNF aggregates no Gaussian
    experts: it has no aggregator. ``hmc`` holds the sampler's settings (mutable, so evaluation
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
        super().__init__(modalities, encoders, decoders, None, prior, joint_encoder, likelihood_weights, 0)
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
    def complete_rows(self, x: dict[str, Tensor], mask: Tensor) -> Tensor:
        """``LongTensor[n]``: the rows with every modality observed (what stages 0-2 train on)."""
        if not self.has_every_modality(x):
            return torch.zeros(0, dtype=torch.long, device=mask.device)
        return mask.all(0).nonzero().squeeze(-1)

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

    def flow(self, index: int) -> UnimodalFlow:
        """f^(j) of modality ``index``."""
        return cast(UnimodalFlow, self.flows[self.names[index]])

    def flow_log_prob(self, index: int, z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """log q_j(z | x_j) of Eq. 10 for modality ``index``: ``z [*, n, D]``, base
        ``loc, scale [n, D]`` (broadcast) -> ``[*, n]``."""
        z0, ladj = self.flow(index).normalise(z)
        return torch.distributions.Normal(loc, scale, validate_args=False).log_prob(z0).sum(-1) + ladj

    def flow_sample(self, index: int, loc: Tensor, scale: Tensor, noise: Tensor) -> Tensor:
        """z = f^(j)(loc + scale * noise), a draw of q_j(z | x_j) for ``noise ~ N(0, I)``:
        ``[*, n, D]`` with ``loc, scale [n, D]``."""
        return self.flow(index).generate(loc + scale * noise)

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """The base Gaussians q_j^(0) ``[M, B, D]`` of the unimodal posteriors (Eq. 10).

        Modalities absent from ``x`` get N(0, I) placeholders; they are never members.
        """
        return GaussianExperts(*self.run_encoders(x, self.latent_dim, self.base_posterior))

    # -- inference ----------------------------------------------------------------------
    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> JNFPosterior:
        """:class:`JNFPosterior` for ``members [M, *S, B]``: per element the joint encoder
        (every modality a member), the flow (one), Eq. 12 by HMC (several).

        The ``proposal`` is the same posterior: the joint encoder q(z | X) on fully
        observed rows (as the reference protocols, peer protocols "Test log-likelihood"),
        the posterior of the observed modalities on the others.
        """
        members = members.to(self.device, torch.bool)
        if not bool(members.any(0).all()):
            raise DataError("a posterior needs at least one observed modality in every row and subset")
        experts = self.encode_experts(x, self.observed_rows(members))
        joint = None
        if self.has_every_modality(x) and bool(members.all(0).any()):
            joint = self.joint_encoder(x)
        return JNFPosterior(self, members, experts.loc, experts.scale, joint)
