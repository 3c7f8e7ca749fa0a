"""omnivae's batched HMC against Pyro's HMC on shared targets with known moments.

Both samplers run with the same step size and number of leapfrog steps and no adaptation.
omnivae runs many independent chains in one batch and keeps each chain's last state
(independent draws); Pyro runs one chain, whose draws are thinned to make them nearly
independent. Each set's moments must match the truth within Monte Carlo error (``Z``
standard errors, from the thinned sample size for Pyro), and the two sets must pass an
energy-distance permutation test against each other at level 1% (seeded); a sampler of
a different banana must fail it. The fast tests use the banana; the Gaussian and longer
runs are marked slow.

Targets: a correlated Gaussian (rho = 0.8) and a banana (twisted Gaussian; Haario et al.
1999): x1 ~ N(0, 1), x2 | x1 ~ N(b (x1^2 - 1), 1), whose moments are known in closed form:
E x2 = 0, Var x2 = 1 + 2 b^2, E[x1^2 x2] = 2 b.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor

from omnivae.samplers import hmc

pyro = pytest.importorskip("pyro")
from pyro.infer.mcmc import HMC, MCMC  # noqa: E402

DT = torch.float64
Z = 5.0
RHO = 0.8
B = 0.5
COV = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=DT)


def gaussian_log_prob(z: Tensor) -> Tensor:
    precision = torch.linalg.inv(COV)
    return -0.5 * torch.einsum("...i,ij,...j->...", z, precision, z)


def banana_log_prob(z: Tensor) -> Tensor:
    x1, x2 = z[..., 0], z[..., 1]
    return -0.5 * x1**2 - 0.5 * (x2 - B * (x1**2 - 1)) ** 2


def ours(log_prob, chains: int, steps: int, step_size: float, leapfrog: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(chains, 2, generator=generator, dtype=DT)
    return hmc(log_prob, start, num_steps=steps, leapfrog_steps=leapfrog, step_size=step_size,
               generator=generator).samples


def pyros(log_prob, draws: int, thin: int, step_size: float, leapfrog: int, seed: int) -> Tensor:
    pyro.set_rng_seed(seed)
    kernel = HMC(potential_fn=lambda params: -log_prob(params["z"]), step_size=step_size, num_steps=leapfrog,
                 adapt_step_size=False, adapt_mass_matrix=False, full_mass=False)
    mcmc = MCMC(kernel, num_samples=draws * thin, warmup_steps=50,
                initial_params={"z": torch.zeros(2, dtype=DT)}, disable_progbar=True)
    mcmc.run()
    return mcmc.get_samples()["z"][::thin]


def moments(x: Tensor) -> dict[str, Tensor]:
    """Per-draw statistics whose means are the moments checked."""
    return {"E x1": x[:, 0], "E x2": x[:, 1], "E x1^2": x[:, 0] ** 2, "E x2^2": x[:, 1] ** 2,
            "E x1 x2": x[:, 0] * x[:, 1], "E x1^2 x2": x[:, 0] ** 2 * x[:, 1]}


TRUTH = {
    "gaussian": {"E x1": 0.0, "E x2": 0.0, "E x1^2": 1.0, "E x2^2": 1.0, "E x1 x2": RHO, "E x1^2 x2": 0.0},
    "banana": {"E x1": 0.0, "E x2": 0.0, "E x1^2": 1.0, "E x2^2": 1 + 2 * B**2, "E x1 x2": 0.0,
               "E x1^2 x2": 2 * B},
}


def check_moments(x: Tensor, truth: dict[str, float], who: str) -> None:
    for name, values in moments(x).items():
        error = values.std() / math.sqrt(len(values))
        assert abs(float(values.mean()) - truth[name]) < Z * float(error), (who, name, float(values.mean()))


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Szekely & Rizzo's energy statistic 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic)."""
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def permutation_p_value(x: Tensor, y: Tensor, permutations: int = 200, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    observed = energy_distance(x, y)
    pooled = torch.cat([x, y])
    exceed = 0
    for _ in range(permutations):
        order = torch.randperm(len(pooled), generator=generator)
        exceed += int(energy_distance(pooled[order[: len(x)]], pooled[order[len(x) :]]) >= observed)
    return (exceed + 1) / (permutations + 1)


@functools.lru_cache(maxsize=None)
def pyro_banana() -> Tensor:
    """Pyro's banana draws, shared by the fast tests (about 5 s of CPU)."""
    return pyros(banana_log_prob, draws=400, thin=3, step_size=0.2, leapfrog=10, seed=2)


def test_batched_hmc_and_pyro_hmc_agree_on_the_banana():
    mine = ours(banana_log_prob, chains=1000, steps=30, step_size=0.2, leapfrog=10, seed=1)
    theirs = pyro_banana()
    check_moments(mine, TRUTH["banana"], "omnivae")
    check_moments(theirs, TRUTH["banana"], "pyro")
    assert permutation_p_value(mine[:400], theirs, seed=3) > 0.01


def test_the_two_sample_test_detects_a_wrong_sampler():
    """The comparison has power: omnivae's HMC on the banana with b = 1.0 instead of 0.5
    (Var x2 = 3 instead of 1.5) is told apart from Pyro's draws of the right one."""
    wrong = ours(lambda z: -0.5 * z[..., 0] ** 2 - 0.5 * (z[..., 1] - 1.0 * (z[..., 0] ** 2 - 1)) ** 2,
                 chains=400, steps=30, step_size=0.2, leapfrog=10, seed=1)
    assert permutation_p_value(wrong, pyro_banana(), seed=3) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("target, log_prob, step_size, leapfrog", [
    ("gaussian", gaussian_log_prob, 0.2, 11),
    ("banana", banana_log_prob, 0.2, 10),
])
def test_batched_hmc_and_pyro_hmc_agree_on_longer_runs(target, log_prob, step_size, leapfrog):
    mine = ours(log_prob, chains=2000, steps=30, step_size=step_size, leapfrog=leapfrog, seed=1)
    theirs = pyros(log_prob, draws=1000, thin=5, step_size=step_size, leapfrog=leapfrog, seed=2)
    check_moments(mine, TRUTH[target], "omnivae")
    check_moments(theirs, TRUTH[target], "pyro")
    assert permutation_p_value(mine[:1000], theirs, seed=3) > 0.01
