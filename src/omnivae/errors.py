"""Exceptions that signal a user mistake.

Every error a user can cause (an unknown name, a missing file, data of the wrong shape)
raises :class:`UserError` or a subclass. The command line turns these into one line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what is wrong and what to do.

    Library code words its messages for Python callers: it names parameters
    (``covariance='diag'``), never command-line flags. ``parameter`` names the parameter at
    fault, when there is one, so that the command line can add the flag that sets it.
    """

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class DataError(UserError):
    """Data that cannot be used as given: wrong shapes, NaN values, missing files."""


class RunDirError(UserError):
    """A directory that is not a usable omnivae run."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint was kept.

    A user error (exit status 2 on the command line, one line) because the remedy is the
    user's: a lower learning rate or cleaner data. Also a :class:`FloatingPointError`, which
    the trainer raised before, so existing handlers keep catching it.
    """


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UserError:
    """The standard error for a name that is not in a registry, listing the valid ones."""
    return UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}")
