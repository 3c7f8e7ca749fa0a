"""The ``omnivae`` command line: parse, build from the registries, delegate.

Exit status 0 on success and 2 for a user mistake, reported as one line on stderr
(``omnivae: error: ...``) with no traceback. Nothing is half-written: run files and
outputs are written to temporary names and renamed into place.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from omnivae import __version__
from omnivae.errors import DataError, RunDirError, UserError
from omnivae.train.trainer import TrainingInterrupted

DEFAULT_MODEL = "mwb"
DEFAULT_DATASET = "polymnist"
#: What ``omnivae train`` learns without flags; README "The default run" says why not PolyMNIST.
DEFAULT_TRAIN_DATASET = "mnist-text"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2.

    Abbreviated flags are refused, so scripts do not change meaning when a new flag
    shares a prefix with an old one.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see '{self.prog} --help')")


def _finite_float(text: str) -> float:
    """argparse type of every float option: a finite number (``nan``/``inf`` would pass
    ``float`` and every range check written as a comparison)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: mwb on mnist-text)",
        description="Train a multimodal VAE and write a run directory.",
    )
    p.add_argument("--model", help=f"registered model name (default {DEFAULT_MODEL}; see 'omnivae models')")
    p.add_argument("--dataset", help=f"dataset name, npz:FILE, csv:DIR or hdf5:FILE (default {DEFAULT_TRAIN_DATASET}; see 'omnivae datasets')")
    p.add_argument("--data-dir", help="folder with a dataset's real files, where it needs them")
    p.add_argument("--aggregator", help="swap the model's aggregation: poe, moe, mopoe, wb, mwb")
    p.add_argument("--epochs", type=int, help="training epochs (default 10)")
    p.add_argument("--latent-dim", type=int, help="latent size (default 32)")
    p.add_argument("--beta", type=_finite_float, help="weight of the KL term (default 1)")
    p.add_argument("--batch-size", type=int, help="batch size (default 64)")
    p.add_argument("--lr", type=_finite_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--missing-rate", type=_finite_float, help="hide each modality at random with this probability during training")
    p.add_argument("--precision", help="network arithmetic: fp32, or bf16/fp16 mixed precision for the encoder and decoder networks (default fp32)")
    p.add_argument("--compile", help="torch.compile the training step: none, default, reduce-overhead (CUDA graphs) or max-autotune (default none)")
    p.add_argument("--warmup-epochs", type=_finite_float, help="linear KL warm-up over this many epochs (default: the method's; 5 for poe, 10 for jmvae, else 0)")
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
    p.add_argument("--alpha", type=_finite_float, help="jmvae: weight of the unimodal KL terms (default 0.1)")
    p.add_argument("--tc-ratio", type=_finite_float, help="mvtcae: total-correlation ratio alpha in [0, 1] (default 5/6)")
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
    p.set_defaults(handler=cmd_train)


def _add_impute(sub: argparse._SubParsersAction) -> None:
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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compute metrics of a run: eval.json, report.md, figures/",
        description="Evaluate a run with the papers' metrics and write eval.json, report.md and figures/.",
    )
    p.add_argument("run", help="run directory written by 'omnivae train'")
    p.add_argument("--metrics", help="comma-separated: coherence,probe,likelihood,fd,recon,clustering (default all)")
    _add_eval_options(p)
    p.set_defaults(handler=cmd_evaluate)


def _rows_or_all(text: str) -> int | str:
    """argparse type of a row count: a whole number or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of rows or 'all', got {text!r}") from None


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default="fast", choices=("fast", "paper"),
                   help="sample sizes of the metrics: fast (default; minutes on a CPU) or paper (the published "
                   "protocols: K=1000 on every test row, probes on every training row, 30 classifier epochs, "
                   "10,000 prior samples); the options below override single settings")
    p.add_argument("--num-importance-samples", type=int, metavar="K",
                   help="importance samples per test example for log-likelihoods (fast 20, paper 1000)")
    p.add_argument("--num-test", type=_rows_or_all, metavar="N|all",
                   help="test rows for coherence, probe, fd and recon, drawn at random (fast 1000, paper all)")
    p.add_argument("--likelihood-num-test", type=_rows_or_all, metavar="N|all",
                   help="test rows for the log-likelihoods, drawn at random (fast 100, paper all)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size of the metrics (default 256)")
    p.add_argument("--num-train", type=_rows_or_all, metavar="N|all",
                   help="training rows the linear probes are fit on (fast 2000, paper all)")
    p.add_argument("--classifier-epochs", type=int,
                   help="epochs of the coherence classifiers (fast 8, paper 30; trained once, cached)")
    p.add_argument("--joint-coherence-samples", type=int, metavar="N",
                   help="prior samples for joint coherence (fast 1000, paper 10000)")
    p.add_argument("--inception", help="your own Inception feature network (TorchScript or safetensors) for Frechet distances")
    p.add_argument("--sampler", default="prior",
                   help="latents of joint coherence and unconditional FD: prior (default), gmm or maf, a density "
                   "fitted to the training posteriors (fitted on first use, stored in the run)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    if not any(a.dest == "device" for a in p._actions):
        p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    if not any(a.dest == "data_dir" for a in p._actions):
        p.add_argument("--data-dir", help="folder with the dataset's real files, where it needs them")
    if not any(a.dest == "no_progress" for a in p._actions):
        p.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")


def _eval_options(args: argparse.Namespace, metrics: str | None):  # -> EvalOptions
    from omnivae.evaluate import EvalOptions, parse_metrics

    return EvalOptions(
        metrics=parse_metrics(metrics),
        protocol=args.protocol,
        batch_size=args.eval_batch_size,
        num_importance_samples=args.num_importance_samples,
        num_test=args.num_test,
        likelihood_num_test=args.likelihood_num_test,
        num_train=args.num_train,
        classifier_epochs=args.classifier_epochs,
        joint_coherence_samples=args.joint_coherence_samples,
        device=args.device or "auto",
        data_dir=args.data_dir,
        inception=args.inception,
        figures=not args.no_figures,
        progress=not getattr(args, "no_progress", False),
        sampler=getattr(args, "sampler", "prior"),
    )


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples of every modality given some modalities, as an image grid",
        description="Conditional (or, with no --given, unconditional) samples of a run as a PNG grid.",
    )
    p.add_argument("run", help="run directory written by 'omnivae train'")
    p.add_argument("--given", help="comma-separated modalities to condition on (default: none, sample the prior)")
    p.add_argument("--n", type=int, default=8, help="number of test examples / samples (default 8)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the test rows drawn (stratified across classes) and of the samples (default 0)")
    p.add_argument("--sampler", default="prior",
                   help="latents of unconditional samples: prior (default), gmm or maf, a density fitted to the "
                   "training posteriors (fitted on first use, stored in the run)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--data-dir", help="folder with the dataset's real files, where it needs them")
    p.set_defaults(handler=cmd_sample)


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--beta", type=_finite_float, help="weight of the KL term of every model (default 1)")
    p.add_argument("--aggregator", help="swap every model's aggregation: poe, moe, mopoe, wb, mwb (default: each model's own)")
    p.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE",
                   help="a method-specific option (repeatable), given to the models that have KEY; "
                   "'omnivae models' lists them")
    p.add_argument("--missing-rate", type=_finite_float,
                   help="hide each modality at random with this probability during training (default 0)")
    p.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    p.add_argument("--lr", type=_finite_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--backbone", help="network family: auto, mlp, conv, resnet (default auto)")
    p.add_argument("--hidden", help="MLP hidden widths, comma separated (default 512,512)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--data-dir", help="folder with the dataset's real files, where it needs them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_eval_options(p)
    p.set_defaults(handler=cmd_benchmark)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="omnivae", description="Multimodal variational autoencoders.")
    parser.add_argument("--version", action="version", version=f"omnivae {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    _add_train(sub)
    _add_impute(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    _add_benchmark(sub)
    _add_reproduce(sub)
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
    return parser


# -- train ---------------------------------------------------------------------------------
_TRAIN_KEYS = {
    "model": "model", "aggregator": "aggregator", "latent_dim": "latent_dim", "beta": "beta",
    "backbone": "backbone", "hidden": "hidden", "covariance": "covariance", "rank": "rank",
    "likelihood": "likelihood", "rescale_likelihoods": "rescale_likelihoods",
    "num_samples": "num_samples", "dreg": "dreg", "num_random_subsets": "num_random_subsets",
    "prior": "prior",
}


def _load_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: no such file; give a JSON file of option names to values")
    try:
        obj = json.loads(file.read_text(), parse_constant=_no_constant)
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise UserError(f"--config {path} is not valid JSON ({err})") from None
    except RecursionError:
        raise UserError(f"--config {path} is nested too deeply; give a flat JSON object of option names to values") from None
    if not isinstance(obj, dict):
        raise UserError(f"--config {path} must hold a JSON object of option names to values")
    if isinstance(obj.get("model"), dict):
        obj = _run_config_options(path, obj)
    options = {k.replace("-", "_"): v for k, v in obj.items()}
    sets = options.get("set_options")
    if sets is not None and (not isinstance(sets, list) or not all(isinstance(item, str) for item in sets)):
        raise UserError(
            f'--config {path}: \'set_options\' must be a list of "KEY=VALUE" strings, as --set takes, '
            f"got {json.dumps(sets)[:60]}"
        )
    for key, value in options.items():
        _check_config_value(path, key, value)
    return options


def _run_config_options(path: str, run_config: dict) -> dict:
    """A run's own ``config.json`` as ``--config``: its model and training settings and its
    dataset, so ``train --config RUN/config.json`` trains that run again (flags override)."""
    model, training, dataset = (run_config.get(k) for k in ("model", "train", "dataset"))
    if not (isinstance(model, dict) and isinstance(training, dict) and isinstance(dataset, dict)):
        raise UserError(f"--config {path} looks like a run's config.json but lacks its 'model', 'train' or 'dataset' object")
    if run_config.get("own_networks"):
        raise UserError(f"--config {path}: that run was trained with networks of your own, which only Python can rebuild")
    options = {**model, **training, "dataset": dataset.get("name"), "data_dir": dataset.get("data_dir")}
    return {k: v for k, v in options.items() if v is not None}


def _no_constant(name: str) -> float:
    """``parse_constant`` for :func:`json.loads`: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not a JSON number, and options must be finite")


def _check_config_value(path: str, key: str, value: object) -> None:
    """A --config value must have the type its flag would give; JSON does not ensure it."""
    from omnivae.configs import type_problem
    from omnivae.models import ModelConfig
    from omnivae.train import TrainConfig

    defaults = {**ModelConfig().to_json(), **TrainConfig().to_json(), "no_progress": False}
    defaults.update(dataset="", data_dir="", out="", resume="")
    if key not in defaults:
        return  # unknown options are reported together, later
    if key == "hidden" and isinstance(value, str):
        return  # "512,512" as on the command line
    wanted = type_problem(value, defaults[key])
    if wanted is not None:
        raise UserError(f"--config {path}: {key!r} must be {wanted}, got {json.dumps(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        raise UserError(f"--config {path}: {key!r} must be a finite number, got {value}")


def _options(args: argparse.Namespace) -> dict:
    """Options from --config, overridden by explicit flags."""
    options = _load_config_file(args.config)
    for key, value in vars(args).items():
        if value is not None and key not in ("config", "handler", "command"):
            options[key] = value
    if isinstance(options.get("hidden"), str):
        options["hidden"] = _parse_hidden(options["hidden"])
    sets = options.pop("set_options", None)
    if sets:
        method_options = dict(options.get("options") or {})
        method_options.update(_parse_set(item) for item in sets)
        options["options"] = method_options
    return options


def _parse_set(item: str) -> tuple[str, object]:
    """``"w_dim=16"`` -> ``("w_dim", 16)``: integers, numbers, true/false, else text."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise UserError(f"--set takes KEY=VALUE, got {item!r}")
    text = text.strip()
    if text.lower() in ("true", "false"):
        return key, text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise UserError(f"--set {item}: must be a finite number, got {text!r}")
        return key, value
    return key, text


def _parse_hidden(text: str) -> list[int]:
    """``"512,512"`` -> ``[512, 512]``."""
    try:
        widths = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if not widths:
        raise UserError(f"--hidden lists no width, got {text!r}; give comma-separated integers such as 512,512")
    return widths


def cmd_train(args: argparse.Namespace) -> int:
    from omnivae.data import load_dataset
    from omnivae.models import MODELS, ModelConfig
    from omnivae.train import TrainConfig, check_run_dir, new_run_dir, train
    from omnivae.train.run import check_writable_run

    options = _options(args)
    resume = options.pop("resume", None)
    overwrite = bool(options.pop("overwrite", False))
    allow_data_change = bool(options.pop("allow_data_change", False))
    if allow_data_change and resume is None:
        raise UserError("--allow-data-change only applies to --resume RUN")
    if resume is not None:
        check_writable_run(Path(resume), resume=True, overwrite=overwrite)  # before the data are loaded
        saved = check_run_dir(Path(resume))
        fixed = sorted(set(options) - {"epochs", "device", "no_progress", "data_dir", "precision", "compile"})
        if fixed:
            flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise UserError(
                f"--resume continues a run with its own settings; {flags} cannot change them "
                "(only --epochs, --device, --precision, --compile, --data-dir and --no-progress can); start a new run instead"
            )
        try:
            model_config = ModelConfig.from_json(saved["model"])
            train_config = TrainConfig.from_json(saved["train"])
            dataset_name = saved["dataset"]["name"]
        except (KeyError, TypeError, AttributeError) as err:
            raise RunDirError(f"{resume}/config.json lacks a required entry or holds a malformed one ({err!r})") from None
        if "epochs" in options:
            requested = int(options["epochs"])
            if isinstance(train_config.epochs, int) and requested < train_config.epochs:
                raise UserError(
                    f"--epochs {requested} would shorten {resume}, which is set to {train_config.epochs} epoch(s); "
                    f"--resume only continues or extends a run: give --epochs {train_config.epochs} or more"
                )
            train_config.epochs = requested
        if "device" in options:  # a run may continue elsewhere, e.g. on a machine without a GPU
            train_config.device = options["device"]
        for how in ("precision", "compile"):  # how to compute, not what: free to change on resume
            if how in options:
                setattr(train_config, how, options[how])
        if options.get("no_progress"):
            train_config.progress = False
        data_dir = options.get("data_dir") or saved["dataset"].get("data_dir")
        run_dir = Path(resume)
    else:
        known_model = {f.name for f in fields(ModelConfig)}
        known_train = {f.name for f in fields(TrainConfig)}
        unknown = set(options) - known_model - known_train - {"dataset", "data_dir", "out", "no_progress", "resume"}
        if unknown:
            import difflib

            known = sorted(known_model | known_train | {"dataset", "data_dir", "out", "no_progress"})
            hints = [
                f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, n=1)) else name
                for name in sorted(unknown)
            ]
            raise UserError(
                f"unknown option(s) in --config: {', '.join(hints)}; the options are the long flags of "
                "'omnivae train --help' with _ for -"
            )
        model_config = ModelConfig(**{k: v for k, v in options.items() if k in known_model})
        model_config.model = options.get("model", DEFAULT_MODEL)
        train_config = TrainConfig(**{k: v for k, v in options.items() if k in known_train})
        if "warmup_epochs" not in options and model_config.model in MODELS:
            train_config.warmup_epochs = MODELS[model_config.model].warmup_epochs
        if options.get("no_progress"):
            train_config.progress = False
        if isinstance(train_config.epochs, int) and train_config.epochs < 1:
            raise UserError(f"--epochs must be >= 1 for a new run, got {train_config.epochs}")
        dataset_name = _absolute_dataset(options.get("dataset", DEFAULT_TRAIN_DATASET))
        data_dir = options.get("data_dir")
        run_dir = Path(options["out"]) if "out" in options else new_run_dir(model_config.model, dataset_name)
        check_writable_run(run_dir, resume=False, overwrite=overwrite)
        from omnivae.outputs import check_output_folder

        check_output_folder(run_dir, "--out")
    model_config.validate()
    data = load_dataset(dataset_name, data_dir=data_dir, seed=0)
    train_config.validate(len(data.train))
    from omnivae.resources import check_train_memory
    from omnivae.train import resolve_device

    check_train_memory(model_config, data.modalities, min(train_config.batch_size, len(data.train)),
                       resolve_device(train_config.device))
    print(
        f"training {model_config.model} (aggregator {model_config.aggregator or 'default'}) on {dataset_name}: "
        f"{len(data.train)} train / {len(data.test)} test samples, modalities "
        + ", ".join(f"{m.name}{list(m.shape)}" for m in data.modalities),
        flush=True,
    )
    trainer = train(model_config, train_config, data, dataset_name, run_dir, resume=resume is not None, data_dir=data_dir,
                    overwrite=overwrite, allow_data_change=allow_data_change)
    _print_summary(trainer, run_dir)
    return 0


def _absolute_dataset(name: str) -> str:
    """``npz:FILE``, ``csv:DIR`` or ``hdf5:FILE`` with an absolute path, so the run can be
    evaluated from anywhere."""
    for prefix in ("npz:", "csv:", "hdf5:"):
        if isinstance(name, str) and name.startswith(prefix) and len(name) > len(prefix):
            return prefix + str(Path(name[len(prefix):]).expanduser().absolute())
    return name


def _print_summary(trainer, run_dir: Path) -> None:
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
    for line in _next_commands(run_dir, list(trainer.model.names), trainer.run_config.get("dataset", {}).get("name", "")):
        print(f"  {line}")


def _next_commands(run_dir: Path, names: list[str], dataset_name: str) -> list[str]:
    """The commands a user runs after training, with this run's path, ready to paste."""
    import shlex

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


# -- impute --------------------------------------------------------------------------------
_IMPUTE_FORMS = "a CSV folder (one <modality>.csv each), an .h5/.hdf5 file or an .npz file"


def _impute_format(path: Path) -> str:
    """``"csv"``, ``"hdf5"`` or ``"npz"`` for an input path, from what it is and its suffix."""
    from omnivae.data.tables import HDF5_SUFFIXES

    if path.is_dir():
        return "csv"
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npz":
        return "npz"
    if not path.exists():
        raise UserError(f"--input {path}: no such folder or file; give {_IMPUTE_FORMS}")
    raise UserError(f"--input {path} is not a folder and does not end in .h5, .hdf5 or .npz; give {_IMPUTE_FORMS}")


def _check_impute_output(output: Path, form: str, source: Path, force: bool = False) -> None:
    """The output is written in the input's format: check its name and place up front,
    and never replace an existing output (or the input) unless ``force``."""
    from omnivae.data.tables import HDF5_SUFFIXES, check_csv_output
    from omnivae.outputs import check_output_file, check_output_folder

    if form == "csv":
        if output.suffix.lower() in (*HDF5_SUFFIXES, ".npz", ".csv"):
            raise UserError(f"--output {output} must name a folder: the input is a CSV folder")
        check_output_folder(output, "--output", must_exist_parent=True)
    else:
        suffixes = HDF5_SUFFIXES if form == "hdf5" else (".npz",)
        if output.suffix.lower() not in suffixes:
            raise UserError(
                f"--output {output} must end in {' or '.join(suffixes)}: the input is an {form.upper()} file "
                "and the output is written in its format"
            )
        if output.is_dir():
            raise UserError(f"--output {output} is a folder; name a file ending in {' or '.join(suffixes)}")
        check_output_file(output, "--output")
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise UserError(f"--output {output} is the input; write the filled data elsewhere")
    if output.exists():
        if form == "csv":
            check_csv_output(output)  # a folder of anything but a CSV folder's files is never replaced
        if not force:
            raise UserError(f"--output {output} already exists; pass --force to replace it, or pick another --output")


def _check_impute_modalities(data, expected: dict, source: str, form: str) -> None:
    """Every input modality must be one of the run's, with its kind and per-sample shape."""
    unknown = [m.name for m in data.modalities if m.name not in expected]
    if unknown:
        raise DataError(
            f"{source}: modalities {unknown} are not in the run (it has {list(expected)}); rename or drop them"
        )
    if form == "csv":
        hint = 'declare it in schema.json, e.g. {"img": {"shape": [1, 28, 28], "kind": "image"}}'
    else:
        hint = "store images as uint8, binary data as bool, vectors as floats"
    for spec in data.modalities:
        want = expected[spec.name]
        if tuple(spec.shape) != tuple(want.shape):
            size = f" ({int(np.prod(spec.shape))} columns)" if form == "csv" else ""
            raise DataError(
                f"{source}: modality {spec.name!r} has per-sample shape {tuple(spec.shape)}{size}, "
                f"the run expects {tuple(want.shape)} ({int(np.prod(want.shape))} values)"
            )
        if spec.kind != want.kind:
            raise DataError(
                f"{source}: modality {spec.name!r} reads as {spec.kind} data, the run expects {want.kind}; {hint}"
            )


def _impute_values(model, data, expected: dict, device, batch_size: int) -> dict[str, np.ndarray]:
    """Every modality of the run for every sample: observed values kept, the rest imputed,
    in storage form (uint8 images, bool binary, float32 otherwise)."""
    filled: dict[str, list[torch.Tensor]] = {name: [] for name in expected}
    with torch.no_grad():
        for batch in data.to(device).batches(batch_size):
            out = model.impute(batch.x, batch.mask)
            for name in expected:
                filled[name].append(out[name].cpu())
    arrays: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        values = torch.cat(filled[name])
        if spec.kind == "image":
            arrays[name] = (values.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        elif spec.kind == "binary":
            arrays[name] = (values >= 0.5).numpy()
        else:
            arrays[name] = values.numpy()
    return arrays


def _in_dtype(values: np.ndarray, dtype: np.dtype, name: str, source: str) -> np.ndarray:
    """Imputed values in the input's dtype: floats as they are, integers rounded to the
    nearest (half to even); a value outside the integer type's range is refused."""
    if dtype.kind not in "iu":
        return values.astype(dtype)
    rounded = np.round(values.astype(np.float64))
    info = np.iinfo(dtype)
    bad = ~np.isfinite(rounded) | (rounded < info.min) | (rounded > info.max)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
        raise DataError(
            f"{source}: a value imputed for modality {name!r} (the {row + 1}th missing row) does not fit "
            f"its integer type {dtype}; store the modality as floats to impute it"
        )
    return rounded.astype(dtype)


def _filled_arrays(
    raw: dict, data, expected: dict, values: dict[str, np.ndarray], source_name: str = "input"
) -> dict[str, np.ndarray]:
    """The npz/HDF5 output: each modality filled, ``mask_<name>`` marking the observed
    values, and the input's labels, label names and split as given.

    A modality of the input keeps its shape (a 1-D array is read as (N, 1)) and dtype, and
    its observed values are copied from the input, never through the model's float32: an
    int64 above 2**24 or a float64 comes back exactly. Imputed values in an integer
    modality are rounded to the nearest integer (:func:`_in_dtype`).
    """
    arrays: dict[str, np.ndarray] = {}
    n = len(data)
    present = [m.name for m in data.modalities]
    for name in expected:
        array = values[name]
        observed = data.masks[name].numpy() if name in present else np.zeros(n, dtype=bool)
        if name in present:
            source = raw[name]
            array = array.reshape(source.shape)
            filled = np.empty(source.shape, dtype=source.dtype)
            filled[observed] = source[observed]
            if (~observed).any():
                filled[~observed] = _in_dtype(array[~observed], source.dtype, name, source_name)
            array = filled
        arrays[name] = array
        arrays[f"mask_{name}"] = observed
    for key in ("labels", "label_names", "split"):
        if key in raw:
            arrays[key] = raw[key]
    return arrays


def cmd_impute(args: argparse.Namespace) -> int:
    from omnivae.data.arrays import dataset_from_arrays, read_npz
    from omnivae.data.tables import hdf5_group, read_csv_folder, read_hdf5, write_filled_csv, write_hdf5
    from omnivae.train import load_run, resolve_device
    from omnivae.train.checkpoint import atomic_write_bytes

    source, output = Path(args.input), Path(args.output)
    form = _impute_format(source)
    _check_impute_output(output, form, source, args.force)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    run = load_run(args.run, device=device)
    expected = {m.name: m for m in run.modalities}
    table = None
    if form == "csv":
        table = read_csv_folder(source, defaults=expected, keep_text=True)
        raw, data = table.arrays, table.dataset()
    else:
        raw = read_hdf5(source) if form == "hdf5" else read_npz(source)
        data = dataset_from_arrays(raw, name=source.stem, source=str(source))
    _check_impute_modalities(data, expected, str(source), form)
    values = _impute_values(run.model, data, expected, device, args.batch_size)
    n = len(data)
    present = set(data.modality_names)
    counts = {
        name: n - (int(data.masks[name].sum()) if name in present else 0) for name in expected
    }
    from omnivae.outputs import WRITE_ERRNOS, write_failure

    try:
        if table is not None:
            observed = {
                name: data.masks[name].numpy() if name in present else np.zeros(n, dtype=bool) for name in expected
            }
            write_filled_csv(table, values, run.modalities, output, observed=observed)
            where = "every row filled; observed.csv marks the observed rows"
        else:
            arrays = _filled_arrays(raw, data, expected, values, str(source))
            if form == "hdf5":
                write_hdf5(output, arrays, group=hdf5_group(source))
            else:
                import io

                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                atomic_write_bytes(output, buffer.getvalue())
            where = "mask_<name> arrays mark the observed values"
    except OSError as err:  # a full disk mid-write: the temporary file or folder is already gone
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(err, str(output)) from None
    print(
        f"imputed {sum(counts.values())} missing entries ("
        + ", ".join(f"{k}: {v}" for k, v in counts.items())
        + f") in {n} samples; wrote {output} ({where})"
    )
    return 0


# -- evaluate, sample, benchmark -----------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from omnivae.evaluate import evaluate_run
    from omnivae.train import check_run_dir

    from omnivae.outputs import WRITE_ERRNOS, write_failure

    check_run_dir(Path(args.run))
    if not os.access(args.run, os.W_OK | os.X_OK):
        raise UserError(
            f"{args.run} is read-only here, and evaluate writes eval.json, report.md and figures/ into the run; "
            "copy the run somewhere writable and evaluate the copy"
        )
    try:
        results = evaluate_run(args.run, _eval_options(args, args.metrics))
    except OSError as err:  # a full disk at a write: that file's temporary is already gone
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(err, err.filename or f"the evaluation of {args.run}") from None
    from omnivae.benchmark import summarise_run

    for metric, value in summarise_run(results).items():
        print(f"  {metric:28} {value:.4g}")
    subsets = results.get("likelihood", {}).get("subsets") or {}
    if subsets.get("sampled"):
        print(f"  likelihood: {subsets['of']:,} subsets are too many; scored {subsets['scored']:,} "
              f"(singletons, the full set and random subsets, seed {subsets.get('seed')})")
    print(f"wrote {Path(args.run) / 'eval.json'}, {Path(args.run) / 'report.md'} and {Path(args.run) / 'figures'}/")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from omnivae.data import load_dataset
    from omnivae.evaluate import draw_samples
    from omnivae.report import sample_grid
    from omnivae.outputs import WRITE_ERRNOS, check_output_file, write_failure
    from omnivae.resources import check_sample_memory
    from omnivae.train import load_run, resolve_device

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name a .png file, e.g. {out / 'samples.png'}")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png")
    check_output_file(out, "--out")
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    from omnivae.latent_samplers import SAMPLERS, run_latent_sampler

    if args.sampler not in SAMPLERS:
        raise UserError(f"--sampler {args.sampler!r} is not a sampler; choose one of: {', '.join(SAMPLERS)}")
    run = load_run(args.run, device=resolve_device(args.device))
    given = [g.strip() for g in (args.given or "").split(",") if g.strip()]
    unknown = [g for g in given if g not in run.model.names]
    if unknown:
        raise UserError(f"--given {','.join(unknown)}: not a modality of this run; it has {', '.join(run.model.names)}")
    if given and args.sampler != "prior":
        raise UserError(f"--sampler {args.sampler} draws unconditional samples; leave out --given to use it")
    if given:
        data = load_dataset(run.dataset_name, data_dir=args.data_dir or run.data_dir)
        check_sample_memory(run.modalities, min(args.n, len(data.test)), "--n")  # at most one per test row
        inputs, generated, observed, row_labels = draw_samples(run, data.test, given, args.n, args.seed)
        title = f"given {'+'.join(given)}: test examples across classes (seed {args.seed})"
    else:
        check_sample_memory(run.modalities, args.n, "--n")
        latents = run_latent_sampler(run, args.run, args.sampler, data_dir=args.data_dir, log=lambda line: print(line, file=sys.stderr))
        torch.manual_seed(args.seed)
        if latents is None:
            inputs, generated = {}, {k: v.cpu() for k, v in run.model.generate(args.n).items()}
        else:
            with torch.no_grad():
                inputs, generated = {}, {k: v.cpu() for k, v in run.model.decode_mean(latents(args.n)).items()}
        observed, row_labels = None, None
        source = "the prior" if latents is None else f"the {args.sampler} sampler"
        title = f"unconditional samples from {source} (seed {args.seed})"
    try:
        sample_grid(inputs, generated, run.modalities, out, title=title, observed=observed, row_labels=row_labels)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(err, str(out)) from None
    drawn = len(next(iter(generated.values())))
    short = "" if drawn == args.n else f" (--n {args.n}, but the test split has only {drawn} example(s) to condition on)"
    print(f"wrote {out}: {drawn} rows{short}, {title}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from omnivae.benchmark import run_benchmark

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UserError(f"--models {args.models!r} names no model; give comma-separated names such as poe,mwb (see 'omnivae models')")
    model_options = {}
    for key in ("latent_dim", "beta", "backbone", "aggregator"):
        if getattr(args, key) is not None:
            model_options[key] = getattr(args, key)
    if args.hidden is not None:
        model_options["hidden"] = _parse_hidden(args.hidden)
    if args.set_options:
        model_options["options"] = dict(_parse_set(item) for item in args.set_options)
    train_options = {"epochs": args.epochs, "device": args.device, "progress": not args.no_progress}
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
    from omnivae.models import ModelConfig
    from omnivae.train import TrainConfig

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    from omnivae.benchmark import options_for
    from omnivae.models import MODELS

    for name in models:
        ModelConfig(model=name, **options_for(name, model_options)).validate()
    unused = sorted(set(model_options.get("options", {})) - {k for m in models if m in MODELS for k in MODELS[m].options})
    if unused:
        raise UserError(f"--set {', '.join(unused)}: none of the models ({', '.join(models)}) has this option; "
                        "'omnivae models' lists each model's options")
    TrainConfig(**train_options).validate()
    from omnivae.outputs import check_output_folder

    check_output_folder(args.out, "--out")
    summary = run_benchmark(models, _absolute_dataset(args.dataset), args.seeds, Path(args.out), model_options, train_options,
                            _eval_options(args, args.metrics), data_dir=args.data_dir, betas=betas)
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


# -- listings ------------------------------------------------------------------------------
def cmd_jnf_toy(args: argparse.Namespace) -> int:
    from omnivae.examples.jnf_toy import run_jnf_toy

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {args.out!r}")
    from omnivae.outputs import check_output_file

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.handler(args))
    except UserError as err:
        print(f"omnivae: error: {err}", file=sys.stderr)
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

        if err.errno not in WRITE_ERRNOS:
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
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test's capture)
        pass


def entry_point() -> None:
    from omnivae.train.distributed import quiet_other_ranks

    quiet_other_ranks()  # under torchrun, rank 0 alone prints
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
