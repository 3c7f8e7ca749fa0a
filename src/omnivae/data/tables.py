"""User data as tables: a folder of CSV files (``csv:DIR``) or an HDF5 file (``hdf5:FILE``).

Both forms extend the ``npz:FILE`` conventions of :mod:`omnivae.data.arrays`: they are read
into the same dictionary of arrays and validated by its functions, so a dataset means the
same thing whatever file holds it.

``csv:DIR`` -- a folder with one ``<modality>.csv`` per modality (UTF-8, comma separated,
a header row naming the columns):

- Samples: if every modality file has a column named ``id``, the samples are the union of
  the ids over the files, sorted (numerically when every id is an integer, else as
  strings), and a modality is missing for the ids absent from its file. Without ``id``
  columns, rows align by order and every file needs the same number of data rows.
- Missing values: a row whose feature cells are all empty (or ``NaN``/``NA``) marks the
  modality missing for that sample; a partly empty row is an error. Without ids a blank
  line is such an empty row (blank lines at the end of a file are ignored); with ids blank
  lines are skipped.
- Each other column is one feature: per-sample shape ``(n_columns,)``, kind ``vector``
  (``float32``). ``schema.json`` may declare a modality's shape and kind instead, e.g.
  ``{"img": {"shape": [1, 16, 15], "kind": "image"}}``: the columns, in order, fill the
  shape in C order and their count must equal its product. ``image`` values are integers
  0..255 (kept as ``uint8``), ``binary`` values 0/1 (``bool``), ``categorical`` values a
  one-hot 0/1 code along the last axis of the shape (``float32``; all zeros = unknown).
- Optional ``labels.csv``: a ``label`` column (integers >= 0, or strings that become
  integers in sorted order of the distinct strings, kept as label names) and an ``id``
  column when the modality files have ids, else one row per sample in order.
- Optional ``split.csv``: a ``split`` column of ``train``/``test`` (or 0/1) and an ``id``
  column when the modality files have ids; otherwise a random 80/20 split seeded by the
  run's seed, stratified by label, as for ``npz:FILE``.
- Optional ``observed.csv`` (written by ``omnivae impute``): one 0/1 column per modality
  (and ``id``), the CSV form of ``mask_<modality>``: a row marked 0 is missing whatever
  its cells hold.

``hdf5:FILE`` (``.h5``/``.hdf5``) -- the ``npz`` layout as HDF5 datasets: one numeric
dataset per modality (at the root, or every modality under a group ``modalities/``; the
dtype picks the kind: ``uint8`` image, ``bool`` binary, other numbers vector), optional
``mask_<modality>``, ``labels`` (integers or strings), ``label_names`` and ``split``.
The file is read into memory. Reading it needs the optional ``h5py`` package.

Values of unobserved rows are replaced by 0. Every problem raises one :class:`DataError`
line naming the file (and for CSV the line and column) and the fix.
"""

from __future__ import annotations

from collections.abc import Callable

from omnivae.data.base import DatasetSplits
from omnivae.data.csv_folder import CsvFolder, load_csv, load_csv_array, read_csv_folder
from omnivae.data.csv_table import (
    ID_COLUMN,
    LABELS_FILE,
    OBSERVED_FILE,
    SCHEMA_FILE,
    SPLIT_FILE,
)
from omnivae.data.csv_write import check_csv_output, write_filled_csv
from omnivae.data.hdf5 import (
    HDF5_GROUP,
    HDF5_SUFFIXES,
    hdf5_group,
    load_hdf5,
    load_hdf5_array,
    read_hdf5,
    write_hdf5,
)

__all__ = [
    "ID_COLUMN",
    "LABELS_FILE",
    "SPLIT_FILE",
    "SCHEMA_FILE",
    "OBSERVED_FILE",
    "HDF5_GROUP",
    "HDF5_SUFFIXES",
    "CsvFolder",
    "read_csv_folder",
    "load_csv_array",
    "load_csv",
    "write_filled_csv",
    "check_csv_output",
    "read_hdf5",
    "hdf5_group",
    "load_hdf5_array",
    "load_hdf5",
    "write_hdf5",
    "PREFIXES",
]



def _csv_loader(argument: str, seed: int) -> DatasetSplits:
    return load_csv(argument, seed=seed)


def _hdf5_loader(argument: str, seed: int) -> DatasetSplits:
    return load_hdf5(argument, seed=seed)


#: ``(prefix, form, description, loader)`` for :func:`omnivae.data.registry.register_prefix`.
PREFIXES: tuple[tuple[str, str, str, Callable[[str, int], DatasetSplits]], ...] = (
    (
        "csv",
        "csv:DIR",
        "your tables: one <modality>.csv per modality (header row, optional id column; an "
        "empty row = missing), optional schema.json (shape, kind), labels.csv, split.csv; "
        "random 80/20 split otherwise",
        _csv_loader,
    ),
    (
        "hdf5",
        "hdf5:FILE",
        "your arrays in HDF5 (.h5/.hdf5; needs h5py): the npz layout, one dataset per "
        "modality at the root or under modalities/, optional labels, mask_<modality>, split",
        _hdf5_loader,
    ),
)
