"""The dataset contract: modalities as ``dict[str, Tensor]`` held in memory, with masks.

A multimodal sample is one tensor per modality (in the dataset's fixed order), a mask
saying which modalities are observed, and an optional integer label. Everything lives in
memory as tensors; a batch is a gather on the permuted index, with no per-item Python work.
Images are stored as ``uint8`` and turned into floats in [0, 1] only for the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from omnivae.errors import DataError

ModalityKind = Literal["image", "vector", "binary", "categorical"]


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality is: its name, per-sample shape and kind.

    Kinds: ``image`` (values in [0, 1], stored as uint8), ``vector`` (real values),
    ``binary`` (values in {0, 1}) and ``categorical`` (one-hot along the last axis).
    The kind picks the default backbone and likelihood.
    """

    name: str
    shape: tuple[int, ...]
    kind: ModalityKind = "vector"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind}

    @classmethod
    def from_json(cls, obj: dict) -> "ModalitySpec":
        return cls(name=obj["name"], shape=tuple(obj["shape"]), kind=obj["kind"])


@dataclass
class Batch:
    """A batch: ``x[name]`` is ``[B, *shape]`` float, ``mask[name]`` is ``BoolTensor[B]``."""

    x: dict[str, Tensor]
    mask: dict[str, Tensor]
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            {k: v.to(device, non_blocking=True) for k, v in self.x.items()},
            {k: v.to(device, non_blocking=True) for k, v in self.mask.items()},
            None if self.labels is None else self.labels.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return next(iter(self.x.values())).shape[0]


@dataclass
class MultimodalDataset:
    """Paired modalities in memory, with per-sample observation masks and optional labels."""

    modalities: tuple[ModalitySpec, ...]
    data: dict[str, Tensor]
    masks: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    label_names: list[str] | None = None
    name: str = "dataset"

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names:
            raise DataError(f"{self.name}: a dataset needs at least one modality")
        missing = [n for n in names if n not in self.data]
        if missing:
            raise DataError(f"{self.name}: no data for modalities {missing}")
        n = self.data[names[0]].shape[0]
        if n == 0:
            raise DataError(f"{self.name}: the dataset is empty (0 samples)")
        for spec in self.modalities:
            array = self.data[spec.name]
            if array.shape[0] != n:
                raise DataError(
                    f"{self.name}: modality {spec.name!r} has {array.shape[0]} samples but "
                    f"{names[0]!r} has {n}; every modality needs one row per sample"
                )
            if tuple(array.shape[1:]) != tuple(spec.shape):
                raise DataError(
                    f"{self.name}: modality {spec.name!r} has per-sample shape "
                    f"{tuple(array.shape[1:])}, expected {tuple(spec.shape)}"
                )
        device = self.data[names[0]].device
        unknown = [k for k in self.masks if k not in names]
        if unknown:
            raise DataError(f"{self.name}: masks given for unknown modalities {unknown}; modalities are {names}")
        for spec in self.modalities:
            self.masks.setdefault(spec.name, torch.ones(n, dtype=torch.bool, device=device))
            if self.masks[spec.name].shape != (n,) or self.masks[spec.name].dtype != torch.bool:
                raise DataError(f"{self.name}: the mask of {spec.name!r} must be a boolean array of shape ({n},)")
        if self.labels is not None and self.labels.shape[0] != n:
            raise DataError(f"{self.name}: {self.labels.shape[0]} labels for {n} samples")

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def __len__(self) -> int:
        return self.data[self.modalities[0].name].shape[0]

    def subset(self, index: Tensor) -> "MultimodalDataset":
        """The samples at ``index`` (a LongTensor or BoolTensor over samples)."""
        return MultimodalDataset(
            modalities=self.modalities,
            data={k: v[index] for k, v in self.data.items()},
            masks={k: v[index] for k, v in self.masks.items()},
            labels=None if self.labels is None else self.labels[index],
            label_names=self.label_names,
            name=self.name,
        )

    def to(self, device: torch.device | str) -> "MultimodalDataset":
        """The dataset with every tensor on ``device`` (in-memory data lives where it is used)."""
        return MultimodalDataset(
            modalities=self.modalities,
            data={k: v.to(device) for k, v in self.data.items()},
            masks={k: v.to(device) for k, v in self.masks.items()},
            labels=None if self.labels is None else self.labels.to(device),
            label_names=self.label_names,
            name=self.name,
        )

    def batch(self, index: Tensor) -> Batch:
        """Gather rows ``index`` as a float batch (images scaled from uint8 to [0, 1])."""
        x = {}
        for spec in self.modalities:
            rows = self.data[spec.name][index]
            x[spec.name] = rows.float().div_(255.0) if rows.dtype == torch.uint8 else rows.float()
        masks = {k: v[index] for k, v in self.masks.items()}
        labels = None if self.labels is None else self.labels[index]
        return Batch(x, masks, labels)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]:
        """Iterate over batches; ``start`` skips that many batches (for exact resume)."""
        n = len(self)
        device = self.data[self.modalities[0].name].device
        if shuffle:
            order = torch.randperm(n, generator=generator).to(device)
        else:
            order = torch.arange(n, device=device)
        stop = n - n % batch_size if drop_last else n
        for begin in range(start * batch_size, stop, batch_size):
            yield self.batch(order[begin : begin + batch_size])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)


@dataclass
class DatasetSplits:
    """The train and test splits of a named dataset."""

    train: MultimodalDataset
    test: MultimodalDataset

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        return self.train.modalities
