"""Post-hoc latent samplers: a density fitted to the aggregated posterior, for joint generation.

A VAE's prior p(z) and its aggregated posterior q(z) = E_x q(z | x) rarely match; decoding
prior samples from the "holes" between the posteriors gives incoherent joint samples.
Fitting a density to samples (or means) of q(z | X) over the training set after training,
and sampling it in place of the prior, is the ex-post density estimation of Ghosh et al.
(2020, Sec. 4: a Gaussian mixture) and MultiVae's GMM and MAF samplers. Two are offered:

- ``gmm``: scikit-learn's ``GaussianMixture`` (EM, full covariances), sampled in torch.
- ``maf``: a masked autoregressive flow (Papamakarios et al. 2017) from zuko, trained by
  maximum likelihood with Adam on the standardised latents.

A fitted sampler is stored in the run folder as one safetensors file (tensors plus JSON
metadata; no pickle), written atomically, and refitted when the model or the fitting
settings change (:func:`run_latent_sampler`).

References:
    Ghosh et al. (2020). From Variational to Deterministic Autoencoders. ICLR, Sec. 4.
    Papamakarios, Pavlakou & Murray (2017). Masked Autoregressive Flow for Density
    Estimation. NeurIPS.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, MultivariateNormal

from omnivae.data.base import MultimodalDataset
from omnivae.errors import RunDirError, UserError, unknown_name
from omnivae.fileio import atomic_write_bytes

__all__ = [
    "SAMPLERS",
    "FitSettings",
    "GMMSampler",
    "MAFSampler",
    "fit_latent_sampler",
    "save_latent_sampler",
    "load_latent_sampler",
    "aggregated_posterior",
    "run_latent_sampler",
    "sampler_path",
]

#: Names accepted by ``omnivae sample --sampler`` and ``evaluate --sampler``.
SAMPLERS = ("prior", "gmm", "maf")
_FORMAT = "omnivae-latent-sampler/1"


class LatentSampler(Protocol):
    kind: str

    def sample(self, count: int) -> Tensor: ...

    def log_prob(self, z: Tensor) -> Tensor: ...

    def tensors(self) -> dict[str, Tensor]: ...

    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FitSettings:
    """How a post-hoc sampler is fitted; a cached sampler is reused only with equal settings.

    Attributes:
        components: Mixture components of ``gmm``.
        transforms: Autoregressive transforms of ``maf``.
        hidden: Width of the two hidden layers of each ``maf`` transform.
        steps: Adam steps of ``maf`` (batches of 256).
        learning_rate: Adam's learning rate for ``maf``.
        num_rows: Training rows encoded (drawn without replacement with ``seed``).
        source: ``"sample"`` (one draw of q(z | X) per row: the aggregated posterior itself)
            or ``"mean"`` (its means).
        seed: Seeds the rows, the posterior draws and the fit.
    """

    components: int = 10
    transforms: int = 3
    hidden: int = 64
    steps: int = 2000
    learning_rate: float = 1e-3
    num_rows: int = 10000
    source: str = "sample"
    seed: int = 0

    def validate(self) -> None:
        for key in ("components", "transforms", "hidden", "steps", "num_rows"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(self, key)}", parameter=key)
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}", parameter="learning_rate")
        if self.source not in ("sample", "mean"):
            raise unknown_name("latent source", self.source, ("sample", "mean"))


# -- the two samplers -----------------------------------------------------------------------
class GMMSampler:
    """A Gaussian mixture with full covariances, ``sum_k w_k N(mu_k, C_k)`` (float64)."""

    kind = "gmm"

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        self.weights = weights.to(torch.float64)
        self.means = means.to(torch.float64)
        self.covariances = covariances.to(torch.float64)

    @classmethod
    def fit(cls, z: Tensor, components: int = 10, seed: int = 0) -> GMMSampler:
        """EM of scikit-learn's ``GaussianMixture`` (k-means start, full covariances)."""
        from sklearn.mixture import GaussianMixture

        if z.shape[0] < components:
            raise UserError(f"a mixture of {components} components needs at least that many rows, "
                            f"got {z.shape[0]}", parameter="components")
        mixture = GaussianMixture(n_components=components, covariance_type="full", random_state=seed,
                                  reg_covar=1e-6, max_iter=200)
        mixture.fit(z.detach().cpu().to(torch.float64).numpy())
        return cls(torch.from_numpy(mixture.weights_), torch.from_numpy(mixture.means_),
                   torch.from_numpy(mixture.covariances_))

    def distribution(self) -> Distribution:
        return MixtureSameFamily(Categorical(probs=self.weights),
                                 MultivariateNormal(self.means, covariance_matrix=self.covariances))

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        return self.distribution().sample(torch.Size([count]))

    @torch.no_grad()
    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z.to(torch.float64))

    def tensors(self) -> dict[str, Tensor]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}

    def config(self) -> dict[str, Any]:
        return {"components": int(self.weights.shape[0]), "features": int(self.means.shape[1])}

    @classmethod
    def restore(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> GMMSampler:
        return cls(tensors["weights"], tensors["means"], tensors["covariances"])


class MAFSampler:
    """A zuko masked autoregressive flow on standardised latents: z = loc + scale * u, u ~ MAF."""

    kind = "maf"

    def __init__(self, features: int, transforms: int = 3, hidden: int = 64,
                 loc: Tensor | None = None, scale: Tensor | None = None) -> None:
        import zuko

        self.flow = zuko.flows.MAF(features=features, transforms=transforms, hidden_features=(hidden, hidden))
        self.flow.eval()
        self.features, self.transforms, self.hidden = features, transforms, hidden
        self.loc = torch.zeros(features) if loc is None else loc.to(torch.float32)
        self.scale = torch.ones(features) if scale is None else scale.to(torch.float32)

    @classmethod
    def fit(cls, z: Tensor, transforms: int = 3, hidden: int = 64, steps: int = 2000, seed: int = 0,
            batch_size: int = 256, lr: float = 1e-3) -> MAFSampler:
        """Maximum likelihood with Adam on minibatches drawn with replacement (seeded)."""
        data = z.detach().cpu().to(torch.float32)
        if data.shape[0] < 2:
            raise UserError(f"a flow needs at least two rows to fit, got {data.shape[0]}", parameter="num_rows")
        loc, scale = data.mean(0), data.std(0).clamp_min(1e-6)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sampler = cls(data.shape[1], transforms, hidden, loc, scale)
        standard = (data - loc) / scale
        optimizer = torch.optim.Adam(sampler.flow.parameters(), lr=lr)
        sampler.flow.train()
        for _ in range(steps):
            rows = torch.randint(0, standard.shape[0], (min(batch_size, standard.shape[0]),), generator=generator)
            loss = -sampler.flow().log_prob(standard[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sampler.flow.eval()
        return sampler

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        return self.loc + self.scale * self.flow().sample(torch.Size([count]))

    @torch.no_grad()
    def log_prob(self, z: Tensor) -> Tensor:
        u = (z.to(torch.float32) - self.loc) / self.scale
        return self.flow().log_prob(u) - self.scale.log().sum()

    def tensors(self) -> dict[str, Tensor]:
        state = {f"flow.{k}": v for k, v in self.flow.state_dict().items()}
        return {**state, "loc": self.loc, "scale": self.scale}

    def config(self) -> dict[str, Any]:
        return {"features": self.features, "transforms": self.transforms, "hidden": self.hidden}

    @classmethod
    def restore(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> MAFSampler:
        sampler = cls(int(config["features"]), int(config["transforms"]), int(config["hidden"]),
                      tensors["loc"], tensors["scale"])
        state = {k[len("flow."):]: v for k, v in tensors.items() if k.startswith("flow.")}
        sampler.flow.load_state_dict(state, strict=True)
        return sampler


_KINDS: dict[str, Any] = {"gmm": GMMSampler, "maf": MAFSampler}


def fit_latent_sampler(kind: str, z: Tensor, settings: FitSettings | None = None) -> LatentSampler:
    """Fit a ``gmm`` or ``maf`` sampler to latents ``z [N, D]``.

    Example:
        >>> z = torch.randn(500, 2)
        >>> fit_latent_sampler("gmm", z, FitSettings(components=2)).sample(3).shape
        torch.Size([3, 2])
    """
    settings = settings or FitSettings()
    settings.validate()
    if kind not in _KINDS:
        raise unknown_name("latent sampler", kind, tuple(_KINDS))
    if z.dim() != 2 or not bool(torch.isfinite(z).all()):
        raise UserError(f"latents to fit must be finite and of shape [N, D], got {tuple(z.shape)}", parameter="z")
    if kind == "gmm":
        return GMMSampler.fit(z, settings.components, settings.seed)
    return MAFSampler.fit(z, settings.transforms, settings.hidden, settings.steps, settings.seed,
                          lr=settings.learning_rate)


# -- storage ----------------------------------------------------------------------------------
def save_latent_sampler(sampler: LatentSampler, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the sampler as safetensors (tensors, and its kind and config as JSON metadata),
    atomically: a reader sees the old file or the new one, never half of one."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in sampler.tensors().items()}
    metadata = {"format": _FORMAT, "kind": sampler.kind, "config": json.dumps(sampler.config()),
                "extra": json.dumps(extra or {})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_latent_sampler(path: str | Path) -> tuple[LatentSampler, dict[str, Any]]:
    """The sampler stored at ``path`` and the ``extra`` metadata saved with it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != _FORMAT or metadata.get("kind") not in _KINDS:
            raise ValueError(f"not an omnivae latent sampler (format {metadata.get('format')!r})")
        sampler = _KINDS[metadata["kind"]].restore(tensors, json.loads(metadata["config"]))
        return sampler, json.loads(metadata.get("extra") or "{}")
    except Exception as error:
        raise RunDirError(f"{path} is not a readable latent sampler ({error}); delete it to refit") from None


# -- fitting on a run -----------------------------------------------------------------------------
@torch.no_grad()
def aggregated_posterior(model: Any, data: MultimodalDataset, settings: FitSettings,
                         batch_size: int = 256) -> Tensor:
    """Latents of the joint posterior q(z | X) of ``settings.num_rows`` training rows ``[N, D]``:
    one draw each (``source="sample"``) or the means."""
    from omnivae.metrics.common import eval_batches, evaluating, seeded

    rows = data
    if settings.num_rows < len(data):
        generator = torch.Generator().manual_seed(settings.seed)
        rows = data.subset(torch.randperm(len(data), generator=generator)[: settings.num_rows].sort().values)
    out = []
    with seeded(settings.seed, model.device), evaluating(model):
        for batch in eval_batches(rows, batch_size, model.device):
            posterior = model.encode(batch.x, batch.mask)
            z = posterior.mean if settings.source == "mean" else posterior.sample()
            out.append(z.reshape(z.shape[0], -1).cpu())
    return torch.cat(out)


def sampler_path(run_dir: str | Path, kind: str) -> Path:
    """Where a run keeps its fitted ``kind`` sampler."""
    return Path(run_dir) / f"latent_sampler_{kind}.safetensors"


def _model_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_latent_sampler(
    run: Any,
    run_dir: str | Path,
    kind: str,
    train: MultimodalDataset | None = None,
    settings: FitSettings | None = None,
    *,
    refit: bool = False,
    data_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Callable[[int], Tensor] | None:
    """``count -> z [count, D]`` for joint generation from a run; None for ``"prior"``.

    A sampler stored in the run with the same model parameters and ``settings`` is reused;
    otherwise it is fitted on the training split (``train``; loaded from the run's dataset
    when None, from ``data_dir`` if given) and stored (:func:`sampler_path`).

    Raises:
        UserError: for an unknown ``kind``, or a model whose posterior and prior latents differ
            in size (the sampler replaces the prior).
    """
    if kind not in SAMPLERS:
        raise unknown_name("sampler", kind, SAMPLERS)
    if kind == "prior":
        return None
    settings = settings or FitSettings()
    settings.validate()
    model = run.model
    prior_shape = tuple(model.prior().sample(torch.Size([1])).shape[1:])
    if len(prior_shape) != 1:
        raise UserError(f"the {kind} sampler needs a flat latent, and this model's prior has shape {prior_shape}",
                        parameter="kind")
    path = sampler_path(run_dir, kind)
    wanted = {"model sha256": _model_digest(model), "settings": asdict(settings)}
    sampler: LatentSampler | None = None
    if path.exists() and not refit:
        cached, extra = load_latent_sampler(path)
        if extra.get("model sha256") == wanted["model sha256"] and extra.get("settings") == wanted["settings"]:
            sampler = cached
    if sampler is None:
        if train is None:
            from omnivae.data import load_dataset

            train = load_dataset(run.dataset_name, data_dir=data_dir or run.data_dir).train
        z = aggregated_posterior(model, train, settings)
        if z.shape[1:] != prior_shape:
            raise UserError(f"the {kind} sampler replaces the prior, but this model's posterior latents have "
                            f"shape {tuple(z.shape[1:])} and its prior {prior_shape}", parameter="kind")
        sampler = fit_latent_sampler(kind, z, settings)
        average = float(sampler.log_prob(z).mean())
        extra = {**wanted, "rows": int(z.shape[0]),
                 "train log-likelihood per row": average if math.isfinite(average) else None}
        try:
            save_latent_sampler(sampler, path, extra)
            where = f"stored in {path}"
        except OSError as error:  # a read-only run: the sampler still serves this call
            where = f"not stored ({error.strerror or error}), so it is fitted again next time"
        if log is not None:
            log(f"fitted the {kind} sampler on {z.shape[0]} training latents ({settings.source}s of q(z|X)); {where}")
    device, dtype = model.device, model.likelihood_weights.dtype
    fitted = sampler

    def draw(count: int) -> Tensor:
        return fitted.sample(count).to(device, dtype)

    return draw


def mixture_log_likelihood(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, z: np.ndarray) -> float:
    """Mean log-density of ``z`` under a known Gaussian mixture (for tests and checks)."""
    mixture = GMMSampler(torch.from_numpy(weights), torch.from_numpy(means), torch.from_numpy(covariances))
    return float(mixture.log_prob(torch.from_numpy(z)).mean())
