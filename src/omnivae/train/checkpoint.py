"""Run directories: configuration as JSON, tensors as safetensors, never pickle.

Layout of a run written by ``omnivae train``::

    RUN/config.json                  model, training and dataset configuration, data fingerprint
    RUN/checkpoint.json              the published checkpoint: its generation and checksums
    RUN/checkpoints/gen-000123/      one checkpoint, complete:
        model.safetensors            model parameters and buffers
        state.safetensors            optimizer moments and random generator states (for resume)
        state.json                   progress (epoch, step), optimizer hyper-parameters, checksums
        metrics.json                 per-epoch history
    RUN/.lock                        held (``flock``) by the one process that trains the run

A checkpoint is one unit. Its files are written into a new generation folder that no
reader looks at, each flushed to disk, then the folder; the checkpoint is published by
atomically replacing ``checkpoint.json`` (temporary file, ``fsync``, rename, ``fsync`` of
the run folder), and only then are older generations deleted. Whatever instant a writer
stops at (SIGKILL, power loss, a full disk), ``checkpoint.json`` names a complete
generation, or no checkpoint has been published yet. Readers take no lock: they read the
generation ``checkpoint.json`` names and, should that generation be replaced while they
read it, read the newer one.

Runs written by omnivae before generations (the same four files directly in ``RUN/``,
with no ``checkpoint.json``) are still read. Loading never executes code from the files,
and every JSON file is checked for the shape it must have.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from omnivae import __version__
from omnivae.errors import RunDirError, UserError
from omnivae.fileio import atomic_write_bytes, fsync_dir, json_bytes, write_durable

FORMAT = "omnivae-run/1"
POINTER = "checkpoint.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
FILES = ("model.safetensors", "state.safetensors", "state.json", "metrics.json")
"""The files of one checkpoint, in the order they are written."""

SAVE_DELAY_ENV = "OMNIVAE_TEST_SAVE_DELAY"
"""Seconds to sleep between the files of a checkpoint: only for the crash tests, which
need their kills to land inside saves."""

_GENERATION = re.compile(r"^gen-(\d{6,})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers as ``null``), atomically and durably."""
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a run file; a missing, unreadable or non-object file is a
    :class:`RunDirError` naming it."""
    if not path.is_file():
        raise RunDirError(
            f"{path.parent} is not an omnivae run: {path.name} is missing ({what}); "
            "pass a folder that 'omnivae train' wrote"
        )
    try:
        with open(path, "rb") as f:
            return _json_object(f.read(), path, what)
    except OSError as err:
        raise RunDirError(f"{path} cannot be read ({err.strerror or err}); it holds {what}") from None


def _json_object(data: bytes, path: Path, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is damaged ({err}); it cannot be read as {what}") from None
    except RecursionError:
        raise RunDirError(f"{path} is damaged (JSON nested too deeply); it cannot be read as {what}") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is damaged: it holds a JSON {type(obj).__name__}, not the object of {what}")
    return obj


def _bad(path: Path, message: str) -> RunDirError:
    return RunDirError(f"{path} is damaged: {message}")


def _count(obj: dict, key: str, path: Path) -> int:
    value = obj.get(key)
    if key not in obj:
        raise _bad(path, f"the entry {key!r} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(path, f"{key!r} must be an integer >= 0, got {json.dumps(value)[:40]}")
    return value


def _checksums(obj: dict, key: str, path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """``obj[key]``: a map from file name to hex SHA-256 (only ``names`` are allowed)."""
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise _bad(path, f"{key!r} must map file names to SHA-256 checksums, got a JSON {type(value).__name__}")
    for name, digest in value.items():
        if name not in names:
            raise _bad(path, f"{key!r} names an unknown file {name!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _bad(path, f"the checksum of {name} must be 64 hex digits, got {json.dumps(digest)[:40]}")
    return dict(value)


def validate_progress(progress: dict, path: Path) -> dict:
    """Check that ``state.json`` has the shape :meth:`Trainer.save` writes; returns it."""
    for key in ("epoch", "step_in_epoch", "global_step", "stage"):
        _count(progress, key, path)
    if not isinstance(progress.get("finished", False), bool):
        raise _bad(path, "'finished' must be true or false")
    optimizer = progress.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"]
    ):
        raise _bad(path, "'optimizer' must hold a list 'param_groups' of objects with 'params'")
    _checksums(progress, "sha256", path, ("model.safetensors", "state.safetensors"))
    return progress


# -- the published checkpoint --------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint of a run: where its files are and their checksums.

    ``generation`` is ``None`` for a run in the old flat layout (files directly in the run
    folder, checksums of the two tensor files in ``state.json``).
    """

    run_dir: Path
    folder: Path
    generation: int | None
    sha256: dict[str, str]

    def path(self, name: str) -> Path:
        return self.folder / name

    def read_bytes(self, name: str) -> bytes:
        """The bytes of one file, checked against the published checksum when there is one."""
        path = self.path(name)
        if not path.is_file():
            raise RunDirError(f"{self.run_dir} is not a complete omnivae run: {path.name} is missing")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise RunDirError(f"{path} cannot be read ({err.strerror or err})") from None
        expected = self.sha256.get(name)
        if expected is not None:
            if hashlib.sha256(data).hexdigest() != expected:
                raise RunDirError(f"{path} does not match its recorded checksum: the file was truncated or modified")
        return data

    def progress(self) -> dict:
        """``state.json``, checked; for the old layout its checksums join this checkpoint's."""
        path = self.path("state.json")
        return validate_progress(_json_object(self.read_bytes("state.json"), path, "the training progress"), path)

    def tensors(self, name: str) -> dict[str, Tensor]:
        """A safetensors file of the checkpoint, checked against its checksum."""
        checkpoint = self
        if self.generation is None:  # old layout: state.json holds the tensor checksums
            sha = {**self.sha256, **self.progress().get("sha256", {})}
            checkpoint = Checkpoint(self.run_dir, self.folder, 0, sha)
        path = self.path(name)
        data = checkpoint.read_bytes(name)
        try:
            return load_safetensors_bytes(data)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise RunDirError(f"{path} is not a valid safetensors file ({err})") from None

    def history(self) -> list[dict]:
        """The per-epoch records of ``metrics.json``."""
        path = self.path("metrics.json")
        metrics = _json_object(self.read_bytes("metrics.json"), path, "the training history")
        history = metrics.get("history", [])
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise _bad(path, "'history' must be a list of objects")
        return history


def published_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint ``RUN/checkpoint.json`` publishes (or the old flat layout's), or
    ``None`` when the run has published none yet."""
    run_dir = Path(run_dir)
    pointer_path = run_dir / POINTER
    if pointer_path.is_file() or pointer_path.is_symlink():
        pointer = read_json(pointer_path, "the published checkpoint")
        generation = _count(pointer, "generation", pointer_path)
        sha = _checksums(pointer, "sha256", pointer_path, FILES)
        missing = [name for name in FILES if name not in sha]
        if missing:
            raise _bad(pointer_path, f"no checksum for {', '.join(missing)}")
        # The folder follows from the number: a path read from a file is never trusted.
        return Checkpoint(run_dir, run_dir / CHECKPOINTS / f"gen-{generation:06d}", generation, sha)
    if (run_dir / "state.json").is_file():
        return Checkpoint(run_dir, run_dir, None, {})
    return None


def _pointer_generation(run_dir: Path) -> int | None:
    try:
        checkpoint = published_checkpoint(run_dir)
    except RunDirError:
        return None
    return None if checkpoint is None else checkpoint.generation


def read_published(run_dir: Path, read: Callable[[Checkpoint], T], attempts: int = 20) -> T:
    """``read(checkpoint)`` on the run's published checkpoint.

    A run being trained publishes a new generation and deletes the old one while a reader
    may be reading it; when reading fails and ``checkpoint.json`` has moved on, the reader
    reads the newer generation, so it never reports damage that is not there.
    """
    run_dir = Path(run_dir)
    for _attempt in range(attempts):
        checkpoint = published_checkpoint(run_dir)
        if checkpoint is None:
            raise no_checkpoint_error(run_dir)
        try:
            return read(checkpoint)
        except RunDirError:
            if checkpoint.generation is None or _pointer_generation(run_dir) == checkpoint.generation:
                raise
    raise RunDirError(f"{run_dir}: its checkpoint kept changing while it was read; try again")


def no_checkpoint_error(run_dir: Path) -> RunDirError:
    return RunDirError(
        f"{run_dir} stopped before its first checkpoint, so it holds no trained model; "
        f"start it again with: omnivae train --out {run_dir} --overwrite (and the options it was started with)"
    )


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """Load a safetensors file, checking its checksum when one is recorded."""
    path = Path(path)
    sha = {} if expected_sha256 is None else {path.name: expected_sha256}
    return Checkpoint(path.parent, path.parent, 0, sha).tensors(path.name)  # generation 0: only ``sha``


# -- writing a checkpoint ------------------------------------------------------------------
def _generations(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _GENERATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def publish_checkpoint(run_dir: Path, files: dict[str, bytes]) -> int:
    """Write a complete checkpoint (every name of :data:`FILES`) and publish it.

    Returns the new generation. Generation folders that were never published and
    temporary files (a writer stopped inside a save) are removed first; the caller holds the run's lock, so no one
    else writes them. On any error before publication, the new folder is removed and the
    previous checkpoint stays published, untouched.
    """
    run_dir = Path(run_dir)
    assert set(files) == set(FILES), sorted(files)
    current = _pointer_generation(run_dir)
    for number, folder in _generations(run_dir):
        if number != current:
            shutil.rmtree(folder, ignore_errors=True)
    for name in (POINTER, "config.json"):  # temporary files of a writer killed before its rename
        for stale in run_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    generation = (current or 0) + 1
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        root.mkdir()
        fsync_dir(run_dir)
    folder = root / f"gen-{generation:06d}"
    delay = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
    try:
        folder.mkdir()
        for name in FILES:
            if delay:
                time.sleep(delay)
            write_durable(folder / name, files[name])
        fsync_dir(folder)
        fsync_dir(root)
        if delay:
            time.sleep(delay)
        pointer = {
            "format": FORMAT,
            "omnivae_version": __version__,
            "generation": generation,
            "sha256": {name: hashlib.sha256(files[name]).hexdigest() for name in FILES},
        }
        atomic_write_bytes(run_dir / POINTER, json_bytes(pointer))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # Published: the older generations, and the files of the old flat layout, are no longer read.
    for number, old in _generations(run_dir):
        if number != generation:
            shutil.rmtree(old, ignore_errors=True)
    for name in FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink(missing_ok=True)
    return generation


def write_error(run_dir: Path, err: OSError, what: str, previous: Checkpoint | None, progress: dict | None) -> UserError:
    """The one line for a checkpoint or run file that could not be written (a full disk,
    an I/O error, a read-only folder)."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        remedy = "free some space"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        remedy = "make the folder writable"
    else:
        remedy = "fix the disk"
    if previous is None:
        kept = "no checkpoint had been published yet"
        again = f"then start again with: omnivae train --out {run_dir} --overwrite (and the same options)"
    else:
        step = progress.get("global_step") if progress else None
        kept = "the previous checkpoint" + (f" (global step {step})" if step is not None else "") + " is intact"
        again = f"then continue with: omnivae train --resume {run_dir}"
    return UserError(f"could not write {what} in {run_dir} ({reason}); {kept}; {remedy}, {again}")


# -- one writer per run --------------------------------------------------------------------
class RunLock:
    """The advisory lock (``flock`` on ``RUN/.lock``) held by the one process that trains
    a run; the operating system releases it when the process ends, however it ends."""

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock of ``run_dir`` (created if needed), or raise :class:`RunDirError`
        naming the process that holds it."""
        run_dir = Path(run_dir)
        holder = lock_holder(run_dir)  # before anything is created in a folder another process trains
        if holder is not None:
            raise busy_error(run_dir, holder)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot create the run folder {run_dir} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy_error(run_dir, lock_holder(run_dir) or 0) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message of a second writer
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process training ``run_dir`` (0 if it wrote none yet), or ``None``
    when no process holds its lock. Creates nothing."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_error(run_dir: Path, pid: int) -> RunDirError:
    who = f"pid {pid}" if pid else "pid unknown"
    return RunDirError(
        f"{run_dir} is being trained by another process ({who}); wait for it to finish "
        f"(or stop it: omnivae train --resume {run_dir} continues it later), or pick another run_dir",
        parameter="run_dir",
    )


# -- run folders ---------------------------------------------------------------------------
RUN_ENTRIES = (
    "config.json", POINTER, CHECKPOINTS, *FILES, "eval.json", "report.md", "figures",
)
"""What ``omnivae`` writes in a run folder (``--overwrite`` removes these and nothing else)."""


def run_dir_is_empty(run_dir: Path) -> bool:
    """True for a folder that does not exist or holds nothing but a lock file."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or all(entry.name == LOCK for entry in run_dir.iterdir())


def clear_run(run_dir: Path) -> None:
    """Remove what omnivae wrote in ``run_dir`` (the caller holds its lock and checked that
    it is an omnivae run); files the user put there stay."""
    run_dir = Path(run_dir)
    (run_dir / POINTER).unlink(missing_ok=True)  # unpublish first: a reader then sees no checkpoint
    fsync_dir(run_dir)
    for name in RUN_ENTRIES:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    for entry in run_dir.glob(".*.tmp"):  # temporary files of an interrupted atomic write
        entry.unlink(missing_ok=True)
    fsync_dir(run_dir)


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimizer state as flat tensors plus JSON-able hyper-parameters."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optimizer/{index}/{key}"] = torch.as_tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer/"):
            continue
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def check_run_dir(run_dir: Path) -> dict:
    """The run's config, or a clear error when ``run_dir`` is not an omnivae run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; pass the folder that 'omnivae train' wrote")
    config = read_json(run_dir / "config.json", "the run configuration")
    if config.get("format") != FORMAT:
        raise RunDirError(
            f"{run_dir}/config.json is not an omnivae run configuration of format {FORMAT} "
            f"(found {str(config.get('format'))[:40]!r}, written by omnivae {str(config.get('omnivae_version', '?'))[:40]})"
        )
    for key, kind in (("model", dict), ("train", dict), ("dataset", dict)):
        if not isinstance(config.get(key), kind):
            raise RunDirError(f"{run_dir}/config.json lacks the object {key!r}; it is not a complete run configuration")
    return config


def model_metadata(config: dict) -> dict[str, str]:
    return {"format": FORMAT, "omnivae_version": __version__, "model": str(config["model"]["model"])}
