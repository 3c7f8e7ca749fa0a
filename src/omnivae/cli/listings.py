"""``omnivae models``, ``omnivae datasets`` and ``omnivae jnf-toy``: the listings and the
JNF paper's toy figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from omnivae.cli.parser import Parser
from omnivae.errors import UserError

__all__ = ["add_listings", "cmd_datasets", "cmd_jnf_toy", "cmd_models"]


def add_listings(sub: argparse._SubParsersAction[Parser]) -> None:
    models = sub.add_parser("models", help="list the registered models and aggregators")
    models.set_defaults(handler=cmd_models)
    datasets = sub.add_parser("datasets", help="list the datasets")
    datasets.set_defaults(handler=cmd_datasets)
    toy = sub.add_parser(
        "jnf-toy",
        help="the JNF paper's Fig. 2 on circles-squares: Gaussian vs flow unimodal posterior in a 2-D latent",
    )
    toy.add_argument("--out", default="jnf_toy.png", help="PNG to write (default jnf_toy.png)")
    toy.add_argument("--epochs", type=int, default=10, help="epochs of each stage (default 10)")
    toy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    toy.add_argument("--no-progress", action="store_true", help="no progress bars")
    toy.set_defaults(handler=cmd_jnf_toy)


def cmd_jnf_toy(args: argparse.Namespace) -> int:
    from omnivae.examples.jnf_toy import run_jnf_toy
    from omnivae.outputs import check_output_file

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out!r}")
    check_output_file(out, "--out")  # before minutes of training
    results = run_jnf_toy(out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    for name, numbers in results.items():
        print(f"{name}: {100 * numbers['full circles']:.1f}% of the circles decoded from its samples are full "
              f"(the square is full); {100 * numbers['inside support']:.1f}% of its samples lie in the true "
              "posterior's support (decode to the square)")
    print(f"wrote {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from omnivae.models import model_table

    print(model_table())
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from omnivae.data import dataset_table

    print(dataset_table())
    return 0
