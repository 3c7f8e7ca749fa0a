"""Named datasets: one registry entry (facts plus a builder) per dataset.

A dataset is added by one :func:`register_dataset` call with its :class:`DatasetInfo` and
a builder ``(data_dir, seed) -> DatasetSplits``; :func:`load_dataset` looks the name up,
so no dispatch code changes. Names of the form ``PREFIX:ARGUMENT`` (``npz:FILE``) go to a
prefix loader registered with :func:`register_prefix` in the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omnivae.data.arrays import load_npz
from omnivae.data.base import DatasetSplits, ModalitySpec
from omnivae.data.corrupt import NOISE_SUFFIX, corrupt_with_noise, split_corruption
from omnivae.errors import DataError, unknown_name

__all__ = [
    "DatasetInfo",
    "DatasetBuilder",
    "PrefixLoader",
    "DATASETS",
    "register_dataset",
    "register_prefix",
    "load_dataset",
    "dataset_table",
    "describe_modalities",
]

#: Builds a named dataset from an optional data folder and a seed.
DatasetBuilder = Callable[[str | None, int], DatasetSplits]
#: Loads ``PREFIX:ARGUMENT`` from the argument (a path) and a seed.
PrefixLoader = Callable[[str, int], DatasetSplits]


@dataclass
class DatasetInfo:
    """What ``omnivae datasets`` shows about a dataset, known without loading it.

    Attributes:
        name: the name passed to ``--dataset``.
        description: one line on what the data is and where it comes from.
        modalities: ``"name shape kind"`` per modality, e.g. ``"m0 3x28x28 image"``.
        n_train: training samples.
        n_test: test samples.
        offline: True if it is built from installed packages, with nothing to download.
        needs: the files to provide when it is not offline; for an offline build, the
            package it is built from when that is not installed by default.
        missing: for an offline build, a check that returns why it cannot be built on
            this machine (a package is absent), or ``None`` when it can.
    """

    name: str
    description: str
    modalities: list[str] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    offline: bool = True
    needs: str = ""
    missing: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)

    def status(self) -> str:
        """``ready``, ``needs --data-dir`` or ``missing: REASON`` for this machine."""
        if not self.offline:
            return "needs --data-dir"
        reason = self.missing() if self.missing is not None else None
        return "ready" if reason is None else f"missing: {reason}"


@dataclass(frozen=True)
class _PrefixEntry:
    form: str
    description: str
    loader: PrefixLoader


DATASETS: dict[str, DatasetInfo] = {}
_BUILDERS: dict[str, DatasetBuilder] = {}
_PREFIXES: dict[str, _PrefixEntry] = {}


def describe_modalities(specs: tuple[ModalitySpec, ...] | list[ModalitySpec]) -> list[str]:
    """``"name shape kind"`` strings for :attr:`DatasetInfo.modalities`.

    Example:
        >>> describe_modalities([ModalitySpec("m0", (3, 28, 28), "image")])
        ['m0 3x28x28 image']
    """
    return [f"{s.name} {'x'.join(str(d) for d in s.shape)} {s.kind}" for s in specs]


def register_dataset(info: DatasetInfo, builder: DatasetBuilder) -> None:
    """Make ``info.name`` loadable by :func:`load_dataset` and listed by :func:`dataset_table`.

    Raises:
        ValueError: if the name is taken or contains ``:`` (reserved for prefixes).
    """
    if info.name in DATASETS or ":" in info.name:
        raise ValueError(f"dataset name {info.name!r} is taken or contains ':'")
    DATASETS[info.name] = info
    _BUILDERS[info.name] = builder


def register_prefix(prefix: str, form: str, description: str, loader: PrefixLoader) -> None:
    """Make ``PREFIX:ARGUMENT`` names loadable, e.g. ``npz:FILE``.

    Args:
        prefix: the text before ``:``.
        form: how the name is written in help and errors (``"npz:FILE"``).
        description: one line for :func:`dataset_table`.
        loader: ``(argument, seed) -> DatasetSplits``.
    """
    if prefix in _PREFIXES:
        raise ValueError(f"dataset prefix {prefix!r} is taken")
    _PREFIXES[prefix] = _PrefixEntry(form, description, loader)


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> DatasetSplits:
    """Load a dataset by name: a registered name, or a prefixed form such as ``npz:FILE``.

    Args:
        name: ``"polymnist"``, ``"npz:path/to/data.npz"``, ...
        data_dir: the folder holding (or caching) the dataset's files; the builder's
            default when ``None``.
        seed: seeds any random split (``npz:FILE``); fixed datasets ignore it.

    A name ending in ``+noise=MODALITY[,MODALITY...]`` is that dataset with those
    modalities replaced by noise (:mod:`omnivae.data.corrupt`).

    Raises:
        UserError: for an unknown name, listing the valid ones.
        DataError: for missing or malformed data.

    Example:
        >>> splits = load_dataset("polymnist")  # doctest: +SKIP
        >>> noisy = load_dataset("mfeat+noise=fou")  # doctest: +SKIP
    """
    base, corrupted = split_corruption(name)
    if corrupted:
        return corrupt_with_noise(load_dataset(base, data_dir, seed), corrupted, name, seed)
    prefix, sep, argument = name.partition(":")
    if sep and prefix in _PREFIXES:
        if not argument:
            form = _PREFIXES[prefix].form
            raise DataError(f"dataset {name!r} lacks its argument; write it as {form}")
        return _PREFIXES[prefix].loader(argument, seed)
    if name in _BUILDERS:
        return _BUILDERS[name](data_dir, seed)
    prefixed = _with_prefix(name)
    if prefixed is not None:
        raise DataError(f"unknown dataset {name!r}; for your own data write the format before the path: {prefixed}")
    valid = list(DATASETS) + [entry.form for entry in _PREFIXES.values()]
    raise unknown_name("dataset", name, valid)


def _with_prefix(name: str) -> str | None:
    """``npz:train.npz`` for ``train.npz``: the prefixed form of a name that looks like a
    file or folder of the user's own data, or ``None``.

    Example:
        >>> _with_prefix("train.npz"), _with_prefix("tables/a.csv"), _with_prefix("mnist")
        ('npz:train.npz', 'csv:tables', None)
    """
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return f"npz:{name}"
    if suffix in (".h5", ".hdf5"):
        return f"hdf5:{name}"
    if suffix == ".csv":
        return f"csv:{path.parent}"
    if name.endswith(("/", os.sep)) or path.is_dir():
        return f"csv:{name}"
    return None


def dataset_table() -> str:
    """A plain-text table of the registered datasets, for ``omnivae datasets``."""
    header = ("name", "here", "train", "test", "modalities")
    rows = [
        (
            info.name,
            info.status(),
            str(info.n_train),
            str(info.n_test),
            ", ".join(info.modalities),
        )
        for info in DATASETS.values()
    ]
    rows += [(entry.form, "ready", "-", "-", "from the file") for entry in _PREFIXES.values()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip()

    lines = [line(header), line(tuple("-" * w for w in widths)), *map(line, rows), ""]
    lines.append("'ready' datasets are built offline from installed packages on first use and cached;")
    lines.append("'missing' ones lack a package or files on this machine (see 'needs' below);")
    lines.append("the others read their real files from --data-dir DIR.")
    lines.append("")
    for info in DATASETS.values():
        lines.append(f"{info.name}: {info.description}")
        if info.needs:
            lines.append(f"  needs: {info.needs}")
    for entry in _PREFIXES.values():
        lines.append(f"{entry.form}: {entry.description}")
    lines.append(f"DATASET{NOISE_SUFFIX}MODALITY[,MODALITY...]: any of these with the named modalities replaced by "
                 "noise of the same shape and range, train and test (robustness studies)")
    return "\n".join(lines)


register_prefix(
    "npz",
    "npz:FILE",
    "your arrays: one per modality (uint8 image, bool binary, numbers vector), optional "
    "labels, mask_<modality> and split; random 80/20 split otherwise",
    lambda path, seed: load_npz(path, seed=seed),
)
