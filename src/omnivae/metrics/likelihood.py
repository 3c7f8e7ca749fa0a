"""Importance-sampled test log-likelihoods, joint and conditional, in nats.

For a proposal q(z) and K draws z_k ~ q, the importance-weighted estimate (Burda et al.
2016, Eq. 8)

    log p(X) ~= log (1/K) sum_k p(X | z_k) p(z_k) / q(z_k)

is a stochastic lower bound of log p(X) that tightens as K grows, and is exact for any K
when q is the true posterior. ``K`` is processed ``chunk`` draws at a time and the chunks
are combined with ``logsumexp``, so memory does not grow with K.

Conventions, as in MultiVae's and bivae's evaluation (peer protocols, "Test
log-likelihood"):

- Likelihoods are unscaled: every log p(x_m | z) enters with weight 1, whatever
  likelihood weights (MoPoE's rescaling) the model was trained with.
- Mixture proposals (MoE, MoPoE, MWB) are scored with the exact mixture density
  (:meth:`omnivae.distributions.SubsetMixture.log_prob`), as MMVAE does (Shi et al.
  2019, Sec. 4).
- Results are means over test samples of the per-sample estimates.

References:
    Burda, Grosse & Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Shi et al. (2019). Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models. NeurIPS.
    Sutter, Daunhawer & Vogt (2021). Generalized Multimodal ELBO. ICLR.
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI, Table 1c.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omnivae.data.base import MultimodalDataset
from omnivae.errors import UserError
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    mean_by_size,
    model_inputs,
    progress_bar,
    seeded,
    subset_inference,
)
from omnivae.models import MultimodalVAE

__all__ = ["joint_log_likelihood", "conditional_log_likelihoods"]


def _log_likelihood_terms(model: MultimodalVAE, x: dict[str, Tensor], z: Tensor) -> Tensor:
    """Unweighted log p(x_m | z) of every modality: ``[M, *L, B]``.

    One decoder call per modality (:meth:`MultimodalVAE.modality_log_likelihood`), with
    every likelihood weight equal to 1 and without summing, so that callers can pick which
    modalities enter.

    Args:
        model: The model.
        x: ``name -> [B, *shape]`` for every modality of the model.
        z: ``[*L, B, D]`` latent samples.
    """
    return torch.stack([model.modality_log_likelihood(name, x[name], z) for name in model.names])


#: Latents per estimator step when ``chunk`` is left to the estimator: every step's tensors
#: (latents, log-weights; the decoders split their own calls further) stay a few MB, and a
#: progress bar moves every few seconds on a CPU even at K = 1,000.
LATENTS_PER_STEP = 1 << 14


def _auto_chunk(num_samples: int, latents_per_sample: int) -> int:
    """Samples per step so that a step holds about :data:`LATENTS_PER_STEP` latents."""
    return max(1, min(num_samples, LATENTS_PER_STEP // max(1, latents_per_sample)))


def _check_sizes(num_samples: int, batch_size: int, chunk: int | None) -> None:
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("chunk", 1 if chunk is None else chunk)):
        if value < 1:
            raise UserError(f"the likelihood's {name} must be >= 1, got {value}")


def _chunks(num_samples: int, chunk: int) -> list[int]:
    """Sizes of the sample chunks: ``chunk`` each, the last one smaller."""
    return [min(chunk, num_samples - start) for start in range(0, num_samples, chunk)]


def joint_log_likelihood(
    model: MultimodalVAE,
    data: MultimodalDataset,
    *,
    num_samples: int = 1000,
    batch_size: int = 64,
    chunk: int | None = None,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    progress: bool = False,
) -> float:
    """Importance-sampled log p(X) with the model's joint posterior as proposal.

    log p(X) ~= log (1/K) sum_k p(X | z_k) p(z_k) / q(z_k | X), z_k ~ q(z | X), where
    q(z | X) is the model's training posterior ``model.joint_posterior(...)`` (Burda et al.
    2016, Eq. 8; the protocol of MultiVae, and MMVAE's ``m_iwae``, Shi et al. 2019) and
    log p(X | z) = sum_m log p(x_m | z) with unit weights. For mixtures, q's density is the
    exact mixture density. On partially observed data X is the observed modalities of
    each row (rows with none observed are skipped).

    Args:
        model: A trained model; its device must be ``device``.
        data: The test split.
        num_samples: K, importance samples per test point (MMVAE and MultiVae: 1000).
        batch_size: Test points per pass.
        chunk: Samples per step; memory grows with ``chunk * batch_size``. By default about
            :data:`LATENTS_PER_STEP` latents per step.
        device: Where batches are sent.
        seed: Seed for the draws (the global random state is left untouched); None uses it.
        progress: Show a progress bar (sample chunks, with ETA) on stderr.

    Returns:
        The mean over test points of the estimate, in nats.

    Example:
        >>> joint_log_likelihood(model, splits.test, num_samples=1000)  # doctest: +SKIP
        -1865.2
    """
    _check_sizes(num_samples, batch_size, chunk)
    chunk = _auto_chunk(num_samples, batch_size) if chunk is None else chunk
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    steps = data.num_batches(batch_size) * len(_chunks(num_samples, chunk))
    bar = progress_bar(steps, f"likelihood (joint, K={num_samples})", progress, unit="chunk")
    with torch.no_grad(), evaluating(model), seeded(seed, device), bar:
        prior = model.prior()
        for batch in eval_batches(data, batch_size, device):
            x = model_inputs(model, batch)
            observed = model.stack_mask(x, batch.mask)  # [M, B]
            posterior = model.joint_posterior(x, observed)
            parts = []
            for k in _chunks(num_samples, chunk):
                z = posterior.sample(torch.Size([k]))  # [k, B, D]
                terms = _log_likelihood_terms(model, x, z)  # [M, k, B]
                log_px = torch.where(observed.unsqueeze(1), terms, terms.new_zeros(())).sum(0)
                log_w = log_px + prior.log_prob(z) - posterior.log_prob(z)
                parts.append(torch.logsumexp(log_w, 0))
                bar.update()
            estimate = torch.logsumexp(torch.stack(parts), 0) - math.log(num_samples)
            rows = observed.any(0)
            total += torch.where(rows, estimate, estimate.new_zeros(())).sum().double()
            count += rows.sum()
    return float(total / count.clamp_min(1))


def conditional_log_likelihoods(
    model: MultimodalVAE,
    data: MultimodalDataset,
    *,
    num_samples: int = 1000,
    batch_size: int = 64,
    chunk: int | None = None,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    progress: bool = False,
) -> dict:
    """Importance-sampled likelihoods with each subset's inference posterior as proposal.

    For every non-empty subset S, z_k ~ q(z | x_S), the model's inference posterior of S
    (``model.subset_posteriors``; for all subsets from one encoder pass). The same K draws
    give two quantities:

    - ``"joint_given_subset"[S]``: an estimate of the **joint** log p(X), as in MoPoE's
      protocol (Sutter et al. 2021; peer protocols, "Test log-likelihood"):
      log (1/K) sum_k p(X | z_k) p(z_k) / q(z_k | x_S), with p(X | z) the product over
      *all* modalities. A lower bound of log p(X) that is loose when x_S says little
      about the rest; for the full set it is the usual joint estimate with the inference
      (not the training) posterior.
    - ``"conditional"[S]``: the **conditional** log p(X_{not S} | x_S) ~=
      log (1/K) sum_k p(X_{not S} | z_k), z_k ~ q(z | x_S), over only the modalities
      outside S (the cross-modal likelihood of Qiu et al. 2025, Table 1c). When
      q(z | x_S) = p(z | x_S) the average inside the log is unbiased, so the estimate is
      a lower bound in expectation (Jensen) that tightens as K grows; otherwise it
      measures the model's own conditional p(X_{not S} | z) averaged over q(z | x_S).
      Not defined, and left out, for the full set.

    Both are means over test points, in nats, with unit likelihood weights. Since the
    draws are shared, ``joint_given_subset[S] - conditional[S]`` estimates log p(x_S)
    (exactly, for an exact posterior). On partially observed data, subset S uses only
    the rows where all of S is observed, X is the observed modalities of the row, and a
    conditional needs at least one observed modality outside S; a subset with no such
    row is left out.

    Memory: each step holds ``chunk * (2**M - 1) * batch_size`` latents.

    Args:
        model: A trained model; its device must be ``device``.
        data: The test split.
        num_samples: K, importance samples per test point and subset (MoPoE used 12).
        batch_size: Test points per pass.
        chunk: Samples per step (by default about :data:`LATENTS_PER_STEP` latents per step).
        device: Where batches are sent.
        seed: Seed for the draws (the global random state is left untouched); None uses it.
        progress: Show a progress bar (sample chunks, with ETA) on stderr.

    Returns:
        ``{"joint_given_subset": {"m0": v, ..., "m0+m1": v}, "conditional": {"m0": v, ...},
        "conditional_by_size": {"1": v, ...}}``.

    Example:
        >>> out = conditional_log_likelihoods(model, splits.test, num_samples=12)  # doctest: +SKIP
        >>> out["conditional"]["m0"]  # doctest: +SKIP
        -1203.7
    """
    _check_sizes(num_samples, batch_size, chunk)
    subsets, keys, enumeration = likelihood_subsets(model.names, device=model.device)
    size = subsets.shape[0]
    chunk = _auto_chunk(num_samples, size * batch_size) if chunk is None else chunk
    sums = torch.zeros(2, size, dtype=torch.float64, device=device)  # joint, conditional
    counts = torch.zeros(2, size, dtype=torch.float64, device=device)
    steps = data.num_batches(batch_size) * len(_chunks(num_samples, chunk))
    bar = progress_bar(steps, f"likelihood (subsets, K={num_samples})", progress, unit="chunk")
    with torch.no_grad(), evaluating(model), seeded(seed, device), bar:
        prior = model.prior()
        for batch in eval_batches(data, batch_size, device):
            posterior, valid, observed, x = subset_inference(model, batch, subsets)
            targets = ~subsets.t().unsqueeze(-1) & observed.unsqueeze(1)  # [M, S, B]
            parts = []
            for k in _chunks(num_samples, chunk):
                z = posterior.sample(torch.Size([k]))  # [k, S, B, D]
                terms = _log_likelihood_terms(model, x, z)  # [M, k, S, B]
                zero = terms.new_zeros(())
                log_px = torch.where(observed.unsqueeze(1).unsqueeze(1), terms, zero).sum(0)
                log_rest = torch.where(targets.unsqueeze(1), terms, zero).sum(0)
                log_w = log_px + prior.log_prob(z) - posterior.log_prob(z)
                parts.append(torch.stack([log_w, log_rest]).logsumexp(1))  # [2, S, B]
                bar.update()
            estimates = torch.logsumexp(torch.stack(parts), 0) - math.log(num_samples)  # joint, conditional
            rows = torch.stack([valid, valid & targets.any(0)])
            sums += torch.where(rows, estimates, estimates.new_zeros(())).sum(-1).double()
            counts += rows.sum(-1)
    means = (sums / counts.clamp_min(1)).tolist()
    present = (counts > 0).tolist()
    joint_given_subset = {key: means[0][i] for i, key in enumerate(keys) if present[0][i]}
    full = keys[-1]
    conditional = {key: means[1][i] for i, key in enumerate(keys) if present[1][i] and key != full}
    return {
        "joint_given_subset": joint_given_subset,
        "conditional": conditional,
        "conditional_by_size": mean_by_size(conditional),
        **({"subsets": enumeration} if enumeration["sampled"] else {}),  # said only when not all are scored
    }


#: Up to this many modalities every subset is scored (2**10 - 1 = 1,023); above it, a
#: fixed, seeded sample of subsets of that size, since 2**M grows past any budget
#: (20 modalities: 1,048,575 subsets).
MAX_ENUMERATED_MODALITIES = 10
_SUBSET_SEED = 0


def likelihood_subsets(
    names: list[str], device: torch.device | str | None = None
) -> tuple[Tensor, list[str], dict]:
    """The subsets the conditional likelihoods score: every non-empty subset for at most
    :data:`MAX_ENUMERATED_MODALITIES` modalities; above that, the singletons, the full set
    and distinct random subsets drawn with a fixed seed (the same for every run, so runs
    stay comparable), ``2**MAX_ENUMERATED_MODALITIES - 1`` in all, ordered by size.

    Returns:
        ``(BoolTensor[S, M], keys, {"scored": S, "of": 2**M - 1, "sampled": bool, "seed": ...})``.
    """
    m = len(names)
    total = 2**m - 1
    if m <= MAX_ENUMERATED_MODALITIES:
        table, keys = all_subsets(names, device=device)
        return table, keys, {"scored": total, "of": total, "sampled": False}
    budget = 2**MAX_ENUMERATED_MODALITIES - 1
    generator = torch.Generator().manual_seed(_SUBSET_SEED)
    chosen = {tuple(i == j for j in range(m)) for i in range(m)} | {(True,) * m}
    while len(chosen) < budget:
        size = int(torch.randint(2, m, (1,), generator=generator))  # sizes 2..M-1, uniformly
        members = torch.randperm(m, generator=generator)[:size].tolist()
        chosen.add(tuple(j in members for j in range(m)))
    rows = sorted(chosen, key=lambda row: (sum(row), [not v for v in row]))
    table = torch.tensor(rows, dtype=torch.bool, device=device)
    keys = ["+".join(n for n, keep in zip(names, row, strict=False) if keep) for row in rows]
    return table, keys, {"scored": len(rows), "of": total, "sampled": True, "seed": _SUBSET_SEED}
