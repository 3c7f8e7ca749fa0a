"""``omnivae benchmark`` and ``omnivae reproduce``: their flags, and the commands, which call
:func:`omnivae.benchmark.run_benchmark` and :func:`omnivae.reproduce.reproduce`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omnivae.cli.evaluate import add_eval_options, eval_options
from omnivae.cli.parser import Parser, finite_float
from omnivae.errors import UserError

__all__ = ["add_benchmark", "add_reproduce", "cmd_benchmark", "cmd_reproduce"]

DEFAULT_DATASET = "polymnist"


def add_benchmark(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "benchmark",
        help="train and evaluate models x seeds, resumably, and tabulate",
        description="Train and evaluate every model x seed into OUT (resuming what is unfinished) "
        "and write results.md, results.csv and figures/.",
    )
    p.add_argument("--models", default="poe,moe,mopoe,wb,mwb", help="comma-separated model names")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"dataset name, npz:FILE, csv:DIR or hdf5:FILE (default {DEFAULT_DATASET}; see 'omnivae datasets')")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model, 0 .. N-1 (default 3)")
    p.add_argument("--betas", help="comma-separated betas: train every model once per beta (a sweep) and plot "
                   "probe and coherence against reconstruction error")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every run (default 10)")
    p.add_argument("--out", required=True, help="benchmark folder")
    p.add_argument("--metrics", help="comma-separated: coherence,probe,likelihood,fd,recon,clustering (default all)")
    p.add_argument("--latent-dim", type=int, help="latent size of every model (default 32)")
    p.add_argument("--beta", type=finite_float, help="weight of the KL term of every model (default 1)")
    p.add_argument("--aggregator", help="swap every model's aggregation: poe, moe, mopoe, wb, mwb (default: each model's own)")
    p.add_argument("--aggregator-weights", help="barycentric weights of poe, mopoe, wb, mwb: uniform, learned (per "
                   "modality), attention (per sample) or one number per modality, comma separated (default uniform)")
    p.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE",
                   help="a method-specific option (repeatable), given to the models that have KEY; "
                   "'omnivae models' lists them")
    p.add_argument("--missing-rate", type=finite_float,
                   help="hide each modality at random with this probability during training (default 0)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    p.add_argument("--lr", type=finite_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--backbone", help="network family: auto, mlp, conv, resnet (default auto)")
    p.add_argument("--hidden", help="MLP hidden widths, comma separated (default 512,512)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--data-dir", help="folder with the dataset's real files, where it needs them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_eval_options(p)
    p.set_defaults(handler=cmd_benchmark)


def add_reproduce(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run a paper's protocol (barycentric, jnf, mmvamp) and compare with its published numbers",
        description="Train and evaluate a paper's models through 'omnivae benchmark' (resumable) and write "
        "OUT/reproduce.md: our table beside the paper's, and each of its claims marked reproduced or not.",
    )
    p.add_argument("paper", help="barycentric, jnf or mmvamp")
    p.add_argument("--scale", default="cpu", help="cpu (reduced protocol on offline data, minutes) or full "
                   "(the paper's protocol on the real files, GPU hours; default cpu)")
    p.add_argument("--out", help="folder for the runs and reproduce.md (default reproduce/PAPER-SCALE)")
    p.add_argument("--data-dir", help="folder with the datasets' real files, where they need them")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, steps, expected hours) and write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_reproduce)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from omnivae.benchmark import options_for, run_benchmark
    from omnivae.models import MODELS, ModelConfig
    from omnivae.outputs import check_output_folder
    from omnivae.train import TrainConfig
    from omnivae.train.options import absolute_dataset, parse_hidden, parse_set

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UserError(f"--models {args.models!r} names no model; give comma-separated names such as poe,mwb (see 'omnivae models')")
    model_options: dict[str, Any] = {}
    for key in ("latent_dim", "beta", "backbone", "aggregator", "aggregator_weights"):
        if getattr(args, key) is not None:
            model_options[key] = getattr(args, key)
    if args.hidden is not None:
        model_options["hidden"] = parse_hidden(args.hidden)
    if args.set_options:
        model_options["options"] = dict(parse_set(item) for item in args.set_options)
    train_options: dict[str, Any] = {"epochs": args.epochs, "device": args.device, "progress": not args.no_progress}
    for key in ("batch_size", "lr", "missing_rate"):
        if getattr(args, key) is not None:
            train_options[key] = getattr(args, key)
    betas = None
    if args.betas is not None:
        try:
            betas = [float(b) for b in args.betas.split(",") if b.strip()]
        except ValueError:
            raise UserError(f"--betas must be comma-separated numbers, got {args.betas!r}") from None
        if "beta" in model_options:
            raise UserError("give either --beta or --betas, not both")
    # Check every setting before the benchmark folder is made: a mistake must not leave
    # an empty folder (or half the runs) behind.
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    for name in models:
        ModelConfig(model=name, **options_for(name, model_options)).validate()
    unused = sorted(set(model_options.get("options", {})) - {k for m in models if m in MODELS for k in MODELS[m].options})
    if unused:
        raise UserError(f"--set {', '.join(unused)}: none of the models ({', '.join(models)}) has this option; "
                        "'omnivae models' lists each model's options")
    TrainConfig(**train_options).validate()
    check_output_folder(args.out, "--out")
    evaluation = eval_options(args, args.metrics)
    summary = run_benchmark(models, absolute_dataset(args.dataset), args.seeds, Path(args.out), model_options,
                            train_options, evaluation, data_dir=args.data_dir, betas=betas)
    print((Path(args.out) / "results.md").read_text())
    return 0 if summary else 2


def cmd_reproduce(args: argparse.Namespace) -> int:
    from omnivae.reproduce import get_preset, plan, reproduce

    preset = get_preset(args.paper, args.scale)
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    if args.dry_run:
        print(plan(preset, args.seeds))
        return 0
    out = Path(args.out or f"reproduce/{args.paper}-{args.scale}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    text = reproduce(preset, out, seeds=args.seeds, data_dir=args.data_dir, device=args.device,
                     progress=not args.no_progress)
    print(text)
    print(f"wrote {out / 'reproduce.md'}")
    return 0
