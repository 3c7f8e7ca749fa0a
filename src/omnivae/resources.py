"""Up-front memory estimates: refuse, in one line, settings whose memory cannot fit.

A ``--latent-dim`` of 10**9, a ``--num-samples`` of 10**6 or a ``sample --n`` of 10**9
would otherwise fail minutes later inside an allocation (or get the process killed by the
kernel), possibly after writing part of a run. The estimates here are lower bounds, so a
setting they refuse cannot fit, and a setting they pass may still fail at allocation (the
command line then reports the allocation failure as one line, see :mod:`omnivae.cli`):

- training: every parameter held four times (weights, gradient, Adam's two moments), plus
  the decoded batch, ``K * batch * sum(modality sizes)`` floats held twice (the
  reconstruction and its likelihood terms);
- sampling: ``n * sum(modality sizes)`` floats, held twice (samples and image grid).

Parameters are counted by building the networks on PyTorch's ``meta`` device, which
allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from omnivae.data.base import ModalitySpec
from omnivae.errors import UserError

__all__ = ["available_memory", "count_parameters", "check_train_memory", "check_sample_memory"]

_FLOAT = 4  # bytes


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` (``MemAvailable`` on Linux, free
    memory on a GPU); ``None`` where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def count_parameters(model_config: Any, modalities: Sequence[ModalitySpec]) -> int | None:
    """Parameters of the model (and objective) ``model_config`` builds, counted without
    allocating; ``None`` if the build cannot run on the ``meta`` device."""
    from omnivae.models import build_model

    try:
        with torch.device("meta"):
            model, objective = build_model(model_config, tuple(modalities))
    except Exception:  # noqa: BLE001 - an estimate only: a build the meta device cannot run is not checked
        return None
    total = sum(p.numel() for p in model.parameters())
    if isinstance(objective, torch.nn.Module):
        total += sum(p.numel() for p in objective.parameters())
    return int(total)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _sizes(modalities: Sequence[ModalitySpec]) -> int:
    return sum(math.prod(m.shape) for m in modalities)


def check_train_memory(
    model_config: Any, modalities: Sequence[ModalitySpec], batch_size: int, device: torch.device | str = "cpu"
) -> None:
    """Refuse a model and batch whose training memory (a lower bound) exceeds what is free.

    Raises:
        UserError: naming the estimate, what is free and the flags to lower.
    """
    free = available_memory(device)
    if free is None:
        return
    params = count_parameters(model_config, modalities)
    samples = max(int(getattr(model_config, "num_samples", 1) or 1), 1)
    decoded = samples * batch_size * _sizes(modalities) * _FLOAT * 2
    need = (params or 0) * _FLOAT * 4 + decoded
    if need > free:
        what = f"{params:,} parameters" if params is not None else "the model"
        raise UserError(
            f"training needs at least {_gib(need)} of memory ({what} x 4 copies for weights, gradients "
            f"and Adam, plus {samples} sample(s) x batch {batch_size} of decoded data), but {_gib(free)} is "
            "free; lower --latent-dim, --hidden, --num-samples or --batch-size"
        )


def check_sample_memory(modalities: Sequence[ModalitySpec], n: int, flag: str, device: torch.device | str = "cpu") -> None:
    """Refuse ``n`` samples of every modality whose memory (a lower bound) exceeds what is free.

    Raises:
        UserError: naming the estimate and what is free.
    """
    free = available_memory(device)
    need = n * _sizes(modalities) * _FLOAT * 2
    if free is not None and need > free:
        raise UserError(
            f"{flag} {n} needs at least {_gib(need)} of memory for the samples, but {_gib(free)} is free; "
            f"ask for fewer ({flag} {max(int(free // max(need // n, 1)), 1):,} at most)"
        )
