"""A training step's cost over its networks' own cost (issue 7's "floor").

For each model, one real training step runs with forward hooks on every network (each
modality's encoder, each decoder body, the joint encoder where there is one) that record
the exact inputs the step feeds them. The *floor* then replays exactly those calls, the
forward and backward pass of the networks alone on the same tensors (decoder inputs
require a gradient, as latents do in the step), with nothing of the method around them:
no aggregation, likelihood, KL or sampling. The ratio step / floor is what the library
adds on top of the networks; ``floor+adam`` adds the optimizer update, which a step
cannot avoid, to the floor. The step, the floor and floor+adam are timed in turn within
each of ``--repeats`` rounds; the ratios printed are the medians of the per-round ratios.

What is not counted as network: JNF's normalising flows and MMVAE+'s/Nexus's extra
heads are part of the "method" here, so their ratios overstate the overhead.

Usage::

    python benchmarks/overhead.py                                   # CPU, 2 threads, MLP nets
    python benchmarks/overhead.py --device cuda --backbone auto     # PolyMNIST conv nets on a GPU
    python benchmarks/overhead.py --device cuda --compile reduce-overhead --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

DEFAULT_MODELS = "poe,moe,mopoe,wb,mwb,jmvae,mvtcae,mmvae+,mmvamp,jnf"


def _networks(model: nn.Module) -> list[nn.Module]:
    """The top-level network modules of a model: encoders, decoder bodies, joint encoder."""
    from omnivae.nn.heads import Decoder, GaussianEncoder
    from omnivae.nn.joint import JointEncoder

    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (GaussianEncoder, JointEncoder)):
                found.append(child)
            elif isinstance(child, Decoder):
                found.append(child.body)
            else:
                visit(child)

    visit(model)
    return found


def _record_calls(networks: list[nn.Module], step) -> list[tuple[nn.Module, tuple]]:
    calls: list[tuple[nn.Module, tuple]] = []
    handles = [
        net.register_forward_hook(lambda module, args, out: calls.append((module, _detach(args))))
        for net in networks
    ]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v) for v in value)
    return value


def _outputs(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    return []


def measure(args: argparse.Namespace, name: str) -> dict:
    from omnivae.data import load_dataset
    from omnivae.models import ModelConfig, build_model
    from omnivae.nn.precision import networks_in
    from omnivae.train import TrainConfig, Trainer

    torch.manual_seed(0)
    data = load_dataset(args.dataset)
    hidden = [int(h) for h in args.hidden.split(",")]
    config = ModelConfig(model=name, latent_dim=args.latent_dim, backbone=args.backbone, hidden=hidden,
                         num_samples=args.num_samples)
    model, objective = build_model(config, data.modalities)
    trainer = Trainer(model, objective, data.train, TrainConfig(
        epochs=1, batch_size=args.batch_size, device=args.device, progress=False,
        precision=args.precision, compile=args.compile))
    if args.stage:
        trainer._enter_stage(args.stage)
    device = trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch = next(iter(trainer.train_data.batches(args.batch_size, shuffle=True,
                                                 generator=torch.Generator().manual_seed(0), drop_last=True)))
    mask = model.stack_mask(batch.x, batch.mask)

    def step() -> None:
        trainer.train_step(batch.x, mask)

    def block(function) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            function()
        sync()
        return (time.perf_counter() - start) / args.steps

    for _ in range(args.warmup):
        step()
    sync()
    calls = _record_calls(_networks(model), step)
    parameters = [p for p in model.parameters() if p.requires_grad]
    # The same optimizer kind as the trainer's (fused, CPU included): a foreach Adam here
    # costs 4-5x the step's own update and made floor+adam exceed the step.
    optimizer = type(trainer.optimizer)(parameters, **trainer.optimizer.defaults)

    def floor() -> None:
        with networks_in(trainer.network_dtype):
            total = sum(out.float().sum() for module, inputs in calls for out in _outputs(module(*inputs)))
        total.backward()

    def floor_only() -> None:
        model.zero_grad(set_to_none=True)
        floor()

    def floor_and_adam() -> None:
        optimizer.zero_grad(set_to_none=True)
        floor()
        optimizer.step()

    for function in (floor_only, floor_and_adam):
        for _ in range(args.warmup):
            function()
    sync()
    # The three are timed in turn within every repeat, and the ratios are taken per repeat:
    # a shared machine's speed drifts by 20% over minutes, and timing the step, then the
    # floor, then floor+Adam in separate blocks put that drift into the ratios.
    rounds = [(block(step), block(floor_only), block(floor_and_adam)) for _ in range(args.repeats)]
    step_seconds = statistics.median(r[0] for r in rounds)
    floor_seconds = statistics.median(r[1] for r in rounds)
    adam_seconds = statistics.median(r[2] for r in rounds)
    return {
        "model": name,
        "stage": args.stage,
        "device": str(device),
        "network_calls": len(calls),
        "step_ms": 1000 * step_seconds,
        "floor_ms": 1000 * floor_seconds,
        "floor_adam_ms": 1000 * adam_seconds,
        "ratio": statistics.median(r[0] / r[1] for r in rounds),
        "ratio_with_adam": statistics.median(r[0] / r[2] for r in rounds),
        "samples_per_second": args.batch_size / step_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--dataset", default="polymnist")
    parser.add_argument("--backbone", default="mlp", help="mlp (2352-512-512-20 per modality), auto (conv) ...")
    parser.add_argument("--hidden", default="512,512")
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", default="none")
    parser.add_argument("--stage", type=int, default=0, help="time this stage of staged methods (jnf: 1 = flows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="append one JSON line per model to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"step vs networks' floor: backbone {args.backbone}, batch {args.batch_size}, device {args.device}, "
          f"precision {args.precision}, compile {args.compile}, {args.threads} threads")
    header = f"{'model':8} {'calls':>5} {'step ms':>9} {'floor ms':>9} {'+adam ms':>9} {'step/floor':>10} {'step/(floor+adam)':>18}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        row = measure(args, name)
        print(f"{name:8} {row['network_calls']:>5} {row['step_ms']:>9.2f} {row['floor_ms']:>9.2f} "
              f"{row['floor_adam_ms']:>9.2f} {row['ratio']:>10.2f} {row['ratio_with_adam']:>18.2f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**row, **{k: getattr(args, k) for k in ("backbone", "batch_size", "precision", "compile")}}) + "\n")


if __name__ == "__main__":
    main()
