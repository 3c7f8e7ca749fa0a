"""The ``omnivae`` command line: parse, dispatch to the library, report.

One module per command group builds its parser and holds its command, a thin call into
the library: :mod:`~omnivae.cli.train` (option merging in :mod:`omnivae.train.options`),
:mod:`~omnivae.cli.impute` (:mod:`omnivae.impute`), :mod:`~omnivae.cli.evaluate`
(``evaluate``, ``sample``), :mod:`~omnivae.cli.benchmark` (``benchmark``, ``reproduce``)
and :mod:`~omnivae.cli.listings` (``models``, ``datasets``, ``jnf-toy``).

Exit status 0 on success and 2 for a user mistake, reported as one line on stderr
(``omnivae: error: ...``) with no traceback; a library error that names a parameter gets
the flag that sets it (:mod:`omnivae.cli.flags`). Nothing is half-written: run files and
outputs are written to temporary names and renamed into place.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Mapping, Sequence

from omnivae import __version__
from omnivae.cli import benchmark, evaluate, impute, listings, train
from omnivae.cli.flags import with_flag
from omnivae.cli.parser import Parser
from omnivae.errors import UserError
from omnivae.train.trainer import TrainingInterrupted

__all__ = ["build_parser", "entry_point", "main"]

#: Per command, the library parameters whose flag's ``dest`` has another name.
DESTS: Mapping[str, Mapping[str, str]] = {"evaluate": evaluate.DESTS, "impute": impute.DESTS, "train": train.DESTS}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``handler``, the function that runs it."""
    parser = Parser(prog="omnivae", description="Multimodal variational autoencoders.")
    parser.add_argument("--version", action="version", version=f"omnivae {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    train.add_train(sub)
    impute.add_impute(sub)
    evaluate.add_evaluate(sub)
    evaluate.add_sample(sub)
    benchmark.add_benchmark(sub)
    benchmark.add_reproduce(sub)
    listings.add_listings(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``omnivae ARGV``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    try:
        args = parser.parse_args(argv)
        command = args.command
        if command is None:
            parser.print_help()
            return 0
        return int(args.handler(args))
    except UserError as err:
        print(f"omnivae: error: {with_flag(err, parser, command, DESTS.get(command or ''))}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"omnivae: error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:  # SIGINT/SIGTERM: the checkpoint is already written
        print(f"omnivae: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("omnivae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (omnivae models | head -1): stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except OSError as err:
        from omnivae.outputs import WRITE_ERRNOS, write_failure

        if err.errno not in WRITE_ERRNOS or err.errno is None:
            raise
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EFBIG):
            line = str(write_failure(err, err.filename or "the output"))
        else:  # a permission or a path problem met anywhere, reading or writing
            line = f"{err.filename or 'a file'}: {os.strerror(err.errno)}; check the path and its permissions"
        print(f"omnivae: error: {line}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        print(
            "omnivae: error: out of memory (" + str(err).splitlines()[0][:120] + "); use a smaller --batch-size, "
            "--latent-dim, --num-samples or --n; nothing was written",
            file=sys.stderr,
        )
        return 2


def _out_of_memory(err: BaseException) -> bool:
    """An allocation failure (CPU or GPU), as opposed to any other error."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test's capture)
        pass


def entry_point() -> None:
    """The ``omnivae`` console script."""
    from omnivae.train.distributed import quiet_other_ranks

    quiet_other_ranks()  # under torchrun, rank 0 alone prints
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
