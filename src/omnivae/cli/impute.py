"""``omnivae impute``: its flags, and the command, which calls :func:`omnivae.impute.impute_file`."""

from __future__ import annotations

import argparse

from omnivae.cli.parser import Parser

__all__ = ["add_impute", "cmd_impute"]

#: The library's parameters whose flag has another name.
DESTS = {"source": "input"}


def add_impute(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "impute",
        help="fill missing modalities of a CSV folder, an HDF5 file or an npz file",
        description=(
            "Fill the masked or absent modalities of your data with a trained model. The input "
            "is a CSV folder (one <modality>.csv each, as csv:DIR), an .h5/.hdf5 file or an .npz "
            "file; the output is written in the same format."
        ),
    )
    p.add_argument("run", help="run directory written by 'omnivae train'")
    p.add_argument(
        "--input",
        required=True,
        help="a CSV folder, .h5/.hdf5 or .npz file: one modality each, missing rows empty or masked (mask_<name>)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="where to write every modality, filled, in the input's format (a folder, .h5/.hdf5 or .npz)",
    )
    p.add_argument("--batch-size", type=int, default=512, help="rows imputed at once (default 512)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--force", action="store_true", help="replace an existing --output (never done without it)")
    p.set_defaults(handler=cmd_impute)


def cmd_impute(args: argparse.Namespace) -> int:
    from omnivae.impute import impute_file

    result = impute_file(args.run, args.input, args.output, batch_size=args.batch_size, device=args.device,
                         force=args.force)
    print(result.summary())
    return 0
