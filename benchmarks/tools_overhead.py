"""What tracking and streamed data cost a training (issue 20, parts 1 and 4).

Trains the same model on the same rows with the same seed in several ways, in turns
(``--repeats`` rounds, so that a busy machine's noise spreads evenly), and reports the
process CPU seconds of ``Trainer.fit`` per way and its ratio to the in-memory baseline:

- ``memory``: the in-memory ``MultimodalDataset`` (the default path);
- ``stream``: ``TorchData(ArrayDataset(...))`` over memory-mapped ``.npy`` files;
- ``memory+tb``, ``memory+all``: the baseline with the TensorBoard tracker, or all three
  trackers (TensorBoard, MLflow, W&B offline), logging every ``--log-every`` steps.

Tracker start-up (imports, W&B's service process) happens once per process and is
reported apart; W&B's service works in another process, whose CPU time is not counted.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/tools_overhead.py --rows 4096 --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.data.torch_data import ArrayDataset, TorchData
from omnivae.models import ModelConfig, build_model
from omnivae.train import TrainConfig, Trainer
from omnivae.train.tracking import MLflowTracker, TensorBoardTracker, Tracker, WandbTracker


def arrays(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "img": rng.integers(0, 256, size=(rows, 1, 28, 28)).astype(np.uint8),
        "vec": rng.normal(size=(rows, 32)).astype(np.float32),
    }


def fit(data: object, args: argparse.Namespace, trackers: list[Tracker], folder: Path) -> tuple[float, float]:
    torch.manual_seed(0)
    specs = (ModalitySpec("img", (1, 28, 28), "image"), ModalitySpec("vec", (32,), "vector"))
    model, objective = build_model(ModelConfig(model="mopoe", latent_dim=16, backbone="mlp", hidden=[256, 256]), specs)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device="cpu", progress=False)
    trainer = Trainer(model, objective, data, config, run_dir=folder, callbacks=trackers)  # all write checkpoints
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="omnivae-tools-"))
    data = arrays(args.rows)
    for key, array in data.items():
        np.save(root / f"{key}.npy", array)
    specs = (ModalitySpec("img", (1, 28, 28), "image"), ModalitySpec("vec", (32,), "vector"))
    memory = MultimodalDataset(specs, {k: torch.from_numpy(v) for k, v in data.items()})
    stream = TorchData(ArrayDataset({k: np.load(root / f"{k}.npy", mmap_mode="r") for k in data}))

    started = time.perf_counter()
    for tracker in (TensorBoardTracker(root / "warm-tb"), MLflowTracker(root / "warm-ml"), WandbTracker(root / "warm-wb")):
        tracker.open(None, {"warm": 1})
        tracker.close()
    print(f"tracker start-up (imports, first open and close of each, once per process): "
          f"{time.perf_counter() - started:.1f} s wall")

    ways = {
        "memory": lambda i: fit(memory, args, [], root / f"m{i}"),
        "stream": lambda i: fit(stream, args, [], root / f"s{i}"),
        "memory+tb": lambda i: fit(memory, args, [TensorBoardTracker(log_every=args.log_every)], root / f"tb{i}"),
        "memory+all": lambda i: fit(
            memory, args,
            [TensorBoardTracker(log_every=args.log_every), MLflowTracker(log_every=args.log_every),
             WandbTracker(log_every=args.log_every)],
            root / f"all{i}",
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for i in range(args.repeats):
        for name, way in ways.items():
            times[name].append(way(i))
    base = statistics.median(c for c, _ in times["memory"])
    steps = args.epochs * -(-args.rows // args.batch_size)
    print(f"{args.rows} rows, {args.epochs} epochs, batch {args.batch_size} ({steps} steps), "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print(f"{'way':12} {'cpu s':>8} {'wall s':>8} {'cpu / memory':>13}")
    for name, runs in times.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:12} {cpu:8.2f} {wall:8.2f} {cpu / base:13.3f}")


if __name__ == "__main__":
    main()
