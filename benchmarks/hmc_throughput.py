"""HMC throughput: chain-steps per second, batched chains vs a Python loop over chains.

The target is JNF's subset posterior (Eq. 12) with three diagonal Gaussian experts over a
standard normal prior, built with :func:`omnivae.methods.jnf.posterior.product_of_posteriors_log_prob`;
each HMC step is ``--leapfrog`` gradient evaluations. "batched" runs all ``B`` chains in one
:func:`omnivae.samplers.hmc` call; "loop" calls it once per chain (one row at a time),
timed on the first ``--loop-chains`` chains and reported per chain (its cost is linear in
the number of chains). Each timing is the best of ``--repeats`` runs.

Usage::

    python benchmarks/hmc_throughput.py                       # B in 1, 64, 1024; D = 32; CPU
    python benchmarks/hmc_throughput.py --device cuda --threads 4
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import Tensor

from omnivae.methods.jnf.posterior import product_of_posteriors_log_prob
from omnivae.samplers import HMCResult, hmc


def make_target(num_chains: int, dim: int, device: torch.device, generator: torch.Generator):
    """Means and standard deviations ``[M=3, B, D]`` of three Gaussian experts per row."""
    members = 3
    means = torch.randn(members, num_chains, dim, generator=generator).to(device)
    stds = (0.3 + 0.6 * torch.rand(members, num_chains, dim, generator=generator)).to(device)
    return means, stds


def target_for(means: Tensor, stds: Tensor):
    def log_q(z: Tensor) -> Tensor:
        return (-0.5 * ((z - means) / stds) ** 2 - stds.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def prior(z: Tensor) -> Tensor:
        return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)

    mask = torch.ones(means.shape[:2], dtype=torch.bool, device=means.device)
    return product_of_posteriors_log_prob(log_q, prior, mask)


def timed(fn, sync, repeats: int) -> float:
    """The best of ``repeats`` wall-clock timings (the least disturbed by other load)."""
    best = math.inf
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", default="1,64,1024")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--loop-chains", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    print(f"device={device} threads={args.threads} D={args.dim} steps={args.steps} leapfrog={args.leapfrog}")
    print(f"{'B':>6} {'batched chain-steps/s':>22} {'loop chain-steps/s':>19} {'speed-up':>9} {'accept':>7}")
    for num_chains in (int(c) for c in args.chains.split(",")):
        means, stds = make_target(num_chains, args.dim, device, generator)
        start = means[0].clone()
        batched_target = target_for(means, stds)

        last: list[HMCResult] = []

        settings = dict(leapfrog_steps=args.leapfrog, step_size=0.05)

        def batched() -> None:
            last[:] = [hmc(batched_target, start, num_steps=args.steps, **settings)]

        hmc(batched_target, start, num_steps=2, **settings)  # warm-up
        batched_s = timed(batched, sync, args.repeats)

        looped = min(num_chains, args.loop_chains)
        row_targets = [target_for(means[:, b : b + 1], stds[:, b : b + 1]) for b in range(looped)]

        def loop() -> None:
            for b in range(looped):
                hmc(row_targets[b], start[b : b + 1], num_steps=args.steps, **settings)

        loop_s = timed(loop, sync, args.repeats)
        batched_rate = num_chains * args.steps / batched_s
        loop_rate = looped * args.steps / loop_s
        print(
            f"{num_chains:>6} {batched_rate:>22,.0f} {loop_rate:>19,.0f} {batched_rate / loop_rate:>8.1f}x"
            f" {last[0].acceptance_rate:>7.2f}"
        )


if __name__ == "__main__":
    main()
