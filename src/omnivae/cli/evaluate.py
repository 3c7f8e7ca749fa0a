"""``omnivae evaluate`` and ``omnivae sample``: their flags, and the commands, which call
:func:`omnivae.evaluate.evaluate_run` and :func:`omnivae.evaluate.draw_samples`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from omnivae.cli.parser import Parser, rows_or_all
from omnivae.errors import UserError

if TYPE_CHECKING:
    from omnivae.evaluate import EvalOptions

__all__ = ["add_eval_options", "add_evaluate", "add_sample", "cmd_evaluate", "cmd_sample", "eval_options"]

#: :class:`~omnivae.evaluate.EvalOptions` fields whose flag has another name.
DESTS = {"batch_size": "eval_batch_size"}


def add_evaluate(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compute metrics of a run: eval.json, report.md, figures/",
        description="Evaluate a run with the papers' metrics and write eval.json, report.md and figures/.",
    )
    p.add_argument("run", help="run directory written by 'omnivae train'")
    p.add_argument("--metrics", help="comma-separated: coherence,probe,likelihood,fd,recon,clustering (default all)")
    p.add_argument("--track", help="also log the metrics to these trackers (tensorboard, mlflow, wandb), "
                   "into the tracking runs of training when it had them")
    add_eval_options(p)
    p.set_defaults(handler=cmd_evaluate)


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`~omnivae.evaluate.EvalOptions` (``evaluate`` and ``benchmark``)."""
    p.add_argument("--protocol", default="fast", choices=("fast", "paper"),
                   help="sample sizes of the metrics: fast (default; minutes on a CPU) or paper (the published "
                   "protocols: K=1000 on every test row, probes on every training row, 30 classifier epochs, "
                   "10,000 prior samples); the options below override single settings")
    p.add_argument("--num-importance-samples", type=int, metavar="K",
                   help="importance samples per test example for log-likelihoods (fast 20, paper 1000)")
    p.add_argument("--num-test", type=rows_or_all, metavar="N|all",
                   help="test rows for coherence, probe, fd and recon, drawn at random (fast 1000, paper all)")
    p.add_argument("--likelihood-num-test", type=rows_or_all, metavar="N|all",
                   help="test rows for the log-likelihoods, drawn at random (fast 100, paper all)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size of the metrics (default 256)")
    p.add_argument("--num-train", type=rows_or_all, metavar="N|all",
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


def eval_options(args: argparse.Namespace, metrics: str | None) -> EvalOptions:
    """The :class:`~omnivae.evaluate.EvalOptions` of the parsed flags, validated.

    A field whose flag has another name (:data:`DESTS`) is renamed in the error, so that
    the error handler names the right flag.
    """
    from omnivae.evaluate import EvalOptions, parse_metrics

    options = EvalOptions(
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
    try:
        options.validate()
    except UserError as err:
        err.parameter = DESTS.get(err.parameter or "", err.parameter)
        raise
    return options


def add_sample(sub: argparse._SubParsersAction[Parser]) -> None:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from omnivae.benchmark import summarise_run
    from omnivae.evaluate import evaluate_run
    from omnivae.outputs import WRITE_ERRNOS, write_failure
    from omnivae.train import check_run_dir

    check_run_dir(Path(args.run))
    from omnivae.train.tracking import check_installed, parse_track

    check_installed(parse_track(args.track))
    if not os.access(args.run, os.W_OK | os.X_OK):
        raise UserError(
            f"{args.run} is read-only here, and evaluate writes eval.json, report.md and figures/ into the run; "
            "copy the run somewhere writable and evaluate the copy"
        )
    try:
        results = evaluate_run(args.run, eval_options(args, args.metrics))
    except OSError as err:  # a full disk at a write: that file's temporary is already gone
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(err, err.filename or f"the evaluation of {args.run}") from None
    if args.track:
        from omnivae.train.tracking import log_evaluation

        log_evaluation(args.run, results, args.track)
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
    from omnivae.outputs import WRITE_ERRNOS, check_output_file, write_failure
    from omnivae.report import sample_grid
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
        latents = run_latent_sampler(run, args.run, args.sampler, data_dir=args.data_dir,
                                     log=lambda line: print(line, file=sys.stderr))
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
