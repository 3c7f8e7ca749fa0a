"""Checks on where a command writes, made before any work, and write failures as one line.

Commands write their outputs to a temporary name and rename it into place
(:mod:`omnivae.fileio`), so a failed write leaves nothing behind; what remains is to
refuse, before minutes of work, a place that cannot take the output (a path under a file,
a folder where a file belongs, a read-only folder), and to turn a write that fails anyway
(a full disk) into one line instead of a traceback.

``os.access`` is the writability test: it honours read-only mounts even for root, while
the permission bits do not bind root (who may write there anyway).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from omnivae.errors import UserError

__all__ = ["check_output_file", "check_output_folder", "WRITE_ERRNOS", "write_failure"]

#: ``errno`` values of a write that fails for a reason in the user's hands: space, quota,
#: permissions, a read-only file system, a path through a file or onto a folder.
WRITE_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.EFBIG,
        errno.ENAMETOOLONG,
    )
    if code is not None
)

_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "write somewhere you may write",
    errno.EPERM: "write somewhere you may write",
}


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _refused(flag: str, message: str) -> UserError:
    """The error for an output that cannot be written. ``flag`` is the command line's flag
    (``--out``) or, from the library, the parameter (``output``), which the error carries."""
    return UserError(message, parameter=None if flag.startswith("-") else flag)


def _check_place(path: Path, flag: str, must_exist_parent: bool) -> None:
    parent = Path(os.path.abspath(path)).parent
    if must_exist_parent and not parent.exists():
        blocker = _nearest_existing(parent)
        if blocker.is_dir():
            raise _refused(flag, f"{flag} {path}: the folder {parent} does not exist")
    blocker = _nearest_existing(parent)
    if not blocker.is_dir():
        raise _refused(flag, f"{flag} {path}: {blocker} is a file, not a folder; pick another {flag}")
    if not os.access(blocker, os.W_OK | os.X_OK):
        raise _refused(flag, f"{flag} {path}: the folder {blocker} is read-only here; pick another {flag}")


def check_output_file(path: str | os.PathLike[str], flag: str, must_exist_parent: bool = True) -> None:
    """Refuse an output file ``path`` that cannot be written: its folder missing
    (``must_exist_parent``), under a file or read-only, or ``path`` itself a folder.

    Raises:
        UserError: one line naming ``flag`` and what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise _refused(flag, f"{flag} {path} is a folder; name a file")
    _check_place(path, flag, must_exist_parent)


def check_output_folder(path: str | os.PathLike[str], flag: str, must_exist_parent: bool = False) -> None:
    """Refuse an output folder ``path`` that cannot be made or written: a file, under a
    file, or in (or itself) a read-only folder.

    Raises:
        UserError: one line naming ``flag`` and what is in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise _refused(flag, f"{flag} {path} is a file, not a folder; pick another {flag}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise _refused(flag, f"{flag} {path} is read-only here; pick another {flag}")
        return
    _check_place(path, flag, must_exist_parent)


def write_failure(error: OSError, what: str) -> UserError:
    """The one line for a failed write of ``what`` (the temporary file is already gone).

    Example:
        >>> str(write_failure(OSError(28, "No space left on device"), "out.npz"))
        'cannot write out.npz: No space left on device; nothing was written (free some space or write elsewhere)'
    """
    # os.strerror, not the error's own text: h5py's spans several lines of C-level detail.
    reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    hint = _HINTS.get(error.errno or 0, "check the path")
    return UserError(f"cannot write {what}: {reason}; nothing was written ({hint})")
