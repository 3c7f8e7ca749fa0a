"""omnivae against MultiVae: the same methods, networks, data and optimiser, timed side by side.

For every (method, backbone, batch size) this trains one model in omnivae and one in
MultiVae, each in a fresh subprocess, alternating the libraries (omnivae, MultiVae,
omnivae, MultiVae, ... for ``--repeats``), and prints the median samples per second, the
peak memory and their ratios. Optionally (``--hmc``, ``--coherence``) it also times JNF's
HMC sampling of subset posteriors and a full coherence evaluation in both libraries.

Environment (MultiVae is never a dependency of omnivae; it lives in its own venv)
----------------------------------------------------------------------------------
MultiVae imports torchvision, which fails beside a torch that has no matching
torchvision. Both libraries must share one torch, so build one venv holding a matching
pair, MultiVae and omnivae::

    python3 -m venv /work/venv-mv
    . /work/venv-mv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1   # a matching pair (large; runs on the CPU)
    pip install multivae==1.0.3                      # resolves with that torch, no --no-deps needed
    pip install -e /path/to/omnivae
    python -c "import multivae.models, omnivae, torch; print(torch.__version__)"
    python benchmarks/vs_multivae.py --methods mvae,mopoe --backbones mlp --threads 2

MultiVae's code is not patched: its models get custom encoders, decoders, a joint
encoder and flows through its public constructor arguments (subclasses of its
``BaseEncoder``/``BaseDecoder``/``BaseJointEncoder`` and pythae's ``BaseNF``, defined here).

What is identical
-----------------
- **Networks.** Built once, by omnivae's factories (``build_model``): the MLP backbone
  (encoder 2352-512-512-(2 x latent), decoder latent-512-512-2352) or omnivae's PolyMNIST
  convolutional backbone, JMVAE/JNF's joint encoder (per-modality heads + a 512-512 merging
  MLP) and JNF's unconditional MAF flows (zuko, 2 MADE blocks, 128 hidden units). The
  MultiVae side wraps those very modules (same classes, same initial weights for a seed);
  the wrappers only rename outputs (``embedding``, ``log_covariance`` = the same
  soft-clamped log-variance omnivae computes, ``reconstruction`` = sigmoid(raw), the mean
  of omnivae's image likelihood). The trainable parameter counts are printed and checked
  equal before any timing.
- **Likelihood.** Laplace with scale 0.75 on sigmoid means for every image modality
  (omnivae's image default; MultiVae ``decoders_dist="laplace"``, scale 0.75).
- **Posteriors and priors.** Diagonal Gaussians and a fixed N(0, I) prior in both
  (MultiVae's MMVAE/MMVAE+ ``prior_and_posterior_dist="normal"``, ``learn_prior=False``;
  MMVAE+ keeps its learnable modality priors, omnivae's learnable auxiliary scales).
- **Objectives' settings.** MMVAE(+): DReG ("dreg_looser") with K importance samples;
  MVAE: joint + unimodal ELBOs, no random subsets (MultiVae ``k=0``); MVTCAE: alpha 5/6,
  beta 2.5; JMVAE: alpha 0.1; MMVAE+: private latent size 32; TELBO: likelihood weights 1
  (MultiVae ``uses_likelihood_rescaling=False``, so its lambda and gamma factors are 1);
  DMVAE: private latents of size 32 per modality (MultiVae ``modalities_specific_dim``,
  the encoders' outputs split as for MMVAE+), beta 1; CRMVAE: beta 2.5 (MultiVae's default). CMVAE: MMVAE+'s settings
  plus 10 clusters of unit variance (MultiVae's fixed cluster log-variances; omnivae's
  default), pi = softmax of learnt logits, the same initial cluster means (copied).
  CVAE: target m0 given m1..m4,
  N(0, I) prior (no ``prior_network``); MultiVae's ``CVAE`` gets omnivae's recognition
  network (a joint encoder) and a conditional decoder reading [z, omnivae's condition
  features] (its default decoder reads the raw conditions; benchmarks/README.md).
- **Data.** omnivae's offline PolyMNIST (5 modalities of 3x28x28, 4,000 training
  samples), the same rows in both (MultiVae gets them as float tensors in a
  ``MultimodalBaseDataset``; omnivae keeps its uint8 storage and scales per batch).
- **Optimiser and loop.** Adam, lr 1e-3 (each library's trainer builds it: torch's fused
  kernel in omnivae, torch's default in MultiVae), latent 20, the batch size given, shuffled
  batches with the last partial batch dropped, ``--warmup`` untimed steps, then
  ``--steps`` timed steps (capped by ``--max-seconds``), ``torch.set_num_threads(--threads)``.
  omnivae: ``Trainer.train_step`` on ``MultimodalDataset.batches``. MultiVae: what its
  ``BaseTrainer.train_step`` does per batch: a ``DataLoader`` over the dataset (default
  collate of ``DatasetOutput``), ``set_inputs_to_device``, ``model(inputs, epoch=...,
  dataset_size=..., batch_ratio=...)``, ``zero_grad``, ``loss.backward()``,
  ``optimizer.step()`` and ``loss.item()`` (its per-step accumulation of
  ``model_output.metrics`` is left out, as omnivae's running term totals are).
- **JNF's stages** are timed separately: stage 1 (joint VAE) is MultiVae's warm-up phase
  (``epoch <= warmup``) and omnivae's first ``Trainer`` stage; stage 2 (unimodal flow
  posteriors) is MultiVae's phase after warm-up (a fresh Adam, as its
  ``MultistageTrainer`` makes) and omnivae's second stage (``Trainer._enter_stage(1)``).
- **TELBO's stages** likewise: stage 1 (joint encoder and decoders) is MultiVae's
  ``epoch <= warmup``, stage 2 (unimodal encoders, decoders frozen) its later epochs.
- **HMC and coherence** (JNF): one JNF is trained briefly by omnivae (``--prepare-epochs``
  per stage) and its weights are loaded into both libraries, with the same PolyMNIST
  classifiers (omnivae's ``ConvClassifier``, trained ``--classifier-epochs``). HMC: 100
  steps of 10 leapfrog steps of size 0.01, the prior divided out once (MultiVae's
  ``divide_prior=True``; omnivae ``hmc_prior_power="once"``), no step-size adaptation,
  one draw per test row. Coherence: every conditioning subset towards every modality
  outside it, one draw per row, on the first ``--eval-samples`` test rows, plus the joint
  coherence of ``--joint-samples`` prior draws (MultiVae ``CoherenceEvaluator.eval()``;
  omnivae ``conditional_coherence`` + ``joint_coherence``).

What differs (TELBO, DMVAE, CRMVAE)
----------------------------------
- TELBO stage 2: MultiVae's forward still runs the frozen joint encoder and the decoders
  on the joint sample every step and discards the result; omnivae runs only the unimodal
  encoders and decoders. MultiVae's unimodal KL term (``telbo_model.py``) reads the joint
  encoder's log-variance where the unimodal one belongs, so its stage-2 objective is not
  the unimodal ELBO in that term; omnivae uses KL(q(z | x_m) || p(z)). That slip changes
  no cost, only the value and gradient of that term.
- DMVAE: MultiVae decodes each of its M + 1 ELBOs separately (30 decoder calls per step
  on PolyMNIST) and draws the private latents afresh in each; omnivae draws them once and
  makes one decoder call per modality over the M + 1 shared samples. Both put the private
  KLs in every ELBO (omnivae since issue 21) and the N(0, I) expert in the PoE.
- CRMVAE: MultiVae sums its loss over the batch, omnivae averages; Adam's update is
  invariant to a constant scale of the loss (up to its epsilon). MultiVae divides by the
  total number of modalities, omnivae by the observed ones: equal on complete data.

Memory: on the CPU, the peak resident set of the worker process (``ru_maxrss``), which
includes each library's imports (``base MB``, the RSS before the model is built, is in the
JSON lines; ``step MB ratio`` divides the two libraries' peaks above that common base);
on CUDA, ``torch.cuda.max_memory_allocated`` after the warm-up steps.

Usage::

    python benchmarks/vs_multivae.py --methods mvae,mmvae1,mmvae10,mopoe,jmvae,jnf,mvtcae,mmvaeplus \\
        --backbones mlp,conv --batch-sizes 128,256 --threads 2 --steps 31 --repeats 2 \\
        [--device cuda] [--json out.jsonl] [--hmc] [--coherence]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

LATENT = 20
HIDDEN = [512, 512]
W_DIM = 32  # MMVAE+'s private latent size (its PolyMNIST setting)
CLUSTERS = 10  # CMVAE's number of clusters (MultiVae's default)
LIKELIHOOD_SCALE = 0.75
ENV_RECIPE = (
    "python3 -m venv /work/venv-mv && . /work/venv-mv/bin/activate && "
    "pip install torch==2.14.1 torchvision==0.29.1 && pip install multivae==1.0.3 && "
    "pip install -e <omnivae checkout>  (see this script's docstring)"
)


@dataclass(frozen=True)
class Method:
    """One compared method: omnivae's recipe and its settings, and the speed goal."""

    title: str
    omni: str
    num_samples: int = 1
    dreg: bool = False
    beta: float = 1.0
    goal: float | None = None  # omnivae samples/s over MultiVae's, None: no target
    stages: tuple[int, ...] = (1,)
    extra: dict = field(default_factory=dict)


METHODS: dict[str, Method] = {
    "mvae": Method("MVAE", "poe", goal=1.5),
    "mmvae1": Method("MMVAE K=1", "moe", num_samples=1, dreg=True),
    "mmvae10": Method("MMVAE K=10", "moe", num_samples=10, dreg=True, goal=2.5),
    "mopoe": Method("MoPoE", "mopoe", goal=1.5),
    "jmvae": Method("JMVAE", "jmvae", goal=1.5),
    "jnf": Method("JNF", "jnf", goal=1.5, stages=(1, 2)),
    "mvtcae": Method("MVTCAE", "mvtcae", beta=2.5),
    "mmvaeplus": Method("MMVAE+ K=1", "mmvae+", num_samples=1, dreg=True),
    "mmvaeplus10": Method("MMVAE+ K=10", "mmvae+", num_samples=10, dreg=True),
    "telbo": Method("TELBO", "telbo", stages=(1, 2)),
    "dmvae": Method("DMVAE", "dmvae"),
    "crmvae": Method("CRMVAE", "crmvae", beta=2.5),
    "cmvae": Method("CMVAE K=1", "cmvae", num_samples=1, dreg=True),
    "cmvae10": Method("CMVAE K=10", "cmvae", num_samples=10, dreg=True),
    "mhvae": Method("MHVAE L=3", "mhvae"),
    "cvae": Method("CVAE (m0 given m1..m4)", "cvae"),
}


# ==========================================================================================
# Worker side: builds and times one model. Imports torch and the libraries lazily so that
# the driver stays light and can report a missing MultiVae in one line.
# ==========================================================================================
def _rss_mb() -> float:
    """The current resident set size in MB (from /proc; 0 where it is unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _load_data():
    from omnivae.data import load_dataset

    return load_dataset("polymnist")


def build_omnivae(method: str, backbone: str, modalities):
    """omnivae's model and objective for ``method``: the networks both libraries train."""
    from omnivae.models import ModelConfig, build_model

    m = METHODS[method]
    options: dict = {}
    if m.omni == "jnf":
        options = {"hmc_prior_power": "once", "hmc_steps": 100, "hmc_leapfrog": 10, "hmc_step_size": 0.01}
    if m.omni == "mmvae+":
        options = {"w_dim": W_DIM}
    if m.omni == "dmvae":
        options = {"private_dim": W_DIM}
    if m.omni == "cmvae":
        options = {"w_dim": W_DIM, "number_of_clusters": CLUSTERS}
    if m.omni == "mhvae":
        options = {"levels": 3, "subsets": "all"}  # MultiVae's n_latent default; its mean over all subsets
    config = ModelConfig(
        model=m.omni, latent_dim=LATENT, backbone=backbone, hidden=list(HIDDEN), likelihood="laplace",
        num_samples=m.num_samples, dreg=m.dreg, beta=m.beta, alpha=0.1, tc_ratio=5 / 6, options=options,
    )
    return build_model(config, modalities)


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_multivae(method: str, omni_model, hmc_steps: int = 100):
    """MultiVae's model for ``method`` around omnivae's modules (same weights).

    For JNF, ``hmc_steps`` becomes the default ``mcmc_steps`` of its ``encode`` (through a
    subclass, so that its ``CoherenceEvaluator``, which passes no sampler settings, uses it).
    """
    import torch
    from multivae import models as mv
    from multivae.models.nn.base_architectures import BaseJointEncoder
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
    from pythae.models.normalizing_flows.base import BaseNF, BaseNFConfig

    from omnivae.nn import soft_clamp

    m = METHODS[method]
    names = list(omni_model.names)
    lo, hi = -12.0, 8.0  # omnivae's log-variance clamp (GaussianEncoder)

    class Encoder(BaseEncoder):
        """omnivae's GaussianEncoder, returning MultiVae's fields (optionally split for MMVAE+)."""

        def __init__(self, net, shared: int | None = None):
            super().__init__()
            self.net = net
            self.shared = shared
            self.latent_dim = shared or net.latent_dim

        def forward(self, x):
            h = self.net.body(x)
            loc = self.net.loc(h)
            log_var = soft_clamp(self.net.logvar(h), lo, hi)
            if self.shared is None:
                return ModelOutput(embedding=loc, log_covariance=log_var)
            d = self.shared
            return ModelOutput(
                embedding=loc[:, :d], log_covariance=log_var[:, :d],
                style_embedding=loc[:, d:], style_log_covariance=log_var[:, d:],
            )

    class Decoder(BaseDecoder):
        """omnivae's decoder body; the reconstruction is the mean of its Laplace head."""

        def __init__(self, net):
            super().__init__()
            self.body = net.body
            self.sigmoid = bool(getattr(net.head, "sigmoid_loc", False))

        def forward(self, z):
            raw = self.body(z.reshape(-1, z.shape[-1]))
            out = torch.sigmoid(raw) if self.sigmoid else raw
            return ModelOutput(reconstruction=out.reshape(*z.shape[:-1], *out.shape[1:]))

    class JointEncoder(BaseJointEncoder):
        """omnivae's JointEncoder (heads, concatenation, merging MLP, Gaussian layers)."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            self.latent_dim = net.gaussian.latent_dim

        def forward(self, x):
            features = torch.cat([self.net.heads[n](x[n]) for n in self.net.names], dim=-1)
            h = self.net.merge(features)
            g = self.net.gaussian
            return ModelOutput(embedding=g.loc(h), log_covariance=soft_clamp(g.logvar(h), lo, hi))

    class Flow(BaseNF):
        """omnivae's UnimodalFlow (zuko MAF): forward = density direction, inverse = sampling."""

        def __init__(self, flow, dim: int):
            super().__init__(BaseNFConfig(input_dim=(dim,)))
            self.input_dim = (dim,)  # JNF checks ``flow.input_dim == (latent_dim,)``
            self.flow = flow

        def forward(self, x, **kwargs):
            z0, ladj = self.flow.normalise(x)
            return ModelOutput(out=z0, log_abs_det_jac=ladj)

        def inverse(self, y, **kwargs):
            return ModelOutput(out=self.flow.generate(y))

    if m.omni == "cvae":  # a joint recognition encoder and a conditional decoder, no per-modality pairs
        return _multivae_cvae(omni_model, JointEncoder(omni_model.recognition))
    shared = LATENT if m.omni in ("mmvae+", "dmvae", "cmvae") else None
    encoders = {n: Encoder(omni_model.encoders[n], shared) for n in names}
    decoders = {n: Decoder(omni_model.decoders[n]) for n in names}
    common = dict(
        n_modalities=len(names),
        latent_dim=LATENT,
        input_dims={n: tuple(s.shape) for n, s in zip(names, omni_model.modalities)},
        decoders_dist={n: "laplace" for n in names},
        decoder_dist_params={n: {"scale": LIKELIHOOD_SCALE} for n in names},
    )
    if m.omni == "poe":
        return mv.MVAE(mv.MVAEConfig(**common, use_subsampling=True, k=0, warmup=10, beta=m.beta), encoders, decoders)
    if m.omni == "moe":
        config = mv.MMVAEConfig(
            **common, K=m.num_samples, prior_and_posterior_dist="normal", learn_prior=False, beta=m.beta,
            loss="dreg_looser" if m.dreg else "iwae_looser",
        )
        return mv.MMVAE(config, encoders, decoders)
    if m.omni == "mopoe":
        return mv.MoPoE(mv.MoPoEConfig(**common, beta=m.beta), encoders, decoders)
    if m.omni == "jmvae":
        config = mv.JMVAEConfig(**common, alpha=0.1, warmup=10, beta=m.beta)
        return mv.JMVAE(config, encoders, decoders, joint_encoder=JointEncoder(omni_model.joint_encoder))
    if m.omni == "jnf":
        flows = {n: Flow(omni_model.flows[n], LATENT) for n in names}

        class JNF(mv.JNF):
            def encode(self, inputs, cond_mod="all", N=1, return_mean=False, **kwargs):
                kwargs.setdefault("mcmc_steps", hmc_steps)
                return super().encode(inputs, cond_mod, N, return_mean, **kwargs)

        return JNF(
            mv.JNFConfig(**common, warmup=10, beta=m.beta), encoders, decoders,
            joint_encoder=JointEncoder(omni_model.joint_encoder), flows=flows,
        )
    if m.omni == "mvtcae":
        return mv.MVTCAE(mv.MVTCAEConfig(**common, alpha=5 / 6, beta=m.beta), encoders, decoders)
    if m.omni == "mmvae+":
        config = mv.MMVAEPlusConfig(
            **common, K=m.num_samples, prior_and_posterior_dist="normal", learn_shared_prior=False,
            learn_modality_prior=True, beta=m.beta, modalities_specific_dim=W_DIM,
            loss="dreg_looser" if m.dreg else "iwae_looser",
        )
        return mv.MMVAEPlus(config, encoders, decoders)
    if m.omni == "telbo":  # stage 2 after epoch 10; lambda = gamma = 1 (omnivae's unit likelihood weights)
        config = mv.TELBOConfig(**common, warmup=10, uses_likelihood_rescaling=False)
        return mv.TELBO(config, encoders, decoders, joint_encoder=JointEncoder(omni_model.joint_encoder))
    if m.omni == "dmvae":
        config = mv.DMVAEConfig(**common, modalities_specific_dim={n: W_DIM for n in names}, beta=m.beta)
        return mv.DMVAE(config, encoders, decoders)
    if m.omni == "crmvae":
        return mv.CRMVAE(mv.CRMVAEConfig(**common, beta=m.beta), encoders, decoders)
    if m.omni == "cmvae":
        config = mv.CMVAEConfig(
            **common, K=m.num_samples, prior_and_posterior_dist="normal", learn_modality_prior=True, beta=m.beta,
            modalities_specific_dim=W_DIM, number_of_clusters=CLUSTERS, loss="dreg_looser" if m.dreg else "iwae_looser",
        )
        model = mv.CMVAE(config, encoders, decoders)
        with torch.no_grad():  # the same initial cluster means (both draw them uniform in [-1, 1])
            for c, mean in enumerate(model.mean_clusters):
                mean.copy_(omni_model.mixture.loc[c : c + 1])
        return model
    if m.omni == "mhvae":
        return _multivae_mhvae(omni_model, common, decoders, m.beta)
    raise ValueError(method)


def _multivae_mhvae(omni_model, common: dict, decoders: dict, beta: float):
    """MultiVae's MHVAE around omnivae's MHVAE modules: each ``LadderEncoder`` split into
    MultiVae's first-layer encoder (the body), bottom-up blocks (the last one ending in the
    top expert's heads) and per-modality posterior blocks; the shared top-down and prior
    blocks as they are. Both concatenate ``[h_l, d_l]`` in that order."""
    from multivae import models as mv
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseEncoder

    from omnivae.nn import soft_clamp

    class Features(BaseEncoder):
        """d^1 = body(x), MultiVae's ``encoders[m]`` output (``embedding`` only)."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return ModelOutput(embedding=self.body(x))

    class Gaussian(BaseEncoder):
        """An omnivae Gaussian block (after an optional module): MultiVae's mean and log-variance."""

        def __init__(self, net, before=None):
            super().__init__()
            self.net = net
            self.before = before

        def forward(self, h):
            if self.before is not None:
                h = self.before(h)
            h = self.net.body(h)
            return ModelOutput(embedding=self.net.loc(h), log_covariance=soft_clamp(self.net.logvar(h), -12.0, 8.0))

    ladders = dict(omni_model.encoders.items())
    return mv.MHVAE(
        mv.MHVAEConfig(**common, n_latent=omni_model.levels, beta=beta),
        encoders={n: Features(ladder.body) for n, ladder in ladders.items()},
        decoders=decoders,
        bottom_up_blocks={n: [*ladder.up[:-1], Gaussian(ladder.top, ladder.up[-1])] for n, ladder in ladders.items()},
        top_down_blocks=list(omni_model.top_down),
        posterior_blocks={n: [Gaussian(e) for e in ladder.experts] for n, ladder in ladders.items()},
        prior_blocks=[Gaussian(p) for p in omni_model.level_priors],
    )
def _multivae_cvae(omni_model, recognition):
    """MultiVae's CVAE (target = omnivae's, conditions = omnivae's, N(0, I) prior) around
    omnivae's recognition network, condition feature bodies and target decoder.

    MultiVae's default conditional decoder reads the raw flattened conditions; here it reads
    [z, h(x_c)] with omnivae's learnt condition features h, so both sides train one network.
    """
    import torch
    from multivae import models as mv
    from multivae.models.nn.base_architectures import BaseConditionalDecoder
    from pythae.models.base.base_utils import ModelOutput

    class ConditionalDecoder(BaseConditionalDecoder):
        def __init__(self, model):
            super().__init__()
            self.latent_dim = LATENT
            self.conditions = list(model.conditions)
            self.features = model.condition_features
            self.body = model.decoders[model.target].body
            self.sigmoid = bool(getattr(model.decoders[model.target].head, "sigmoid_loc", False))

        def forward(self, z, cond_mods):
            h = torch.cat([self.features[n](cond_mods[n]) for n in self.conditions], -1)
            raw = self.body(torch.cat([z, h], -1))
            return ModelOutput(reconstruction=torch.sigmoid(raw) if self.sigmoid else raw)

    names = list(omni_model.names)
    config = mv.CVAEConfig(
        input_dims={n: tuple(s.shape) for n, s in zip(names, omni_model.modalities)}, latent_dim=LATENT,
        conditioning_modalities=list(omni_model.conditions), main_modality=omni_model.target, beta=1.0,
        decoder_dist="laplace", decoder_dist_params={"scale": LIKELIHOOD_SCALE},
    )
    return mv.CVAE(config, encoder=recognition, decoder=ConditionalDecoder(omni_model))


def multivae_dataset(split, rows: int | None = None):
    """The split as MultiVae's ``MultimodalBaseDataset`` of float tensors in [0, 1]."""
    from multivae.data.datasets.base import MultimodalBaseDataset

    n = len(split) if rows is None else rows
    data = {name: split.data[name][:n].float().div(255.0) for name in split.modality_names}
    labels = None if split.labels is None else split.labels[:n]
    return MultimodalBaseDataset(data=data, labels=labels)


def _device(name: str):
    import torch

    return torch.device(name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_loop(step, warmup: int, steps: int, max_seconds: float, device) -> tuple[int, float]:
    """Run ``warmup`` untimed steps, then up to ``steps`` timed ones (at least 2, at most
    ``max_seconds`` of wall time): ``(steps done, seconds)``. Minor page faults per timed
    step are left in ``_timed_loop.faults_per_step`` (large freed tensors that go back to
    the OS are faulted in again at the next step, a cost that shows in the step time)."""
    import torch

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    done = 0
    while done < steps:
        step()
        done += 1
        if done >= 2 and time.perf_counter() - start > max_seconds:
            break
    _sync(device)
    seconds = time.perf_counter() - start
    _timed_loop.faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / done
    return done, seconds


def train_worker(args) -> dict:
    """Time ``args.method`` (stage ``args.stage``) in library ``args.lib``."""
    import torch

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    data = _load_data()
    base_mb = _rss_mb()
    torch.manual_seed(args.seed)
    omni_model, objective = build_omnivae(args.method, args.backbone, data.modalities)
    params_omni = _trainable(omni_model)
    bs = args.batch_size

    if args.lib == "omnivae":
        from omnivae.train import TrainConfig, Trainer

        trainer = Trainer(
            omni_model, objective, data.train,
            TrainConfig(epochs=1, batch_size=bs, lr=1e-3, device=args.device, progress=False, seed=args.seed),
        )
        if args.stage == 2:
            trainer._enter_stage(1)
        train = trainer.train_data
        generator = torch.Generator().manual_seed(args.seed)
        model = omni_model

        def batches():
            while True:
                yield from train.batches(bs, shuffle=True, generator=generator, drop_last=True)

        stream = batches()

        def step() -> None:
            batch = next(stream)
            trainer.train_step(batch.x, model.stack_mask(batch.x, batch.mask))

        params = params_omni
    else:
        from multivae.data.utils import set_inputs_to_device
        from torch.utils.data import DataLoader

        model = build_multivae(args.method, omni_model).to(device)
        params = _trainable(model)
        dataset = multivae_dataset(data.train)
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, drop_last=True, num_workers=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        epoch = 11 if args.stage == 2 else 1  # JNF, TELBO: epoch > warmup (10) is the second stage
        model.train()
        where = "cuda" if device.type == "cuda" else "cpu"

        def batches():
            while True:
                for index, inputs in enumerate(loader):
                    yield index, inputs

        stream = batches()

        def step() -> None:
            index, inputs = next(stream)
            inputs = set_inputs_to_device(inputs, device=where)
            out = model(
                inputs, epoch=epoch, dataset_size=len(dataset), uses_ddp=False, batch_ratio=index / len(loader)
            )
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            (out.loss_sum if hasattr(out, "loss_sum") else out.loss).item()

    if params != params_omni:
        raise SystemExit(f"parameter counts differ: omnivae {params_omni}, MultiVae {params}")
    done, seconds = _timed_loop(step, args.warmup, args.steps, args.max_seconds, device)
    return {
        "lib": args.lib,
        "method": args.method,
        "stage": args.stage,
        "backbone": args.backbone,
        "batch_size": bs,
        "device": args.device,
        "threads": args.threads,
        "params": params,
        "steps": done,
        "seconds": seconds,
        "samples_per_second": done * bs / seconds,
        "peak_mb": _peak_mb(device),
        "base_mb": base_mb,
        "page_faults_per_step": _timed_loop.faults_per_step,
    }


# -- HMC and coherence (JNF) -------------------------------------------------------------
def prepare_worker(args) -> dict:
    """Train one JNF (``--prepare-epochs`` per stage) and the classifiers; save both."""
    import torch

    from omnivae.metrics.classifiers import train_classifiers
    from omnivae.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    data = _load_data()
    torch.manual_seed(args.seed)
    model, objective = build_omnivae("jnf", args.backbone, data.modalities)
    started = time.perf_counter()
    Trainer(
        model, objective, data.train,
        TrainConfig(epochs=args.prepare_epochs, batch_size=128, device=args.device, progress=False, seed=args.seed),
    ).fit()
    classifiers = train_classifiers(
        data.train, 10, epochs=args.classifier_epochs, device=args.device, progress=False, seed=args.seed
    )
    torch.save(
        {
            "jnf": {k: v.cpu() for k, v in model.state_dict().items()},
            "classifiers": {n: {k: v.cpu() for k, v in c.state_dict().items()} for n, c in classifiers.items()},
        },
        args.weights,
    )
    return {"prepared": args.weights, "seconds": time.perf_counter() - started}


def _load_prepared(args, data):
    import torch

    from omnivae.metrics.classifiers import build_classifier

    saved = torch.load(args.weights, map_location="cpu")
    torch.manual_seed(args.seed)
    model, _ = build_omnivae("jnf", args.backbone, data.modalities)
    model.load_state_dict(saved["jnf"])
    classifiers = {}
    for spec in data.modalities:
        net = build_classifier(spec, 10)
        net.load_state_dict(saved["classifiers"][spec.name])
        classifiers[spec.name] = net.eval()
    return model, classifiers


def eval_worker(args) -> dict:
    """HMC subset sampling (``--worker hmc``) or a full coherence evaluation (``coherence``)."""
    import torch

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    data = _load_data()
    omni_model, clf_nets = _load_prepared(args, data)
    n = args.eval_samples
    test = data.test.subset(torch.arange(n))
    names = list(omni_model.names)
    result: dict = {"lib": args.lib, "task": args.worker, "backbone": args.backbone, "rows": n, "device": args.device}
    result["hmc_steps"] = args.hmc_steps
    if args.lib == "omnivae":
        omni_model.hmc.num_steps = args.hmc_steps
        model = omni_model.to(device).eval()
        x = {k: v.to(device) for k, v in test.batch(torch.arange(n)).x.items()}
    else:
        from multivae.data.utils import set_inputs_to_device
        from pythae.data.datasets import DatasetOutput

        model = build_multivae("jnf", omni_model, hmc_steps=args.hmc_steps).to(device).eval()
        model.device = device
        mv_test = multivae_dataset(test)
        inputs = set_inputs_to_device(
            DatasetOutput(data=mv_test.data), device="cuda" if device.type == "cuda" else "cpu"
        )

    if args.worker == "hmc":
        for size in (2, 3):
            subset = names[:size]
            torch.manual_seed(args.seed)
            _sync(device)
            start = time.perf_counter()
            if args.lib == "omnivae":
                rows = torch.tensor([[name in subset for name in names]], device=device)
                z = model.subset_posteriors(x, rows).sample()[0]
            else:
                z = model.encode(inputs, cond_mod=subset, N=1, n_lf=10, eps_lf=0.01).z
            _sync(device)
            result[f"hmc{size}_seconds"] = time.perf_counter() - start
            result[f"hmc{size}_shape"] = list(z.shape)
            result[f"hmc{size}_finite"] = bool(torch.isfinite(z).all())
        if args.lib == "omnivae":
            result["acceptance"] = model.last_hmc_acceptance
    else:
        _sync(device)
        start = time.perf_counter()
        if args.lib == "omnivae":
            from omnivae.metrics.classifiers import ModalityClassifiers
            from omnivae.metrics.coherence import conditional_coherence, joint_coherence

            clfs = ModalityClassifiers({k: v.to(device) for k, v in clf_nets.items()}, {}, 10)
            cond = conditional_coherence(model, test, clfs, batch_size=256, device=device, seed=args.seed)
            joint = joint_coherence(model, clfs, num_samples=args.joint_samples, batch_size=256, device=device)
            result["coherence_by_size"] = cond["by_size"]
            result["joint_coherence"] = joint
        else:
            from multivae.metrics import CoherenceEvaluator, CoherenceEvaluatorConfig

            config = CoherenceEvaluatorConfig(batch_size=256, nb_samples_for_joint=args.joint_samples, num_classes=10)
            evaluator = CoherenceEvaluator(model, clf_nets, multivae_dataset(test), eval_config=config)
            metrics = evaluator.eval()
            evaluator.finish()
            result["coherence_by_size"] = {
                str(k): float(metrics[f"mean_coherence_{k}"]) for k in range(1, len(names))
            }
            result["joint_coherence"] = float(metrics[next(k for k in metrics if k.startswith("joint_coherence"))])
        _sync(device)
        result["coherence_seconds"] = time.perf_counter() - start
    result["peak_mb"] = _peak_mb(device)
    return result


# ==========================================================================================
# Driver side
# ==========================================================================================
def check_multivae() -> None:
    """Exit with one line if MultiVae cannot be imported beside this torch."""
    try:
        import multivae.models  # noqa: F401
        import multivae.metrics  # noqa: F401
    except Exception as err:  # ImportError, or torchvision's RuntimeError beside a mismatched torch
        first = (str(err).strip().splitlines() or [""])[0][:160]
        print(
            f"vs_multivae: MultiVae is not importable here ({type(err).__name__}: {first}); "
            f"build its environment: {ENV_RECIPE}",
            file=sys.stderr,
        )
        raise SystemExit(2)


def run_worker(kind: str, argv: list[str], extra: list[str]) -> dict | None:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker", kind, *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [l for l in result.stdout.strip().splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        print(f"  worker {kind} {' '.join(extra)} failed (rc {result.returncode}):\n{tail}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="mvae,mmvae1,mmvae10,mopoe,jmvae,jnf,mvtcae,mmvaeplus",
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--backbones", default="mlp,conv", help="mlp and/or conv")
    parser.add_argument("--batch-sizes", default="128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=31, help="timed steps per run (31 = one epoch at batch 128)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop timing a run after this long (>= 2 steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per library, alternated; medians reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append every run's result to this JSON-lines file")
    parser.add_argument("--hmc", action="store_true", help="also time JNF's HMC subset sampling (2 and 3 modalities)")
    parser.add_argument("--coherence", action="store_true", help="also time a full JNF coherence evaluation")
    parser.add_argument("--eval-backbones", help="backbones for --hmc/--coherence (default: --backbones)")
    parser.add_argument("--eval-samples", type=int, default=200, help="test rows for --hmc/--coherence")
    parser.add_argument("--joint-samples", type=int, default=1000, help="prior draws of the joint coherence")
    parser.add_argument("--hmc-steps", type=int, default=100,
                        help="HMC steps (of 10 leapfrog steps) for --hmc and --coherence in both libraries (JNF: 100)")
    parser.add_argument("--prepare-epochs", type=int, default=1, help="JNF epochs per stage before --hmc/--coherence")
    parser.add_argument("--classifier-epochs", type=int, default=2)
    parser.add_argument("--no-train", action="store_true", help="skip the training-speed table")
    # worker-only arguments
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker = {"train": train_worker, "prepare": prepare_worker, "hmc": eval_worker, "coherence": eval_worker}
        print(json.dumps(worker[args.worker](args)), flush=True)
        return

    check_multivae()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    backbones = [b for b in args.backbones.split(",") if b]
    if any(b not in ("mlp", "conv") for b in backbones):
        parser.error("--backbones takes mlp and/or conv")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    import multivae
    import torch

    base = ["--threads", str(args.threads), "--device", args.device, "--seed", str(args.seed)]
    train_args = base + ["--steps", str(args.steps), "--max-seconds", str(args.max_seconds), "--warmup", str(args.warmup)]
    sink = open(args.json, "a") if args.json else None

    def record(row: dict) -> None:
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    version = getattr(multivae, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("multivae")
    print(
        f"omnivae vs MultiVae {version}, torch {torch.__version__}, device {args.device}, {args.threads} threads, "
        f"latent {LATENT}, PolyMNIST 5 x 3x28x28, 4000 train rows"
        + (
            "" if args.no_train else
            f", Adam 1e-3; {args.warmup} warm-up + <= {args.steps} timed steps (<= {args.max_seconds:.0f} s) per "
            f"run, {args.repeats} alternated runs per library, medians"
        )
        + f"; load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if not args.no_train:
        header = (
            f"{'method':12} {'backbone':8} {'batch':>5} {'params':>9} {'omnivae/s':>10} {'MultiVae/s':>10} {'ratio':>6} "
            f"{'omni MB':>8} {'MV MB':>8} {'mem ratio':>9} {'step MB ratio':>13} {'target':>7}"
        )
        print(header)
        print("-" * len(header), flush=True)
        for backbone in backbones:
            for bs in batch_sizes:
                for method in methods:
                    m = METHODS[method]
                    for stage in m.stages:
                        runs: dict[str, list[dict]] = {"omnivae": [], "multivae": []}
                        extra = ["--method", method, "--backbone", backbone, "--batch-size", str(bs), "--stage", str(stage)]
                        for _ in range(args.repeats):
                            for lib in ("omnivae", "multivae"):
                                row = run_worker("train", train_args, extra + ["--lib", lib])
                                if row is not None:
                                    runs[lib].append(row)
                                    record(row)
                        o, v = runs["omnivae"], runs["multivae"]
                        so = statistics.median(r["samples_per_second"] for r in o) if o else None
                        sv = statistics.median(r["samples_per_second"] for r in v) if v else None
                        mo = statistics.median(r["peak_mb"] for r in o) if o else None
                        mvm = statistics.median(r["peak_mb"] for r in v) if v else None
                        # Above the RSS both workers share before a model exists (torch, both
                        # libraries' imports, the uint8 data): model, optimiser, the library's
                        # own data copy and the step's activations.
                        ao = statistics.median(r["peak_mb"] - r["base_mb"] for r in o) if o else None
                        av = statistics.median(r["peak_mb"] - r["base_mb"] for r in v) if v else None
                        params = (o or v or [{"params": None}])[0]["params"]
                        ratio = so / sv if so and sv else None
                        mem_ratio = mo / mvm if mo and mvm else None
                        step_mem_ratio = ao / av if ao and av else None
                        title = m.title + (f" st{stage}" if len(m.stages) > 1 else "")
                        target = f">={m.goal:g}x" if m.goal else "-"
                        print(
                            f"{title:12} {backbone:8} {bs:>5} {_fmt(params, 'd'):>9} {_fmt(so, '.0f'):>10} "
                            f"{_fmt(sv, '.0f'):>10} {_fmt(ratio, '.2f'):>6} {_fmt(mo, '.0f'):>8} {_fmt(mvm, '.0f'):>8} "
                            f"{_fmt(mem_ratio, '.2f'):>9} {_fmt(step_mem_ratio, '.2f'):>13} {target:>7}",
                            flush=True,
                        )
    if args.hmc or args.coherence:
        eval_backbones = [b for b in (args.eval_backbones or args.backbones).split(",") if b]
        for backbone in eval_backbones:
            with tempfile.TemporaryDirectory() as tmp:
                weights = os.path.join(tmp, "jnf.pt")
                ev = base + ["--backbone", backbone, "--weights", weights, "--eval-samples", str(args.eval_samples),
                             "--joint-samples", str(args.joint_samples), "--hmc-steps", str(args.hmc_steps)]
                prep = run_worker("prepare", ev + ["--prepare-epochs", str(args.prepare_epochs),
                                                   "--classifier-epochs", str(args.classifier_epochs)], ["--lib", "omnivae"])
                if prep is None:
                    continue
                tasks = (["hmc"] if args.hmc else []) + (["coherence"] if args.coherence else [])
                for task in tasks:
                    results = {}
                    for lib in ("omnivae", "multivae"):
                        row = run_worker(task, ev, ["--lib", lib])
                        if row is not None:
                            results[lib] = row
                            record(row)
                    o, v = results.get("omnivae"), results.get("multivae")
                    if task == "hmc":
                        for size in (2, 3):
                            key = f"hmc{size}_seconds"
                            so, sv = (o or {}).get(key), (v or {}).get(key)
                            print(
                                f"JNF HMC, {size}-modality subset, {args.eval_samples} rows, {backbone}: omnivae "
                                f"{_fmt(so, '.2f')} s, MultiVae {_fmt(sv, '.2f')} s, speed-up "
                                f"{_fmt(sv / so if so and sv else None, '.1f')}x ({args.hmc_steps} steps x 10 leapfrog, eps 0.01)",
                                flush=True,
                            )
                    else:
                        so, sv = (o or {}).get("coherence_seconds"), (v or {}).get("coherence_seconds")
                        print(
                            f"JNF full coherence ({args.eval_samples} rows, 30 subsets, HMC {args.hmc_steps} x 10 "
                            f"leapfrog, joint {args.joint_samples}), "
                            f"{backbone}: omnivae {_fmt(so, '.1f')} s, MultiVae {_fmt(sv, '.1f')} s, speed-up "
                            f"{_fmt(sv / so if so and sv else None, '.1f')}x; by subset size omnivae "
                            f"{(o or {}).get('coherence_by_size')}, MultiVae {(v or {}).get('coherence_by_size')}; "
                            f"joint {(o or {}).get('joint_coherence')} vs {(v or {}).get('joint_coherence')}",
                            flush=True,
                        )
    print(f"load average at end {os.getloadavg()[0]:.2f}", flush=True)
    if sink:
        sink.close()


if __name__ == "__main__":
    main()
