"""The dataset contract: modalities as ``dict[str, Tensor]`` held in memory, with masks.

A multimodal sample is one tensor per modality (in the dataset's fixed order), a mask
saying which modalities are observed, and an optional integer label. Everything lives in
memory as tensors; a batch is a gather on the permuted index, with no per-item Python work.
Images are stored as ``uint8`` and turned into floats in [0, 1] only for the batch.

Two storage forms keep large datasets small in memory, both expanded only per batch:

- ``rows[name]``: sample ``i`` of modality ``name`` is storage row ``rows[name][i]``.
  Datasets that pair the same instances many times (MNIST-SVHN pairs each digit with
  20 others) store every instance once plus an index, instead of copying pixels.
- a ``categorical`` modality of shape ``(*S, A)`` may be stored as integer indices of
  shape ``(*S,)``; index ``a`` in ``0..A-1`` becomes a one-hot row and any other value
  (``-1`` for an unknown character) an all-zero row, as in the MoPoE text encoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from omnivae.errors import DataError
from omnivae.modalities import ModalityKind, ModalitySpec  # noqa: F401  (re-exported: the contract lives there)

#: A modality name: letters, digits, ``_`` and ``-``, starting with a letter or digit, at
#: most 64 characters. Names become file names (``<modality>.csv``) and array keys, so
#: anything that could be read as a path (``/``, ``.``, ``..``) is refused at load.
MODALITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_modality_names(names: Iterable[object], source: str) -> None:
    """Refuse modality names outside :data:`MODALITY_NAME` or equal after case-folding.

    Raises:
        DataError: one line naming the first bad name and the rule.

    Example:
        >>> check_modality_names(["img", "m-0", "Text_1"], "data.npz")
        >>> check_modality_names(["a/b"], "data.npz")
        Traceback (most recent call last):
        ...
        omnivae.errors.DataError: data.npz: modality name 'a/b' is not allowed; ...
    """
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not MODALITY_NAME.fullmatch(name):
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            why = "is empty" if name == "" else "is not allowed"
            raise DataError(
                f"{source}: modality name {shown} {why}; use 1 to 64 letters, digits, _ or -, "
                "starting with a letter or digit (names become file names)"
            )
        folded = name.casefold()
        if folded in seen:
            raise DataError(
                f"{source}: modality names {seen[folded]!r} and {name!r} differ only in case; "
                "rename one (names become file names)"
            )
        seen[folded] = name


@dataclass
class Batch:
    """A batch: ``x[name]`` is ``[B, *shape]`` float, ``mask[name]`` is ``BoolTensor[B]``."""

    x: dict[str, Tensor]
    mask: dict[str, Tensor]
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
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
    rows: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names:
            raise DataError(f"{self.name}: a dataset needs at least one modality")
        check_modality_names(names, self.name)
        missing = [n for n in names if n not in self.data]
        if missing:
            raise DataError(f"{self.name}: no data for modalities {missing}")
        unknown_rows = [k for k in self.rows if k not in names]
        if unknown_rows:
            raise DataError(f"{self.name}: rows given for unknown modalities {unknown_rows}; modalities are {names}")

        def length(name: str) -> int:
            return (self.rows[name] if name in self.rows else self.data[name]).shape[0]

        n = length(names[0])
        if n == 0:
            raise DataError(f"{self.name}: the dataset is empty (0 samples); give it at least one sample")
        for spec in self.modalities:
            array = self.data[spec.name]
            if length(spec.name) != n:
                raise DataError(
                    f"{self.name}: modality {spec.name!r} has {length(spec.name)} samples but "
                    f"{names[0]!r} has {n}; every modality needs one row per sample"
                )
            if spec.name in self.rows:
                index = self.rows[spec.name]
                if index.dtype != torch.long or index.ndim != 1:
                    raise DataError(f"{self.name}: rows of {spec.name!r} must be a 1-D int64 tensor")
                if index.numel() and (int(index.min()) < 0 or int(index.max()) >= array.shape[0]):
                    raise DataError(
                        f"{self.name}: rows of {spec.name!r} point outside its {array.shape[0]} stored rows"
                    )
            if tuple(array.shape[1:]) != tuple(spec.shape) and not _stores_indices(spec, array):
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
        first = self.modalities[0].name
        return (self.rows[first] if first in self.rows else self.data[first]).shape[0]

    def subset(self, index: Tensor) -> MultimodalDataset:
        """The samples at ``index`` (a LongTensor or BoolTensor over samples).

        Modalities stored through ``rows`` keep sharing their storage; only the index is
        gathered.
        """
        return MultimodalDataset(
            modalities=self.modalities,
            data={k: v if k in self.rows else v[index] for k, v in self.data.items()},
            masks={k: v[index] for k, v in self.masks.items()},
            labels=None if self.labels is None else self.labels[index],
            label_names=self.label_names,
            name=self.name,
            rows={k: v[index] for k, v in self.rows.items()},
        )

    def values(self, name: str, index: Tensor | None = None) -> Tensor:
        """The stored values of modality ``name`` at samples ``index`` (all when None),
        in storage dtype and form (before scaling or one-hot expansion)."""
        stored = self.data[name]
        if name in self.rows:
            return stored[self.rows[name] if index is None else self.rows[name][index]]
        return stored if index is None else stored[index]

    def to(self, device: torch.device | str) -> MultimodalDataset:
        """The dataset with every tensor on ``device`` (in-memory data lives where it is used)."""
        return MultimodalDataset(
            modalities=self.modalities,
            data={k: v.to(device) for k, v in self.data.items()},
            masks={k: v.to(device) for k, v in self.masks.items()},
            labels=None if self.labels is None else self.labels.to(device),
            label_names=self.label_names,
            name=self.name,
            rows={k: v.to(device) for k, v in self.rows.items()},
        )

    def batch(self, index: Tensor) -> Batch:
        """Gather rows ``index`` as a float batch (images scaled from uint8 to [0, 1])."""
        x = {}
        for spec in self.modalities:
            rows = self.values(spec.name, index)
            if _stores_indices(spec, rows):
                x[spec.name] = _one_hot(rows, spec.shape[-1])
            elif rows.dtype == torch.uint8:
                x[spec.name] = rows.float().div_(255.0)
            else:
                x[spec.name] = rows.float()
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


def _stores_indices(spec: ModalitySpec, array: Tensor) -> bool:
    """True if a categorical modality is stored as integer indices, one axis short."""
    return (
        spec.kind == "categorical"
        and not array.dtype.is_floating_point
        and array.dtype != torch.bool
        and tuple(array.shape[1:]) == tuple(spec.shape[:-1])
    )


def _one_hot(indices: Tensor, width: int) -> Tensor:
    """Float one-hot rows; indices outside ``0..width-1`` give all-zero rows."""
    indices = indices.long()
    valid = (indices >= 0) & (indices < width)
    out = torch.nn.functional.one_hot(indices.clamp(0, width - 1), width).float()
    return out.mul_(valid.unsqueeze(-1))


@dataclass
class DatasetSplits:
    """The train and test splits of a named dataset."""

    train: MultimodalDataset
    test: MultimodalDataset

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        return self.train.modalities
