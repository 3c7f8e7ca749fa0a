"""Training settings and the small pieces of the loop that need no trainer state: the
device choice and the random hiding of modalities (``TrainConfig.missing_rate``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from omnivae.configs import check_field_types
from omnivae.errors import UserError, unknown_name
from omnivae.nn.precision import PRECISIONS
from omnivae.train import distributed

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")

__all__ = ["COMPILE_MODES", "TrainConfig", "resolve_device", "hide_modalities"]


@dataclass
class TrainConfig:
    """Optimisation settings; stored in the run's ``config.json``."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    warmup_epochs: float = 0.0
    missing_rate: float = 0.0
    progress: bool = True
    precision: str = "fp32"
    compile: str = "none"

    def validate(self, num_samples: int | None = None) -> None:
        check_field_types(self)
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not -(2**63) <= self.seed < 2**64:  # what torch.manual_seed takes
            raise UserError(f"--seed must be an integer from -2**63 to 2**64 - 1, got {self.seed}")
        processes = distributed.world_size()
        if processes > 1 and self.batch_size < processes:
            raise UserError(
                f"--batch-size {self.batch_size} is smaller than the {processes} processes torchrun started; "
                "the batch is split among them, so give at least one row each"
            )
        if num_samples is not None and self.batch_size > num_samples:
            raise UserError(
                f"--batch-size {self.batch_size} is larger than the {num_samples} training samples; "
                f"use at most {num_samples}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise UserError(f"--missing-rate must be in [0, 1), got {self.missing_rate}")
        if self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if self.precision not in PRECISIONS:
            raise unknown_name("--precision", self.precision, tuple(PRECISIONS))
        if self.compile not in COMPILE_MODES:
            raise unknown_name("--compile", self.compile, COMPILE_MODES)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for an absent device is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are present")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def hide_modalities(mask: Tensor, rate: float) -> Tensor:
    """Hide each observed modality with probability ``rate``, keeping one per row.

    A row whose draws would hide everything keeps one of its observed modalities, chosen
    uniformly, so every row stays encodable. ``mask`` is ``[M, B]``.
    """
    if rate <= 0:
        return mask
    keep = mask & (torch.rand(mask.shape, device=mask.device) >= rate)
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    rescue = torch.zeros_like(mask).scatter_(0, scores.argmax(0, keepdim=True), True) & mask
    return torch.where(keep.any(0, keepdim=True), keep, rescue)
