"""Senellart et al. (2024), "Bridging the inference gap in Multimodal Variational Autoencoders".

Published: Table 1 (MNIST-SVHN: joint coherence, MNIST->SVHN and SVHN->MNIST coherence,
FID; JNF, JNF-Shared with DCCA and with contrastive projectors against JMVAE and others)
with every beta in Table D.3, and Fig. 2 (the circles-and-squares toy: a Gaussian
q(z | square) spills out of the region of the joint latent space that the square's
pairs occupy, a flow follows it). Protocol, App. E.1 and Table E.6: latent 20, Adam
1e-3, batch 128, beta 2.5 (the bold beta of Table D.3 for JMVAE, JNF, JNF-DCCA and
JNF-CL), JMVAE alpha 0.1 and 100 epochs of KL annealing, MAF with two MADE blocks,
projections of dimension 10, likelihoods rescaled (lambda_MNIST = 3*32*32/(28*28),
lambda_SVHN = 1), "trained until convergence"; the reference configurations train 200
epochs with 100 of warm-up, and JNF-DCCA's DCCA at lr 1e-4 (peer protocols Sec. 4).

``--scale cpu`` runs the same four models on ``mnist-text`` (the offline bimodal digit
dataset on which they learn in minutes; text stands in for SVHN) and the toy on the
offline ``circles-squares``; ``--scale full`` on the real MNIST-SVHN files and the
paper's 200,000 toy pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from omnivae.reproduce.spec import Claim, Compare, Experiment, Extra, Preset, PublishedTable, Ref

MODELS = ("jmvae", "jnf", "jnf-dcca", "jnf-cl")

# Tolerances, fixed before any run. Table 1's seed standard deviations are 0.01-0.10
# (0.01-0.02 for JNF's rows):
ABOVE = 0.01  # "A above B": A - B > 0.01
AT_LEAST = 0.01  # "A at least as coherent as B": A - B >= -0.01
TOY_ABOVE = 0.05  # toy: the flow's share of samples in the support exceeds the Gaussian's by > 0.05

_TABLE1 = {  # Table 1: Joint, M->S, S->M coherence, FID (mean ± std)
    "jmvae": ("0.43 ± 0.10", "0.73 ± 0.07", "0.53 ± 0.05", "57 ± 3"),
    "jnf": ("0.51 ± 0.01", "0.82 ± 0.01", "0.52 ± 0.01", "54 ± 2"),
    "jnf-dcca": ("0.51 ± 0.01", "0.75 ± 0.03", "0.69 ± 0.05", "53 ± 2"),
    "jnf-cl": ("0.51 ± 0.02", "0.81 ± 0.01", "0.75 ± 0.02", "49 ± 1"),
}

GAUSSIAN, FLOW = "Gaussian q(z | square)", "flow q(z | square)"


def _table(experiment: str, first: str, second: str) -> PublishedTable:
    return PublishedTable(
        "Table 1: coherence on MNIST-SVHN (beta 2.5, Table D.3)",
        experiment,
        (("Joint", "joint coherence"), ("M->S", f"coherence [{first}->{second}]"),
         ("S->M", f"coherence [{second}->{first}]"), ("FID", None)),
        _TABLE1,
        "Paper: MNIST-SVHN. " + ("" if second == "svhn" else f"Ours: {first}-{second}, {second} in SVHN's place. ")
        + "FID has no counterpart here (no Inception network offline).",
    )


def _claims(experiment: str) -> tuple[Claim, ...]:
    def ref(model: str, metric: str) -> Ref:
        return Ref(experiment, model, metric)

    cross = "coherence (1 input)"
    return (
        Claim("JNF above JMVAE on joint coherence", "Table 1 (0.51 vs 0.43); Table D.3 at every beta",
              (Compare(ref("jnf", "joint coherence"), "above", ref("jmvae", "joint coherence"), ABOVE),)),
        Claim("JNF above JMVAE on cross coherence (mean of both directions)",
              "Table 1 (M->S 0.82 vs 0.73, S->M 0.52 vs 0.53: mean 0.67 vs 0.63)",
              (Compare(ref("jnf", cross), "above", ref("jmvae", cross), ABOVE),)),
        Claim("JNF-Shared (DCCA and CL) at least as coherent as JNF, joint and cross",
              "Table 1 (joint 0.51 all; cross means 0.72 and 0.78 vs 0.67)",
              tuple(Compare(ref(m, metric), "at least", ref("jnf", metric), AT_LEAST)
                    for m in ("jnf-dcca", "jnf-cl") for metric in ("joint coherence", cross))),
        Claim("The flow posterior stays on the toy's arc where the Gaussian does not: a larger share of its "
              "samples lies in the true posterior's support",
              "Fig. 2 (b) vs (c)",
              (Compare(Ref("toy", FLOW, "inside support"), "above", Ref("toy", GAUSSIAN, "inside support"), TOY_ABOVE),)),
    )


def _toy(dataset: str, epochs: int) -> Callable[[Path, int, bool], dict[str, dict[str, float]]]:
    """The Fig. 2 toy as a resumable extra step: one figure and one ``toy.json`` per seed."""

    def run(folder: Path, seed: int, progress: bool) -> dict[str, dict[str, float]]:
        from omnivae.examples.jnf_toy import run_jnf_toy
        from omnivae.train.checkpoint import atomic_write_json

        record = folder / f"toy-seed{seed}.json"
        if record.is_file():
            return json.loads(record.read_text())["results"]
        folder.mkdir(parents=True, exist_ok=True)
        results = run_jnf_toy(folder / f"jnf_toy-seed{seed}.png", epochs=epochs, seed=seed, progress=progress,
                              dataset=dataset)
        atomic_write_json(record, {"dataset": dataset, "epochs": epochs, "seed": seed, "results": results})
        return results

    return run


# Cost estimates. CPU: measured here on mnist-text, MLP nets, batch 64, one thread, on a
# machine shared with other jobs (~0.05 s per step, 3.2 s per epoch; a JNF run has two stages, JNF-Shared
# three); the toy took 4 min at 10 epochs per stage on one idle thread (README). GPU:
# not measured (no GPU in this session); assumed 0.01 s per step for Table E.6's small
# nets, 10 min of metrics per run on 200,000 test pairs.
_CPU = Experiment(
    name="mnist-text",
    dataset="mnist-text",
    models=MODELS,
    epochs=30,  # 1,890 steps of stage 1: past the trough (README: cross coherence 0.91 at 30 epochs)
    batch_size=64,  # paper 128; more steps on 4,000 rows
    lr=1e-3,  # Table E.6
    latent_dim=20,  # Table E.6
    train_size=4000,
    beta=2.5,  # Table D.3, bold for JMVAE, JNF, JNF-DCCA, JNF-CL
    backbone="mlp",
    hidden=(400,),  # Table E.6 MNIST encoder: Linear(784, 400), ReLU
    warmup_epochs=10.0,  # paper: 100 of 200 epochs (App. E.1); scaled to the shorter run
    rescale_likelihoods=True,  # Table E.6: lambda = largest modality / this modality
    model_settings={m: {"options": {"stage2_epochs": 10, **({"projector_epochs": 10} if m != "jnf" else {})}}
                    for m in ("jnf", "jnf-dcca", "jnf-cl")},
    metrics=("coherence",),  # Table 1 reports coherence (and FID) only
    step_seconds={"cpu": 0.05, "gpu": 0.01},
    eval_seconds={"cpu": 20.0, "gpu": 60.0},
    protocol="Table 1 on mnist-text: beta 2.5, latent 20, lr 1e-3, rescaled likelihoods, "
    "30 epochs of batch 64 (stage 2 and projectors 10 epochs), 10 epochs of warm-up",
)

_FULL = Experiment(
    name="mnist-svhn",
    dataset="mnist-svhn",
    models=MODELS,
    epochs=200,  # reference configurations (peer protocols Sec. 4); paper: "until convergence"
    batch_size=128,
    lr=1e-3,
    latent_dim=20,
    train_size=1121360,
    beta=2.5,
    warmup_epochs=100.0,  # App. E.1: 100 epochs of annealing
    rescale_likelihoods=True,
    train_settings={"jnf-dcca": {"lr": 1e-4}},  # reference configuration of JNF-DCCA
    metrics=("coherence",),
    uses_data_dir=True,
    step_seconds={"cpu": 0.3, "gpu": 0.01},
    eval_seconds={"cpu": 1800.0, "gpu": 600.0},
    protocol="Table 1: MNIST-SVHN (real files), Table E.6 nets, latent 20, beta 2.5, lr 1e-3, batch 128, "
    "200 epochs, 100 of warm-up, rescaled likelihoods",
)


def preset(scale: str) -> Preset:
    """The JNF paper's protocol at ``scale`` (``"cpu"`` or ``"full"``)."""
    title = "Senellart et al. 2024, Bridging the inference gap in multimodal VAEs (JNF)"
    if scale == "cpu":
        return Preset(
            paper="jnf", title=title, scale=scale, seeds=3,
            experiments=(_CPU,),
            published=(_table("mnist-text", "mnist", "text"),),
            claims=_claims("mnist-text"),
            extras=(Extra("toy", _toy("circles-squares", 10), 1, {"cpu": 300.0, "gpu": 120.0},
                          "Fig. 2 toy on circles-squares (50,000 pairs, 40,000 for training), 10 epochs per stage, 1 seed"),),
            deviations=(
                "mnist-text stands in for MNIST-SVHN (no SVHN offline): text plays SVHN's role",
                "30 epochs of batch 64 and 10 of warm-up instead of 200 and 100; stage 2 and projectors 10 epochs",
                "MLP encoders/decoders (Table E.6's MNIST net) for both modalities",
                "the toy on 50,000 pairs (not 200,000), 10 epochs per stage, one seed",
            ),
            headline_metrics=("joint coherence", "coherence [mnist->text]", "coherence [text->mnist]",
                              "coherence (1 input)"),
        )
    return Preset(
        paper="jnf", title=title, scale=scale, seeds=5,
        experiments=(_FULL,),
        published=(_table("mnist-svhn", "mnist", "svhn"),),
        claims=_claims("mnist-svhn"),
        extras=(Extra("toy", _toy("circles-squares-full", 50), 3, {"cpu": 7200.0, "gpu": 600.0},
                      "Fig. 2 toy on the paper's 200,000 pairs, 50 epochs per stage, 3 seeds"),),
        deviations=("no FID (Table 1's last column) without an Inception network; no PolyMNIST or MHD (Fig. 4, Table 2)",),
        headline_metrics=("joint coherence", "coherence [mnist->svhn]", "coherence [svhn->mnist]",
                          "coherence (1 input)"),
    )
