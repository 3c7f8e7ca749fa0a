"""JNF's subset posteriors (Senellart et al., Sec. 3.3, Eq. 11-12; App. F, Eq. F.3).

Eq. 12 approximates the posterior of an observed subset ``S`` of modalities by the product
of its unimodal posteriors divided by the prior,

    p(z | x_S)  ∝  f_S(z) = prod_{j in S} q_j(z | x_j) / p(z)^(|S|-1),

a density known only up to a constant, sampled with HMC (:func:`omnivae.samplers.hmc`).
This file holds Eq. 12's unnormalised target (:func:`product_of_posteriors_log_prob`), the
chains' start (:func:`mixture_initialisation`) and :class:`JNFPosterior`, the
``Distribution`` JNF's inference returns (``.mean`` and ``log_prob`` by importance
sampling, see :mod:`omnivae.methods.jnf`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from omnivae.distributions import SampleShape, diagonal_normal
from omnivae.errors import UserError
from omnivae.samplers import hmc

if TYPE_CHECKING:
    from omnivae.methods.jnf.model import JNFVAE

__all__ = ["JNFPosterior", "product_of_posteriors_log_prob", "mixture_initialisation"]

LogProb = Callable[[Tensor], Tensor]
PriorPower = Literal["paper", "once"]
_FIXED_DRAWS_SEED = 20240611  # any constant: the draws behind .mean and log Z_S
_PROPOSAL_INFLATION = 2.0
_PlanEntry = tuple[int, Tensor, Tensor, Tensor]  # member j, positions, base loc, base scale  # variance factor of the Gaussian importance proposal for Eq. 12


def _align_mask(mask: Tensor, chain_ndim: int) -> Tensor:
    """A ``[M, *B]`` mask viewed as ``[M, 1, ..., 1, *B]`` with ``1 + chain_ndim`` axes.

    The missing axes are the leading chain axes (the sample axis ``K`` of ``C = (K, B)``),
    so a per-row mask broadcasts over samples; plain right alignment would wrongly align
    the member axis ``M`` with ``K``.
    """
    extra = chain_ndim - (mask.dim() - 1)
    if extra < 0:
        raise UserError(
            f"subset_mask of shape {tuple(mask.shape)} has more axes than [M, *C] "
            f"with {chain_ndim} chain axes"
        )
    return mask.reshape(mask.shape[0], *([1] * extra), *mask.shape[1:])


def product_of_posteriors_log_prob(
    log_q: LogProb | Sequence[LogProb],
    prior_log_prob: LogProb,
    subset_mask: Tensor | None = None,
    *,
    prior_power: PriorPower = "paper",
) -> LogProb:
    """The unnormalised log density of a subset posterior as a product of experts (Eq. 12).

    For each chain, with ``n = sum_j mask_j`` observed members,

        log f(z) = sum_j mask_j log q_j(z | x_j) - c(n) log p(z)

    where ``c(n) = n - 1`` for ``prior_power="paper"`` (Eq. 12: the prior to the power
    ``|S| - 1``), and ``c(n) = 1`` for ``prior_power="once"`` (Appendix F, Eq. F.3, and the
    reference code: the prior divided once whatever ``|S|``; note that for ``|S| = 1`` this
    is ``q_j / p``, not ``q_j``). A row with no observed member gets ``c = -1`` under both,
    so that its target is the prior. Masked members are removed with :func:`torch.where`, so
    their ``log q_j`` (which must still be computable) adds neither value nor gradient.

    Args:
        log_q: ``z [*C, D] -> [M, *C]``, every member's ``log q_j(z | x_j)``; or a sequence
            of ``M`` callables ``z [*C, D] -> [*C]``, one per member.
        prior_log_prob: ``z [*C, D] -> [*C]``, ``log p(z)``.
        subset_mask: ``[M, *C]`` bool, True = member in ``S``; a ``[M, *B]`` mask with fewer
            chain axes broadcasts over the leading chain axes (e.g. ``[M, B]`` over the
            sample axis of ``C = (K, B)``). ``None``: every member observed.
        prior_power: ``"paper"`` (default) or ``"once"``, as above.

    Returns:
        ``log_prob: z [*C, D] -> [*C]``, for :func:`hmc`.
    """
    if prior_power not in ("paper", "once"):
        raise UserError(f"unknown prior_power {prior_power!r}; choose one of: once, paper")
    if not callable(log_q):
        members = list(log_q)

        def log_q(z: Tensor) -> Tensor:
            return torch.stack([member(z) for member in members])

    def log_prob(z: Tensor) -> Tensor:
        terms = log_q(z)
        if subset_mask is None:
            observed = torch.ones((), dtype=torch.bool, device=terms.device)
            count = torch.full((), terms.shape[0], dtype=terms.dtype, device=terms.device)
        else:
            observed = _align_mask(subset_mask.to(torch.bool), z.dim() - 1)
            count = observed.to(terms.dtype).sum(0)
        zero = torch.zeros((), dtype=terms.dtype, device=terms.device)
        total = torch.where(observed, terms, zero).sum(0)
        if prior_power == "paper":
            power = count - 1
        else:
            power = torch.where(count > 0, 1.0, -1.0).to(terms.dtype)
        return total - power * prior_log_prob(z)

    return log_prob


def mixture_initialisation(
    samples_per_member: Tensor,
    subset_mask: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Start each chain from a sample of the mixture of the observed unimodal posteriors.

    The paper leaves the start ``z_0`` of Algorithm 1 (Appendix F) open; the JNF reference
    code starts the chains for ``p(z | x_S)`` (Eq. 12) from the mixture
    ``(1/|S|) sum_{j in S} q_j(z | x_j)``, which covers every expert's mode. Given one sample
    per member and chain, this picks, per chain, one observed member uniformly at random
    and returns its sample.

    Args:
        samples_per_member: ``[M, *C, D]``, ``z_j ~ q_j(z | x_j)`` for every member and chain.
        subset_mask: ``[M, *C]`` bool, or ``[M, *B]`` broadcast over leading chain axes as in
            :func:`product_of_posteriors_log_prob`. Every chain needs one observed member.
        generator: the random source (on the samples' device); ``None``: global.

    Returns:
        ``[*C, D]``.
    """
    chain_shape = samples_per_member.shape[1:-1]
    mask = _align_mask(subset_mask.to(torch.bool), len(chain_shape))
    mask = mask.expand(samples_per_member.shape[0], *chain_shape)
    if not bool(mask.any(0).all()):
        raise UserError("mixture_initialisation: every chain needs at least one observed member")
    # The argmax of i.i.d. uniform keys over the observed members is a uniform choice among them.
    keys = torch.rand(mask.shape, generator=generator, device=mask.device)
    keys = torch.where(mask, keys, -1.0)
    index = keys.argmax(0, keepdim=True).unsqueeze(-1)
    index = index.expand(1, *chain_shape, samples_per_member.shape[-1])
    return samples_per_member.gather(0, index).squeeze(0)


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

    def _joint(self) -> tuple[Tensor, Tensor]:
        """The joint encoder's ``(loc, scale)``; only called when some element uses it."""
        assert self.joint is not None, "no element observes every modality"
        return self.joint

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
                out[joint] = self._joint()[0][self.rows[joint]].detach()
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
            joint_loc, joint_scale = self._joint()
            loc, scale = joint_loc[self.rows[joint]], joint_scale[self.rows[joint]]
            out = out.index_copy(-1, joint, diagonal_normal(loc, scale).log_prob(flat[..., joint, :]))
        other = torch.cat([self.by_kind[1], self.by_kind[2]])
        if other.numel():
            z = flat[..., other, :]
            total = self._member_log_probs(z, other).sum(0)
            log_z, _ = self._table_for(other)
            value_other = total - self._power(other) * self.model.prior().log_prob(z) - log_z
            out = out.index_copy(-1, other, value_other)
        return out.reshape(*lead, *self.batch_shape)

    def sample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
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
                joint_loc, joint_scale = self._joint()
                out[..., joint, :] = joint_loc[rows] + joint_scale[rows] * noise
            single = self.by_kind[1]
            if single.numel():
                out[..., single, :] = self._flow_samples(single, shape)[0]
            several = self.by_kind[2]
            if several.numel():
                out[..., several, :] = self._hmc(several, shape)
        return out.reshape(*shape, *self.batch_shape, self.latent_dim)

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
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
        mixture of the members' flows (:func:`mixture_initialisation`)."""
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
