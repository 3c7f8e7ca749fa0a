"""Reading ``.npz`` files safely: no unpickling, and a cap on what one file may inflate to.

Each ``.npy`` header is read before its data, so a header claiming terabytes or a zip bomb
is refused without allocating (:func:`max_load_bytes`, ``OMNIVAE_MAX_LOAD_GB``). The layout
of the arrays is described in :mod:`omnivae.data.arrays`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from omnivae.errors import DataError, UserError

#: Environment variable raising (or lowering) what one data file may inflate to, in GiB.
MAX_LOAD_ENV = "OMNIVAE_MAX_LOAD_GB"
_DEFAULT_MAX_LOAD_GB = 8.0


def max_load_bytes() -> int:
    """What the arrays of one data file may inflate to in memory: 8 GiB, or
    ``OMNIVAE_MAX_LOAD_GB`` GiB.

    Raises:
        UserError: if ``OMNIVAE_MAX_LOAD_GB`` is not a positive finite number.
    """
    text = os.environ.get(MAX_LOAD_ENV)
    if text is None or not text.strip():
        return int(_DEFAULT_MAX_LOAD_GB * 2**30)
    try:
        gib = float(text)
    except ValueError:
        gib = float("nan")
    if not (np.isfinite(gib) and gib > 0):
        raise UserError(f"{MAX_LOAD_ENV} must be a positive number of GiB, got {text!r}")
    return int(gib * 2**30)


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def check_load_size(total: int, source: str, what: str) -> None:
    """Refuse a load whose arrays would inflate to more than :func:`max_load_bytes`.

    Raises:
        DataError: naming the size, the limit and how to raise it.
    """
    limit = max_load_bytes()
    if total > limit:
        raise DataError(
            f"{source}: {what} would take {_size(total)} in memory, above the {_size(limit)} "
            f"that one load may inflate to; if the file is right and the memory is there, "
            f"raise the limit with {MAX_LOAD_ENV}=<GiB>"
        )


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file, in file order, without unpickling anything.

    Raises:
        DataError: if the file is missing, is not an ``.npz`` archive, or holds an
            array of Python objects.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an .npz file; pass a file saved with numpy.savez as npz:FILE")
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} not found; pass an existing file as npz:FILE")
    head = _head(path)
    if head == b"\x93NUMPY":  # told before np.load, which would read the whole array
        raise DataError(f"{path} holds a single array, not an .npz archive; save it with numpy.savez")
    if not head.startswith(b"PK"):
        raise DataError(f"{path} is not a valid .npz file (not a zip archive of .npy arrays); save it with numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path} is not a valid .npz file ({error}); save it with numpy.savez"
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path} holds a single array, not an .npz archive; save it with numpy.savez"
        )
    arrays: dict[str, np.ndarray] = {}
    with archive:
        total = 0
        headers = {key: _npy_header(archive, key, path) for key in archive.files}
        for key, (nbytes, has_objects, stored) in headers.items():
            if has_objects:
                raise DataError(
                    f"{path}: array {key!r} holds Python objects, which omnivae never loads; "
                    "store numbers (or fixed-width strings for labels)"
                )
            total += nbytes
            check_load_size(total, str(path), f"array {key!r} (with those before it)")
            if stored < nbytes:
                raise DataError(
                    f"{path}: array {key!r} is truncated: its header promises {_size(nbytes)} "
                    f"of data but the archive holds {_size(max(stored, 0))}; save it again with "
                    "numpy.savez"
                )
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
                raise DataError(
                    f"{path}: array {key!r} cannot be read ({error}); the file is truncated or "
                    "damaged: save it again with numpy.savez"
                ) from error
    return arrays


def _npy_header(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> tuple[int, bool, int]:
    """``(bytes the array will take, holds Python objects, data bytes the member holds)``
    from a member's ``.npy`` header, read without reading (or inflating) the data, so that
    a header claiming terabytes, a zip bomb or a member cut short is reported before
    numpy allocates (or mistakes the short read for something else)."""
    archive_zip = archive.zip
    assert archive_zip is not None  # an NpzFile opened from a file
    member = key if key in archive_zip.namelist() else f"{key}.npy"
    damaged = f"{path}: array {key!r} is truncated or damaged"
    try:
        info = archive_zip.getinfo(member)
        with archive_zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{damaged} ({error}); save it again with numpy.savez") from error
    if dtype.hasobject:
        return 0, True, 0
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return nbytes, False, info.file_size - offset


def _head(path: Path) -> bytes:
    """The first bytes of ``path``: a zip archive starts with ``PK``, a lone ``.npy`` array
    with ``\\x93NUMPY``; numpy's own error for anything else is misleading."""
    try:
        with open(path, "rb") as handle:
            return handle.read(6)
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror or error}); check its permissions") from None
