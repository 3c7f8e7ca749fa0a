"""Inference metrics: the linear probe, importance-sampled likelihoods and reconstruction.

The likelihood estimators are checked against closed forms on a linear-Gaussian model
whose posterior is exact, so the importance weights are constant and any K gives the
exact marginal. The probe and the reconstruction error are checked on stand-in models
whose answers are known; the real networks get smoke tests on partially observed data.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from helpers import NAMES, tiny_config, tiny_dataset, tiny_splits
from omnivae.aggregators import MixtureOfExperts, ProductOfExperts, WassersteinBarycenter
from omnivae.data.base import ModalitySpec, MultimodalDataset
from omnivae.errors import DataError
from omnivae.functional import subset_matrix
from omnivae.metrics.likelihood import conditional_log_likelihoods, joint_log_likelihood
from omnivae.metrics.probe import linear_probe
from omnivae.metrics.reconstruction import reconstruction_error
from omnivae.models import MultimodalVAE, build_model
from omnivae.priors import StandardNormalPrior

LATENT = 2


# -- a linear-Gaussian model with an exact posterior ----------------------------------------
class LinearGaussian:
    """x_m = c_m Q_m z + b_m + N(0, s_m^2 I), z ~ N(0, I), with orthonormal columns Q_m.

    p(z | x_S) is N(mu, var I) with 1/var = 1 + sum_{m in S} c_m^2 / s_m^2 and
    mu = var sum_{m in S} c_m Q_m^T (x_m - b_m) / s_m^2: the product of the prior and the
    experts N(Q_m^T (x_m - b_m) / c_m, (s_m / c_m)^2), which is what the encoders return.
    """

    def __init__(self, dims: dict[str, int], gains: dict[str, float], noise: dict[str, float], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.names = list(dims)
        self.dims, self.gains, self.noise = dims, gains, noise
        self.basis = {
            n: torch.linalg.qr(torch.randn(d, LATENT, generator=gen, dtype=torch.float64))[0] for n, d in dims.items()
        }
        self.offset = {n: torch.randn(d, generator=gen, dtype=torch.float64) for n, d in dims.items()}

    def weight(self, name: str) -> Tensor:
        return self.gains[name] * self.basis[name]

    def sample(self, n: int, seed: int = 1) -> dict[str, Tensor]:
        """Samples rounded to float32, the precision in which batches reach the model."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=gen, dtype=torch.float64)
        out = {}
        for name in self.names:
            eps = torch.randn(n, self.dims[name], generator=gen, dtype=torch.float64)
            out[name] = (z @ self.weight(name).T + self.offset[name] + self.noise[name] * eps).float()
        return out

    def log_marginal(self, x: dict[str, Tensor], names: list[str]) -> Tensor:
        """Exact log N([x_m]; [b_m], W W^T + diag(s^2)) over ``names``, per row."""
        weight = torch.cat([self.weight(n) for n in names])
        noise = torch.cat([torch.full((self.dims[n],), self.noise[n] ** 2, dtype=torch.float64) for n in names])
        loc = torch.cat([self.offset[n] for n in names])
        value = torch.cat([x[n].double() for n in names], -1)
        return MultivariateNormal(loc, weight @ weight.T + torch.diag(noise)).log_prob(value)

    def model(self, aggregator: nn.Module, likelihood_weights: dict[str, float] | None = None) -> MultimodalVAE:
        specs = [ModalitySpec(n, (self.dims[n],), "vector") for n in self.names]
        encoders = nn.ModuleDict(
            {n: LinearExpert(self.basis[n], self.offset[n], self.gains[n], self.noise[n]) for n in self.names}
        )
        decoders = nn.ModuleDict({n: LinearDecoder(self.weight(n), self.offset[n], self.noise[n]) for n in self.names})
        model = MultimodalVAE(specs, encoders, decoders, aggregator, StandardNormalPrior(LATENT), likelihood_weights)
        return model.double()

    def dataset(self, n: int) -> tuple[MultimodalDataset, dict[str, Tensor]]:
        x = self.sample(n)
        specs = tuple(ModalitySpec(name, (self.dims[name],), "vector") for name in self.names)
        return MultimodalDataset(modalities=specs, data=dict(x), name="linear"), x


class LinearExpert(nn.Module):
    """The likelihood factor of one modality as a Gaussian expert over z."""

    def __init__(self, basis: Tensor, offset: Tensor, gain: float, noise: float) -> None:
        super().__init__()
        self.register_buffer("basis", basis)
        self.register_buffer("offset", offset)
        self.gain, self.noise = gain, noise

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, None]:
        loc = (x - self.offset) @ self.basis / self.gain
        return loc, torch.full_like(loc, self.noise / self.gain), None


class LinearDecoder(nn.Module):
    def __init__(self, weight: Tensor, offset: Tensor, noise: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("offset", offset)
        self.noise = noise

    def forward(self, z: Tensor) -> Distribution:
        loc = z @ self.weight.T + self.offset
        return Independent(Normal(loc, torch.full_like(loc, self.noise)), 1)


@pytest.fixture(scope="module")
def linear() -> LinearGaussian:
    return LinearGaussian({"a": 3, "b": 4}, gains={"a": 1.5, "b": 0.8}, noise={"a": 0.7, "b": 0.5})


@pytest.mark.parametrize("num_samples, chunk", [(1, 100), (7, 3), (20, 20)])
@pytest.mark.parametrize("names", [["a"], ["a", "b"]])
def test_joint_log_likelihood_exact_for_exact_posterior(linear, names, num_samples, chunk):
    model_ = LinearGaussian({n: linear.dims[n] for n in names}, linear.gains, linear.noise)
    # Weights other than 1 must not enter: likelihoods are unscaled.
    model = model_.model(ProductOfExperts(prior_expert=True), {n: 3.0 for n in names})
    data, x = model_.dataset(10)
    estimate = joint_log_likelihood(model, data, num_samples=num_samples, batch_size=4, chunk=chunk)
    exact = model_.log_marginal(x, names).mean().item()
    assert estimate == pytest.approx(exact, abs=1e-6)
    assert model.likelihood_weights.tolist() == [3.0] * len(names)


def test_subset_proposals_exact_for_exact_posterior(linear):
    model = linear.model(ProductOfExperts(prior_expert=True), {"a": 0.25, "b": 4.0})
    data, x = linear.dataset(12)
    out = conditional_log_likelihoods(model, data, num_samples=5, batch_size=5, chunk=2)
    assert set(out) == {"joint_given_subset", "conditional", "conditional_by_size"}
    assert set(out["joint_given_subset"]) == {"a", "b", "a+b"}
    assert set(out["conditional"]) == {"a", "b"}
    assert set(out["conditional_by_size"]) == {"1"}
    joint = linear.log_marginal(x, ["a", "b"]).mean().item()
    assert out["joint_given_subset"]["a+b"] == pytest.approx(joint, abs=1e-6)
    # The draws are shared, so joint_given_subset[S] - conditional[S] = log p(x_S) exactly.
    for name in ("a", "b"):
        log_p_s = linear.log_marginal(x, [name]).mean().item()
        difference = out["joint_given_subset"][name] - out["conditional"][name]
        assert difference == pytest.approx(log_p_s, abs=1e-6)


def test_conditional_converges_to_exact_conditional(linear):
    model = linear.model(ProductOfExperts(prior_expert=True))
    data, x = linear.dataset(8)
    out = conditional_log_likelihoods(model, data, num_samples=4000, batch_size=8, chunk=1000, seed=0)
    for given, rest in (("a", "b"), ("b", "a")):
        exact = (linear.log_marginal(x, ["a", "b"]) - linear.log_marginal(x, [given])).mean().item()
        assert out["conditional"][given] == pytest.approx(exact, abs=0.05)
    assert out["conditional_by_size"]["1"] == pytest.approx(sum(out["conditional"].values()) / 2)


def test_mixture_proposal_scored_with_mixture_density(linear):
    # MoE's proposal is not the posterior, so only large K gets close; scoring a draw with
    # its own component instead of the mixture would bias the estimate by up to log 2.
    model = linear.model(MixtureOfExperts())
    data, x = linear.dataset(8)
    estimate = joint_log_likelihood(model, data, num_samples=4000, batch_size=8, chunk=1000, seed=0)
    exact = linear.log_marginal(x, ["a", "b"]).mean().item()
    assert estimate == pytest.approx(exact, abs=0.05)


def test_likelihood_seed_reproducible_and_leaves_global_state(linear):
    model = linear.model(MixtureOfExperts())
    data, _ = linear.dataset(6)
    state = torch.get_rng_state()
    first = joint_log_likelihood(model, data, num_samples=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert joint_log_likelihood(model, data, num_samples=3, seed=5) == first


@pytest.mark.parametrize("model_name", ["mwb", "moe"])
def test_likelihoods_on_real_networks_with_missing_modalities(model_name):
    torch.manual_seed(0)
    model, _ = build_model(tiny_config(model_name, rescale_likelihoods=True), tiny_dataset(4).modalities)
    data = tiny_dataset(12, observed=0.6)
    joint = joint_log_likelihood(model, data, num_samples=3, batch_size=5, chunk=2)
    assert math.isfinite(joint)
    out = conditional_log_likelihoods(model, data, num_samples=3, batch_size=5, chunk=2)
    values = list(out["joint_given_subset"].values()) + list(out["conditional"].values())
    assert values and all(math.isfinite(v) for v in values)
    assert set(out["joint_given_subset"]) <= {"+".join(c) for r in (1, 2, 3) for c in itertools.combinations(NAMES, r)}
    assert "img+vec+bits" not in out["conditional"]
    assert model.training  # the metric restores the mode it found


# -- stand-in models for the probe and the reconstruction ------------------------------------
class IdentityExpert(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, None]:
        return x, torch.full_like(x, 0.1), None


class IdentityDecoder(nn.Module):
    def forward(self, z: Tensor) -> Distribution:
        return Independent(Normal(z, torch.ones_like(z)), 1)


def identity_model(names: list[str], dim: int) -> MultimodalVAE:
    """Encoders pass x through as the latent mean; decoders return z as the mean.

    With the W2 barycenter the posterior mean of a subset is the average of its inputs.
    """
    specs = [ModalitySpec(n, (dim,), "vector") for n in names]
    return MultimodalVAE(
        specs,
        nn.ModuleDict({n: IdentityExpert() for n in names}),
        nn.ModuleDict({n: IdentityDecoder() for n in names}),
        WassersteinBarycenter(),
        StandardNormalPrior(dim),
    )


def labelled(n: int, seed: int, shuffle: bool = False) -> MultimodalDataset:
    """Two 4-d modalities, each a scaled one-hot of a 3-class label plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    signal = 4.0 * nn.functional.one_hot(labels, 4).float()
    data = {name: signal + 0.1 * torch.randn(n, 4, generator=gen) for name in ("a", "b")}
    if shuffle:
        labels = torch.randint(0, 3, (n,), generator=gen)
    specs = tuple(ModalitySpec(name, (4,), "vector") for name in ("a", "b"))
    return MultimodalDataset(modalities=specs, data=data, labels=labels, name="labelled")


def test_probe_separable_latent_is_perfect():
    model = identity_model(["a", "b"], 4)
    out = linear_probe(model, labelled(90, 0), labelled(60, 1), num_train=45, batch_size=32)
    assert set(out["per_subset"]) == {"a", "b", "a+b"}
    assert set(out["by_size"]) == {"1", "2"}
    assert all(acc >= 0.98 for acc in out["per_subset"].values())


def test_probe_shuffled_labels_near_chance():
    model = identity_model(["a", "b"], 4)
    out = linear_probe(model, labelled(90, 0, shuffle=True), labelled(90, 1, shuffle=True), batch_size=32)
    assert all(acc < 0.6 for acc in out["per_subset"].values())


def test_probe_draw_is_seeded():
    model = identity_model(["a", "b"], 4)
    train, test = labelled(60, 0, shuffle=True), labelled(60, 1, shuffle=True)
    runs = [linear_probe(model, train, test, num_train=20, seed=s) for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_probe_requires_labels():
    model = identity_model(["a", "b"], 4)
    data = labelled(20, 0)
    unlabelled = MultimodalDataset(modalities=data.modalities, data=data.data, name="nolabels")
    with pytest.raises(DataError, match="probe"):
        linear_probe(model, unlabelled, data)
    with pytest.raises(DataError, match="probe"):
        linear_probe(model, data, unlabelled)


def test_probe_on_real_networks():
    splits = tiny_splits()
    model, _ = build_model(tiny_config("mopoe"), splits.modalities)
    out = linear_probe(model, splits.train, splits.test, num_train=40)
    assert len(out["per_subset"]) == 7
    assert all(0.0 <= acc <= 1.0 for acc in out["per_subset"].values())
    assert set(out["by_size"]) == {"1", "2", "3"}


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_reconstruction_known_errors(shift):
    # x_b = x_a + shift: self is exact, cross is off by shift, joint (the average) by shift / 2.
    model = identity_model(["a", "b"], 5)
    x_a = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    specs = tuple(ModalitySpec(n, (5,), "vector") for n in ("a", "b"))
    data = MultimodalDataset(modalities=specs, data={"a": x_a, "b": x_a + shift})
    out = reconstruction_error(model, data, batch_size=7)
    assert set(out) == {"self", "cross", "joint"}
    for name in ("a", "b"):
        assert out["self"][name] == pytest.approx(0.0, abs=1e-12)
        assert out["cross"][name] == pytest.approx(shift**2, abs=1e-6)
        assert out["joint"][name] == pytest.approx(shift**2 / 4, abs=1e-6)


def test_reconstruction_skips_unobserved_rows():
    model = identity_model(["a", "b"], 5)
    x_a = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    hidden = torch.arange(30) % 3 == 0
    x_b = torch.where(hidden.unsqueeze(-1), torch.zeros(()), x_a + 1.0)  # the data layer stores zeros
    specs = tuple(ModalitySpec(n, (5,), "vector") for n in ("a", "b"))
    data = MultimodalDataset(modalities=specs, data={"a": x_a, "b": x_b}, masks={"b": ~hidden})
    out = reconstruction_error(model, data)
    assert out["cross"]["a"] == pytest.approx(1.0, abs=1e-6)
    assert out["joint"]["b"] == pytest.approx(0.25, abs=1e-6)


def test_reconstruction_single_modality_and_real_networks():
    out = reconstruction_error(identity_model(["a"], 3), MultimodalDataset(
        modalities=(ModalitySpec("a", (3,), "vector"),), data={"a": torch.randn(4, 3)}
    ))
    assert out["cross"] == {} and out["self"]["a"] == pytest.approx(0.0, abs=1e-12)
    model, _ = build_model(tiny_config("mwb"), tiny_dataset(4).modalities)
    out = reconstruction_error(model, tiny_dataset(10, observed=0.7), batch_size=4)
    for kind in ("self", "cross", "joint"):
        assert set(out[kind]) <= set(NAMES) and out[kind]
        assert all(math.isfinite(v) and v >= 0 for v in out[kind].values())



def multilabelled(n: int, seed: int, informative: bool = True) -> MultimodalDataset:
    """Two 4-d modalities carrying two binary attributes (labels ``[N, 2]``) when informative."""
    gen = torch.Generator().manual_seed(seed)
    attributes = torch.randint(0, 2, (n, 2), generator=gen)
    signal = torch.cat([4.0 * attributes.float(), torch.zeros(n, 2)], 1)
    if not informative:
        signal = torch.zeros(n, 4)
    data = {name: signal + 0.1 * torch.randn(n, 4, generator=gen) for name in ("a", "b")}
    specs = tuple(ModalitySpec(name, (4,), "vector") for name in ("a", "b"))
    return MultimodalDataset(modalities=specs, data=data, labels=attributes.float(), label_names=["x", "y"])


def test_probe_on_multilabel_data_scores_mean_average_precision():
    model = identity_model(["a", "b"], 4)
    out = linear_probe(model, multilabelled(120, 0), multilabelled(80, 1), batch_size=32)
    assert all(score > 0.99 for score in out["per_subset"].values())
    noise = linear_probe(model, multilabelled(120, 0, False), multilabelled(400, 1, False), batch_size=64)
    assert all(0.3 < score < 0.7 for score in noise["per_subset"].values())  # AP of chance = positive rate


# -- chunking: the same draws give the same estimate, whatever the chunk size ------------------
class _Drawn(Distribution):
    """A proposal that hands out pre-drawn samples in order, whatever sample shapes are asked
    for, and scores them with the wrapped distribution: chunked and unchunked estimates
    then see exactly the same draws."""

    arg_constraints: dict = {}

    def __init__(self, dist: Distribution, bank: Tensor) -> None:
        self.dist, self.bank, self.used = dist, bank, 0
        super().__init__(dist.batch_shape, dist.event_shape, validate_args=False)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        count = sample_shape[0]
        out = self.bank[self.used : self.used + count]
        self.used += count
        return out

    def log_prob(self, value: Tensor) -> Tensor:
        return self.dist.log_prob(value)


def _brute_force(model, x: dict[str, Tensor], include: Tensor, bank: Tensor, log_ratio: Tensor | None = None) -> Tensor:
    """Per row, log (1/K) sum_k exp(sum_{m in include} log p(x_m | z_k) + log_ratio_k), one
    sample and one row at a time: ``include [M, B]``, ``bank [K, B, D]``, ``log_ratio [K, B]``."""
    K, B = bank.shape[:2]
    out = torch.empty(B, dtype=torch.float64)
    for b in range(B):
        logs = []
        for k in range(K):
            z = bank[k, b].unsqueeze(0)
            total = sum(
                model.decode(z, [name])[name].log_prob(x[name][b : b + 1]).squeeze()
                for m, name in enumerate(model.names) if include[m, b]
            )
            logs.append(total + (0.0 if log_ratio is None else log_ratio[k, b]))
        out[b] = torch.logsumexp(torch.stack(logs), 0) - math.log(K)
    return out


def test_likelihoods_chunked_equal_unchunked_and_a_per_sample_loop(monkeypatch):
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("mwb"), tiny_dataset(4).modalities)
    model = model.double().eval()
    data = tiny_dataset(5, seed=3)
    K = 7
    x = {k: v.double() for k, v in data.batch(torch.arange(len(data))).x.items()}
    observed = torch.ones(len(model.names), len(data), dtype=torch.bool)
    joint_q = model.joint_posterior(x, observed)
    joint_bank = joint_q.sample(torch.Size([K]))  # [K, B, D]
    subsets = subset_matrix(len(model.names))
    subset_q = model.subset_posteriors(x, subsets)
    subset_bank = subset_q.sample(torch.Size([K]))  # [K, S, B, D]

    def estimates(chunk: int) -> tuple[float, dict]:
        joint_posterior, subset_posteriors = model.joint_posterior, model.subset_posteriors
        monkeypatch.setattr(model, "joint_posterior", lambda *a: _Drawn(joint_posterior(*a), joint_bank))
        monkeypatch.setattr(model, "subset_posteriors", lambda *a: _Drawn(subset_posteriors(*a), subset_bank))
        joint = joint_log_likelihood(model, data, num_samples=K, batch_size=len(data), chunk=chunk)
        out = conditional_log_likelihoods(model, data, num_samples=K, batch_size=len(data), chunk=chunk)
        monkeypatch.undo()
        return joint, out

    whole_joint, whole = estimates(K)
    for chunk in (1, 3):
        joint, out = estimates(chunk)
        assert joint == pytest.approx(whole_joint, rel=1e-12)
        for kind in ("joint_given_subset", "conditional"):
            assert out[kind].keys() == whole[kind].keys()
            for key, value in whole[kind].items():
                assert out[kind][key] == pytest.approx(value, rel=1e-12)

    prior = model.prior()
    with torch.no_grad():
        ratio = prior.log_prob(joint_bank) - joint_q.log_prob(joint_bank)
        assert whole_joint == pytest.approx(_brute_force(model, x, observed, joint_bank, ratio).mean().item(), rel=1e-9)
        ratios = prior.log_prob(subset_bank) - subset_q.log_prob(subset_bank)  # [K, S, B]
        keys = ["+".join(n for n, keep in zip(model.names, row) if keep) for row in subsets.tolist()]
        for s, key in enumerate(keys):
            expected = _brute_force(model, x, observed, subset_bank[:, s], ratios[:, s]).mean().item()
            assert whole["joint_given_subset"][key] == pytest.approx(expected, rel=1e-9)
            if key != keys[-1]:
                rest = ~subsets[s].unsqueeze(-1).expand_as(observed)
                expected = _brute_force(model, x, rest, subset_bank[:, s]).mean().item()
                assert whole["conditional"][key] == pytest.approx(expected, rel=1e-9)
