"""Corrupted modalities for robustness studies: ``DATASET+noise=MODALITY[,MODALITY...]``.

``load_dataset("mfeat+noise=fou")`` is ``mfeat`` with every value of the view ``fou``
replaced by noise, in the training and the test split alike, so that the view carries no
information about the sample (nor about the other views) while keeping its shape, storage
and range. The corruption is part of the dataset's name, so a run trained on it records
that name, and every command that reloads the run's data (``evaluate``, ``sample``,
post-hoc latent samplers, ``--resume``, ``benchmark``) gets the same corrupted data, and
the classifier cache and the data fingerprint tell it apart from the clean dataset.

The noise matches the modality's kind and the training split's statistics:

- ``image``: independent uniform values between the training split's smallest and largest
  value (every integer in 0..255 for ``uint8`` storage);
- ``vector``: independent Gaussian values with each feature's training mean and standard
  deviation;
- ``binary``: independent Bernoulli values with each feature's training rate;
- ``categorical``: a uniformly random category at every position.

The draws are fixed by the modality's name (and the dataset seed), not by the training
seed: runs with different seeds see the same corrupted data. Masks and labels are kept.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import replace

import torch
from torch import Tensor

from omnivae.data.base import DatasetSplits, ModalitySpec, MultimodalDataset, _stores_indices
from omnivae.errors import DataError

__all__ = ["NOISE_SUFFIX", "split_corruption", "corrupt_with_noise"]

#: The text between a dataset name and the corrupted modalities.
NOISE_SUFFIX = "+noise="
_NAMES = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}(,[A-Za-z0-9][A-Za-z0-9_-]{0,63})*")


def split_corruption(name: str) -> tuple[str, list[str]]:
    """The base dataset name and the modalities to corrupt (none when there is no suffix).

    Raises:
        DataError: for a suffix without modality names, or with malformed or repeated ones.

    Example:
        >>> split_corruption("mfeat+noise=fou,mor")
        ('mfeat', ['fou', 'mor'])
        >>> split_corruption("npz:/data/x.npz")
        ('npz:/data/x.npz', [])
    """
    base, sep, names = name.rpartition(NOISE_SUFFIX)
    if not sep:
        return name, []
    if not base or not _NAMES.fullmatch(names):
        raise DataError(
            f"dataset {name!r}: write a corrupted dataset as DATASET{NOISE_SUFFIX}MODALITY[,MODALITY...], "
            f"e.g. mfeat{NOISE_SUFFIX}fou"
        )
    modalities = names.split(",")
    if len(set(modalities)) != len(modalities):
        raise DataError(f"dataset {name!r} names a corrupted modality twice")
    return base, modalities


def corrupt_with_noise(splits: DatasetSplits, modalities: list[str], source: str, seed: int = 0) -> DatasetSplits:
    """``splits`` with every value of ``modalities`` replaced by noise (see the module doc).

    Args:
        splits: the clean dataset.
        modalities: names of modalities of ``splits`` to corrupt.
        source: the dataset's name, for error messages.
        seed: mixed with each modality's name to seed its draws.

    Raises:
        DataError: for a name that is not a modality of the dataset, or when every
            modality would be corrupted (nothing would be left to learn from).
    """
    names = [spec.name for spec in splits.modalities]
    unknown = [m for m in modalities if m not in names]
    if unknown:
        raise DataError(f"dataset {source!r}: cannot corrupt {unknown[0]!r}, not one of its modalities {names}")
    if len(modalities) >= len(names):
        raise DataError(f"dataset {source!r}: corrupting every modality leaves nothing to learn; leave one clean")
    train, test = splits.train, splits.test
    for name in modalities:
        spec = next(s for s in splits.modalities if s.name == name)
        generator = torch.Generator().manual_seed((zlib.crc32(name.encode()) + 7919 * seed) % 2**63)
        reference = train.values(name)
        if name in train.masks:  # the statistics of the observed rows only
            reference = reference[train.masks[name].to(reference.device)]
        train = _replace(train, spec, _noise(spec, reference, len(train), generator))
        test = _replace(test, spec, _noise(spec, reference, len(test), generator))
    return DatasetSplits(train, test)


def _replace(data: MultimodalDataset, spec: ModalitySpec, values: Tensor) -> MultimodalDataset:
    """``data`` with modality ``spec`` replaced by ``values`` on its observed rows; rows
    where it is missing keep what the loader stored there."""
    rows = {k: v for k, v in data.rows.items() if k != spec.name}
    if spec.name in data.masks:
        original = data.values(spec.name).to(values.device)
        missing = ~data.masks[spec.name].to(values.device)
        values = torch.where(missing.reshape(-1, *[1] * (values.dim() - 1)), original, values)
    return replace(data, data={**data.data, spec.name: values.to(data.data[spec.name].device)}, rows=rows,
                   masks=dict(data.masks))


def _noise(spec: ModalitySpec, reference: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` rows of noise in the storage dtype and form of ``reference`` (training values)."""
    ref = reference.cpu()
    shape = (n, *ref.shape[1:])
    if _stores_indices(spec, ref):
        return torch.randint(0, spec.shape[-1], shape, generator=generator).to(ref.dtype)
    if spec.kind == "categorical":
        index = torch.randint(0, spec.shape[-1], (n, *spec.shape[:-1]), generator=generator)
        return torch.nn.functional.one_hot(index, spec.shape[-1]).to(ref.dtype)
    if spec.kind == "binary":
        rate = ref.float().mean(0).clamp(0.0, 1.0)
        return torch.bernoulli(rate.expand(shape), generator=generator).to(ref.dtype)
    if spec.kind == "vector":
        values = ref.double()
        mean, std = values.mean(0), values.std(0, correction=0)
        return (mean + std * torch.randn(shape, generator=generator, dtype=torch.float64)).to(ref.dtype)
    if not ref.dtype.is_floating_point:
        low, high = int(ref.min()), int(ref.max())
        return torch.randint(low, high + 1, shape, generator=generator).to(ref.dtype)
    low_f, high_f = float(ref.min()), float(ref.max())
    return (low_f + (high_f - low_f) * torch.rand(shape, generator=generator, dtype=torch.float64)).to(ref.dtype)
