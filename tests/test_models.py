"""One contract suite over every registered model, and over aggregator swaps.

Every case is built through ``build_model(config, modalities)`` exactly as the command
line builds it, so a method added to ``MODELS`` is covered without touching this file.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import LATENT, MODALITIES, NAMES, tiny_batch, tiny_config
from omnivae.aggregators import AGGREGATORS
from omnivae.errors import UserError
from omnivae.models import MODELS, ModelConfig, build_model

B = 6


# Each model also runs with another aggregator; every aggregator is swapped in once.
# mmvae+ needs a mixture to train its auxiliary priors (cross terms), so it swaps to one.
SWAPS = {"poe": "mwb", "moe": "poe", "mopoe": "wb", "wb": "moe", "mwb": "mopoe", "mmvae+": "mopoe"}


def _cases() -> list[tuple[str, str | None]]:
    """Each model with its own aggregator, and each with a different one swapped in."""
    cases: list[tuple[str, str | None]] = [(name, None) for name in MODELS]
    for name, recipe in MODELS.items():
        if not recipe.swappable:
            continue
        # A model added later gets the first aggregator that is not its own.
        # A later mixture-of-experts model (its auxiliary parts learn from cross terms)
        # swaps to another mixture.
        fallback = "mopoe" if recipe.aggregator == "moe" else next(a for a in AGGREGATORS if a != recipe.aggregator)
        swap = SWAPS.get(name) or fallback
        assert swap != recipe.aggregator
        cases.append((name, swap))
    return cases


CASES = _cases()
IDS = [f"{m}-{a or 'own'}" for m, a in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def built(request):
    model_name, aggregator = request.param
    config = tiny_config(model_name, aggregator=aggregator)
    torch.manual_seed(0)
    model, objective = build_model(config, MODALITIES)
    return model, objective, config


def _all_observed() -> torch.Tensor:
    return torch.ones(len(NAMES), B, dtype=torch.bool)


def _partial_mask() -> torch.Tensor:
    """Rows 0-1 observe everything, then each row drops something, none drops all."""
    mask = _all_observed()
    mask[0, 2] = False
    mask[1, 3] = False
    mask[2, 4] = False
    mask[0, 5] = mask[1, 5] = False
    return mask


def _generates_all(config) -> bool:
    """Whether the model decodes every modality from a latent (``Recipe.generates``); the
    others (the CVAE) generate only ``model.generated`` given their condition modalities."""
    return MODELS[config.model].generates == "all"


def _generation_mask(model, config) -> torch.Tensor:
    """The partial mask for models that decode every modality; for a target-only model,
    every condition observed and its target hidden in rows 2-4 (what it can generate from)."""
    if _generates_all(config):
        return _partial_mask()
    mask = _all_observed()
    mask[model.names.index(model.generated[0]), 2:5] = False
    return mask


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


# -- the loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["all", "partial"])
def test_objective_gives_finite_scalar_loss_and_terms(built, mask_kind):
    model, objective, _ = built
    mask = _all_observed() if mask_kind == "all" else _partial_mask()
    torch.manual_seed(1)
    out = objective(model, tiny_batch(B), mask)
    assert out.loss.shape == ()
    assert torch.isfinite(out.loss)
    assert out.loss.requires_grad
    assert out.terms, "an objective reports its named terms"
    for name, value in out.terms.items():
        assert isinstance(value, torch.Tensor), name
        assert value.shape == (), name
        assert torch.isfinite(value), name


def test_every_parameter_gets_a_gradient(built):
    model, objective, _ = built
    torch.manual_seed(1)
    objective(model, tiny_batch(B), _all_observed()).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert (param.grad != 0).any(), f"{name} has an all-zero gradient"


@pytest.mark.parametrize("masked", NAMES)
def test_modality_masked_in_every_row_gets_zero_gradient(built, masked):
    model, objective, config = built
    index = NAMES.index(masked)
    mask = _all_observed()
    mask[index] = False
    torch.manual_seed(1)
    out = objective(model, tiny_batch(B), mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, grad in _grads(model).items():
        own = name.startswith(f"encoders.{masked}.") or name.startswith(f"decoders.{masked}.")
        if own:
            assert grad is None or bool((grad == 0).all()), f"{name} learns from a masked modality"
    if MODELS[config.model].complete_rows_only:
        # No row is complete, so nothing may be learnt at all.
        assert all(g is None or bool((g == 0).all()) for g in _grads(model).values())
        return
    # The observed modalities still learn: the check above is not vacuous.
    for other in NAMES:
        if other != masked:
            grads = [g for n, g in _grads(model).items() if n.startswith(f"encoders.{other}.")]
            assert any(g is not None and bool((g != 0).any()) for g in grads)


@pytest.mark.parametrize("masked", NAMES)
def test_values_in_masked_rows_do_not_change_the_loss(built, masked):
    model, objective, _ = built
    index = NAMES.index(masked)
    mask = _all_observed()
    mask[index, : B // 2] = False
    x = tiny_batch(B)
    changed = dict(x)
    changed[masked] = x[masked].clone()
    changed[masked][: B // 2] = tiny_batch(B, seed=7)[masked][: B // 2] + 0.25

    torch.manual_seed(3)
    first = objective(model, x, mask)
    first.loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    second = objective(model, changed, mask)
    second.loss.backward()

    assert torch.equal(first.loss, second.loss)
    for name, grad in _grads(model).items():
        if grad is None or grads[name] is None:
            assert grad is None and grads[name] is None, name
        else:
            assert torch.equal(grad, grads[name]), f"{name}: masked rows leak into the gradient"
    # Observed rows do matter, so equality above is not an accident.
    changed[masked][B // 2 :] += 0.5
    torch.manual_seed(3)
    assert not torch.equal(objective(model, changed, mask).loss, first.loss)


# -- inference and generation -----------------------------------------------------------


def test_shapes_of_encode_decode_reconstruct_and_generate(built):
    model, _, config = built
    model.eval()
    x = tiny_batch(B)
    posterior = model.encode(x, _partial_mask())
    assert posterior.mean.shape == (B, model.prior().event_shape[0])
    assert torch.isfinite(posterior.mean).all()
    if not _generates_all(config):
        # A latent alone cannot be decoded: decode and generate refuse, naming what to use.
        with pytest.raises(UserError, match="conditional_generate"):
            model.decode_mean(torch.randn(B, model.prior().event_shape[0]))
        with pytest.raises(UserError, match="conditional_generate"):
            model.generate(5)
        mask = _generation_mask(model, config)
        reconstructed = model.reconstruct(x, mask)
        conditional = model.conditional_generate(x, mask, num_samples=3)
        assert set(reconstructed) == set(conditional) == set(model.generated)
        for spec in MODALITIES:
            if spec.name in model.generated:
                assert reconstructed[spec.name].shape == (B, *spec.shape)
                assert conditional[spec.name].shape == (3, B, *spec.shape)
                assert torch.isfinite(conditional[spec.name]).all()
        return

    z = torch.randn(B, model.prior().event_shape[0])
    decoded = model.decode_mean(z)
    lead = model.decode_mean(torch.randn(3, B, model.prior().event_shape[0]))
    reconstructed = model.reconstruct(x, _partial_mask())
    generated = model.generate(5)
    conditional = model.conditional_generate(x, _partial_mask(), num_samples=3)
    for spec in MODALITIES:
        shape = tuple(spec.shape)
        assert decoded[spec.name].shape == (B, *shape)
        assert lead[spec.name].shape == (3, B, *shape)
        assert reconstructed[spec.name].shape == (B, *shape)
        assert generated[spec.name].shape == (5, *shape)
        assert conditional[spec.name].shape == (3, B, *shape)
        for values in (decoded, reconstructed, generated, conditional):
            assert torch.isfinite(values[spec.name]).all()
    # Means of an image (sigmoid location) and of bits (probabilities) lie in [0, 1].
    for name in ("img", "bits"):
        assert generated[name].min() >= 0 and generated[name].max() <= 1


def test_conditional_generation_depends_on_observed_values_only(built):
    model, _, config = built
    x = tiny_batch(B)
    mask = _generation_mask(model, config)
    generated = "vec" if _generates_all(config) else model.generated[0]
    torch.manual_seed(0)
    samples = model.conditional_generate(x, mask, num_samples=2)
    assert not torch.equal(samples[generated][0], samples[generated][1]), "two draws differ"
    hidden_changed = {k: v.clone() for k, v in x.items()}
    observed_changed = {k: v.clone() for k, v in x.items()}
    for i, name in enumerate(NAMES):
        hidden_changed[name][~mask[i]] += 0.3
        observed_changed[name][mask[i]] = tiny_batch(B, seed=9)[name][mask[i]]
    torch.manual_seed(0)
    same = model.conditional_generate(hidden_changed, mask, num_samples=2)
    torch.manual_seed(0)
    other = model.conditional_generate(observed_changed, mask, num_samples=2)
    for name in model.generated:
        assert torch.equal(same[name], samples[name]), name
    assert not torch.equal(other[generated], samples[generated]), "samples are conditioned on the observed values"


def test_reconstruct_decodes_the_posterior_mean_of_the_observed_set(built):
    model, _, config = built
    x = tiny_batch(B)
    if not _generates_all(config):  # the target, decoded with the conditions (tests/test_cvae.py)
        mask = _generation_mask(model, config)
        assert torch.equal(model.reconstruct(x, mask)[model.generated[0]], model.reconstruct(x, mask)[model.generated[0]])
        assert not torch.equal(model.reconstruct(x)[model.generated[0]], model.reconstruct(x, mask)[model.generated[0]])
        return
    mask = _partial_mask()
    expected = model.decode_mean(model.encode(x, mask).mean)
    reconstructed = model.reconstruct(x, mask)
    everything = model.reconstruct(x)
    for name in NAMES:
        assert torch.equal(reconstructed[name], expected[name])
    assert not torch.equal(everything["vec"], reconstructed["vec"])


def test_encode_ignores_values_of_unobserved_modalities(built):
    model, _, _ = built
    x = tiny_batch(B)
    mask = _partial_mask()
    other = {k: v.clone() for k, v in x.items()}
    for i, name in enumerate(NAMES):
        other[name][~mask[i]] = 0.9
    assert torch.equal(model.encode(x, mask).mean, model.encode(other, mask).mean)


def test_impute_keeps_observed_values_and_fills_missing_ones(built):
    model, _, config = built
    model.eval()
    x = tiny_batch(B)
    mask = _generation_mask(model, config)
    sentinel = {k: v.clone() for k, v in x.items()}
    for i, name in enumerate(NAMES):
        sentinel[name][~mask[i]] = 0.123
    filled = model.impute(sentinel, mask)
    if not _generates_all(config):  # only the target is filled; a missing condition is refused
        for i, name in enumerate(NAMES):
            assert torch.equal(filled[name][mask[i]], x[name][mask[i]]), "observed values must be kept exactly"
            assert name in model.generated or bool(mask[i].all())
        target = model.generated[0]
        assert not (filled[target][~mask[NAMES.index(target)]] == 0.123).all()
        with pytest.raises(UserError, match="lack"):
            model.impute(sentinel, _partial_mask())
        return
    expected = model.decode_mean(model.encode(sentinel, mask).mean)
    for i, spec in enumerate(MODALITIES):
        out = filled[spec.name]
        assert out.shape == sentinel[spec.name].shape
        assert out.dtype == sentinel[spec.name].dtype
        assert torch.equal(out[mask[i]], x[spec.name][mask[i]]), "observed values must be kept exactly"
        missing = ~mask[i]
        assert missing.any()
        assert torch.equal(out[missing], expected[spec.name][missing])
        assert not (out[missing] == 0.123).all()
    # The same with masks as a dict of BoolTensor[B], and with a modality left out of x.
    as_dict = model.impute(sentinel, {name: mask[i] for i, name in enumerate(NAMES)})
    for name in NAMES:
        assert torch.equal(as_dict[name], filled[name])
    without_bits = {k: v for k, v in sentinel.items() if k != "bits"}
    partial = model.impute(without_bits, {"img": mask[0], "vec": torch.ones(B, dtype=torch.bool)})
    assert torch.equal(partial["vec"], sentinel["vec"])
    assert partial["bits"].shape == (B, 5)
    assert torch.isfinite(partial["bits"]).all()


def test_encode_rejects_a_row_with_nothing_observed(built):
    model, _, _ = built
    mask = _all_observed()
    mask[:, 0] = False
    with pytest.raises(UserError, match="at least one observed"):
        model.encode(tiny_batch(B), mask)


# -- persistence ------------------------------------------------------------------------


def test_safetensors_round_trip_is_bit_exact(built, tmp_path):
    model, _, config = built
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))

    # Rebuild the same configuration from a different seed: different parameters.
    torch.manual_seed(123)
    fresh, _ = build_model(config, MODALITIES)
    x = tiny_batch(B)
    z = torch.randn(B, model.prior().event_shape[0])
    model.eval()
    fresh.eval()
    assert not torch.equal(fresh.encode(x).mean, model.encode(x).mean)
    fresh.load_state_dict(load_file(str(file)))
    mask = _partial_mask()
    assert torch.equal(fresh.encode(x, mask).mean, model.encode(x, mask).mean)
    if not _generates_all(config):
        torch.manual_seed(5)
        ours = model.conditional_generate(x, _generation_mask(model, config))
        torch.manual_seed(5)
        theirs = fresh.conditional_generate(x, _generation_mask(model, config))
    else:
        ours, theirs = model.decode_mean(z), fresh.decode_mean(z)
    for name in model.generated:
        assert torch.equal(ours[name], theirs[name])


# -- full covariances -------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["wb", "mwb"])
def test_lowrank_covariance_trains_a_step(model_name):
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(model_name, covariance="lowrank", rank=2), MODALITIES)
    assert model.covariance_rank == 2
    x = tiny_batch(B)
    mask = _partial_mask()
    experts = model.encode_experts(x, mask)
    assert experts.cov_factor is not None and experts.cov_factor.shape == (3, B, LATENT, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    out = objective(model, x, mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if ".factor." in name:
            assert param.grad is not None and (param.grad != 0).any(), name
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    torch.manual_seed(1)
    assert torch.isfinite(objective(model, x, mask).loss)
    assert model.encode(x, mask).mean.shape == (B, model.prior().event_shape[0])


def test_product_of_experts_refuses_lowrank_covariances_clearly():
    model, objective = build_model(tiny_config("poe", covariance="lowrank", rank=2), MODALITIES)
    with pytest.raises(UserError, match="diag"):
        objective(model, tiny_batch(B), _all_observed())


# -- configuration errors ---------------------------------------------------------------


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UserError) as info:
        tiny_config("nope").validate()
    message = str(info.value)
    assert "nope" in message
    for name in MODELS:
        assert name in message


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"aggregator": "median"}, "aggregator 'median'.*mwb"),
        ({"latent_dim": 0}, "latent"),
        ({"beta": -0.5}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"num_samples": 0}, "K"),
        ({"covariance": "full-ish"}, "covariance"),
        ({"covariance": "lowrank", "rank": 0}, "rank"),
        ({"prior": "cauchy"}, "prior"),
        ({"latent_dim": "4"}, "latent_dim must be an integer"),
        ({"latent_dim": 4.0}, "latent_dim must be an integer"),
        ({"beta": "1"}, "beta must be a number"),
        ({"hidden": "16"}, "hidden must be a list of integers"),
        ({"hidden": [16.5]}, "hidden must be a list of integers"),
        ({"dreg": 1}, "dreg must be true or false"),
        ({"prior": 3}, "prior must be a string"),
    ],
)
def test_config_validation_errors(overrides, pattern):
    config = tiny_config("mwb", **overrides)
    with pytest.raises(UserError, match=pattern):
        config.validate()
    with pytest.raises(UserError, match=pattern):
        build_model(config, MODALITIES)


def test_config_json_round_trip_ignores_unknown_keys():
    config = tiny_config("moe", aggregator="mwb", num_samples=3, dreg=True)
    again = ModelConfig.from_json({**config.to_json(), "future_option": 1})
    assert again == config


@pytest.mark.parametrize("name", list(MODELS))
def test_subset_posteriors_match_encoding_each_subset(name):
    """One encoder pass for all subsets gives the same posteriors as encoding each subset alone."""
    from omnivae.functional import subset_matrix

    torch.manual_seed(0)
    model, _ = build_model(tiny_config(name), MODALITIES)
    model.eval()
    x = tiny_batch(5)
    subsets = subset_matrix(len(MODALITIES))
    together = model.subset_posteriors(x, subsets).mean
    assert together.shape == (subsets.shape[0], 5, model.prior().event_shape[0])
    for s, row in enumerate(subsets):
        alone = model.encode(x, {n: torch.full((5,), bool(row[i])) for i, n in enumerate(model.names)}).mean
        torch.testing.assert_close(together[s], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_elements", [1, 50, 10**9])
def test_chunked_cpu_decode_equals_one_call(monkeypatch, chunk_elements: int) -> None:
    """The CPU decode of many latent copies, split into chunks, gives the one-call
    log-likelihoods and gradients, and every copy is scored against its own row."""
    import omnivae.models as models_module

    torch.manual_seed(0)
    model, _ = build_model(tiny_config("moe"), MODALITIES)
    model = model.double()
    x = {k: v.double() for k, v in tiny_batch(5).items()}
    z = torch.randn(7, 5, model.latent_dim, dtype=torch.float64, requires_grad=True)
    name = model.names[0]
    monkeypatch.setattr(models_module, "CPU_DECODE_CHUNK_ELEMENTS", chunk_elements)
    chunked = model.decoder_log_prob(name, x[name], z)
    assert chunked.shape == (7, 5)
    reference = torch.stack([model.decoders[name](z[c]).log_prob(x[name]) for c in range(7)])
    torch.testing.assert_close(chunked, reference, rtol=1e-12, atol=1e-10)
    parameters = [z, *model.decoders[name].parameters()]
    grads = torch.autograd.grad(chunked.sum(), parameters)
    expected = torch.autograd.grad(reference.sum(), parameters)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
