"""Frechet distance between real and generated samples in a feature space.

The Frechet distance of two sets of features is the 2-Wasserstein distance between the
Gaussians with their means and covariances (Heusel et al. 2017, the FID):

    FD = ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^(1/2) C2 C1^(1/2))^(1/2)).

Only the first two moments are needed, so :class:`RunningMoments` accumulates sums and
sums of outer products batch by batch and generated sets are never held in memory. The
default feature space is the penultimate layer (128 units) of the per-modality
classifiers of :mod:`omnivae.metrics.classifiers`; :func:`load_inception_features` plugs
in an InceptionV3 the user supplies (as the MoPoE and MMVAE+ evaluations use), never
downloading anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import UserError
from omnivae.functional import psd_sqrt
from omnivae.metrics.classifiers import ModalityClassifiers
from omnivae.metrics.coherence import conditioned_rows, subset_targets
from omnivae.metrics.common import (
    all_subsets,
    eval_batches,
    evaluating,
    mean_by_size,
    progress_bar,
    seeded,
)
from omnivae.models import MultimodalVAE

__all__ = ["frechet_distance", "RunningMoments", "generation_frechet", "load_inception_features", "image_features"]

#: ``(target modality, samples [N, *shape]) -> features [N, F]``.
FeatureFn = Callable[[str, Tensor], Tensor]


def frechet_distance(
    mu1: Tensor | np.ndarray, cov1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, cov2: Tensor | np.ndarray
) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), in float64.

    ``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^(1/2) C2 C1^(1/2))^(1/2))``; the last
    trace is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    C1^(1/2) C2 C1^(1/2), which avoids the non-symmetric ``sqrtm(C1 C2)`` of the usual
    implementation. Rounding below zero is clipped.

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
        Nash Equilibrium", NeurIPS 2017, Eq. 6 (the FID).

    Example:
        >>> frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))
        4.0
    """
    m1, c1, m2, c2 = (torch.as_tensor(v).to(torch.float64) for v in (mu1, cov1, mu2, cov2))
    c1 = 0.5 * (c1 + c1.transpose(-1, -2))
    c2 = 0.5 * (c2 + c2.transpose(-1, -2))
    root1 = psd_sqrt(c1)
    middle = root1 @ c2 @ root1
    middle = 0.5 * (middle + middle.transpose(-1, -2))
    cross = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum(-1)
    traces = c1.diagonal(dim1=-2, dim2=-1).sum(-1) + c2.diagonal(dim1=-2, dim2=-1).sum(-1)
    distance = (m1 - m2).pow(2).sum(-1) + traces - 2 * cross
    return max(float(distance), 0.0)


class RunningMoments:
    """Mean and covariance of feature batches, accumulated without keeping the features.

    Holds the count, the sum and the sum of outer products (float64, on the features'
    device), all shifted by the first batch's mean so that large offsets do not cancel
    catastrophically. Leading axes of the features are kept as independent sets: features
    ``[*K, N, F]`` update ``K`` sets at once.

    Example:
        >>> moments = RunningMoments()
        >>> moments.update(torch.tensor([[0.0], [2.0]])); moments.update(torch.tensor([[4.0]]))
        >>> moments.mean, moments.covariance
        (tensor([2.], dtype=torch.float64), tensor([[4.]], dtype=torch.float64))
    """

    def __init__(self) -> None:
        self.count: Tensor | None = None
        self.shift: Tensor | None = None
        self.total: Tensor | None = None
        self.outer: Tensor | None = None

    def update(self, features: Tensor, mask: Tensor | None = None) -> None:
        """Add features ``[*K, N, F]``; ``mask [*K, N]`` (optional) keeps only True rows."""
        x = features.detach().to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(-2) if x.shape[-2] else torch.zeros_like(x[..., 0, :])
            self.count = torch.zeros(x.shape[:-2], dtype=torch.float64, device=x.device)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(*x.shape[:-2], x.shape[-1], x.shape[-1], dtype=torch.float64, device=x.device)
        shift, count, total, outer = self._moments()
        x = x - shift.unsqueeze(-2)
        if mask is None:
            weighted = x
            count += x.shape[-2]
        else:
            weights = mask.to(x.device, torch.float64).unsqueeze(-1)
            weighted = x * weights
            count += weights.sum((-2, -1))
        total += weighted.sum(-2)
        outer += weighted.transpose(-1, -2) @ x

    def _moments(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(shift, count, total, outer)``, updated in place by :meth:`update`."""
        if self.shift is None or self.count is None or self.total is None or self.outer is None:
            raise ValueError("RunningMoments has seen no features")
        return self.shift, self.count, self.total, self.outer

    @property
    def mean(self) -> Tensor:
        """The mean ``[*K, F]``."""
        shift, count, total, _ = self._moments()
        return shift + total / count.unsqueeze(-1)

    @property
    def covariance(self) -> Tensor:
        """The unbiased covariance ``[*K, F, F]`` (``numpy.cov`` with ``ddof=1``)."""
        _, counts, total, outer = self._moments()
        centred = total / counts.unsqueeze(-1)
        count = counts[..., None, None]
        return (outer - count * centred.unsqueeze(-1) * centred.unsqueeze(-2)) / (count - 1)


def _classifier_features(classifiers: ModalityClassifiers) -> FeatureFn:
    return lambda name, x: classifiers.features(name, x)


def image_features(
    images: Callable[[Tensor], Tensor], classifiers: ModalityClassifiers, modalities: Sequence[ModalitySpec]
) -> FeatureFn:
    """The ``feature_fn`` of :func:`generation_frechet` that scores image modalities with
    ``images`` (e.g. :func:`load_inception_features`, FID proper) and every other modality
    with the classifiers' features, since an image network cannot read vectors or text."""
    kinds = {spec.name: spec.kind for spec in modalities}
    others = _classifier_features(classifiers)
    return lambda name, x: images(x) if kinds[name] == "image" else others(name, x)


@torch.no_grad()
def generation_frechet(
    model: MultimodalVAE,
    data: MultimodalDataset,
    classifiers: ModalityClassifiers | None,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    feature_fn: FeatureFn | None = None,
    targets: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Frechet distances between the test set and unconditional or conditional samples.

    Per target modality m, in m's feature space: the real test samples (rows where m is
    observed) against (a) as many decoded prior samples as there are test samples and
    (b) for every subset S not containing m, one decoded sample of q(z | x_S) per test
    sample whose S is observed. One encoder pass per batch serves every subset (batch
    shape ``[S, B]``), and every set is reduced to running moments on the fly.

    Memory: one ``F x F`` float64 matrix per (subset, target) pair; with 2048-d Inception
    features and 5 modalities that is 75 x 32 MiB, so restrict ``targets`` if needed.

    Args:
        model: The multimodal VAE.
        data: Test split (labels are not needed).
        classifiers: Supplies the default features (penultimate layer); may be ``None``
            when ``feature_fn`` is given.
        batch_size: Test samples per encoder pass.
        device: Where to compute.
        seed: Seeds prior and posterior samples.
        feature_fn: ``(target name, samples [N, *shape]) -> [N, F]`` replacing the
            classifier features, e.g. ``lambda name, x: inception(x)`` with
            :func:`load_inception_features`.
        targets: Target modalities to score (all by default).
        progress: Show a progress bar (batches, with ETA) on stderr.

    Returns:
        ``{"unconditional": {target: fd}, "conditional": {"m0+m1": {"m2": fd}},
        "conditional_by_size": {"1": ..., ...}}``, the last averaging over targets per
        subset, then by subset size (Qiu et al. 2025, Fig. 3).

    References:
        Heusel et al., NeurIPS 2017 (FID). Sutter et al., ICLR 2021, Sec. 4 (FID of
        random and conditional generations per subset). Shi et al., NeurIPS 2019.
    """
    if feature_fn is None:
        if classifiers is None:
            raise UserError("generation_frechet needs classifiers or a feature_fn for its feature space")
        feature_fn = _classifier_features(classifiers)
    names = list(model.names)
    chosen = names if targets is None else list(targets)
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise UserError(f"unknown target modalities {unknown}; the model has {names}")
    subsets, keys = all_subsets(names, device)
    generators = subset_targets(subsets)
    real = {t: RunningMoments() for t in chosen}
    prior = {t: RunningMoments() for t in chosen}
    conditional = {t: RunningMoments() for t in chosen if generators[names.index(t)].numel()}

    def features(name: str, samples: Tensor) -> Tensor:
        """Features of samples ``[*L, N, *shape]`` as ``[*L, N, F]``."""
        lead = samples.shape[: samples.dim() - len(model.modalities[names.index(name)].shape)]
        out = feature_fn(name, samples.reshape(-1, *samples.shape[len(lead) :]))
        return out.reshape(*lead, out.shape[-1])

    bar = progress_bar(data.num_batches(batch_size), "fd", progress)
    with seeded(seed, device), evaluating(model), bar:
        for batch in eval_batches(data, batch_size, device):
            observed = model.stack_mask(batch.x, batch.mask)
            valid = conditioned_rows(subsets, observed)
            count = len(batch)
            z = model.subset_posteriors(batch.x, subsets).sample()  # [S, B, D]
            z_prior = model.prior().sample(torch.Size([count])).to(z.device)
            unconditional = model.decode_mean(z_prior, chosen)
            for name in chosen:
                m = names.index(name)
                real[name].update(features(name, batch.x[name]), observed[m])
                prior[name].update(features(name, unconditional[name]))
                if name in conditional:
                    rows = generators[m]
                    generated = model.decode_mean(z[rows], [name])[name]
                    conditional[name].update(features(name, generated), valid[rows])
            bar.update()

    result: dict = {"unconditional": {}, "conditional": {}}
    for name in chosen:
        seen = real[name].count
        if seen is None or float(seen) < 2:
            continue
        mu, cov = real[name].mean, real[name].covariance
        result["unconditional"][name] = frechet_distance(mu, cov, prior[name].mean, prior[name].covariance)
        if name not in conditional:
            continue
        moments = conditional[name]
        gen_mu, gen_cov = moments.mean, moments.covariance
        for row, s in enumerate(generators[names.index(name)].tolist()):
            if moments.count is None or float(moments.count[row]) < 2:
                continue
            distance = frechet_distance(mu, cov, gen_mu[row], gen_cov[row])
            result["conditional"].setdefault(keys[s], {})[name] = distance
    ordered = {key: result["conditional"][key] for key in keys if key in result["conditional"]}
    result["conditional"] = ordered
    means = {key: sum(v.values()) / len(v) for key, v in ordered.items()}
    result["conditional_by_size"] = mean_by_size(means)
    return result


def load_inception_features(
    path: str,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    normalize: bool = True,
) -> Callable[[Tensor], Tensor]:
    """A feature function from an InceptionV3 file the user supplies; nothing is downloaded.

    The file is either a TorchScript module (loaded with ``torch.jit.load``; it is the
    user's own file, e.g. an export of pytorch-fid's FID Inception returning 2048-d pool
    features) or a safetensors state dict for ``torchvision.models.inception_v3`` (needs
    torchvision; its pool features approximate, but do not equal, the TF FID network).
    Images ``[N, C, H, W]`` in [0, 1] are resized bilinearly to 299x299, gray is repeated to
    three channels, and with ``normalize`` the values are scaled to [-1, 1] as pytorch-fid
    does. Features come back flattened to ``[N, F]``, computed ``batch_size`` at a time.

    Args:
        path: The TorchScript (``.pt``, ``.pth``) or ``.safetensors`` file.
        device: Where the network runs.
        batch_size: Images per forward pass.
        normalize: Map [0, 1] inputs to [-1, 1].

    Raises:
        UserError: If the file is missing or cannot be loaded.

    References:
        Heusel et al., NeurIPS 2017; Szegedy et al., "Rethinking the Inception
        Architecture for Computer Vision", CVPR 2016.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"Inception weights file {str(file)!r} not found; omnivae never downloads weights: "
            "pass a TorchScript or safetensors InceptionV3 file you have, or use the classifier features"
        )
    network = _load_inception(file).to(device).eval()

    @torch.no_grad()
    def features(images: Tensor) -> Tensor:
        outputs = []
        for begin in range(0, images.shape[0], batch_size):
            x = images[begin : begin + batch_size].to(device, torch.float32)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            if normalize:
                x = 2 * x - 1
            out = network(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            outputs.append(out.reshape(out.shape[0], -1))
        return torch.cat(outputs)

    return features


def _load_inception(file: Path) -> nn.Module:
    """The network in ``file``: a safetensors state dict, or else a TorchScript module."""
    if file.suffix == ".safetensors":
        try:
            from torchvision.models import inception_v3
        except ImportError as error:
            raise UserError(
                f"loading the Inception state dict {file} needs torchvision; "
                "install it, or pass a TorchScript file"
            ) from error
        from safetensors.torch import load_file

        network = inception_v3(weights=None, aux_logits=False, init_weights=False)
        try:
            missing, _ = network.load_state_dict(load_file(str(file)), strict=False)
        except Exception as error:
            raise UserError(f"{file} is not an InceptionV3 state dict: {error}") from error
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise UserError(f"{file} lacks InceptionV3 weights such as {missing[:3]}")
        network.fc = nn.Identity()
        return network
    try:
        return torch.jit.load(str(file), map_location="cpu")
    except Exception as error:
        raise UserError(
            f"{file} is not a TorchScript module ({error}); export one with torch.jit.script or trace"
        ) from error
