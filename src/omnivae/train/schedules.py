"""Schedules the trainer declares: per-step factors such as the KL weight of beta warm-up.

A schedule is a pure function of training progress, never state stored in a model, so
resuming a run recomputes it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearWarmup:
    """KL weight rising linearly from 0 to 1 over ``epochs`` epochs, updated every step.

    As in MVAE's and MultiVae's annealing (Wu & Goodman 2018, Sec. 5; Bowman et al. 2016).
    ``epochs=0`` disables warm-up (weight 1 from the start).
    """

    epochs: float = 0.0

    def __call__(self, global_step: int, steps_per_epoch: int) -> float:
        if self.epochs <= 0:
            return 1.0
        return min(1.0, (global_step + 1) / (self.epochs * steps_per_epoch))
