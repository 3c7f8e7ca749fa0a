"""Datasets: the in-memory multimodal contract, offline builds and user arrays.

``load_dataset("polymnist")`` builds PolyMNIST offline on first use and caches it;
``load_dataset("npz:FILE")`` reads your own arrays. ``omnivae datasets`` prints
:func:`dataset_table`.
"""

from omnivae.data import catalog  # noqa: F401  (registers the named datasets)
from omnivae.data.arrays import load_npz, load_npz_array
from omnivae.data.base import Batch, DatasetSplits, ModalitySpec, MultimodalDataset
from omnivae.data.cache import cache_dir
from omnivae.data.registry import DATASETS, DatasetInfo, dataset_table, load_dataset

__all__ = [
    "ModalitySpec",
    "MultimodalDataset",
    "Batch",
    "DatasetSplits",
    "DatasetInfo",
    "load_dataset",
    "DATASETS",
    "dataset_table",
    "load_npz",
    "load_npz_array",
    "cache_dir",
]
