"""SIGINT/SIGTERM during training: finish the step, write a checkpoint, then stop."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

__all__ = ["Stoppable", "catch_signals"]


class Stoppable(Protocol):
    """What the handler needs of the trainer: where to record the signal, and whether a
    checkpoint is being written."""

    _stop_signal: int | None
    _saving: bool


@contextmanager
def catch_signals(owner: Stoppable) -> Iterator[None]:
    """Record SIGINT/SIGTERM in ``owner._stop_signal`` for the loop to stop at the end of
    the step; the previous handlers come back on exit.

    A second signal stops at once (``KeyboardInterrupt``), except while a checkpoint is
    being written: then it is ignored and training stops once the checkpoint is published.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        if owner._saving:  # never break a checkpoint: stop once it is published
            owner._stop_signal = owner._stop_signal or signum
            return
        if owner._stop_signal is not None:  # a second signal stops at once
            raise KeyboardInterrupt
        owner._stop_signal = signum

    previous: dict[signal.Signals, object] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
