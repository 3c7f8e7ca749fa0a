"""From a library parameter to the command-line flag that sets it.

Library errors name Python parameters (``UserError(..., parameter="covariance")``); the
command line adds the flag, found among the argparse actions of the command that ran
(``dest`` -> option strings), or ``--set NAME=...`` for a recipe option of a model:

    ...; set covariance='diag' (flag: --covariance diag)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

from omnivae.errors import UserError

__all__ = ["flag_for", "with_flag"]


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    if command is None:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(command)
            return found if isinstance(found, argparse.ArgumentParser) else None
    return None


def _value_in(message: str, parameter: str) -> str | None:
    """The value the message proposes for ``parameter`` (``covariance='diag'`` -> ``diag``)."""
    match = re.search(rf"(?<![\w.]){re.escape(parameter)}=('([^']*)'|\"([^\"]*)\"|([^\s,;)]+))", message)
    if match is None:
        return None
    return next(group for group in match.groups()[1:] if group is not None)


def _is_recipe_option(parameter: str) -> bool:
    from omnivae.models import MODELS

    return any(parameter in recipe.options for recipe in MODELS.values())


def flag_for(
    parser: argparse.ArgumentParser,
    command: str | None,
    parameter: str,
    message: str = "",
    dests: Mapping[str, str] | None = None,
) -> str | None:
    """The flag of ``command`` that sets ``parameter``, with the value ``message`` proposes
    for it; None when no flag does. ``dests`` maps parameters to argparse ``dest`` names
    where they differ.

    >>> from omnivae.cli import build_parser
    >>> parser = build_parser()
    >>> flag_for(parser, "train", "covariance", "use covariance='diag'")
    '--covariance diag'
    >>> flag_for(parser, "train", "latent_dim"), flag_for(parser, "train", "dreg")
    ('--latent-dim', '--dreg')
    >>> flag_for(parser, "train", "w_dim", "w_dim=32 is too large")
    '--set w_dim=32'
    >>> flag_for(parser, "evaluate", "batch_size", dests={"batch_size": "eval_batch_size"})
    '--eval-batch-size'
    >>> flag_for(parser, "sample", "nothing") is None
    True
    """
    sub = _subparser(parser, command)
    if sub is None:
        return None
    dest = (dests or {}).get(parameter, parameter)
    value = _value_in(message, parameter)
    for action in sub._actions:
        if action.dest == dest and action.option_strings:
            option = max(action.option_strings, key=len)
            # A flag that takes a value shows the one proposed, unless it is a Python bool
            # (resume=True stands for "--resume RUN").
            takes_value = action.nargs != 0 and value not in (None, "True", "False")
            return f"{option} {value}" if takes_value else option
    if any(action.dest == "set_options" for action in sub._actions) and _is_recipe_option(parameter):
        return f"--set {parameter}={value if value is not None else '...'}"
    return None


def with_flag(
    err: UserError,
    parser: argparse.ArgumentParser,
    command: str | None,
    dests: Mapping[str, str] | None = None,
) -> str:
    """The one-line message of ``err``, with the flag that sets its parameter added unless
    the message names that flag already."""
    message = str(err)
    if err.parameter is None:
        return message
    flag = flag_for(parser, command, err.parameter, message, dests)
    if flag is None:
        return message
    option = flag.split(" ")[0]
    if re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", message):
        return message
    return f"{message} (flag: {flag})"
