"""Training stages: what a method trains, with which loss, for how many epochs.

Most methods train everything with one loss. Two-stage methods do not: JNF (Senellart et
al. 2024, Sec. 3.1-3.2) first trains a joint VAE, then freezes it and fits unimodal
posteriors with another loss; JNF-Shared first trains projectors (a stage 0). A method
declares its schedule as a tuple of :class:`Stage` (``Objective.stages``), and the trainer
runs it: a new Adam optimizer over the stage's parameters at every stage boundary, all
other parameters frozen (``requires_grad=False``, so they stay bit-identical), and the
stage recorded in checkpoints so that a resumed run continues inside the right stage.
Nothing inspects the model to guess what to train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Stage", "all_parameters"]


def all_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter of the model (the single-stage default)."""
    return model.parameters()


@dataclass(frozen=True)
class Stage:
    """One stage of training.

    Attributes:
        name: shown in progress bars and the history (``"joint VAE"``).
        objective: ``objective(model, x, mask, kl_weight) -> ObjectiveOutput``.
        epochs: epochs this stage runs.
        parameters: the parameters this stage trains; every other one is frozen.
        warmup: whether the KL warm-up schedule restarts with this stage (it counts steps
            from the stage's start).
    """

    name: str
    objective: Callable
    epochs: int
    # Any: a method's parameter groups take its own model class.
    parameters: Callable[[Any], Iterator[nn.Parameter]] = all_parameters
    warmup: bool = True
