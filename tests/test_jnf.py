"""JNF and JNF-Shared (Senellart et al. 2024): stages, Eq. 3/8/10/12 against hand computations.

The contract suite (test_models.py) runs the recipes through the generic checks; here are
the properties specific to them: the flow density against the change-of-variables formula
with an autograd Jacobian, Eq. 3 and Eq. 8 by hand in float64, HMC for Eq. 12 against its
closed form for Gaussian unimodal posteriors, the normalised density of a subset
posterior, which parameters each stage trains (with the real trainer), masking, and a
save/load round trip.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from helpers import LATENT, MODALITIES, NAMES, tiny_batch, tiny_config, tiny_splits
from omnivae.data.base import ModalitySpec
from omnivae.errors import UserError
from omnivae.functional import subset_matrix
from omnivae.methods.jnf import JNFVAE, RECIPES, JNFPosterior, UnimodalFlow
from omnivae.models import MODELS, PriorDividedProduct, build_model
from omnivae.train import TrainConfig, Trainer, load_run, train

VECTORS = (
    ModalitySpec("a", (3,), "vector"),
    ModalitySpec("b", (4,), "vector"),
    ModalitySpec("c", (2,), "vector"),
)
B = 5


@pytest.fixture(autouse=True, scope="module")
def registered():
    """The recipes in the registry (a no-op once models.py lists them)."""
    added = [r.name for r in RECIPES if r.name not in MODELS]
    for recipe in RECIPES:
        MODELS.setdefault(recipe.name, recipe)
    yield
    for name in added:
        del MODELS[name]


def vector_batch(batch: int = B, seed: int = 0, modalities=VECTORS) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(batch, *m.shape, generator=gen, dtype=torch.float64) for m in modalities}


def partial_mask(batch: int = B) -> Tensor:
    """Rows 0, 2, 4 observe everything; row 1 misses ``a``; row 3 observes only ``a``."""
    mask = torch.ones(3, batch, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, 3] = mask[2, 3] = False
    return mask


def vector_model(name: str = "jnf", modalities=VECTORS, **options) -> tuple:
    torch.manual_seed(0)
    config = tiny_config(name, options=options)
    model, objective = build_model(config, modalities)
    return model.double(), objective


def normal_log_prob_by_hand(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def flow_log_prob_by_hand(flow: UnimodalFlow, z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Eq. 9-10 with the Jacobian of T = f^{-1} from autograd, point by point: ``z [N, D]``."""
    out = []
    for i in range(z.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.normalise(v)[0], z[i])
        z0 = flow.normalise(z[i])[0]
        out.append(normal_log_prob_by_hand(z0, loc[i], scale[i]) + torch.linalg.slogdet(jacobian)[1])
    return torch.stack(out)


def snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_with_snapshots(name: str, epochs: int, **options) -> tuple[Trainer, list[dict[str, Tensor]]]:
    """The real trainer on tiny data; the model's state after every epoch."""
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(name, options=options), MODALITIES)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, progress=False, device="cpu")
    trainer = Trainer(model, objective, tiny_splits().train, config)
    states = [snapshot(model)]
    run_epoch = trainer._run_epoch

    def run_and_keep() -> None:
        run_epoch()
        states.append(snapshot(model))

    trainer._run_epoch = run_and_keep  # type: ignore[method-assign]
    trainer.fit()
    return trainer, states


def is_stage1(key: str) -> bool:
    return key.startswith(("joint_encoder.", "decoders.", "prior_module."))


def is_stage2(key: str) -> bool:
    return key.startswith(("encoders.", "flows."))


# -- flows (Eq. 9-10) ---------------------------------------------------------------------------
def test_flow_density_is_the_change_of_variables_formula_and_sampling_inverts_it():
    torch.manual_seed(0)
    flow = UnimodalFlow(3, blocks=2, hidden=16).double()
    z = torch.randn(6, 3, dtype=torch.float64) * 2
    loc, scale = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64) + 0.3
    z0, ladj = flow.normalise(z)
    expected = flow_log_prob_by_hand(flow, z, loc, scale)
    torch.testing.assert_close(normal_log_prob_by_hand(z0, loc, scale) + ladj, expected, rtol=1e-10, atol=1e-10)
    assert ladj.abs().max() > 1e-3, "the flow is not the identity, so the check is not vacuous"
    torch.testing.assert_close(flow.generate(z0), z, rtol=1e-8, atol=1e-8)


def test_flow_posterior_integrates_to_one():
    torch.manual_seed(1)
    two_d, _ = build_model(tiny_config("jnf", latent_dim=2, options={"flow_blocks": 2, "flow_hidden": 16}), VECTORS)
    two_d = two_d.double()
    grid = torch.linspace(-9, 9, 451, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid)  # [G, 2]
    loc = torch.tensor([[0.4, -0.3]], dtype=torch.float64)
    scale = torch.tensor([[0.7, 1.1]], dtype=torch.float64)
    density = two_d.flow_log_prob(1, points.unsqueeze(1), loc, scale).exp()
    mass = float(density.detach().sum() * (grid[1] - grid[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=2e-3)


# -- the stage losses by hand -------------------------------------------------------------------
def test_joint_vae_loss_is_eq3_on_the_fully_observed_rows():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    torch.manual_seed(4)
    out = objective.joint(model, x, mask, kl_weight=0.5)

    rows = torch.tensor([0, 2, 4])
    xc = {k: v[rows] for k, v in x.items()}
    loc, scale = model.joint_encoder(xc)
    torch.manual_seed(4)
    z = loc + scale * torch.randn(loc.shape, dtype=torch.float64)
    rec = sum(model.decoders[m.name](z).log_prob(xc[m.name]) for m in VECTORS)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    expected = -(rec - 1.0 * 0.5 * kl).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["kl"], kl.mean())


def test_unimodal_loss_is_eq8_with_z_from_the_frozen_joint_encoder():
    model, objective = vector_model(stage2_samples=2, flow_hidden=16)
    x, mask = vector_batch(), partial_mask()
    torch.manual_seed(7)
    out = objective.unimodal(model, x, mask)

    rows = torch.tensor([0, 2, 4])
    xc = {k: v[rows] for k, v in x.items()}
    loc, scale = model.joint_encoder(xc)
    torch.manual_seed(7)
    z = (loc + scale * torch.randn(2, *loc.shape, dtype=torch.float64)).detach()  # [K, n, D]
    total = torch.zeros(2, 3, dtype=torch.float64)
    for m in VECTORS:
        base_loc, base_scale, _ = model.encoders[m.name](xc[m.name])
        for k in range(2):
            total[k] += flow_log_prob_by_hand(model.flows[m.name], z[k], base_loc, base_scale)
    torch.testing.assert_close(out.loss, -total.mean(), rtol=1e-10, atol=1e-10)
    out.loss.backward()
    assert all(p.grad is None for p in model.joint_encoder.parameters()), "Eq. 8 never trains q(z | X)"
    assert all(p.grad is None for p in model.decoders.parameters())
    assert all(p.grad is not None for p in model.flows.parameters())


def test_masked_modalities_get_zero_gradient_in_stage2():
    model, objective = vector_model(flow_hidden=16)
    x, mask = vector_batch(), partial_mask()

    def gradients(inputs: dict[str, Tensor], m: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(2)
        out = objective.unimodal(model, inputs, m)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = gradients(x, mask)
    rows = torch.tensor([0, 2, 4])
    only_complete, reference = gradients({k: v[rows] for k, v in x.items()}, torch.ones(3, 3, dtype=torch.bool))
    assert torch.equal(loss, only_complete)
    assert grads.keys() == reference.keys()
    for name in grads:
        assert torch.equal(grads[name], reference[name]), name

    # Values where a modality is unobserved change nothing.
    changed = {k: v.clone() for k, v in x.items()}
    changed["a"][1] += 5.0
    changed["b"][3] -= 3.0
    assert torch.equal(gradients(changed, mask)[0], loss)

    # A modality masked in every row: no fully observed row, so no parameter learns.
    mask_all = mask.clone()
    mask_all[1] = False
    model.zero_grad(set_to_none=True)
    out = objective.unimodal(model, x, mask_all)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0
    assert all(p.grad is None for p in model.parameters())


# -- stages with the real trainer ---------------------------------------------------------------
def test_stage2_trains_only_the_unimodal_posteriors_and_lowers_eq8():
    trainer, states = train_with_snapshots("jnf", epochs=1, stage2_epochs=4, flow_hidden=16)
    history = trainer.history
    assert [h["stage"] for h in history] == ["joint VAE"] + ["unimodal posteriors"] * 4
    initial, after_stage1, final = states[0], states[1], states[-1]
    for key in initial:
        if is_stage1(key) and key.endswith(("weight", "bias")):
            assert not torch.equal(initial[key], after_stage1[key]), f"stage 1 trains {key}"
        if is_stage1(key):
            assert torch.equal(after_stage1[key], final[key]), f"{key} changed in stage 2"
        if is_stage2(key):
            assert torch.equal(initial[key], after_stage1[key]), f"{key} changed in stage 1"
    assert any(not torch.equal(after_stage1[k], final[k]) for k in final if k.startswith("flows."))
    assert any(not torch.equal(after_stage1[k], final[k]) for k in final if k.startswith("encoders."))
    assert history[-1]["train_loss"] < history[1]["train_loss"]


def test_projector_stage_trains_only_the_projectors():
    trainer, states = train_with_snapshots("jnf-dcca", epochs=1, stage2_epochs=1, projection_dim=3)
    assert [h["stage"] for h in trainer.history] == ["projectors (DCCA)", "joint VAE", "unimodal posteriors"]
    initial, after_stage0, final = states[0], states[1], states[-1]
    changed = {k for k in initial if not torch.equal(initial[k], after_stage0[k])}
    assert changed and all(k.startswith("projectors.") for k in changed)
    assert all(torch.equal(after_stage0[k], final[k]) for k in final if k.startswith("projectors."))
    assert trainer.history[0]["train_loss"] < 0  # minus a sum of canonical correlations


def test_stages_partition_the_parameters_and_follow_the_options():
    torch.manual_seed(0)
    model, objective = build_model(
        tiny_config("jnf-cl", options={"stage2_epochs": 2, "projector_epochs": 3}), MODALITIES
    )
    stages = objective.stages(5)
    assert [s.name for s in stages] == ["projectors (contrastive)", "joint VAE", "unimodal posteriors"]
    assert [s.epochs for s in stages] == [3, 5, 2]
    assert [s.warmup for s in stages] == [False, True, False]
    groups = [{id(p) for p in s.parameters(model)} for s in stages]
    assert sum(len(g) for g in groups) == len({id(p) for p in model.parameters()})
    assert set.union(*groups) == {id(p) for p in model.parameters()}
    _, plain = build_model(tiny_config("jnf"), MODALITIES)
    assert [(s.name, s.epochs) for s in plain.stages(4)] == [("joint VAE", 4), ("unimodal posteriors", 4)]


# -- subset posteriors (Eq. 12) -----------------------------------------------------------------
FOUR = (*VECTORS, ModalitySpec("d", (5,), "vector"))


def gaussian_jnf(prior_power: str) -> JNFVAE:
    """A JNF model whose unimodal posteriors are Gaussians (no flow blocks), narrower than the prior."""
    model, _ = vector_model(
        modalities=FOUR, flow_blocks=0, hmc_steps=150, hmc_leapfrog=10, hmc_step_size=0.03,
        hmc_prior_power=prior_power, mean_samples=4000,
    )
    with torch.no_grad():
        for encoder in model.encoders.values():
            encoder.logvar.bias.fill_(-0.3)
            encoder.logvar.weight.mul_(0.1)
    return model


@pytest.mark.parametrize("prior_power", ["paper", "once"])
def test_hmc_samples_eq12_for_gaussian_posteriors(prior_power):
    model = gaussian_jnf(prior_power)
    x = vector_batch(2, seed=3, modalities=FOUR)
    subsets = torch.tensor([[True, True, False, False], [True, True, True, False]])
    posterior = model.subset_posteriors(x, subsets)
    assert isinstance(posterior, JNFPosterior)
    assert (posterior.kind == 2).all(), "both subsets go through HMC"

    experts = model.encode_experts(x, torch.ones(4, 2, dtype=torch.bool))
    expected_mean, expected_var = [], []
    for row in subsets:
        mask = row.unsqueeze(-1).expand(4, 2)
        if prior_power == "paper":
            exact = PriorDividedProduct()(experts, mask).full_component()
            mean, var = exact.mean, exact.variance
        else:  # the prior divided once: precision sum_j 1/var_j - 1
            precision = (experts.var.reciprocal() * mask.unsqueeze(-1)).sum(0) - 1
            mean = (experts.loc / experts.var * mask.unsqueeze(-1)).sum(0) / precision
            var = precision.reciprocal()
        expected_mean.append(mean)
        expected_var.append(var)
    mean, var = torch.stack(expected_mean).detach(), torch.stack(expected_var).detach()  # [S, B, D]

    torch.manual_seed(0)
    draws = posterior.sample((600,))  # one independent chain per draw
    assert draws.shape == (600, 2, 2, LATENT)
    assert 0.5 < model.last_hmc_acceptance <= 1.0
    standard_error = (var / 600).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * standard_error).all()
    ratio = draws.var(0) / var
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio
    # .mean and log_prob come from the importance-sampling table: close to the closed form.
    torch.testing.assert_close(posterior.mean, mean, rtol=0, atol=float(5 * var.sqrt().max() / 60))
    z = mean + var.sqrt() * torch.randn(3, *mean.shape, dtype=torch.float64)
    exact_log_prob = (-0.5 * (z - mean) ** 2 / var - 0.5 * (2 * math.pi * var).log()).sum(-1)
    torch.testing.assert_close(posterior.log_prob(z), exact_log_prob, rtol=0, atol=0.05)


def test_subset_log_prob_with_flows_is_a_normalised_density():
    torch.manual_seed(1)
    model, _ = build_model(
        tiny_config("jnf", latent_dim=2, options={"flow_hidden": 16, "mean_samples": 3000}), VECTORS
    )
    model = model.double()
    with torch.no_grad():  # experts apart and narrow, so that Z_S is far from 1
        model.encoders["a"].loc.bias.add_(torch.tensor([1.0, 0.5], dtype=torch.float64))
        model.encoders["b"].loc.bias.sub_(torch.tensor([0.5, 1.0], dtype=torch.float64))
        for name in ("a", "b"):
            model.encoders[name].logvar.bias.fill_(-1.0)
    x = vector_batch(1, seed=5)
    posterior = model.subset_posteriors(x, torch.tensor([[True, True, False]]))
    assert (posterior.kind == 2).all()
    log_z, _, _ = posterior._table_values()
    assert abs(float(log_z)) > 0.5, "the normaliser matters"
    grid = torch.linspace(-8, 8, 401, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid).reshape(-1, 1, 1, 2)
    with torch.no_grad():
        mass = float(posterior.log_prob(points).exp().sum() * (grid[1] - grid[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=0.05)


def test_subset_posteriors_route_and_have_the_metric_shapes():
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("jnf", options={"hmc_steps": 3, "flow_hidden": 16}), MODALITIES)
    model.eval()
    x = tiny_batch(B)
    subsets = subset_matrix(3)
    posterior = model.subset_posteriors(x, subsets)
    assert posterior.batch_shape == (7, B) and posterior.event_shape == (LATENT,)
    assert posterior.kind.reshape(7, B)[:, 0].tolist() == [1, 1, 1, 2, 2, 2, 0]
    assert posterior.mean.shape == (7, B, LATENT)
    assert posterior.sample().shape == (7, B, LATENT)
    draws = posterior.sample((3,))
    assert draws.shape == (3, 7, B, LATENT) and torch.isfinite(draws).all()
    log_prob = posterior.log_prob(draws)
    assert log_prob.shape == (3, 7, B) and torch.isfinite(log_prob).all()
    assert isinstance(model.last_hmc_acceptance, float) and 0 <= model.last_hmc_acceptance <= 1
    assert model.hmc_chain_steps > 0

    # The full set is the joint encoder; a single modality is its flow, exactly.
    loc, scale = model.joint_encoder(x)
    assert torch.equal(posterior.mean[-1], loc)
    z = torch.randn(2, B, LATENT)
    for j in range(3):
        base_loc, base_scale = model.base_posterior(NAMES[j], x[NAMES[j]])
        full = torch.zeros(2, 7, B, LATENT)
        full[:, j] = z
        torch.testing.assert_close(posterior.log_prob(full)[:, j], model.flow_log_prob(j, z, base_loc, base_scale))
    joint = model.joint_posterior(x)
    torch.testing.assert_close(joint.log_prob(z), torch.distributions.Normal(loc, scale).log_prob(z).sum(-1))


def test_encode_uses_the_posterior_of_each_rows_observed_set():
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("jnf", options={"hmc_steps": 3, "flow_hidden": 16}), MODALITIES)
    x = tiny_batch(4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False  # two observed: Eq. 12
    mask[0, 2] = mask[1, 2] = False  # one observed: its flow
    posterior = model.encode(x, mask)
    assert posterior.kind.tolist() == [0, 2, 1, 0]
    alone = model.subset_posteriors(x, subset_matrix(3))
    torch.testing.assert_close(posterior.mean[1], alone.mean[5, 1])  # {vec, bits}
    torch.testing.assert_close(posterior.mean[2], alone.mean[2, 2])  # {bits}
    assert model.encode(x, mask).sample((2,)).shape == (2, 4, LATENT)


# -- options, errors and persistence ------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"aggregator": "moe"}, "takes no aggregator"),
        ({"options": {"flow_blocks": -1}}, "flow_blocks"),
        ({"options": {"hmc_prior_power": "twice"}}, "hmc_prior_power"),
        ({"options": {"hmc_step_size": 0}}, "hmc_step_size"),
        ({"options": {"hmc_steps": 0}}, "hmc_steps"),
        ({"options": {"mean_samples": 0}}, "mean_samples"),
        ({"options": {"stage2_samples": 0}}, "stage2_samples"),
        ({"options": {"hmc_steps": "many"}}, "hmc_steps of jnf must be an integer"),
        ({"options": {"projection_dim": 4}}, "jnf has no option 'projection_dim'"),
        ({"covariance": "lowrank"}, "diag"),
    ],
)
def test_configuration_errors(overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        build_model(tiny_config("jnf", **overrides), MODALITIES)


def test_shared_configuration_errors():
    with pytest.raises(UserError, match="projection_dim"):
        build_model(tiny_config("jnf-dcca", options={"projection_dim": 0}), MODALITIES)
    with pytest.raises(UserError, match="temperature"):
        build_model(tiny_config("jnf-cl", options={"temperature": 0.0}), MODALITIES)


def test_trained_run_round_trips_through_load_run(tmp_path):
    config = tiny_config("jnf-cl", options={"hmc_steps": 2, "flow_hidden": 16, "projection_dim": 4})
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    ours = trainer.model.eval()
    assert isinstance(loaded.model, JNFVAE)
    x = {k: v.float() for k, v in tiny_batch(B).items()}
    subsets = subset_matrix(3)
    mine, theirs = ours.subset_posteriors(x, subsets), loaded.model.subset_posteriors(x, subsets)
    z = torch.randn(2, 7, B, LATENT)
    assert torch.equal(mine.log_prob(z), theirs.log_prob(z))
    assert torch.equal(mine.mean, theirs.mean)
    torch.manual_seed(3)
    first = mine.sample()
    torch.manual_seed(3)
    assert torch.equal(first, theirs.sample())
