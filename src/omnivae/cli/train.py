"""``omnivae train``: its flags, and the command, which merges them (:mod:`omnivae.train.options`)
and hands the run to :func:`omnivae.train.train`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from omnivae.cli.parser import Parser, finite_float
from omnivae.errors import UserError
from omnivae.train.options import DEFAULT_MODEL, DEFAULT_TRAIN_DATASET

__all__ = ["add_train", "cmd_train", "next_commands"]

#: The library's parameters whose flag has another name.
DESTS = {"run_dir": "out"}


def add_train(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: mwb on mnist-text)",
        description="Train a multimodal VAE and write a run directory.",
    )
    p.add_argument("--model", help=f"registered model name (default {DEFAULT_MODEL}; see 'omnivae models')")
    p.add_argument("--dataset", help=f"dataset name, npz:FILE, csv:DIR or hdf5:FILE (default {DEFAULT_TRAIN_DATASET}; see 'omnivae datasets')")
    p.add_argument("--data-dir", help="folder with a dataset's real files, where it needs them")
    p.add_argument("--aggregator", help="swap the model's aggregation: poe, moe, mopoe, wb, mwb")
    p.add_argument("--aggregator-weights", help="barycentric weights of poe, mopoe, wb, mwb: uniform, learned (per "
                   "modality), attention (per sample) or one number per modality, comma separated (default uniform)")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--latent-dim", type=int, help="latent size (default 32)")
    p.add_argument("--beta", type=finite_float, help="weight of the KL term (default 1)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--lr", type=finite_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--missing-rate", type=finite_float, help="hide each modality at random with this probability during training")
    p.add_argument("--precision", help="network arithmetic: fp32, or bf16/fp16 mixed precision for the encoder and decoder networks (default fp32)")
    p.add_argument("--compile", help="torch.compile the training step: none, default, reduce-overhead (CUDA graphs) or max-autotune (default none)")
    p.add_argument("--warmup-epochs", type=finite_float, help="linear KL warm-up over this many epochs (default: the method's; 5 for poe, 10 for jmvae, else 0)")
    p.add_argument("--backbone", help="network family: auto, mlp, conv, resnet (default auto)")
    p.add_argument("--hidden", help="MLP hidden widths, comma separated (default 512,512)")
    p.add_argument("--covariance", help="encoder covariance: diag or lowrank (full-covariance barycenters)")
    p.add_argument("--rank", type=int, help="rank of the low-rank covariance factor (default 1)")
    p.add_argument("--likelihood", help="decoder likelihood: auto, gaussian, laplace, bernoulli, categorical")
    p.add_argument("--rescale-likelihoods", action="store_true", default=None, help="weight modalities by size (MoPoE)")
    p.add_argument("--num-samples", type=int, help="importance samples K for moe (default 1)")
    p.add_argument("--dreg", action="store_true", default=None, help="DReG gradients for the moe objective")
    p.add_argument("--num-random-subsets", type=int, help="extra random subsets in poe's objective (default 0)")
    p.add_argument("--prior", help="prior: normal or laplace (default normal)")
    p.add_argument("--alpha", type=finite_float, help="jmvae: weight of the unimodal KL terms (default 0.1)")
    p.add_argument("--tc-ratio", type=finite_float, help="mvtcae: total-correlation ratio alpha in [0, 1] (default 5/6)")
    p.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE",
                   help="a method-specific option (repeatable); 'omnivae models' lists each method's options")
    p.add_argument("--joint-encoder", help="jmvae: heads (per-modality heads + merging MLP) or concat (default heads)")
    p.add_argument("--config", help="JSON file of defaults for these options (flags override it)")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATASET-TIME)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted or finished run (add --epochs to extend)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the omnivae run already in --out (never a folder that is not a run, nor one in training)")
    p.add_argument("--allow-data-change", action="store_true", default=None,
                   help="with --resume: continue even though the training data differ from the run's")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--track", help="log to experiment trackers, comma-separated: tensorboard, mlflow, wandb "
                   "(offline, under RUN/tracking/; needs pip install \"omnivae[tracking]\")")
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from omnivae.data import load_dataset
    from omnivae.outputs import check_output_folder
    from omnivae.resources import check_train_memory
    from omnivae.train import check_run_dir, resolve_device, train
    from omnivae.train.options import merge_options, resolve_new_run, resolve_resume
    from omnivae.train.run import check_writable_run

    flags = {k: v for k, v in vars(args).items() if k not in ("config", "handler", "command")}
    options = merge_options(args.config, flags)
    from omnivae.train.tracking import make_trackers

    trackers = make_trackers(options.pop("track", None))  # a missing package stops here, before any work
    resume = options.pop("resume", None)
    overwrite = bool(options.pop("overwrite", False))
    allow_data_change = bool(options.pop("allow_data_change", False))
    if allow_data_change and resume is None:
        raise UserError("--allow-data-change only applies to --resume RUN")
    if resume is not None:
        check_writable_run(Path(resume), resume=True, overwrite=overwrite)  # before the data are loaded
        plan = resolve_resume(options, resume, check_run_dir(Path(resume)))
    else:
        plan = resolve_new_run(options)
        check_writable_run(plan.run_dir, resume=False, overwrite=overwrite)
        check_output_folder(plan.run_dir, "--out")
    model_config, train_config = plan.model_config, plan.train_config
    model_config.validate()
    data = load_dataset(plan.dataset_name, data_dir=plan.data_dir, seed=0)
    train_config.validate(len(data.train))
    check_train_memory(model_config, data.modalities, min(train_config.batch_size, len(data.train)),
                       resolve_device(train_config.device))
    print(
        f"training {model_config.model} (aggregator {model_config.aggregator or 'default'}) on {plan.dataset_name}: "
        f"{len(data.train)} train / {len(data.test)} test samples, modalities "
        + ", ".join(f"{m.name}{list(m.shape)}" for m in data.modalities),
        flush=True,
    )
    trainer = train(model_config, train_config, data, plan.dataset_name, plan.run_dir, resume=resume is not None,
                    data_dir=plan.data_dir, overwrite=overwrite, allow_data_change=allow_data_change, callbacks=trackers)
    _print_summary(trainer, plan.run_dir)
    return 0


def _print_summary(trainer: Any, run_dir: Path) -> None:
    if trainer.history:
        last = trainer.history[-1]
        terms = [k[len("test_"):] for k in last if k.startswith("test_")]
        print(f"after {last['epoch']} epoch(s), {last['samples_per_second']:.0f} samples/s:")
        print(f"  {'':6}" + "".join(f"{t:>12}" for t in terms))
        for split in ("train", "test"):
            values = [last.get(f"{split}_{t}") for t in terms]
            print(f"  {split:6}" + "".join(f"{v:>12.4g}" if v is not None else f"{'':>12}" for v in values))
    print(f"run written to {run_dir}")
    print("next:")
    for line in next_commands(run_dir, list(trainer.model.names), trainer.run_config.get("dataset", {}).get("name", "")):
        print(f"  {line}")


def next_commands(run_dir: Path, names: list[str], dataset_name: str) -> list[str]:
    """The commands a user runs after training, with this run's path, ready to paste.

    >>> next_commands(Path("runs/a"), ["img", "word"], "mnist-text")[1]
    'omnivae sample runs/a --given word --out runs/a/samples_given_word.png'
    """
    run = shlex.quote(str(run_dir))
    given = names[-1]  # for the default run, the word: the grid then shows the digits generated from it
    lines = [
        f"omnivae evaluate {run}",
        f"omnivae sample {run} --given {given} --out {shlex.quote(str(run_dir / f'samples_given_{given}.png'))}",
    ]
    prefix, _, path = dataset_name.partition(":")
    if prefix in ("npz", "csv", "hdf5") and path:
        suffix = {"npz": "filled.npz", "csv": "filled", "hdf5": "filled.h5"}[prefix]
        lines.append(f"omnivae impute {run} --input {shlex.quote(path)} --output {shlex.quote(str(run_dir / suffix))}")
    else:
        lines.append(
            f"omnivae impute {run} --input DATA.npz --output filled.npz"
            f"    # DATA.npz: arrays {', '.join(names)}, missing rows masked by mask_<name>"
        )
    return lines
