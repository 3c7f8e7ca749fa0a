"""Small builders shared by the model, objective, training and command-line tests.

Everything here is tiny on purpose: three modalities of different kinds (a uint8 image,
a real vector, a binary vector), a 4-dimensional latent space and one hidden layer of
16 units, so a training step costs milliseconds on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.models import ModelConfig

LATENT = 4
HIDDEN = [16]

MODALITIES: tuple[ModalitySpec, ...] = (
    ModalitySpec("img", (3, 28, 28), "image"),
    ModalitySpec("vec", (6,), "vector"),
    ModalitySpec("bits", (5,), "binary"),
)
NAMES = [m.name for m in MODALITIES]

# Three real vectors and five rows: the float64 hand-computation tests of the methods.
VECTORS: tuple[ModalitySpec, ...] = (
    ModalitySpec("a", (3,), "vector"),
    ModalitySpec("b", (4,), "vector"),
    ModalitySpec("c", (2,), "vector"),
)
VECTOR_ROWS = 5


def tiny_config(model: str = "mwb", **overrides) -> ModelConfig:
    """A ModelConfig for the tiny MLP networks; ``overrides`` set any other field."""
    options = {"model": model, "latent_dim": LATENT, "hidden": list(HIDDEN), "backbone": "mlp"}
    options.update(overrides)
    return ModelConfig(**options)


def tiny_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw arrays in the dataset's storage dtypes: uint8 image, float32 vector, bool bits.

    The modalities share a label-dependent signal so that a model has something to learn.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    img = rng.integers(0, 256, size=(n, 3, 28, 28)).astype(np.uint8)
    img[:, labels % 3, :8, :8] = 255  # label-dependent corner
    vec = (rng.normal(size=(n, 6)) + labels[:, None]).astype(np.float32)
    bits = rng.random((n, 5)) < (0.2 + 0.3 * labels[:, None])
    return {"img": img, "vec": vec, "bits": bits, "labels": labels.astype(np.int64)}


def tiny_dataset(n: int = 48, seed: int = 0, observed: float = 1.0) -> MultimodalDataset:
    """A MultimodalDataset of ``n`` samples; with ``observed < 1`` some modalities are masked.

    Masked rows are drawn per modality with probability ``1 - observed``; a row that would
    lose every modality keeps ``vec``.
    """
    arrays = tiny_arrays(n, seed)
    data = {
        "img": torch.from_numpy(arrays["img"]),
        "vec": torch.from_numpy(arrays["vec"]),
        "bits": torch.from_numpy(arrays["bits"]),
    }
    masks = {}
    if observed < 1.0:
        gen = torch.Generator().manual_seed(seed + 1)
        stacked = torch.rand(len(NAMES), n, generator=gen) < observed
        stacked[1] |= ~stacked.any(0)
        masks = {name: stacked[i].clone() for i, name in enumerate(NAMES)}
        for name in NAMES:  # unobserved rows hold zeros, as the data layer guarantees
            data[name][~masks[name]] = 0
    return MultimodalDataset(
        modalities=MODALITIES,
        data=data,
        masks=masks,
        labels=torch.from_numpy(arrays["labels"]),
        label_names=["a", "b", "c"],
        name="tiny",
    )


def tiny_splits(n_train: int = 48, n_test: int = 16, seed: int = 0, observed: float = 1.0) -> DatasetSplits:
    return DatasetSplits(
        tiny_dataset(n_train, seed, observed), tiny_dataset(n_test, seed + 100, observed)
    )


def tiny_batch(batch: int = 8, seed: int = 0) -> dict[str, Tensor]:
    """A float batch as models receive it: images in [0, 1], bits as 0/1 floats."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "img": torch.rand(batch, 3, 28, 28, generator=gen),
        "vec": torch.randn(batch, 6, generator=gen),
        "bits": (torch.rand(batch, 5, generator=gen) < 0.5).float(),
    }


def write_tiny_npz(path: Path, n: int = 40, seed: int = 0, **extra: np.ndarray) -> Path:
    """An ``.npz`` file in the user-array layout; ``extra`` adds or replaces arrays."""
    arrays = tiny_arrays(n, seed)
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def vector_batch(seed: int = 0, modalities: tuple[ModalitySpec, ...] = VECTORS,
                 rows: int = VECTOR_ROWS) -> dict[str, Tensor]:
    """Standard-normal float64 values for each vector modality."""
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(rows, *m.shape, generator=gen, dtype=torch.float64) for m in modalities}


def partial_mask() -> Tensor:
    """A mask over VECTORS' 5 rows: rows 0, 2, 4 observe everything; row 1 misses ``a``;
    row 3 observes only ``a``."""
    mask = torch.ones(len(VECTORS), VECTOR_ROWS, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, 3] = mask[2, 3] = False
    return mask


def gaussian_log_prob(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(x; loc, diag(scale^2)), summed over the last dimension, written out by hand."""
    return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
