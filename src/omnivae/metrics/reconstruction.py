"""Reconstruction error: each modality decoded from itself, from the others, and from all.

MultiVae's ``Reconstruction`` metric with the MSE option (peer protocols,
"Reconstruction"): a modality is decoded from the mean of an inference posterior and
compared with the data. Three conditioning sets per modality m separate how well a
model reconstructs (self), translates (cross) and fuses (joint), the axes along which
Qiu et al. (2025, Sec. 5) compare aggregators.

References:
    Qiu et al. (2025). Multimodal Variational Autoencoder: a Barycentric View. AAAI.
    Sutter, Daunhawer & Vogt (2021). Generalized Multimodal ELBO. ICLR.
"""

from __future__ import annotations

import torch

from omnivae.data.base import MultimodalDataset
from omnivae.metrics.common import eval_batches, evaluating, progress_bar, subset_inference
from omnivae.models import MultimodalVAE

__all__ = ["reconstruction_error"]


def reconstruction_error(
    model: MultimodalVAE,
    data: MultimodalDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """Mean squared error of x_m against the decoded posterior mean, per modality m.

    For each modality m, z is the mean of the inference posterior given

    - ``"self"``: {m} alone;
    - ``"cross"``: every modality but m (only when there are at least two);
    - ``"joint"``: every modality;

    and the error is the squared difference between x_m and the mean of p(x_m | z),
    averaged over the elements of a sample, then over samples. One encoder pass and one
    decoder call per modality serve all three. On partially observed data a row counts
    for (m, set) only when x_m and all of the set are observed; a pair with no such row is
    left out.

    Args:
        model: A trained model; its device must be ``device``.
        data: The split to reconstruct.
        batch_size: Rows per pass.
        device: Where batches are sent.
        progress: Show a progress bar (batches, with ETA) on stderr.

    Returns:
        ``{"self": {m: mse}, "cross": {m: mse}, "joint": {m: mse}}``; ``"cross"`` is empty
        for a single modality.

    Example:
        >>> reconstruction_error(model, splits.test)["cross"]["m0"]  # doctest: +SKIP
        0.031
    """
    names = model.names
    count = len(names)
    eye = torch.eye(count, dtype=torch.bool, device=model.device)
    kinds = ["self", "cross", "joint"] if count > 1 else ["self", "joint"]
    tables = [eye, ~eye] if count > 1 else [eye]
    tables.append(torch.ones(1, count, dtype=torch.bool, device=model.device))
    subsets = torch.cat(tables)  # singletons, leave-one-out sets, the full set
    full = subsets.shape[0] - 1
    rows_of = [[i, count + i, full] if count > 1 else [i, full] for i in range(count)]

    sums = torch.zeros(count, len(kinds), dtype=torch.float64, device=device)
    counts = torch.zeros(count, len(kinds), dtype=torch.float64, device=device)
    bar = progress_bar(data.num_batches(batch_size), "recon", progress)
    with torch.no_grad(), evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            posterior, valid, observed, x = subset_inference(model, batch, subsets)
            means = posterior.mean  # [S, B, D]
            for index, name in enumerate(names):
                rows = rows_of[index]
                decoded = model.decode_mean(means[rows], [name])[name]  # [R, B, *shape]
                error = (decoded - x[name]).pow(2).flatten(2).mean(-1)  # [R, B]
                keep = valid[rows] & observed[index]
                sums[index] += torch.where(keep, error, error.new_zeros(())).sum(-1).double()
                counts[index] += keep.sum(-1)
            bar.update()
    means_out = (sums / counts.clamp_min(1)).tolist()
    present = (counts > 0).tolist()
    result: dict[str, dict[str, float]] = {"self": {}, "cross": {}, "joint": {}}
    for index, name in enumerate(names):
        for column, kind in enumerate(kinds):
            if present[index][column]:
                result[kind][name] = means_out[index][column]
    return result
