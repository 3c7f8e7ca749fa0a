"""Stress test: every registered model trains 2,000 steps on hostile data without a
non-finite loss.

The data have three modalities of different kinds (a grey 8x8 image with a Bernoulli
likelihood, a real vector with a Gaussian one, a binary vector) and are hostile on
purpose: the vector is on the scale of 1e3 with outlier rows at 1e5, the image pixels and
the bits are almost all exact zeros and ones (whole rows of each), some modalities are
missing in the data, and training hides half of the rest at random
(``missing_rate=0.5``). Networks are tiny (one hidden layer of 16, latent 4, batch 16).

Each model runs through :meth:`Trainer.fit` (its stages, optimizers and warm-up, with no
run directory and no progress bar) with the step wrapped to record every loss; staged
methods (JNF and its variants) count their steps over all stages. The models train in
parallel worker processes, one thread each.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from helpers import tiny_config
from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.models import MODELS, build_model
from omnivae.train import TrainConfig, Trainer

STEPS = 2000
BATCH = 16
SAMPLES = 2 * BATCH  # two steps per epoch

MODALITIES = (
    ModalitySpec("img", (1, 8, 8), "image"),
    ModalitySpec("vec", (4,), "vector"),
    ModalitySpec("bits", (5,), "binary"),
)

# Method-specific widths cut to the same tiny scale as the shared networks.
OPTIONS = {
    "jnf": {"flow_hidden": 16},
    "jnf-dcca": {"flow_hidden": 16, "projection_dim": 4},
    "jnf-cl": {"flow_hidden": 16, "projection_dim": 4},
    "mmvae+": {"w_dim": 4},
    "cmvae": {"w_dim": 4, "number_of_clusters": 3},
    "nexus": {"msg_dim": 16, "bottom_dim": 4},
}


def hostile_dataset(seed: int = 0) -> MultimodalDataset:
    g = torch.Generator().manual_seed(seed)
    n = SAMPLES
    # Pixels: exact black or white almost everywhere, a few greys; one white and one
    # black image.
    img = torch.where(torch.rand(n, 1, 8, 8, generator=g) < 0.5, 255, 0).to(torch.uint8)
    greys = torch.rand(n, 1, 8, 8, generator=g) < 0.05
    img[greys] = torch.randint(1, 255, (int(greys.sum()),), generator=g, dtype=torch.uint8)
    img[0] = 255
    img[1] = 0
    # A Gaussian modality on the scale of 1e3, with outlier rows a hundred times larger.
    vec = 1e3 * torch.randn(n, 4, generator=g)
    vec[2] = 1e5
    vec[3] = -1e5
    vec[4, 0] = 3e5
    # Bits: whole rows of ones and of zeros, the rest sparse.
    bits = torch.rand(n, 5, generator=g) < 0.1
    bits[5:9] = True
    bits[9:13] = False
    # Some modalities missing in the data; every row keeps one (unobserved rows hold zeros,
    # as the data layer guarantees).
    observed = torch.rand(3, n, generator=g) < 0.8
    observed[1] |= ~observed.any(0)
    data = {"img": img, "vec": vec, "bits": bits}
    masks = {}
    for index, spec in enumerate(MODALITIES):
        masks[spec.name] = observed[index].clone()
        data[spec.name][~observed[index]] = 0
    return MultimodalDataset(MODALITIES, data, masks, name="hostile")


def train_one(name: str) -> dict:
    """Train ``name`` for 2,000 steps on the hostile data; what happened, as plain data.

    Runs in a worker process; an exception is returned as its traceback, so that the
    model's own test reports it.
    """
    torch.set_num_threads(1)
    try:
        data = hostile_dataset()
        torch.manual_seed(0)
        model, objective = build_model(tiny_config(name, options=OPTIONS.get(name, {})), MODALITIES)
        stages = len(objective.stages(1))
        steps_per_epoch = SAMPLES // BATCH
        epochs = math.ceil(STEPS / (stages * steps_per_epoch))  # epochs of each stage
        config = TrainConfig(
            epochs=epochs,
            batch_size=BATCH,
            lr=1e-3,
            seed=0,
            device="cpu",
            warmup_epochs=MODELS[name].warmup_epochs,
            missing_rate=0.5,
            progress=False,
        )
        trainer = Trainer(model, objective, data, config)
        losses: list[torch.Tensor] = []
        step = trainer.train_step

        def recording_step(x, mask):
            terms = step(x, mask)
            losses.append(terms["loss"])
            return terms

        trainer.train_step = recording_step  # type: ignore[method-assign]
        started = time.perf_counter()
        error = None
        try:
            trainer.fit()
        except Exception:  # a diverged run stops early: report its losses too
            error = traceback.format_exc()
        return {
            "stages": len(trainer.stages),
            "global_step": trainer.global_step,
            "losses": [float(v) for v in losses],
            "bad_parameters": [
                key for key, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()
            ],
            "seconds": time.perf_counter() - started,
            "error": error,
        }
    except Exception:
        return {"error": traceback.format_exc()}


# The slowest first, so that the workers finish together.
ORDER = ["jmvae", "poe", "mvtcae", "mmvae+", "mmvamp", "jnf", "nexus", "independent"]


@pytest.fixture(scope="module")
def results(request) -> dict[str, dict]:
    """Every selected model's run, trained in parallel worker processes (one thread each).

    Steps cost a few milliseconds of Python and autograd overhead each, so 2,000 steps of
    15 models take minutes on one core; the runs are independent and spread over up to
    four cores.
    """
    wanted = [
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_two_thousand_steps_on_hostile_data_stay_finite"
    ]
    wanted.sort(key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    workers = max(1, min(4, cores, len(wanted)))
    if workers == 1:
        return {name: train_one(name) for name in wanted}
    # spawn, not fork: the parent has initialised torch (and maybe OpenMP).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(train_one, name) for name in wanted}
        return {name: future.result() for name, future in futures.items()}


def test_every_model_is_stressed():
    assert set(OPTIONS) <= set(MODELS)
    assert len(MODELS) >= 15


@pytest.mark.parametrize("name", list(MODELS))
def test_two_thousand_steps_on_hostile_data_stay_finite(name, results):
    run = results[name]
    losses = run.get("losses", [])
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    assert not bad, f"{name}: non-finite loss at steps {bad[:10]} of {len(losses)}\n{run.get('error')}"
    assert run["error"] is None, f"{name}: {run['error']}"
    assert len(losses) >= STEPS, f"{name}: only {len(losses)} steps"
    assert run["global_step"] == len(losses)
    assert not run["bad_parameters"], f"{name}: non-finite parameters {run['bad_parameters']}"
    print(f"{name}: {len(losses)} steps in {run['stages']} stage(s), {run['seconds']:.1f} s")
