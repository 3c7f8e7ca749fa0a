"""omnivae's Frechet distance against torchmetrics' FrechetInceptionDistance, same features.

Both get identical feature batches: torchmetrics through its ``feature`` argument (an
``nn.Module``; here an identity over precomputed features, so no Inception download and no
network cost), omnivae through :class:`RunningMoments` + :func:`frechet_distance`. The
sizes are those of ``omnivae evaluate``: ``fast`` scores 1,000 test rows, ``paper`` the whole
test split (10,000 for MNIST-type data), in batches of 256, with the classifiers' 128-d
features (and 2,048-d as an Inception network would give). Timed with process CPU time.

    OMP_NUM_THREADS=1 python benchmarks/fd_vs_torchmetrics.py [--quick]

The hand-written version (removed from omnivae) is kept here as the baseline.
"""

from __future__ import annotations

import resource
import time

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from omnivae.functional import psd_sqrt


class RunningMoments:
    """The replaced hand-written accumulator: float64 sums shifted by the first batch's mean."""

    def __init__(self) -> None:
        self.shift: Tensor | None = None

    def update(self, features: Tensor) -> None:
        x = features.detach().to(torch.float64)
        if self.shift is None:
            self.shift = x.mean(0)
            self.count, self.total = 0, torch.zeros_like(self.shift)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        x = x - self.shift
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    @property
    def mean(self) -> Tensor:
        return self.shift + self.total / self.count

    @property
    def covariance(self) -> Tensor:
        centred = self.total / self.count
        return (self.outer - self.count * torch.outer(centred, centred)) / (self.count - 1)


def frechet_distance(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> float:
    """The replaced hand-written formula: the symmetric form tr((C1^1/2 C2 C1^1/2)^1/2)."""
    root = psd_sqrt(0.5 * (c1 + c1.T))
    middle = root @ (0.5 * (c2 + c2.T)) @ root
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    return max(float((m1 - m2).pow(2).sum() + c1.trace() + c2.trace() - 2 * cross), 0.0)


class Identity(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def features(n: int, dim: int, seed: int, shift: float = 0.0, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    x = torch.relu(torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing + 0.3) + shift
    return x.to(dtype)


def ours(real: Tensor, fake: Tensor, batch: int) -> float:
    a, b = RunningMoments(), RunningMoments()
    for i in range(0, len(real), batch):
        a.update(real[i : i + batch])
        b.update(fake[i : i + batch])
    return frechet_distance(a.mean, a.covariance, b.mean, b.covariance)


def theirs(real: Tensor, fake: Tensor, batch: int) -> float:
    metric = FrechetInceptionDistance(feature=Identity(real.shape[1]), normalize=False)
    for i in range(0, len(real), batch):
        metric.update(real[i : i + batch], real=True)
        metric.update(fake[i : i + batch], real=False)
    return float(metric.compute())


def reference(real: Tensor, fake: Tensor) -> float:
    """Exact value from whole-set float64 moments (scipy-free: eigh of the symmetric form)."""
    r, f = real.double(), fake.double()
    c1, c2 = torch.cov(r.T), torch.cov(f.T)
    w, v = torch.linalg.eigh(c1)
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root @ c2 @ root).clamp_min(0).sqrt().sum()
    return float((r.mean(0) - f.mean(0)).pow(2).sum() + c1.trace() + c2.trace() - 2 * cross)


def timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
    best, value = float("inf"), 0.0
    for _ in range(repeats):
        start = time.process_time()
        value = fn(*args)
        best = min(best, time.process_time() - start)
    return value, best


def main() -> None:
    import sys

    torch.set_num_threads(1)
    print("case | N | F | exact | ours rel.err | torchmetrics rel.err | ours CPU s | torchmetrics CPU s")
    cases = [("fast", 1000, 128, 0.0, torch.float64), ("paper", 10000, 128, 0.0, torch.float64),
             ("fast f32", 1000, 128, 0.0, torch.float32), ("offset 1e3 f32", 1000, 128, 1e3, torch.float32),
             ("N<F", 100, 128, 0.0, torch.float64), ("fast, F=2048", 1000, 2048, 0.0, torch.float64),
             ("paper, F=2048", 10000, 2048, 0.0, torch.float64)]
    if "--quick" in sys.argv:
        cases = [c for c in cases if c[2] < 1000]
    for name, n, dim, shift, dtype in cases:
        real = features(n, dim, 0, shift, dtype)
        fake = 1.1 * features(n, dim, 1, shift, dtype)
        exact = reference(real, fake)
        repeats = 1 if dim > 1000 else 3
        a, ta = timed(ours, real, fake, 256, repeats=repeats)
        b, tb = timed(theirs, real, fake, 256, repeats=repeats)
        print(f"{name} | {n} | {dim} | {exact:.6f} | {abs(a - exact) / exact:.1e} | {abs(b - exact) / exact:.1e}"
              f" | {ta:.3f} | {tb:.3f}")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
