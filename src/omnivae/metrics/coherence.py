"""Coherence: do generated modalities carry the label of what they were generated from?

Conditional coherence (Shi et al. 2019, Sec. 4, "cross coherence"; Sutter et al. 2021,
Sec. 4): for every non-empty subset S of the modalities and every target modality m
outside S, draw one z ~ q(z | x_S) per test sample, decode the mean of p(x_m | z), classify
it with m's classifier and score the predictions against the test labels. Scores are
class-balanced accuracies (the mean of per-class accuracies, as in MultiVae), or, for
multi-label data, the macro mean average precision of the classifier's sigmoid scores
(as in MM-VAMP's CelebA evaluation). Per-subset means are averaged by subset size as in
Fig. 3 of Qiu et al. (2025).

Joint (unconditional) coherence (Shi et al. 2019; Sutter et al. 2021): decode prior
samples into every modality and count how often all classifiers agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from omnivae.data.base import MultimodalDataset
from omnivae.metrics.classifiers import (
    ModalityClassifiers,
    balanced_accuracy,
    mean_average_precision,
)
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    mean_by_size,
    progress_bar,
    require_labels,
    seeded,
)
from omnivae.models import MultimodalVAE

__all__ = ["conditional_coherence", "joint_coherence", "subset_targets", "conditioned_rows"]


def subset_targets(subsets: Tensor, include_self: bool = False) -> list[Tensor]:
    """For each modality m, the indices of the subsets that generate it.

    Subsets not containing m, or all subsets when ``include_self`` (self-reconstruction
    counts too). Returns one ``LongTensor`` per modality.
    """
    return [
        torch.arange(subsets.shape[0], device=subsets.device)
        if include_self
        else (~subsets[:, m]).nonzero().squeeze(-1)
        for m in range(subsets.shape[1])
    ]


def conditioned_rows(subsets: Tensor, observed: Tensor) -> Tensor:
    """``BoolTensor[S, B]``: True where every modality of subset s is observed in row b.

    Metrics call ``subset_posteriors`` with every modality marked observed (unobserved
    entries hold zeros), so no subset is ever empty; the posterior of (s, b) depends only on
    the modalities of s, so it is exact wherever this mask is True, and the rest is dropped.
    """
    return ~(subsets.unsqueeze(-1) & ~observed.unsqueeze(0)).any(1)


@torch.no_grad()
def conditional_coherence(
    model: MultimodalVAE,
    data: MultimodalDataset,
    classifiers: ModalityClassifiers,
    *,
    batch_size: int = 256,
    include_self: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    multilabel: bool | None = None,
    progress: bool = False,
) -> dict:
    """Conditional coherence of every subset towards every target modality.

    One encoder pass per batch gives the posteriors of all subsets
    (:meth:`MultimodalVAE.subset_posteriors`, batch shape ``[S, B]``); one sample each is
    decoded, per target only for the subsets that generate it, and classified. Predictions
    are kept (never the generated samples) and scored once at the end. Rows where a subset
    is not fully observed do not count for that subset.

    Args:
        model: The multimodal VAE.
        data: Labelled test split.
        classifiers: One classifier per modality (:func:`get_classifiers`).
        batch_size: Test samples per encoder pass.
        include_self: Also score targets inside the subset (self-reconstruction); then the
            full set is scored too.
        device: Where to compute.
        seed: Seeds the posterior samples.
        multilabel: Score by mean average precision over binary labels; by default
            ``classifiers.multilabel``.
        progress: Show a progress bar (batches, with ETA) on stderr.

    Returns:
        ``{"per_subset": {"m0+m1": {"m2": score, ...}, ...}, "per_subset_mean": {"m0+m1":
        mean over targets}, "by_size": {"1": ..., "2": ...}}``.

    Raises:
        DataError: If ``data`` has no labels.

    References:
        Shi et al., "Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
        Generative Models", NeurIPS 2019. Sutter et al., "Generalized Multimodal ELBO",
        ICLR 2021. Qiu et al., "A Barycentric View of Multimodal VAEs", AAAI 2025, Fig. 3.
    """
    labels = require_labels(data, "coherence").to(device)
    multilabel = classifiers.multilabel if multilabel is None else multilabel
    names = list(model.names)
    subsets, keys = all_subsets(names, device)
    targets = subset_targets(subsets, include_self)
    outputs: list[list[Tensor]] = [[] for _ in names]  # per target: [S_t, B(, L)] per batch
    valid_parts: list[Tensor] = []
    bar = progress_bar(data.num_batches(batch_size), "coherence (conditional)", progress)
    with seeded(seed, device), evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            observed = model.stack_mask(batch.x, batch.mask)
            valid_parts.append(conditioned_rows(subsets, observed))
            z = model.subset_posteriors(batch.x, subsets).sample()  # [S, B, D]
            for m, name in enumerate(names):
                if targets[m].numel() == 0:
                    continue
                generated = model.decode_mean(z[targets[m]], [name])[name]  # [S_t, B, *shape]
                flat = generated.reshape(-1, *generated.shape[2:])
                out = classifiers.scores(name, flat) if multilabel else classifiers.predict(name, flat)
                outputs[m].append(out.reshape(*generated.shape[:2], *out.shape[1:]))
            bar.update()
    valid = torch.cat(valid_parts, 1)  # [S, N]

    per_subset: dict[str, dict[str, float]] = {}
    for m, name in enumerate(names):
        if not outputs[m]:
            continue
        out = torch.cat(outputs[m], 1)  # [S_t, N(, L)]
        for row, s in enumerate(targets[m].tolist()):
            keep = valid[s]
            if not bool(keep.any()):
                continue
            if multilabel:
                score = mean_average_precision(out[row][keep], labels[keep])
            else:
                score = balanced_accuracy(out[row][keep], labels[keep], classifiers.num_classes)
            per_subset.setdefault(keys[s], {})[name] = score
    ordered = {key: per_subset[key] for key in keys if key in per_subset}
    means = {key: sum(scores.values()) / len(scores) for key, scores in ordered.items()}
    return {"per_subset": ordered, "per_subset_mean": means, "by_size": mean_by_size(means)}


@torch.no_grad()
def joint_coherence(
    model: MultimodalVAE,
    classifiers: ModalityClassifiers,
    num_samples: int = 1000,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    latent_sampler: Callable[[int], Tensor] | None = None,
) -> float:
    """The fraction of prior samples whose decoded modalities all get the same class.

    z ~ p(z) is decoded to the mean of every modality and classified; a sample is coherent
    when every classifier predicts the same class (for multi-label classifiers, the same
    vector of labels).

    Args:
        model: The multimodal VAE.
        classifiers: One classifier per modality.
        num_samples: Prior samples (MMVAE and MultiVae use 10,000).
        batch_size: Samples decoded per call.
        device: Where to compute.
        seed: Seeds the prior samples.
        progress: Show a progress bar (batches, with ETA) on stderr.
        latent_sampler: ``count -> z [count, D]`` replacing the prior (a post-hoc
            sampler of :mod:`omnivae.latent_samplers`).

    References:
        Shi et al., NeurIPS 2019, Sec. 4 (joint coherence); Sutter et al., ICLR 2021, Sec. 4
        (random generation coherence).
    """
    agree = torch.zeros((), dtype=torch.long, device=device)
    bar = progress_bar(-(-num_samples // batch_size), "coherence (joint)", progress)
    with seeded(seed, device), evaluating(model), bar:
        for begin in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - begin)
            if latent_sampler is None:
                z = model.prior().sample(torch.Size([count])).to(device)
            else:
                z = latent_sampler(count).to(device)
            generated = model.decode_mean(z)
            preds = torch.stack([classifiers.predict(name, generated[name]).to(device) for name in model.names])
            same = (preds == preds[:1]).reshape(preds.shape[0], count, -1).all(-1).all(0)
            agree += same.sum()
            bar.update()
    return float(agree) / max(num_samples, 1)
