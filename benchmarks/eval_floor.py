"""The importance-sampled likelihood's cost over its decoders' own cost (issue 17's "floor").

``omnivae evaluate --protocol paper`` estimates log-likelihoods with K = 1,000 importance
samples per test row: for every subset S of the M modalities, K draws of q(z | x_S) are
decoded by every decoder (:func:`omnivae.metrics.conditional_log_likelihoods`), and K
draws of the joint posterior once more (:func:`omnivae.metrics.joint_log_likelihood`).
Its floor is the decoders' forward passes on those latents, which no estimator can skip.

One timed estimate runs with forward hooks on every decoder body that record the exact
inputs it receives (the latents of every chunk, in the estimator's own chunk sizes).
The *floor* replays exactly those calls, the decoder bodies alone on the same tensors,
with nothing around them: no encoder, sampling, proposal or prior density, likelihood
head or log-sum-exp. ``floor+head`` adds the likelihood heads' log-densities of the
targets (elementwise work on every decoded pixel that the estimator cannot avoid either).
Estimate, floor and floor+head are timed in turn within each of ``--repeats`` rounds;
the ratios printed are the medians of the per-round ratios (with one CPU thread, timed in
process CPU time, which other processes on a shared machine barely disturb). Throughput
is latent samples decoded (by all M decoders) per second.

Usage::

    python benchmarks/eval_floor.py                       # default MWB, offline PolyMNIST, CPU, 2 threads
    python benchmarks/eval_floor.py --run runs/mwb        # a trained run (same speed, real weights)
    python benchmarks/eval_floor.py --device cuda --rows 256 --num-samples 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn


def _decoders(model: nn.Module) -> dict[str, nn.Module]:
    from omnivae.nn.heads import Decoder

    return {name: dec for name, dec in model.decoders.items() if isinstance(dec, Decoder)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run directory (default: the default MWB model, untrained)")
    parser.add_argument("--dataset", default="polymnist")
    parser.add_argument("--rows", type=int, default=64, help="test rows (one likelihood batch)")
    parser.add_argument("--num-samples", type=int, default=100, help="K importance samples per row")
    parser.add_argument("--chunk", type=int, help="samples per estimator step (default: the estimator's own choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contiguous", action="store_true",
                        help="keep the conv weights contiguous (evaluate makes them channels-last on the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from omnivae.data import load_dataset
    from omnivae.metrics.common import all_subsets
    from omnivae.metrics.likelihood import conditional_log_likelihoods, joint_log_likelihood
    from omnivae.models import ModelConfig, build_model
    from omnivae.train import load_run

    if args.run:
        run = load_run(args.run, device=device)
        model, dataset = run.model, run.dataset_name
    else:
        dataset = args.dataset
        model = build_model(ModelConfig(model="mwb"), load_dataset(dataset).modalities)[0].to(device)
    data = load_dataset(dataset).test.subset(torch.arange(args.rows))
    model.eval()
    if device.type == "cpu" and not args.contiguous:
        model.to(memory_format=torch.channels_last)  # as omnivae evaluate does on the CPU
    decoders = _decoders(model)
    num_subsets = all_subsets(model.names)[0].shape[0]
    latents = args.rows * args.num_samples * (num_subsets + 1)  # every subset's proposal + the joint one

    def estimate() -> None:
        options = dict(num_samples=args.num_samples, batch_size=args.rows, chunk=args.chunk, device=device, seed=0)
        conditional_log_likelihoods(model, data, **options)
        joint_log_likelihood(model, data, **options)
        _sync(device)

    calls: list[tuple[str, torch.Tensor]] = []
    handles = [
        dec.body.register_forward_hook(lambda module, inputs, out, name=name: calls.append((name, inputs[0].detach())))
        for name, dec in decoders.items()
    ]
    estimate()  # warm-up, and the record of every decoder call
    for handle in handles:
        handle.remove()
    decoded_rows = sum(z.shape[0] for _, z in calls)
    targets = {name: data.batch(torch.arange(args.rows)).x[name].to(device) for name in decoders}

    @torch.no_grad()
    def floor(with_head: bool) -> None:
        for name, z in calls:
            raw = decoders[name].body(z)
            if with_head:
                target = targets[name]
                copies = raw.shape[0] // target.shape[0]
                decoders[name].head.log_prob(raw.reshape(copies, target.shape[0], *raw.shape[1:]), target)
        _sync(device)

    # One thread on the CPU: this process's CPU time, which other processes sharing the
    # machine barely disturb; otherwise wall-clock time.
    clock = time.process_time if device.type == "cpu" and args.threads == 1 else time.perf_counter

    def timed(fn) -> float:
        started = clock()
        fn()
        return clock() - started

    rounds = []
    for _ in range(args.repeats):
        rounds.append((timed(estimate), timed(lambda: floor(False)), timed(lambda: floor(True))))
    est = statistics.median(r[0] for r in rounds)
    result = {
        "model": getattr(model, "names", None) and (args.run or "mwb (untrained)"),
        "dataset": dataset,
        "device": str(device),
        "threads": args.threads,
        "clock": "process CPU time" if clock is time.process_time else "wall",
        "conv_weights": "contiguous" if args.contiguous or device.type != "cpu" else "channels_last",
        "rows": args.rows,
        "num_samples": args.num_samples,
        "chunk": args.chunk,
        "subsets": num_subsets,
        "decoder_calls": len(calls),
        "rows_per_decoder_call": round(decoded_rows / max(len(calls), 1)),
        "latents_decoded": latents,
        "estimate_seconds": round(est, 3),
        "estimate_samples_per_second": round(latents / est),
        "floor_samples_per_second": round(latents / statistics.median(r[1] for r in rounds)),
        "floor_head_samples_per_second": round(latents / statistics.median(r[2] for r in rounds)),
        "estimate_over_floor": round(statistics.median(r[0] / r[1] for r in rounds), 3),
        "estimate_over_floor_head": round(statistics.median(r[0] / r[2] for r in rounds), 3),
        "rounds_estimate_over_floor": [round(r[0] / r[1], 3) for r in rounds],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
