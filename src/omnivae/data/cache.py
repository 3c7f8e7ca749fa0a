"""The on-disk cache for offline dataset builds: ``.npz`` files with a checksum beside them.

A cache file is written atomically (a temporary file in the same folder, then
:func:`os.replace`), so a crash never leaves a half-written file under the final name.
Next to it a small JSON sidecar records the file's size and SHA-256; a cache whose
sidecar is missing or does not match is treated as absent and rebuilt. Files are read
with ``allow_pickle=False`` only: loading a cache never executes code.

The archive is written with fixed zip timestamps, so the same arrays give the same
bytes, and hence the same checksum, on every build.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from omnivae.fileio import atomic_write, sha256_file

__all__ = [
    "cache_dir",
    "sha256_file",
    "sidecar_path",
    "write_npz_atomic",
    "read_verified_npz",
    "cached_npz",
]

_SIDECAR_SUFFIX = ".sha256.json"
# The earliest date a zip header can hold; any fixed value makes the archive reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def cache_dir() -> Path:
    """The folder for dataset caches: ``$OMNIVAE_CACHE`` if set, else ``~/.cache/omnivae``.

    Example:
        >>> isinstance(cache_dir(), Path)
        True
    """
    env = os.environ.get("OMNIVAE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "omnivae"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON checksum file that sits beside the cache file ``path``."""
    path = Path(path)
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    # np.savez stamps each member with the current time; fixed headers keep the bytes stable.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"cache array {key!r} holds Python objects; caches are numeric")
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def write_npz_atomic(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically, with its checksum sidecar.

    Args:
        path: the cache file to write.
        arrays: named numeric arrays (no object arrays).

    Returns:
        The SHA-256 of the written file, as also stored in the sidecar.
    """
    path = Path(path)
    atomic_write(path, lambda tmp: _write_npz(tmp, arrays))
    checksum = sha256_file(path)
    record = {"file": path.name, "size": path.stat().st_size, "sha256": checksum}
    atomic_write(
        sidecar_path(path),
        lambda tmp: tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8"),
    )
    return checksum


def read_verified_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray] | None:
    """Read a cache file if it matches its checksum sidecar, else return ``None``.

    ``None`` covers every way a cache can be unusable: missing file or sidecar, a sidecar
    that is not valid JSON, a size or SHA-256 mismatch, or an archive numpy cannot read.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        return None
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
        if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
            return None
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


def cached_npz(
    filename: str,
    build: Callable[[], dict[str, np.ndarray]],
    folder: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays cached under ``filename``, building and caching them if needed.

    A missing, damaged or mismatching cache is rebuilt with ``build()``. If the cache
    folder cannot be written, the freshly built arrays are returned with a warning.

    Args:
        filename: the cache file's name, including a version (``"polymnist-v1.npz"``).
        build: makes the arrays from scratch; must be deterministic.
        folder: where the cache lives; :func:`cache_dir` when ``None``.
    """
    path = Path(folder).expanduser() if folder is not None else cache_dir()
    path = path / filename
    arrays = read_verified_npz(path)
    if arrays is not None:
        return arrays
    arrays = build()
    try:
        write_npz_atomic(path, arrays)
    except OSError as error:
        warnings.warn(
            f"could not write the dataset cache {path} ({error}); it will be rebuilt next "
            "time. Set OMNIVAE_CACHE to a writable folder to keep it.",
            stacklevel=2,
        )
    return arrays
