"""PyTorch data: train and evaluate from a ``Dataset`` or ``DataLoader`` of modality dicts.

For data that does not fit in memory. Each sample (or each batch, from a ``DataLoader``)
is a dict ``{modality: tensor}``, with two optional kinds of extra keys:

- ``"mask_<modality>"``: a boolean, True where that modality is observed (as the
  ``mask_<name>`` arrays of an npz file). An absent mask means observed; the values of an
  unobserved row are ignored (they are zeroed before the networks see them).
- ``"labels"``: integer class labels (kept on the batch; training does not use them).

Values follow the in-memory conventions of :class:`~omnivae.data.MultimodalDataset`:
``uint8`` becomes a float in [0, 1], everything else a float, and a categorical modality
may come as integer indices one axis short (expanded to one-hot rows).

:class:`TorchData` wraps the source so that the trainer and the metrics see the same
batch interface as the in-memory datasets. Given a map-style ``Dataset``, it draws the
epoch's order exactly as the in-memory path does (one ``randperm`` from the trainer's
generator, consecutive slices), so the same rows and seed give the same batches and the
same parameters; the rows are read through a ``DataLoader`` (``num_workers`` of your
choice). Given a ``DataLoader``, its own sampler and batch size decide the batches, and a
resumed epoch skips the batches already taken.

:class:`ArrayDataset` is a ``Dataset`` over array-likes that index like NumPy arrays
without loading: memory-mapped ``.npy`` files (``np.load(path, mmap_mode="r")``) or
``h5py`` datasets. It reads a batch with one sorted fancy index per modality.

Example (two memory-mapped ``.npy`` files, one per modality):
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(folder / "img.npy", np.zeros((6, 1, 4, 4), dtype=np.uint8))
    >>> np.save(folder / "vec.npy", np.ones((6, 3), dtype=np.float32))
    >>> arrays = {m: np.load(folder / f"{m}.npy", mmap_mode="r") for m in ("img", "vec")}
    >>> data = TorchData(ArrayDataset(arrays))
    >>> [(m.name, m.shape, m.kind) for m in data.modalities]
    [('img', (1, 4, 4), 'image'), ('vec', (3,), 'vector')]
    >>> len(data), data.num_batches(4)
    (6, 2)

Training takes it where it takes a ``MultimodalDataset``:
``Trainer(model, objective, data, TrainConfig(epochs=5)).fit()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from omnivae.data.base import (
    Batch,
    ModalityKind,
    ModalitySpec,
    MultimodalDataset,
    _one_hot,
    _stores_indices,
)
from omnivae.errors import DataError, UserError

__all__ = ["MASK_PREFIX", "LABELS_KEY", "BatchSource", "TorchData", "ArrayDataset", "as_batch_source", "draw_rows"]

MASK_PREFIX = "mask_"
LABELS_KEY = "labels"


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer and the metrics need of data: modalities, a length, batches."""

    modalities: tuple[ModalitySpec, ...]

    def __len__(self) -> int: ...

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int: ...

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]: ...

    def to(self, device: torch.device | str) -> BatchSource: ...


def _kind(dtype: torch.dtype) -> ModalityKind:
    if dtype == torch.uint8:
        return "image"
    if dtype == torch.bool:
        return "binary"
    if dtype.is_complex:
        raise DataError(f"unsupported dtype {dtype}; give real numbers")
    return "vector"


class TorchData:
    """A ``torch.utils.data`` ``Dataset`` or ``DataLoader`` of modality dicts, as batches.

    Args:
        source: A map-style ``Dataset`` (with ``__len__``) whose items are
            ``{modality: tensor}`` dicts, or a ``DataLoader`` yielding such dicts batched
            (its dataset must have a length, so that an epoch has a known number of steps).
        modalities: The modalities' specs; by default read from the first sample
            (``uint8`` image, ``bool`` binary, other numbers vector).
        num_workers: Worker processes reading a ``Dataset`` (a ``DataLoader`` keeps its own).
        name: Shown in error messages.

    Raises:
        UserError: ``source`` is neither, or has no length.
        DataError: a sample lacks a modality, has an unknown key or the wrong shape.
    """

    def __init__(
        self,
        source: Dataset | DataLoader,
        modalities: Sequence[ModalitySpec] | None = None,
        *,
        num_workers: int = 0,
        name: str = "torch data",
    ) -> None:
        self.loader = source if isinstance(source, DataLoader) else None
        self.dataset: Dataset = source.dataset if isinstance(source, DataLoader) else source
        if not isinstance(self.dataset, Dataset):
            raise UserError(
                f"source must be a torch.utils.data Dataset or DataLoader, got {type(source).__name__}",
                parameter="source",
            )
        if self.loader is None and isinstance(self.dataset, IterableDataset):
            raise UserError(
                "source is an IterableDataset; wrap it in a DataLoader (with a length) or give a map-style Dataset",
                parameter="source",
            )
        try:
            self._length = len(self.dataset)  # type: ignore[arg-type]
            self._loader_batches = None if self.loader is None else len(self.loader)
        except TypeError:
            raise UserError(
                f"source ({type(self.dataset).__name__}) has no length; give the dataset a __len__ so that "
                "an epoch has a known number of steps",
                parameter="source",
            ) from None
        if self._length == 0:
            raise DataError(f"{name}: the dataset is empty (0 samples); give it at least one sample")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}", parameter="num_workers")
        self.num_workers = num_workers
        self.name = name
        self.device: torch.device | None = None
        self.modalities = tuple(modalities) if modalities is not None else self._infer_modalities()
        if not self.modalities:
            raise DataError(f"{name}: a dataset needs at least one modality")

    def _infer_modalities(self) -> tuple[ModalitySpec, ...]:
        if self.loader is not None:
            first = _collate(next(iter(self.loader)))
            shapes = {k: (v.dtype, tuple(v.shape[1:])) for k, v in first.items()}
        else:
            sample = _collate([self.dataset[0]])
            shapes = {k: (v.dtype, tuple(v.shape[1:])) for k, v in sample.items()}
        return tuple(
            ModalitySpec(key, shape, _kind(dtype))
            for key, (dtype, shape) in shapes.items()
            if not key.startswith(MASK_PREFIX) and key != LABELS_KEY
        )

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def __len__(self) -> int:
        return self._length

    def to(self, device: torch.device | str) -> TorchData:
        """The same source, its batches sent to ``device``."""
        moved = object.__new__(TorchData)
        moved.__dict__.update(self.__dict__)
        moved.device = torch.device(device)
        return moved

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        if self._loader_batches is not None:
            return self._loader_batches
        return self._length // batch_size if drop_last else -(-self._length // batch_size)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]:
        """The batches of one pass; ``start`` skips that many (for exact resume).

        With a ``Dataset`` the order is drawn as :meth:`MultimodalDataset.batches` draws
        it; with a ``DataLoader``, ``batch_size``, ``shuffle`` and ``generator`` are the
        loader's own business and are ignored.
        """
        if self.loader is not None:
            items: Iterator[Any] = itertools.islice(iter(self.loader), start, None)
        else:
            n = self._length
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            stop = n - n % batch_size if drop_last else n
            chunks = [order[b : b + batch_size].tolist() for b in range(start * batch_size, stop, batch_size)]
            # A DataLoader draws its workers' base seed from the global generator unless given
            # its own; that draw would shift every later random number of training away from
            # the in-memory path's. Seed its own from the epoch's order instead.
            seed = hash((start, *order[:8].tolist())) % 2**63
            loader = DataLoader(
                self.dataset,
                batch_sampler=chunks,
                collate_fn=_collate,
                num_workers=self.num_workers,
                generator=torch.Generator().manual_seed(seed),
            )
            items = iter(loader)
        for item in items:
            batch = self._batch(_collate(item) if not isinstance(item, Mapping) else item)
            yield batch if self.device is None else batch.to(self.device)

    def _batch(self, values: Mapping[str, Any]) -> Batch:
        """Check a collated dict and convert it as :meth:`MultimodalDataset.batch` does."""
        names = set(self.modality_names)
        allowed = names | {MASK_PREFIX + n for n in names} | {LABELS_KEY}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise DataError(
                f"{self.name}: unknown key(s) {unknown} in a sample; the keys are the modalities "
                f"{sorted(names)}, optional {MASK_PREFIX}<modality> masks and {LABELS_KEY!r}"
            )
        x: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for spec in self.modalities:
            if spec.name not in values:
                raise DataError(f"{self.name}: a sample lacks modality {spec.name!r}")
            rows = torch.as_tensor(values[spec.name])
            if _stores_indices(spec, rows):
                value = _one_hot(rows, spec.shape[-1])
            elif tuple(rows.shape[1:]) != tuple(spec.shape):
                raise DataError(
                    f"{self.name}: modality {spec.name!r} has per-sample shape {tuple(rows.shape[1:])}, "
                    f"expected {tuple(spec.shape)}"
                )
            elif rows.dtype == torch.uint8:
                value = rows.float().div_(255.0)
            else:
                value = rows.float()
            mask = values.get(MASK_PREFIX + spec.name)
            if mask is None:
                masks[spec.name] = torch.ones(value.shape[0], dtype=torch.bool)
            else:
                masks[spec.name] = torch.as_tensor(mask).to(torch.bool).reshape(value.shape[0])
                # Unobserved values may be anything (NaN); zero them as the in-memory loaders do.
                value = value.masked_fill(~masks[spec.name].reshape(-1, *[1] * (value.ndim - 1)), 0.0)
            x[spec.name] = value
        labels = values.get(LABELS_KEY)
        return Batch(x, masks, None if labels is None else torch.as_tensor(labels).long())


def _collate(items: Any) -> dict[str, Tensor]:
    """A batch dict from a list of sample dicts, or a batch dict as it is (what
    :meth:`ArrayDataset.__getitems__` returns)."""
    if isinstance(items, Mapping):
        return {k: torch.as_tensor(v) for k, v in items.items()}
    if not items or not isinstance(items[0], Mapping):
        raise DataError(f"a sample must be a dict of {{modality: tensor}}, got {type(items[0]).__name__}")
    return default_collate(list(items))


class ArrayDataset(Dataset):
    """A map-style ``Dataset`` over array-likes indexed without loading them.

    Args:
        arrays: ``{key: array}`` with the same first dimension; keys are modalities, and
            optionally ``mask_<modality>`` and ``labels`` (see the module docstring). An
            array is anything with ``shape`` and NumPy fancy indexing over sorted rows:
            ``np.load(path, mmap_mode="r")`` of an ``.npy`` file, an ``h5py.Dataset``, an
            in-memory array.
    """

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        if not arrays:
            raise UserError("arrays is empty; give at least one modality", parameter="arrays")
        lengths = {key: int(array.shape[0]) for key, array in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"the arrays have different numbers of rows: {lengths}")
        self.arrays = dict(arrays)
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        # A copy: rows of a read-only memory map would make read-only tensors.
        return {key: torch.from_numpy(np.array(array[index])) for key, array in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole batch at once: one read of sorted rows per array (h5py requires
        increasing indices; a memory map reads pages in order), put back in the asked order."""
        index = np.asarray(indices, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        unique, inverse = np.unique(wanted, return_inverse=True)
        out = {}
        for key, array in self.arrays.items():
            block = np.asarray(array[unique.tolist() if not isinstance(array, np.ndarray) else unique])[inverse]
            rows = np.empty_like(block)
            rows[order] = block
            out[key] = torch.from_numpy(rows)
        return out


def as_batch_source(data: MultimodalDataset | BatchSource | Dataset | DataLoader) -> BatchSource:
    """The trainer's view of training or evaluation data: in-memory datasets and
    :class:`TorchData` as they are, a ``Dataset`` or ``DataLoader`` wrapped in :class:`TorchData`."""
    if isinstance(data, (MultimodalDataset, TorchData)):
        return data
    if isinstance(data, (Dataset, DataLoader)):
        return TorchData(data)
    if isinstance(data, BatchSource):
        return data
    raise UserError(
        f"data must be a MultimodalDataset, a torch Dataset or a DataLoader, got {type(data).__name__}",
        parameter="train_data",
    )


def draw_rows(
    source: MultimodalDataset | TorchData,
    count: int | None,
    seed: int,
    *,
    sort: bool = True,
    parameter: str = "num_test",
) -> MultimodalDataset:
    """``count`` rows of ``source`` drawn without replacement with ``seed``, in memory.

    The rows are ``torch.randperm(len(source), generator=seeded)[:count]`` (every row for
    ``count`` None or at least the length), sorted when ``sort`` (the test rows of
    :func:`omnivae.evaluate.evaluate_run`) or in drawn order (the probe's training rows,
    as :func:`omnivae.metrics.linear_probe` draws them). An in-memory dataset is subset
    without copying; a :class:`TorchData` is read through its map-style ``Dataset`` and
    stored as the in-memory loaders store it (``uint8`` stays ``uint8``, unobserved values
    zeroed), so that the metrics see the same values either way.

    Raises:
        UserError: the rows would take more memory than :func:`~omnivae.data.npz.max_load_bytes`
            (``OMNIVAE_MAX_LOAD_GB``) allows, naming ``parameter``; or the source is a
            ``DataLoader`` over an ``IterableDataset`` (no rows to draw from).
        DataError: a sample lacks a modality, has an unknown key or the wrong shape.

    Example:
        >>> arrays = {"v": np.arange(10, dtype=np.float32).reshape(5, 2)}
        >>> rows = draw_rows(TorchData(ArrayDataset(arrays)), 3, seed=0)
        >>> rows.data["v"][:, 0].tolist()
        [0.0, 2.0, 8.0]
    """
    from omnivae.data.npz import MAX_LOAD_ENV, _size, max_load_bytes

    n = len(source)
    if count is None or count >= n:
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
        if sort:
            index = index.sort().values
    if isinstance(source, MultimodalDataset):
        return source if len(index) == n and bool((index == torch.arange(n)).all()) else source.subset(index)
    if isinstance(source.dataset, IterableDataset):
        raise UserError(
            f"{source.name} reads an IterableDataset, whose rows cannot be drawn; give a map-style Dataset "
            "(with __getitem__) for the evaluation",
            parameter="train" if parameter == "num_train" else "test",
        )
    first = _collate([source.dataset[int(index[0])]])
    row_bytes = sum(v[0].numel() * v.element_size() for v in first.values())
    need, limit = row_bytes * len(index), max_load_bytes()
    if need > limit:
        raise UserError(
            f"{parameter}: {len(index):,} rows of {source.name} would take {_size(need)} in memory, above the "
            f"{_size(limit)} one load may take; set {parameter} to at most {max(limit // max(row_bytes, 1), 1):,} "
            f"rows (or protocol='fast'), or raise {MAX_LOAD_ENV}",
            parameter=parameter,
        )
    chunks = [index[b : b + 256].tolist() for b in range(0, len(index), 256)]
    loader = DataLoader(source.dataset, batch_sampler=chunks, collate_fn=_collate, num_workers=source.num_workers,
                        generator=torch.Generator().manual_seed(seed))
    parts: dict[str, list[Tensor]] = {}
    for item in loader:
        values = _collate(item) if not isinstance(item, Mapping) else item
        source._batch(values)  # the checks of the training path: keys, modalities, shapes
        for key, value in values.items():
            parts.setdefault(key, []).append(torch.as_tensor(value))
    stored = {key: torch.cat(value) for key, value in parts.items()}
    data: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for spec in source.modalities:
        value = stored[spec.name]
        if MASK_PREFIX + spec.name in stored:
            mask = stored[MASK_PREFIX + spec.name].to(torch.bool).reshape(len(value))
            # Unobserved values may be anything (NaN); stored as the in-memory loaders store them.
            unseen = ~mask.reshape(-1, *[1] * (value.ndim - 1))
            value = value.masked_fill(unseen, -1 if _stores_indices(spec, value) else 0)
            masks[spec.name] = mask
        data[spec.name] = value
    labels = stored.get(LABELS_KEY)
    return MultimodalDataset(source.modalities, data, masks, None if labels is None else labels.long(),
                             name=source.name)
