"""``omnivae export RUN OUT``: a run as a Hugging Face Hub folder (:mod:`omnivae.hub`)."""

from __future__ import annotations

import argparse

from omnivae.cli.parser import Parser

__all__ = ["add_export", "cmd_export"]


def add_export(sub: argparse._SubParsersAction[Parser]) -> None:
    export = sub.add_parser(
        "export",
        help="write a run as a Hugging Face Hub folder: model.safetensors, config.json, README.md model card",
        description="Write RUN as a pretrained folder that omnivae.hub.from_pretrained loads; --push uploads it.",
    )
    export.add_argument("run", help="run directory written by 'omnivae train'")
    export.add_argument("out", help="folder to write (new or empty)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier exported folder at OUT")
    export.add_argument("--push", metavar="REPO_ID", help="then upload it to this Hub repo (needs huggingface_hub)")
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from omnivae.hub import push_to_hub, save_pretrained

    out = save_pretrained(args.run, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: model.safetensors, config.json, README.md (load it with omnivae.hub.from_pretrained)")
    if args.push:
        print(f"pushed {out} to {push_to_hub(out, args.push)}")
    return 0
