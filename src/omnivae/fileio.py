"""Safe file writing shared by every layer: write to a temporary file, then rename.

A reader never sees a half-written file: each write goes to a temporary name in the
destination folder and is moved into place with :func:`os.replace`, which is atomic on
POSIX file systems. :func:`atomic_write_bytes` also flushes the file and its folder to
disk (``fsync``), so the new content survives a power loss once it returns. Checksums let
readers detect truncated or modified files. Every JSON the project writes goes through
:func:`json_bytes`: strict JSON, never a ``NaN`` or ``Infinity`` token.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "sha256_file", "fsync_dir", "json_bytes", "finite_or_none", "write_durable"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    fsync_dir(Path(path).parent)


def write_durable(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` with ``data`` and flush it to disk (no rename: for files in a folder
    that no reader looks at until it is published)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform that cannot open folders (Windows) has no use for this
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still holds
        pass
    finally:
        os.close(fd)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    """Strict JSON (RFC 8259) for a file: non-finite numbers become ``null``, since
    ``NaN``/``Infinity`` tokens are not JSON and break other readers."""
    return (json.dumps(finite_or_none(obj), indent=indent, allow_nan=False) + "\n").encode()


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
