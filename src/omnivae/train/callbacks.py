"""Callbacks: code of your own that the trainer calls as training goes.

Subclass :class:`Callback`, override the hooks you need and pass instances to the trainer
(``Trainer(..., callbacks=[...])`` or ``omnivae.train.train(..., callbacks=[...])``). The
experiment trackers of :mod:`omnivae.train.tracking` are callbacks too.

A callback observes; it must not change the model or the optimiser. A callback that
raises never costs the run: :class:`CallbackList` logs one warning naming it and the
error, stops calling it, and training goes on (the same checkpoints, the same numbers).

Example:
    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, trainer, record):
    ...         print(record["epoch"], round(record["train_loss"], 2))
    >>> Trainer(model, objective, data, config, callbacks=[PrintLoss()]).fit()  # doctest: +SKIP
    1 1523.4
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor

from omnivae.stages import Stage

if TYPE_CHECKING:
    from omnivae.train.trainer import Trainer

__all__ = ["Callback", "CallbackList", "StepEnd", "TrainStatus"]

TrainStatus = Literal["finished", "interrupted", "failed"]
"""How :meth:`Callback.on_train_end` found training: done, stopped by a signal, or an error."""


@dataclass(frozen=True)
class StepEnd:
    """One optimisation step, as :meth:`Callback.on_step_end` sees it.

    Attributes:
        step: The global step just taken, counted from 1.
        epoch: The epoch it belongs to, counted from 1.
        terms: The objective's loss and named terms: detached tensors on the training
            device. Reading one (``float(t)``) waits for the device, so read them only
            every few steps.
        kl_weight: The KL weight of this step (beta warm-up, ``TrainConfig.warmup_epochs``).
        lr: The learning rate of this step.
        rows: The samples in this step's batch.
    """

    step: int
    epoch: int
    terms: Mapping[str, Tensor]
    kl_weight: float
    lr: float
    rows: int


class Callback:
    """Hooks the trainer calls; each does nothing unless overridden.

    ``trainer`` is the running :class:`~omnivae.train.Trainer` (its ``config``,
    ``run_dir``, ``global_step``, ``history`` and ``model`` can be read).
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`Trainer.fit` (also when it resumes a run)."""

    def on_step_end(self, trainer: Trainer, step: StepEnd) -> None:
        """After each optimisation step."""

    def on_epoch_end(self, trainer: Trainer, record: Mapping[str, Any]) -> None:
        """After each epoch, with the epoch's entry of ``metrics.json`` (mean ``train_*``
        terms, ``test_*`` terms when there is a test split, ``seconds``,
        ``samples_per_second``), before its checkpoint is written."""

    def on_stage_change(self, trainer: Trainer, index: int, stage: Stage) -> None:
        """When a method with several stages (JMVAE, JNF) enters stage ``index`` (from 0)."""

    def on_checkpoint(self, trainer: Trainer, run_dir: Path) -> None:
        """After a checkpoint of the run in ``run_dir`` was published."""

    def on_train_end(self, trainer: Trainer, status: TrainStatus) -> None:
        """When :meth:`Trainer.fit` returns or raises (``status`` says which)."""

    def on_evaluate(self, results: Mapping[str, float], step: int | None) -> None:
        """Evaluation results (flat ``name -> value``), e.g. from ``omnivae evaluate``;
        ``step`` is the training step they belong to, when known."""


class CallbackList:
    """Calls every callback's hook in order; one that raises is warned about once, then
    left out, so that tracking never stops training."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: list[Callback] = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                from omnivae.errors import UserError

                raise UserError(
                    f"callbacks must be omnivae.train.Callback instances, got {type(callback).__name__}",
                    parameter="callbacks",
                )
        self.failed: dict[int, BaseException] = {}

    def __len__(self) -> int:
        return len(self.callbacks)

    def call(self, hook: str, *args: object) -> None:
        """``callback.<hook>(*args)`` for every callback that has not failed yet."""
        for callback in self.callbacks:
            if id(callback) in self.failed:
                continue
            try:
                getattr(callback, hook)(*args)
            except Exception as err:  # a tracker's bug or a full disk must not lose the run
                self.failed[id(callback)] = err
                warnings.warn(
                    f"callback {type(callback).__name__} failed in {hook} ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else 'no message'}); training goes on without it",
                    RuntimeWarning,
                    stacklevel=2,
                )


def flat_numbers(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested results (``eval.json``) as ``"a/b/c" -> value``;
    booleans, texts and lists are left out."""
    out: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def as_callbacks(callbacks: Sequence[Callback] | CallbackList | None) -> CallbackList:
    """A :class:`CallbackList` from what a caller passed (``None``: none)."""
    if isinstance(callbacks, CallbackList):
        return callbacks
    return CallbackList(callbacks or ())
