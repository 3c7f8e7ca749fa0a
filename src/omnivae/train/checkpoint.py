"""Run directories: configuration as JSON, tensors as safetensors, never pickle.

Layout of a run written by ``omnivae train``::

    RUN/config.json          model, training and dataset configuration
    RUN/model.safetensors    model parameters and buffers
    RUN/state.safetensors    optimizer moments and random generator states (for resume)
    RUN/state.json           progress (epoch, step), optimizer hyper-parameters, checksums
    RUN/metrics.json         per-epoch history

Every file is written to a temporary name and renamed into place, so a run directory
never holds a half-written file. Loading never executes code from the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from omnivae import __version__
from omnivae.fileio import atomic_write, atomic_write_bytes, sha256_file
from omnivae.errors import RunDirError

FORMAT = "omnivae-run/1"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors atomically; returns the file's sha256."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))
    return sha256_file(path)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RunDirError(
            f"{path.parent} is not an omnivae run: {path.name} is missing ({what}); "
            "pass a folder that 'omnivae train' wrote"
        )
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is damaged ({err}); it cannot be read as {what}") from None


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """Load a safetensors file, checking its checksum when one is recorded."""
    if not path.is_file():
        raise RunDirError(f"{path.parent} is not a complete omnivae run: {path.name} is missing")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise RunDirError(f"{path} does not match its recorded checksum: the file was truncated or modified")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{path} is not a valid safetensors file ({err})") from None


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
            f"(found {config.get('format')!r}, written by omnivae {config.get('omnivae_version', '?')})"
        )
    return config


def model_metadata(config: dict) -> dict[str, str]:
    return {"format": FORMAT, "omnivae_version": __version__, "model": str(config["model"]["model"])}
