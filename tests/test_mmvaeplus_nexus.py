"""MMVAE+ and Nexus: losses by hand in float64, latent layouts, masking, detaching, dropout, metrics.

The contract suite (test_models.py) runs both recipes through the generic checks once
they are registered; here are the properties specific to them. For MMVAE+ these are the
stratified bound against a hand computation from fixed draws, the distributions of the
draws, the learnable auxiliary scales and the block structure of u = [z, w_1..w_M]. For
Nexus they are the two levels against a hand computation from fixed noise, perceptual
dropout, detached messages and the composed decoders. Both models also run through the
generic metrics.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from helpers import MODALITIES, NAMES, tiny_batch, tiny_config, tiny_splits
from omnivae.data.base import ModalitySpec
from omnivae.errors import DataError, UserError
from omnivae.functional import subset_matrix
from omnivae.methods.mmvaeplus import RECIPES as PLUS_RECIPES
from omnivae.distributions import ConcatenatedBlocks
from omnivae.methods.mmvaeplus import MMVAEPlus, MMVAEPlusObjective
from omnivae.methods.nexus import RECIPES as NEXUS_RECIPES
from omnivae.methods.nexus import Nexus, NexusNoise, perceptual_dropout
from omnivae.metrics import (
    conditional_coherence,
    conditional_log_likelihoods,
    joint_log_likelihood,
    linear_probe,
    reconstruction_error,
)
from omnivae.metrics.classifiers import ModalityClassifiers
from omnivae.models import MODELS, ModelConfig, build_model

VECTORS = (
    ModalitySpec("a", (3,), "vector"),
    ModalitySpec("b", (4,), "vector"),
    ModalitySpec("c", (2,), "vector"),
)
VNAMES = [m.name for m in VECTORS]
LOG_2PI = math.log(2 * math.pi)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The recipes in MODELS for the test (a no-op once models.py registers them)."""
    for recipe in PLUS_RECIPES + NEXUS_RECIPES:
        monkeypatch.setitem(MODELS, recipe.name, MODELS.get(recipe.name, recipe))


def vector_batch(batch: int, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(batch, *m.shape, generator=gen, dtype=torch.float64) for m in VECTORS}


def plus_model(num_samples: int = 1, beta: float = 1.0, dreg: bool = False, w_dim: int = 2, **overrides):
    config = ModelConfig(
        model="mmvae+", latent_dim=2, hidden=[5], backbone="mlp", beta=beta, num_samples=num_samples,
        dreg=dreg, options={"w_dim": w_dim}, **overrides,
    )
    torch.manual_seed(0)
    model, objective = build_model(config, VECTORS)
    return model.double(), objective


def nexus_model(dropout: float = 0.2, gamma: float = 1.0, beta: float = 1.0):
    config = ModelConfig(
        model="nexus", latent_dim=2, hidden=[5], backbone="mlp", beta=beta,
        options={"bottom_dim": 3, "msg_dim": 4, "dropout": dropout, "gamma": gamma},
    )
    torch.manual_seed(0)
    model, objective = build_model(config, VECTORS)
    return model.double(), objective


def log_normal(value: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """log N(value; loc, diag scale^2), summed over the last axis, written out."""
    loc = torch.as_tensor(loc, dtype=value.dtype)
    scale = torch.as_tensor(scale, dtype=value.dtype)
    return (-0.5 * ((value - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


PARTIAL = torch.tensor(
    [
        [True, False, True, True, True],
        [True, True, False, True, True],
        [True, True, False, False, True],
    ]
)


# -- MMVAE+: the bound ------------------------------------------------------------------


def hand_plus_loss(model: MMVAEPlus, x, mask, samples, beta: float, a: float) -> Tensor:
    """Minus the batch mean of mean_r log-mean-exp_k lw_r, from the formula, row by row."""
    d_z = model.shared_dim
    k_count = samples.z.shape[1]
    params = {n: model.encoders[n](x[n]) for n in VNAMES}
    bounds = []
    for b in range(mask.shape[1]):
        observed = [i for i in range(len(VNAMES)) if mask[i, b]]
        per_source = []
        for r in observed:
            weights = []
            for k in range(k_count):
                z = samples.z[r, k, b]
                rec = torch.zeros((), dtype=torch.float64)
                for d in observed:
                    w = samples.w_posterior[d, r, k, b] if d == r else samples.w_auxiliary[d, r, k, b]
                    px = model.decoders[VNAMES[d]](torch.cat([z, w])[None])
                    rec = rec + model.likelihood_weights[d] * px.log_prob(x[VNAMES[d]][b : b + 1])[0]
                log_qz_each = torch.stack(
                    [log_normal(z, params[VNAMES[m]][0][b, :d_z], params[VNAMES[m]][1][b, :d_z]) for m in observed]
                )
                log_qz = torch.logsumexp(log_qz_each, 0) - math.log(len(observed))
                w_r = samples.w_posterior[r, r, k, b]
                loc_r, scale_r = params[VNAMES[r]][0][b, d_z:], params[VNAMES[r]][1][b, d_z:]
                bracket = log_normal(z, 0.0, 1.0) + log_normal(w_r, 0.0, 1.0) - log_qz - log_normal(w_r, loc_r, scale_r)
                weights.append(rec + beta * a * bracket)
            per_source.append(torch.logsumexp(torch.stack(weights), 0) - math.log(k_count))
        bounds.append(torch.stack(per_source).mean())
    return -torch.stack(bounds).mean()


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("mask_kind", ["all", "partial"])
def test_mmvaeplus_loss_equals_the_formula_by_hand(num_samples, mask_kind):
    model, objective = plus_model(num_samples=num_samples, beta=2.5)
    model.likelihood_weights.copy_(torch.tensor([1.0, 2.0, 0.5]))
    with torch.no_grad():
        model.aux_log_scale.copy_(torch.tensor([[-0.5, 0.3], [0.2, -1.0], [0.7, 0.1]]))
    x = vector_batch(5)
    mask = torch.ones(3, 5, dtype=torch.bool) if mask_kind == "all" else PARTIAL
    torch.manual_seed(4)
    blocks = model.encode_blocks(x)
    posterior = model.aggregate(blocks.shared, mask)
    samples = objective.draw(model, blocks, posterior)
    out = objective.evaluate(model, x, mask, blocks, posterior, samples, kl_weight=0.4)
    expected = hand_plus_loss(model, x, mask, samples, beta=2.5, a=0.4)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
    # __call__ is draw + evaluate with the same random stream.
    torch.manual_seed(4)
    torch.testing.assert_close(objective(model, x, mask, 0.4).loss, out.loss, rtol=0, atol=0)


def test_mmvaeplus_dreg_keeps_the_value_and_changes_only_encoder_gradients():
    plain_model, plain = plus_model(num_samples=4, dreg=False)
    dreg_model, dreg = plus_model(num_samples=4, dreg=True)
    x = vector_batch(5)
    torch.manual_seed(2)
    first = plain(plain_model, x, PARTIAL)
    torch.manual_seed(2)
    second = dreg(dreg_model, x, PARTIAL)
    torch.testing.assert_close(first.loss, second.loss, rtol=1e-12, atol=1e-12)
    first.loss.backward()
    second.loss.backward()
    plain_grads = dict(plain_model.named_parameters())
    for name, param in dreg_model.named_parameters():
        other = plain_grads[name].grad
        if name.startswith("decoders.") or name == "aux_log_scale":
            # Generative parameters get the IWAE gradient sum_k w_k grad lw_k either way.
            torch.testing.assert_close(param.grad, other, rtol=1e-9, atol=1e-12)
    encoder_differs = [
        not torch.allclose(p.grad, plain_grads[n].grad)
        for n, p in dreg_model.named_parameters()
        if n.startswith("encoders.")
    ]
    assert any(encoder_differs)


def test_mmvaeplus_draws_follow_posteriors_and_auxiliary_priors():
    model, _ = plus_model()
    objective = MMVAEPlusObjective(num_samples=20000)
    with torch.no_grad():
        model.aux_log_scale.copy_(torch.tensor([[-1.0, 0.5], [0.2, -0.3], [0.0, 1.0]]))
    x = vector_batch(2)
    mask = torch.ones(3, 2, dtype=torch.bool)
    torch.manual_seed(0)
    with torch.no_grad():
        blocks = model.encode_blocks(x)
        samples = objective.draw(model, blocks, model.aggregate(blocks.shared, mask))
    n = 20000
    for r in range(3):  # moe's component r is q(z | x_r)
        loc, scale = blocks.shared.loc[r], blocks.shared.scale[r]  # [B, D]
        z = samples.z[r]  # [K, B, D]
        assert (z.mean(0) - loc).abs().le(5 * scale / math.sqrt(n)).all()
        assert ((z.std(0) / scale) - 1).abs().le(5 / math.sqrt(2 * n)).all()
    for d in range(3):
        for c in range(3):
            w = samples.w_posterior[d, c]
            assert (w.mean(0) - blocks.loc[d]).abs().le(5 * blocks.scale[d] / math.sqrt(n)).all()
            assert ((w.std(0) / blocks.scale[d]) - 1).abs().le(5 / math.sqrt(2 * n)).all()
            aux = samples.w_auxiliary[d, c]
            scale = model.auxiliary_scale()[d]
            assert aux.mean(0).abs().le(5 * scale / math.sqrt(n)).all()
            assert ((aux.std(0) / scale) - 1).abs().le(5 / math.sqrt(2 * n)).all()


def test_auxiliary_scale_is_a_learnable_parameter_fed_by_cross_terms():
    model, objective = plus_model(num_samples=2)
    params = dict(model.named_parameters())
    assert isinstance(model.aux_log_scale, nn.Parameter) and params["aux_log_scale"] is model.aux_log_scale
    x = vector_batch(5)
    torch.manual_seed(0)
    objective(model, x, torch.ones(3, 5, dtype=torch.bool)).loss.backward()
    assert (model.aux_log_scale.grad != 0).all(), "every r_d is used by a cross term"
    optimizer = torch.optim.Adam([model.aux_log_scale], lr=0.1)
    before = model.auxiliary_scale().detach().clone()
    optimizer.step()
    assert not torch.equal(model.auxiliary_scale().detach(), before)

    # With one observed modality per row there is no cross term: r_d gets exactly nothing.
    model.zero_grad(set_to_none=True)
    single = torch.zeros(3, 5, dtype=torch.bool)
    single[torch.tensor([0, 1, 2, 0, 1]), torch.arange(5)] = True
    torch.manual_seed(0)
    objective(model, x, single).loss.backward()
    assert model.aux_log_scale.grad is None or bool((model.aux_log_scale.grad == 0).all())


def _owned(name: str, modality: str) -> bool:
    prefixes = ("encoders.", "decoders.", "message_encoders.", "top_decoders.")
    return any(name.startswith(f"{p}{modality}.") for p in prefixes)


@pytest.mark.parametrize("masked", [0, 1, 2])
@pytest.mark.parametrize(
    "kind", ["mmvae+", "mmvae+-dreg", "mmvae+-mopoe", "nexus"],
)
def test_masked_modality_gets_exactly_zero_gradient(kind, masked):
    if kind == "nexus":
        model, objective = nexus_model(dropout=0.5)
    else:
        extra = {"aggregator": "mopoe"} if kind == "mmvae+-mopoe" else {}
        model, objective = plus_model(num_samples=2, dreg=kind == "mmvae+-dreg", **extra)
    mask = PARTIAL.clone()
    mask[masked] = False
    mask[(masked + 1) % 3] = True  # every row keeps an observed modality
    x = vector_batch(5)
    torch.manual_seed(1)
    out = objective(model, x, mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    name = VNAMES[masked]
    owned = [(n, p) for n, p in model.named_parameters() if _owned(n, name)]
    assert owned
    for n, p in owned:
        assert p.grad is None or bool((p.grad == 0).all()), f"{n} learns from a masked modality"
    if isinstance(model, MMVAEPlus):
        assert bool((model.aux_log_scale.grad[masked] == 0).all()), "r_d of a masked modality is unused"
        assert bool((model.aux_log_scale.grad != 0).any())
    for other in VNAMES:
        if other != name:
            grads = [p.grad for n, p in model.named_parameters() if n.startswith(f"encoders.{other}.")]
            assert any(g is not None and bool((g != 0).any()) for g in grads)


# -- MMVAE+: the latent layout ------------------------------------------------------------


def test_mmvaeplus_subset_posterior_is_mixture_of_z_times_posterior_or_prior_w():
    model, _ = plus_model(w_dim=2)
    model.eval()
    x = vector_batch(4)
    subsets = subset_matrix(3)
    posterior = model.subset_posteriors(x, subsets)
    assert isinstance(posterior, ConcatenatedBlocks)
    assert model.latent_dim == 2 + 3 * 2
    assert posterior.batch_shape == (7, 4) and posterior.mean.shape == (7, 4, 8)
    assert posterior.sample().shape == (7, 4, 8) and posterior.sample(torch.Size([3])).shape == (3, 7, 4, 8)
    blocks = model.encode_blocks(x)
    index = [s for s in range(7) if subsets[s].tolist() == [True, True, False]][0]
    mean = posterior.mean[index]
    torch.testing.assert_close(mean[:, :2], blocks.shared.loc[:2].mean(0))
    torch.testing.assert_close(mean[:, model.specific_slice("a")], blocks.loc[0])
    torch.testing.assert_close(mean[:, model.specific_slice("b")], blocks.loc[1])
    assert bool((mean[:, model.specific_slice("c")] == 0).all()), "w_c comes from the prior"
    # log q(u | x_S) = log of the z mixture + the w blocks, written out.
    samples = posterior.sample()
    u = samples[index]
    z = u[:, :2]
    mixture = torch.logsumexp(
        torch.stack([log_normal(z, blocks.shared.loc[m], blocks.shared.scale[m]) for m in (0, 1)]), 0
    ) - math.log(2)
    expected = (
        mixture
        + log_normal(u[:, model.specific_slice("a")], blocks.loc[0], blocks.scale[0])
        + log_normal(u[:, model.specific_slice("b")], blocks.loc[1], blocks.scale[1])
        + log_normal(u[:, model.specific_slice("c")], 0.0, 1.0)
    )
    torch.testing.assert_close(posterior.log_prob(samples)[index], expected)


def test_mmvaeplus_prior_and_decoders_read_their_slices():
    model, _ = plus_model(w_dim=2)
    prior = model.prior()
    u = prior.sample(torch.Size([6]))
    assert u.shape == (6, 8)
    torch.testing.assert_close(prior.log_prob(u), log_normal(u, 0.0, 1.0))
    decoded = model.decode_mean(u)
    for name in VNAMES:
        own = model.decoders[name](torch.cat([u[:, :2], u[:, model.specific_slice(name)]], -1)).mean
        torch.testing.assert_close(decoded[name], own)
    # Decoder a ignores w_b and w_c.
    changed = u.clone()
    changed[:, model.specific_slice("b")] += 1.0
    changed[:, model.specific_slice("c")] -= 2.0
    torch.testing.assert_close(model.decode_mean(changed)["a"], decoded["a"])
    x = vector_batch(6)
    lead = torch.stack([u, changed])  # [2, B, L]
    log_p = model.modality_log_likelihood("a", x["a"], lead)
    assert log_p.shape == (2, 6)
    torch.testing.assert_close(log_p[0], log_p[1])


def test_mmvaeplus_configuration_errors():
    with pytest.raises(UserError, match="w_dim"):
        build_model(tiny_config("mmvae+", options={"w_dim": 0}), MODALITIES)
    with pytest.raises(UserError, match="diag"):
        build_model(tiny_config("mmvae+", covariance="lowrank", rank=2), MODALITIES)
    with pytest.raises(UserError, match="w_dim"):
        tiny_config("mmvae+", options={"w_dim": 2.5}).validate()


def test_mmvaeplus_one_component_aggregator_uses_no_auxiliary_prior():
    """With poe, S_c is the observed set: every w_d comes from its posterior (module docstring)."""
    model, objective = plus_model(num_samples=2, aggregator="poe")
    torch.manual_seed(0)
    out = objective(model, vector_batch(5), torch.ones(3, 5, dtype=torch.bool))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.aux_log_scale.grad is None or bool((model.aux_log_scale.grad == 0).all())


# -- Nexus --------------------------------------------------------------------------------


def test_perceptual_dropout_keeps_a_non_empty_subset_of_the_observed():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 2000, generator=gen) < 0.6
    mask[0] |= ~mask.any(0)
    for rate in (0.0, 0.2, 1.0):
        kept = perceptual_dropout(mask, rate, generator=gen)
        assert bool((kept & ~mask).sum() == 0), "only observed modalities are kept"
        assert bool(kept.any(0).all()), "no row loses every modality"
    torch.testing.assert_close(perceptual_dropout(mask, 0.0), mask, rtol=0, atol=0)
    kept = perceptual_dropout(mask, 1.0, generator=gen)
    several = mask.sum(0) >= 2
    assert not bool((kept == mask).all(0)[several].any()), "rate 1 never keeps the full observed set"
    assert torch.equal(kept[:, ~several], mask[:, ~several])
    # Every non-empty proper subset of a fully observed row occurs.
    full = torch.ones(3, 3000, dtype=torch.bool)
    seen = {tuple(col.tolist()) for col in perceptual_dropout(full, 1.0, generator=gen).t()}
    assert len(seen) == 6
    # About a fraction `rate` of the rows with >= 2 observed are reduced.
    reduced = (perceptual_dropout(mask, 0.2, generator=gen) != mask).any(0)[several].double().mean()
    assert abs(float(reduced) - 0.2) < 0.04
    with pytest.raises(UserError, match="dropout"):
        perceptual_dropout(mask, 1.5)


def test_nexus_applies_dropout_only_in_training_mode():
    model, objective = nexus_model(dropout=1.0)
    mask = torch.ones(3, 50, dtype=torch.bool)
    assert not torch.equal(objective.draw(model, mask).kept, mask)
    model.eval()
    assert torch.equal(objective.draw(model, mask).kept, mask)


def hand_nexus_levels(model: Nexus, x, mask, noise: NexusNoise, beta: float, gamma: float, a: float):
    """Both levels per row from the formula, modality by modality."""
    batch = mask.shape[1]
    bottom, top = torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
    targets, messages = {}, {}
    for i, name in enumerate(VNAMES):
        loc, scale, _ = model.encoders[name](x[name])
        z = loc + scale * noise.bottom[i]
        targets[name] = z.detach()
        messages[name] = model.message_encoders[name](z.detach())
        kl = (0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log())).sum(-1)
        log_p = model.decoders[name](z).log_prob(x[name])
        bottom = bottom + torch.where(mask[i], model.likelihood_weights[i] * log_p - beta * a * kl, 0.0)
    for b in range(batch):
        kept = [n for i, n in enumerate(VNAMES) if noise.kept[i, b] and mask[i, b]]
        msg = torch.stack([messages[n][b] for n in kept]).mean(0)
        loc, scale, _ = model.top_encoder(msg[None])
        z_top = loc[0] + scale[0] * noise.top[b]
        value = -beta * a * (0.5 * (scale[0] ** 2 + loc[0] ** 2 - 1 - 2 * scale[0].log())).sum()
        for i, name in enumerate(VNAMES):
            if mask[i, b]:
                predicted = model.top_decoders[name](z_top[None])[0]
                value = value + gamma * log_normal(targets[name][b], predicted, 1.0)
        top[b] = value
    return bottom, top


def test_nexus_levels_equal_the_formula_by_hand():
    model, objective = nexus_model(gamma=3.0, beta=2.0)
    model.likelihood_weights.copy_(torch.tensor([1.0, 2.0, 0.5]))
    x = vector_batch(5)
    gen = torch.Generator().manual_seed(3)
    kept = PARTIAL.clone()
    kept[0, 0] = False  # row 0 averages the messages of b and c only
    noise = NexusNoise(
        torch.randn(3, 5, 3, generator=gen, dtype=torch.float64),
        torch.randn(5, 2, generator=gen, dtype=torch.float64),
        kept,
    )
    bottom, top, terms = objective.levels(model, x, PARTIAL, 0.3, noise)
    expected_bottom, expected_top = hand_nexus_levels(model, x, PARTIAL, noise, beta=2.0, gamma=3.0, a=0.3)
    torch.testing.assert_close(bottom, expected_bottom, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(top, expected_top, rtol=1e-10, atol=1e-10)
    assert set(terms) == {"rec", "kl", "top_rec", "top_kl"}


def test_nexus_top_loss_never_reaches_the_bottom_networks():
    model, objective = nexus_model()
    x = vector_batch(5)
    torch.manual_seed(0)
    bottom, top, _ = objective.levels(model, x, PARTIAL)
    top.sum().backward(retain_graph=True)
    for name, param in model.named_parameters():
        if name.startswith(("encoders.", "decoders.")):
            assert param.grad is None or bool((param.grad == 0).all()), f"{name} gets the top loss"
        else:
            assert param.grad is not None and bool((param.grad != 0).any()), f"{name} gets no top gradient"
    model.zero_grad(set_to_none=True)
    bottom.sum().backward()
    for name, param in model.named_parameters():
        if not name.startswith(("encoders.", "decoders.")):
            assert param.grad is None or bool((param.grad == 0).all()), name


def test_nexus_decoding_composes_top_and_bottom_decoders():
    model, _ = nexus_model()
    z = torch.randn(4, 2, dtype=torch.float64)
    decoded = model.decode_mean(z)
    for name in VNAMES:
        torch.testing.assert_close(decoded[name], model.decoders[name](model.top_decoders[name](z)).mean)
    x = vector_batch(4)
    lead = torch.randn(3, 4, 2, dtype=torch.float64)
    log_p = model.modality_log_likelihood("b", x["b"], lead)
    assert log_p.shape == (3, 4)
    for s in range(3):
        direct = model.decoders["b"](model.top_decoders["b"](lead[s])).log_prob(x["b"])
        torch.testing.assert_close(log_p[s], direct)


def test_nexus_subset_posterior_reads_the_mean_message_of_the_subset():
    model, _ = nexus_model()
    model.eval()
    x = vector_batch(4)
    subsets = subset_matrix(3)
    posterior = model.subset_posteriors(x, subsets)
    assert posterior.batch_shape == (7, 4) and posterior.mean.shape == (7, 4, 2)
    assert posterior.sample().shape == (7, 4, 2)
    messages = {n: model.message_encoders[n](model.encoders[n](x[n])[0]) for n in VNAMES}
    for s, row in enumerate(subsets.tolist()):
        msg = torch.stack([messages[n] for n, keep in zip(VNAMES, row) if keep]).mean(0)
        torch.testing.assert_close(posterior.mean[s], model.top_encoder(msg)[0])
    assert model.prior().sample(torch.Size([5])).shape == (5, 2)
    with pytest.raises(DataError, match="at least one observed"):
        model.encode(x, torch.zeros(3, 4, dtype=torch.bool))


def test_nexus_configuration_errors():
    with pytest.raises(UserError, match="aggregator"):
        build_model(tiny_config("nexus", aggregator="poe"), MODALITIES)
    with pytest.raises(UserError, match="dropout"):
        build_model(tiny_config("nexus", options={"dropout": 1.5}), MODALITIES)
    with pytest.raises(UserError, match="prior"):
        build_model(tiny_config("nexus", prior="laplace"), MODALITIES)
    with pytest.raises(UserError, match="msg_dim"):
        tiny_config("nexus", options={"msg_dim": "big"}).validate()


# -- both: metrics and learning ----------------------------------------------------------


class FirstPixels(nn.Module):
    """A trivial 'classifier': the logits are the first three values of the input."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :3].float()


def _tiny(name: str):
    options = {"w_dim": 3} if name == "mmvae+" else {"bottom_dim": 3, "msg_dim": 8}
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(name, options=options, num_samples=2), MODALITIES)
    return model, objective


@pytest.mark.parametrize("name", ["mmvae+", "nexus"])
@pytest.mark.parametrize("observed", [1.0, 0.7])
def test_generic_metrics_run_without_special_cases(name, observed):
    model, _ = _tiny(name)
    splits = tiny_splits(observed=observed)
    probe = linear_probe(model, splits.train, splits.test)
    assert set(probe["by_size"]) == {"1", "2", "3"}
    assert all(0 <= v <= 1 for v in probe["per_subset"].values())
    classifiers = ModalityClassifiers({n: FirstPixels() for n in NAMES}, {n: 1.0 for n in NAMES}, 3)
    coherence = conditional_coherence(model, splits.test, classifiers)
    assert set(coherence["by_size"]) == {"1", "2"}
    assert all(0 <= v <= 1 for v in coherence["by_size"].values())
    joint = joint_log_likelihood(model, splits.test, num_samples=3, chunk=2, seed=0)
    assert math.isfinite(joint)
    conditional = conditional_log_likelihoods(model, splits.test, num_samples=2, seed=0)
    assert all(math.isfinite(v) for v in conditional["conditional"].values())
    recon = reconstruction_error(model, splits.test)
    assert set(recon["cross"]) == set(NAMES)


@pytest.mark.parametrize("name", ["mmvae+", "nexus"])
def test_a_few_optimisation_steps_reduce_the_loss(name):
    model, objective = _tiny(name)
    x = tiny_batch(16)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[0, :4] = False

    def loss() -> float:
        torch.manual_seed(11)
        with torch.no_grad():
            return float(objective(model, x, mask).loss)

    before = loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        torch.manual_seed(step)
        optimizer.zero_grad()
        objective(model, x, mask).loss.backward()
        optimizer.step()
    assert loss() < before - 0.03 * abs(before)
