"""Batched Hamiltonian Monte Carlo: independent chains in one batch.

Every leading index of the state ``z [*C, D]`` is an independent chain (in use one chain
per (sample, row): ``C = (K, B)``); loops run over HMC steps only, never over chains, and
no value is copied to the host before the last step. JNF samples its subset posteriors
(Eq. 12) with it; their target and the chains' start live in
:mod:`omnivae.methods.jnf.posterior`.

References:
    Senellart, Chadebec & Allassonnière. Bridging the inference gap in Multimodal
    Variational Autoencoders. Appendix F (Eq. F.1-F.2).
    Neal (2011). MCMC using Hamiltonian dynamics. Handbook of MCMC, ch. 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from omnivae.errors import UserError

__all__ = [
    "HMCResult",
    "LeapfrogResult",
    "hmc",
    "leapfrog",
    "log_prob_and_grad",
]

LogProb = Callable[[Tensor], Tensor]


@dataclass
class HMCResult:
    """What :func:`hmc` returns.

    Attributes:
        samples: ``[*C, D]``, the state of every chain after the last step.
        acceptance_rate: fraction of accepted proposals over all chains and sampling steps
            (burn-in steps used for step-size adaptation are not counted).
        per_chain_acceptance: ``[*C]``, the same fraction per chain.
        step_size: the step size used for sampling: the one given, or ``[*C, 1]`` per
            chain after adaptation.
        trace: ``[num_steps, *C, D]``, the state after every sampling step, if requested.
    """

    samples: Tensor
    acceptance_rate: float
    per_chain_acceptance: Tensor
    step_size: Tensor
    trace: Tensor | None = None


class LeapfrogResult(NamedTuple):
    """End of a leapfrog trajectory: ``position``/``momentum`` ``[*C, D]``, and the target's
    ``log_prob [*C]`` and ``grad [*C, D]`` at ``position`` (reused by the next trajectory)."""

    position: Tensor
    momentum: Tensor
    log_prob: Tensor
    grad: Tensor


def log_prob_and_grad(log_prob: LogProb, z: Tensor) -> tuple[Tensor, Tensor]:
    """The target ``log f(z) [*C]`` and its gradient ``∇_z log f(z) [*C, D]``, detached.

    The gradient HMC needs in the leapfrog steps (Appendix F, Eq. F.2), computed with
    ``torch.autograd.grad`` of ``log_prob(z).sum()``: chains are independent, so the sum's
    gradient holds every chain's own gradient. Grad mode is enabled locally, so callers may
    run under ``torch.no_grad()`` (or ``torch.inference_mode()``); only ``z`` is
    differentiated, so parameters inside ``log_prob`` never accumulate ``.grad``.
    """
    if torch.is_inference_mode_enabled() or z.is_inference():
        # Autograd cannot record inference tensors; a clone made outside inference mode can.
        with torch.inference_mode(False):
            return log_prob_and_grad(log_prob, z.clone())
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_prob(z)
        if value.shape != z.shape[:-1]:
            raise UserError(
                f"log_prob must map z {tuple(z.shape)} to one value per chain "
                f"{tuple(z.shape[:-1])}, got {tuple(value.shape)}"
            )
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.detach()


def leapfrog(
    log_prob: LogProb,
    position: Tensor,
    momentum: Tensor,
    *,
    step_size: float | Tensor,
    num_steps: int,
    grad: Tensor | None = None,
) -> LeapfrogResult:
    """Integrate Hamilton's equations with the leapfrog scheme (Appendix F, Eq. F.1-F.2).

    Identity mass, ``H(z, v) = -log f(z) + v'v / 2``: a half momentum step, then
    ``num_steps`` position steps with full momentum steps between them, then a final half
    momentum step. The map is volume preserving and reversible: integrating from the end
    with the momentum negated returns to the start.

    Args:
        log_prob: ``z [*C, D] -> [*C]``, the unnormalised log target ``log f``.
        position, momentum: ``[*C, D]``.
        step_size: the integrator step ``ε``, a scalar or a tensor broadcastable to
            ``[*C, 1]`` (one step per chain).
        num_steps: ``l``, the number of leapfrog steps (``>= 1``).
        grad: ``∇ log f(position)`` if already known, to save one evaluation.

    Returns:
        :class:`LeapfrogResult` at the end of the trajectory.
    """
    if num_steps < 1:
        raise UserError(f"leapfrog needs num_steps >= 1, got {num_steps}")
    z = position.detach()
    if grad is None:
        _, grad = log_prob_and_grad(log_prob, z)
    v = momentum.detach() + 0.5 * step_size * grad
    for step in range(num_steps):
        z = z + step_size * v
        value, grad = log_prob_and_grad(log_prob, z)
        v = v + (step_size if step < num_steps - 1 else 0.5 * step_size) * grad
    return LeapfrogResult(z, v, value, grad)


def _kinetic(momentum: Tensor) -> Tensor:
    return 0.5 * momentum.pow(2).sum(-1)


def _chain_step_size(step_size: float | Tensor, like: Tensor, per_chain: bool) -> Tensor:
    """``step_size`` as a tensor of ``like``'s dtype, ``[*C, 1]`` if ``per_chain``."""
    eps = torch.as_tensor(step_size, dtype=like.dtype, device=like.device).detach()
    chain_shape = (*like.shape[:-1], 1)
    if eps.dim() > 0 or per_chain:
        try:
            eps = torch.broadcast_to(eps, chain_shape).clone()
        except RuntimeError as error:
            raise UserError(
                f"step_size of shape {tuple(eps.shape)} does not broadcast to the chains' "
                f"{chain_shape}"
            ) from error
    if not bool((eps > 0).all()):
        raise UserError("step_size must be positive")
    return eps


def hmc(
    log_prob: LogProb,
    initial: Tensor,
    *,
    num_steps: int,
    leapfrog_steps: int = 10,
    step_size: float | Tensor = 0.1,
    adapt_steps: int = 0,
    target_acceptance: float = 0.65,
    adapt_rate: float = 0.25,
    step_size_jitter: float = 0.0,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
) -> HMCResult:
    """Hamiltonian Monte Carlo on independent chains in one batch (Appendix F, Algorithm 1).

    Each step draws a momentum ``v0 ~ N(0, I)``, integrates ``leapfrog_steps`` leapfrog
    steps (Eq. F.2) to a proposal ``(z', v')`` and accepts it per chain with probability
    ``min(1, exp(H(z0, v0) - H(z', v')))``, ``H(z, v) = -log f(z) + v'v / 2`` (Eq. F.1).
    Proposals with a non-finite energy or position (``log f = -inf``, NaN) are rejected, so
    chains never enter a region where ``log f = -inf``.

    Step-size adaptation (optional): ``adapt_steps`` burn-in steps run before the
    ``num_steps`` sampling steps. After each burn-in step every chain scales its own step by
    ``exp(adapt_rate * (α - target_acceptance))``, ``α`` its acceptance probability, which
    raises the step when proposals are accepted more often than the target and lowers it
    otherwise. Sampling then uses, per chain, the geometric mean of the steps over the
    second half of the burn-in (held fixed, so the sampling steps are a valid Markov chain).

    Step-size jitter (optional, off by default as in the paper): each step scales every
    chain's step by an independent ``Uniform(1 - j, 1 + j)`` factor. With a fixed
    trajectory length ``l ε`` close to a multiple of half the period of a narrow direction
    the proposal nearly reflects the chain there and it stops mixing; a random length
    breaks that resonance. The factor does not depend on the state, so detailed balance
    holds for every draw.

    Args:
        log_prob: ``z [*C, D] -> [*C]``, the unnormalised log target ``log f``, e.g. from
            :func:`~omnivae.methods.jnf.posterior.product_of_posteriors_log_prob` (Eq. 12 / F.3).
        initial: ``[*C, D]``, the chains' starting points (e.g. :func:`~omnivae.methods.jnf.posterior.mixture_initialisation`).
        num_steps: sampling steps (Appendix F: "100 steps per sampling").
        leapfrog_steps: leapfrog steps ``l`` per proposal.
        step_size: ``ε``, a scalar or a tensor broadcastable to ``[*C, 1]``.
        adapt_steps: burn-in steps with step-size adaptation (0: none).
        target_acceptance: the acceptance probability adaptation aims for.
        adapt_rate: the multiplicative rule's rate ``κ``.
        step_size_jitter: ``j`` in ``[0, 1)``, the relative half-width of the random step
            factor.
        generator: the random source for momenta and accept draws (its device must be
            ``initial``'s); ``None`` uses torch's global generator.
        return_trace: also return every sampling step's state.

    Returns:
        :class:`HMCResult`; ``samples`` has ``initial``'s shape and is detached.
    """
    if num_steps < 1 or leapfrog_steps < 1 or adapt_steps < 0:
        raise UserError(
            "hmc needs num_steps >= 1, leapfrog_steps >= 1 and adapt_steps >= 0, got "
            f"{num_steps}, {leapfrog_steps}, {adapt_steps}"
        )
    if not 0 <= step_size_jitter < 1:
        raise UserError(f"step_size_jitter must be in [0, 1), got {step_size_jitter}")
    if initial.dim() < 1:
        raise UserError("initial must be [*C, D]")
    z = initial.detach()
    chains = z.shape[:-1]
    eps = _chain_step_size(step_size, z, per_chain=adapt_steps > 0)
    value, grad = log_prob_and_grad(log_prob, z)
    accepted = torch.zeros(chains, dtype=z.dtype, device=z.device)
    trace = z.new_empty((num_steps, *z.shape)) if return_trace else None
    log_eps_sum = torch.zeros_like(eps)
    averaged = 0

    for step in range(adapt_steps + num_steps):
        v0 = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        h0 = -value + _kinetic(v0)
        step_eps = eps
        if step_size_jitter > 0:
            factor = torch.rand((*chains, 1), generator=generator, dtype=z.dtype, device=z.device)
            step_eps = eps * (1 + step_size_jitter * (2 * factor - 1))
        proposal = leapfrog(
            log_prob, z, v0, step_size=step_eps, num_steps=leapfrog_steps, grad=grad
        )
        h1 = -proposal.log_prob + _kinetic(proposal.momentum)
        valid = torch.isfinite(h1) & torch.isfinite(proposal.position).all(-1)
        # A chain started where log f = -inf has h0 = +inf and accepts any valid proposal
        # (if the gradient there is finite, so that the trajectory is).
        log_alpha = torch.where(valid, (h0 - h1).clamp(max=0.0), -math.inf)
        log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
        u = torch.rand(chains, generator=generator, dtype=z.dtype, device=z.device)
        accept = torch.log(u) < log_alpha

        z = torch.where(accept.unsqueeze(-1), proposal.position, z)
        value = torch.where(accept, proposal.log_prob, value)
        grad = torch.where(accept.unsqueeze(-1), proposal.grad, grad)

        if step < adapt_steps:
            alpha = log_alpha.exp().unsqueeze(-1)
            eps = eps * torch.exp(adapt_rate * (alpha - target_acceptance))
            if step >= adapt_steps // 2:
                log_eps_sum = log_eps_sum + eps.log()
                averaged += 1
            if step == adapt_steps - 1:
                eps = torch.exp(log_eps_sum / averaged)
            continue
        accepted = accepted + accept.to(z.dtype)
        if trace is not None:
            trace[step - adapt_steps] = z

    per_chain = accepted / num_steps
    return HMCResult(
        samples=z,
        acceptance_rate=float(per_chain.mean()),
        per_chain_acceptance=per_chain,
        step_size=eps,
        trace=trace,
    )
