"""The catalogue: every named dataset, registered once when ``omnivae.data`` is imported.

Each dataset module exports ``ENTRIES``, a tuple of ``(DatasetInfo, builder)`` pairs; this
module registers them in a fixed order (the order ``omnivae datasets`` lists them in).
Adding a dataset means adding its module's name to :data:`_MODULES`.
"""

from __future__ import annotations

import importlib

from omnivae.data.registry import _PREFIXES, DATASETS, register_dataset, register_prefix

__all__: list[str] = []

_MODULES = (
    "omnivae.data.polymnist",
    "omnivae.data.mnist_svhn",
    "omnivae.data.toys",
    "omnivae.data.mfeat",
    "omnivae.data.celeba",
    "omnivae.data.mhd",
)


def _register_all() -> None:
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for info, builder in module.ENTRIES:
            if info.name not in DATASETS:
                register_dataset(info, builder)
    from omnivae.data.tables import PREFIXES

    for prefix, form, description, loader in PREFIXES:
        if prefix not in _PREFIXES:
            register_prefix(prefix, form, description, loader)


_register_all()
