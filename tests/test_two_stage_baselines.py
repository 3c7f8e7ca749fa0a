"""JMVAE-KL and MVTCAE: JNF's Eq. 12 in closed form, both objectives by hand, masking and routing.

The contract suite (test_models.py) already runs both recipes through every generic check;
here are the properties specific to them: the subset posterior of the JNF paper (Eq. 12)
against a numerical product of densities, the two losses against hand computations in
float64, which posterior each row uses, and the configuration plumbing.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from helpers import MODALITIES, NAMES, tiny_batch, tiny_config, tiny_dataset
from omnivae.aggregators import ProductOfExperts, WassersteinBarycenter
from omnivae.data.base import ModalitySpec
from omnivae.distributions import GaussianExperts, diagonal_normal
from omnivae.errors import UserError
from omnivae.functional import subset_matrix
from omnivae.metrics.likelihood import joint_log_likelihood
from omnivae.models import (
    MODELS,
    JointEncoderVAE,
    ModelConfig,
    PriorDividedProduct,
    build_model,
    model_table,
)

# Small vector modalities for the float64 hand computations.
VECTORS = (
    ModalitySpec("a", (3,), "vector"),
    ModalitySpec("b", (4,), "vector"),
    ModalitySpec("c", (2,), "vector"),
)
VNAMES = [m.name for m in VECTORS]
B = 5


def vector_batch(batch: int = B, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(batch, *m.shape, generator=gen, dtype=dtype) for m in VECTORS}


def partial_vector_mask() -> Tensor:
    """Rows 0, 2, 4 observe everything; row 1 misses ``a``; row 3 observes only ``a``."""
    mask = torch.ones(3, B, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, 3] = mask[2, 3] = False
    return mask


def vector_model(name: str, **overrides) -> tuple:
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(name, **overrides), VECTORS)
    return model.double(), objective


def kl_diag(mu_q: Tensor, var_q: Tensor, mu_p: Tensor, var_p: Tensor) -> Tensor:
    """KL between diagonal Gaussians, written out independently of the library."""
    return 0.5 * (var_q / var_p + (mu_p - mu_q) ** 2 / var_p - 1 + var_p.log() - var_q.log()).sum(-1)


def experts_by_hand(model, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Unimodal means and variances ``[M, B, D]`` straight from the encoders."""
    outs = [model.encoders[n](x[n]) for n in model.names]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]) ** 2


def eq12_by_hand(loc: Tensor, var: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 12 for N(0, I): precision 1 + sum_S (1/var - 1), mean sum_S loc/var / precision."""
    m = mask.unsqueeze(-1).to(loc.dtype)
    precision = 1 + (m * (1 / var - 1)).sum(0)
    return (m * loc / var).sum(0) / precision, 1 / precision


def spy_on_z(model) -> list[Tensor]:
    """Record the latent samples an objective decodes."""
    seen: list[Tensor] = []
    original = model.log_likelihood

    def wrapper(x, z, mask, decode_terms=None):
        seen.append(z.detach().clone())
        return original(x, z, mask, decode_terms)

    model.log_likelihood = wrapper
    return seen


def reconstruction_by_hand(model, x: dict[str, Tensor], z: Tensor, mask: Tensor) -> Tensor:
    total = torch.zeros(z.shape[0], dtype=z.dtype)
    for i, name in enumerate(model.names):
        log_p = model.decoders[name](z).log_prob(x[name])
        total = total + torch.where(mask[i], model.likelihood_weights[i] * log_p, torch.zeros(()).double())
    return total


# -- Eq. 12 --------------------------------------------------------------------------------


def test_eq12_matches_the_normalised_product_over_the_prior_on_a_grid():
    """prod_S q_j / p^(|S|-1), normalised numerically on a 2-D grid, equals the closed form."""
    loc = torch.tensor([[[0.6, -0.3]], [[-0.4, 0.8]], [[0.2, 0.1]]], dtype=torch.float64).expand(3, 2, 2).clone()
    scale = torch.tensor([[[0.5, 0.8]], [[0.7, 0.6]], [[0.9, 0.45]]], dtype=torch.float64).expand(3, 2, 2).clone()
    mask = torch.tensor([[True, True], [False, True], [True, True]])  # row 0: {0, 2}; row 1: all three
    closed = PriorDividedProduct()(GaussianExperts(loc, scale), mask).full_component()

    axis = torch.linspace(-5, 5, 801, dtype=torch.float64)
    step = float(axis[1] - axis[0])
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)  # [N, 2]
    prior = diagonal_normal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    for row in range(2):
        members = [j for j in range(3) if mask[j, row]]
        log_density = sum(diagonal_normal(loc[j, row], scale[j, row]).log_prob(grid) for j in members)
        log_density = log_density - (len(members) - 1) * prior.log_prob(grid)
        log_density = log_density - torch.logsumexp(log_density, 0) - 2 * math.log(step)
        expected = closed.log_prob(grid.unsqueeze(1))[:, row]
        torch.testing.assert_close(log_density, expected, rtol=0, atol=1e-8)
        weights = (log_density + 2 * math.log(step)).exp().unsqueeze(-1)
        mean = (weights * grid).sum(0)
        var = (weights * (grid - mean) ** 2).sum(0)
        torch.testing.assert_close(mean, closed.mean[row], rtol=0, atol=1e-9)
        torch.testing.assert_close(var, closed.variance[row], rtol=0, atol=1e-9)


def test_eq12_of_one_expert_is_that_expert():
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    scale = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64) * 2 + 0.1  # some broader than the prior
    for j in range(3):
        mask = torch.zeros(3, 4, dtype=torch.bool)
        mask[j] = True
        q = PriorDividedProduct()(GaussianExperts(loc, scale), mask).full_component()
        torch.testing.assert_close(q.base_dist.loc, loc[j], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(q.base_dist.scale, scale[j], rtol=1e-14, atol=1e-14)


def test_eq12_differs_from_the_product_with_a_prior_expert():
    """Dividing by p^(|S|-1) is not MVAE's product with the prior multiplied in."""
    loc = torch.tensor([[[0.5]], [[1.0]]], dtype=torch.float64)
    scale = torch.tensor([[[0.5]], [[0.5]]], dtype=torch.float64)
    experts, mask = GaussianExperts(loc, scale), torch.ones(2, 1, dtype=torch.bool)
    ours = PriorDividedProduct()(experts, mask).full_component()
    mvae = ProductOfExperts(prior_expert=True)(experts, mask).full_component()
    assert ours.base_dist.scale.pow(-2).item() == pytest.approx(4 + 4 - 1)
    assert mvae.base_dist.scale.pow(-2).item() == pytest.approx(4 + 4 + 1)
    assert ours.mean.item() == pytest.approx((0.5 * 4 + 1.0 * 4) / 7)


def test_eq12_clamps_a_non_positive_precision_and_handles_empty_rows():
    # Two experts of variance 4: precision 1/4 + 1/4 - 1 < 0, clamped to the floor.
    loc = torch.tensor([[[0.3, 0.0]], [[0.1, 0.0]]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([[[2.0, 0.5]], [[2.0, 0.5]]], dtype=torch.float64, requires_grad=True)
    aggregator = PriorDividedProduct(min_precision=0.05)
    q = aggregator(GaussianExperts(loc, scale), torch.ones(2, 1, dtype=torch.bool)).full_component()
    assert q.base_dist.scale[0, 0].item() == pytest.approx(0.05**-0.5)
    assert q.base_dist.scale[0, 1].item() == pytest.approx(7**-0.5)
    value = q.log_prob(q.rsample(torch.Size([3])))
    assert torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    empty = aggregator(GaussianExperts(loc.detach(), scale.detach()), torch.zeros(2, 1, dtype=torch.bool))
    assert torch.equal(empty.full_component().mean, torch.zeros(1, 2, dtype=torch.float64))
    assert torch.equal(empty.full_component().base_dist.scale, torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(UserError, match="min_precision"):
        PriorDividedProduct(min_precision=0.0)


def test_eq12_gives_masked_experts_zero_gradient_even_when_degenerate():
    loc = torch.tensor([[[0.3]], [[float("inf")]]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([[[0.7]], [[0.0]]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True], [False]])
    q = PriorDividedProduct()(GaussianExperts(loc, scale), mask).full_component()
    (q.mean.sum() + q.base_dist.scale.sum()).backward()
    assert loc.grad[1].eq(0).all() and scale.grad[1].eq(0).all()
    assert loc.grad[0].ne(0).all()


# -- the objectives by hand ------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["full", "partial"])
def test_jmvae_loss_matches_a_hand_computation(mask_kind):
    model, objective = vector_model("jmvae", rescale_likelihoods=True, beta=1.7, alpha=0.3)
    assert isinstance(model, JointEncoderVAE)
    x = vector_batch()
    mask = torch.ones(3, B, dtype=torch.bool) if mask_kind == "full" else partial_vector_mask()
    seen = spy_on_z(model)
    torch.manual_seed(4)
    out = objective(model, x, mask, kl_weight=0.5)

    with torch.no_grad():
        loc_j, scale_j = model.joint_encoder(x)
        loc_e, var_e = experts_by_hand(model, x)
        loc_s, var_s = eq12_by_hand(loc_e, var_e, mask)
        full = mask.all(0).unsqueeze(-1)
        loc = torch.where(full, loc_j, loc_s)
        var = torch.where(full, scale_j**2, var_s)
        torch.manual_seed(4)
        eps = torch.randn(B, loc.shape[-1], dtype=torch.float64)
        z = loc + var.sqrt() * eps
        torch.testing.assert_close(seen[0], z, rtol=1e-12, atol=1e-12)
        rec = reconstruction_by_hand(model, x, z, mask)
        kl = kl_diag(loc, var, torch.zeros_like(loc), torch.ones_like(var))
        kl_uni = sum(torch.where(mask[m], kl_diag(loc, var, loc_e[m], var_e[m]), 0.0) for m in range(3))
        loss = -(rec - 0.5 * (1.7 * kl + 0.3 * kl_uni)).mean()
    torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["kl_unimodal"], kl_uni.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["rec"], -rec.mean(), rtol=1e-12, atol=1e-12)
    assert model.likelihood_weights.tolist() == pytest.approx([4 / 3, 1.0, 2.0])


@pytest.mark.parametrize("mask_kind", ["full", "partial"])
def test_mvtcae_loss_matches_a_hand_computation(mask_kind):
    model, objective = vector_model("mvtcae", rescale_likelihoods=True, beta=2.5, tc_ratio=0.7)
    x = vector_batch(seed=1)
    mask = torch.ones(3, B, dtype=torch.bool) if mask_kind == "full" else partial_vector_mask()
    seen = spy_on_z(model)
    torch.manual_seed(5)
    out = objective(model, x, mask, kl_weight=0.5)

    with torch.no_grad():
        loc_e, var_e = experts_by_hand(model, x)
        m = mask.unsqueeze(-1).double()
        precision = (m / var_e).sum(0)  # the product without a prior expert
        var = 1 / precision
        loc = (m * loc_e / var_e).sum(0) * var
        torch.manual_seed(5)
        z = loc + var.sqrt() * torch.randn(B, loc.shape[-1], dtype=torch.float64)
        torch.testing.assert_close(seen[0], z, rtol=1e-12, atol=1e-12)
        rec = reconstruction_by_hand(model, x, z, mask)
        kl = kl_diag(loc, var, torch.zeros_like(loc), torch.ones_like(var))
        kl_uni = sum(torch.where(mask[j], kl_diag(loc, var, loc_e[j], var_e[j]), 0.0) for j in range(3))
        count = mask.sum(0).double()
        alpha = 0.7
        value = (count - alpha) / count * rec - 2.5 * 0.5 * (alpha / count * kl_uni + (1 - alpha) * kl)
        loss = -value.mean()
    if mask_kind == "partial":
        assert count.tolist() == [3, 2, 3, 1, 3]
    torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["kl"], kl.mean(), rtol=1e-12, atol=1e-12)


def test_mvtcae_row_with_one_view_is_a_scaled_unimodal_elbo():
    """With M = 1, q(z | X) is the view's posterior: its own KL vanishes, the rest scales by 1 - alpha."""
    model, objective = vector_model("mvtcae", tc_ratio=0.8)
    x = vector_batch(batch=1, seed=2)
    mask = torch.tensor([[False], [True], [False]])
    torch.manual_seed(0)
    out = objective(model, x, mask, kl_weight=1.0)
    assert out.terms["kl_unimodal"].abs().item() < 1e-12
    seen = spy_on_z(model)
    torch.manual_seed(0)
    objective(model, x, mask, kl_weight=1.0)
    with torch.no_grad():
        loc, scale, _ = model.encoders["b"](x["b"])
        rec = model.decoders["b"](seen[0]).log_prob(x["b"])
        kl = kl_diag(loc, scale**2, torch.zeros_like(loc), torch.ones_like(loc))
    torch.testing.assert_close(out.loss.detach(), -(0.2 * (rec - kl)).mean(), rtol=1e-12, atol=1e-12)


def test_jmvae_with_kl_weight_zero_is_the_reconstruction_alone():
    model, objective = vector_model("jmvae")
    x, mask = vector_batch(), partial_vector_mask()
    torch.manual_seed(2)
    silent = objective(model, x, mask, kl_weight=0.0)
    torch.testing.assert_close(silent.loss, silent.terms["rec"], rtol=0, atol=0)
    torch.manual_seed(2)
    assert objective(model, x, mask, kl_weight=1.0).loss > silent.loss


# -- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jmvae", "mvtcae"])
@pytest.mark.parametrize("masked", NAMES)
def test_a_modality_masked_everywhere_gets_zero_gradient_in_all_its_networks(name, masked):
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(name), MODALITIES)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[NAMES.index(masked)] = False
    torch.manual_seed(1)
    objective(model, tiny_batch(6), mask).loss.backward()
    own = (f"encoders.{masked}.", f"decoders.{masked}.", f"joint_encoder.heads.{masked}.")
    checked = 0
    for pname, param in model.named_parameters():
        if pname.startswith(own):
            checked += 1
            assert param.grad is None or param.grad.eq(0).all(), pname
        if name == "jmvae" and pname.startswith("joint_encoder."):
            # No row observes everything, so the joint encoder is not used at all.
            assert param.grad is None or param.grad.eq(0).all(), pname
    assert checked > 0
    learning = [p.grad for n, p in model.named_parameters() if n.startswith("encoders.") and masked not in n]
    assert any(g is not None and g.ne(0).any() for g in learning)


def test_jmvae_joint_encoder_learns_from_fully_observed_rows_only():
    """The joint encoder's gradient from a batch equals that from its fully observed rows alone."""
    model, objective = vector_model("jmvae")
    x, mask = vector_batch(), partial_vector_mask()
    full = mask.all(0)

    def joint_grads(batch: dict[str, Tensor], m: Tensor, rows: Tensor) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        posterior, experts = model.training_posterior(batch, m)
        z = posterior.mean  # deterministic: the same z in both computations
        rec = model.log_likelihood(batch, z, m)
        kl = torch.distributions.kl_divergence(posterior, model.prior())
        (torch.where(rows, rec - kl, torch.zeros(()).double())).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("joint_encoder.")}

    everything = joint_grads(x, mask, torch.ones(B, dtype=torch.bool))
    subset = {k: v[full] for k, v in x.items()}
    only_full = joint_grads(subset, mask[:, full], torch.ones(int(full.sum()), dtype=torch.bool))
    for pname, grad in everything.items():
        torch.testing.assert_close(grad, only_full[pname], rtol=1e-10, atol=1e-12)


# -- which posterior each row uses -----------------------------------------------------------


def _perturb(module: torch.nn.Module, amount: float = 0.3) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(amount)


def test_fully_observed_rows_use_the_joint_encoder():
    model, _ = vector_model("jmvae")
    x = vector_batch()
    mask = torch.ones(3, B, dtype=torch.bool)
    points = torch.randn(4, B, model.latent_dim, dtype=torch.float64)
    before = model.joint_posterior(x, mask)
    loc_j, scale_j = model.joint_encoder(x)
    torch.testing.assert_close(before.mean, loc_j, rtol=0, atol=0)
    torch.testing.assert_close(
        before.log_prob(points), diagonal_normal(loc_j, scale_j).log_prob(points), rtol=1e-14, atol=1e-12
    )
    torch.testing.assert_close(model.encode(x, mask).mean, loc_j, rtol=0, atol=0)
    for name in VNAMES:
        _perturb(model.encoders[name])
    after = model.joint_posterior(x, mask)
    assert torch.equal(after.mean, before.mean)
    assert torch.equal(after.log_prob(points), before.log_prob(points))
    _perturb(model.joint_encoder)
    assert not torch.equal(model.joint_posterior(x, mask).mean, before.mean)


def test_rows_with_a_missing_modality_use_only_their_observed_experts():
    model, _ = vector_model("jmvae")
    x, mask = vector_batch(), partial_vector_mask()
    rows = ~mask.all(0)  # rows 1 and 3
    first = model.joint_posterior(x, mask)
    with torch.no_grad():
        loc_e, var_e = experts_by_hand(model, x)
        loc_s, _ = eq12_by_hand(loc_e, var_e, mask)
    torch.testing.assert_close(first.mean[rows], loc_s[rows], rtol=1e-12, atol=1e-12)
    _perturb(model.joint_encoder)
    second = model.joint_posterior(x, mask)
    assert torch.equal(second.mean[rows], first.mean[rows])
    assert not torch.equal(second.mean[~rows], first.mean[~rows])
    _perturb(model.encoders["a"])  # unobserved in row 1, the only one observed in row 3
    third = model.joint_posterior(x, mask)
    assert torch.equal(third.mean[1], second.mean[1])
    assert not torch.equal(third.mean[3], second.mean[3])


def test_subset_posteriors_route_the_full_set_to_the_joint_encoder():
    model, _ = vector_model("jmvae")
    x = vector_batch()
    subsets = subset_matrix(3)
    posterior = model.subset_posteriors(x, subsets)
    assert posterior.batch_shape == (7, B)
    assert posterior.mean.shape == (7, B, model.latent_dim)
    assert posterior.sample(torch.Size([2])).shape == (2, 7, B, model.latent_dim)
    with torch.no_grad():
        loc_j, scale_j = model.joint_encoder(x)
        loc_e, var_e = experts_by_hand(model, x)
    torch.testing.assert_close(posterior.mean[-1], loc_j, rtol=0, atol=0)
    points = torch.randn(7, B, model.latent_dim, dtype=torch.float64)
    log_prob = posterior.log_prob(points)
    for s, row in enumerate(subsets):
        members = row.unsqueeze(-1).expand(3, B)
        if bool(row.all()):
            expected = diagonal_normal(loc_j, scale_j).log_prob(points[s])
        else:
            loc, var = eq12_by_hand(loc_e, var_e, members)
            expected = diagonal_normal(loc, var.sqrt()).log_prob(points[s])
        torch.testing.assert_close(log_prob[s], expected, rtol=1e-12, atol=1e-10)
    # Singletons are the unimodal experts themselves (|S| = 1 in Eq. 12).
    torch.testing.assert_close(posterior.mean[:3], loc_e, rtol=1e-12, atol=1e-12)


def test_joint_log_likelihood_uses_the_joint_encoder():
    """On fully observed data the estimate ignores the unimodal encoders entirely."""
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("jmvae"), MODALITIES)
    data = tiny_dataset(10)
    first = joint_log_likelihood(model, data, num_samples=4, batch_size=5, chunk=2, seed=3)
    assert math.isfinite(first)
    for name in NAMES:
        _perturb(model.encoders[name], 0.05)
    assert joint_log_likelihood(model, data, num_samples=4, batch_size=5, chunk=2, seed=3) == first
    _perturb(model.joint_encoder, 0.05)
    assert joint_log_likelihood(model, data, num_samples=4, batch_size=5, chunk=2, seed=3) != first
    partial = joint_log_likelihood(model, tiny_dataset(10, observed=0.6), num_samples=4, batch_size=5, seed=3)
    assert math.isfinite(partial)


def test_base_joint_posterior_is_the_aggregated_posterior():
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("mopoe"), MODALITIES)
    x = tiny_batch(4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False
    z = torch.randn(3, 4, model.latent_dim)
    expected = model.aggregate(model.encode_experts(x, mask), mask).log_prob(z)
    assert torch.equal(model.joint_posterior(x, mask).log_prob(z), expected)


# -- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, joint", [("jmvae", "heads"), ("jmvae", "concat"), ("mvtcae", "heads")])
def test_a_few_steps_reduce_the_loss(name, joint):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 2, generator=gen)
    x = {
        m.name: z @ torch.randn(2, m.shape[0], generator=gen) + 0.1 * torch.randn(64, m.shape[0], generator=gen)
        for m in VECTORS
    }
    mask = torch.rand(3, 64, generator=gen) < 0.8
    mask[0] |= ~mask.any(0)
    torch.manual_seed(0)
    model, objective = build_model(tiny_config(name, joint_encoder=joint), VECTORS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(float(objective(model, x, mask).loss) for _ in range(5)) / 5

    start = loss()
    for step in range(60):
        optimizer.zero_grad()
        objective(model, x, mask).loss.backward()
        optimizer.step()
    assert loss() < start - 0.2 * abs(start)


def test_the_concatenation_variant_has_no_merging_network():
    torch.manual_seed(0)
    heads, _ = build_model(tiny_config("jmvae", hidden=[16, 8]), VECTORS)
    concat, objective = build_model(tiny_config("jmvae", hidden=[16, 8], joint_encoder="concat"), VECTORS)
    widths = [layer.out_features for layer in heads.joint_encoder.merge if isinstance(layer, torch.nn.Linear)]
    assert widths == [8, 8]  # two hidden layers of width hidden[-1]
    assert isinstance(concat.joint_encoder.merge, torch.nn.Identity)
    assert concat.joint_encoder.gaussian.loc.in_features == 3 * 8
    torch.manual_seed(1)
    objective(concat, vector_batch(dtype=torch.float32), torch.ones(3, B, dtype=torch.bool)).loss.backward()
    for pname, param in concat.named_parameters():
        assert param.grad is not None and param.grad.ne(0).any(), pname


# -- configuration and registry --------------------------------------------------------------


def test_recipes_build_their_own_aggregators():
    torch.manual_seed(0)
    jmvae, _ = build_model(tiny_config("jmvae"), VECTORS)
    named, _ = build_model(tiny_config("jmvae", aggregator="poe"), VECTORS)
    mvtcae, _ = build_model(tiny_config("mvtcae"), VECTORS)
    explicit, _ = build_model(tiny_config("mvtcae", aggregator="poe"), VECTORS)
    swapped, _ = build_model(tiny_config("mvtcae", aggregator="wb"), VECTORS)
    mvae, _ = build_model(tiny_config("poe"), VECTORS)
    assert isinstance(jmvae.aggregator, PriorDividedProduct)
    assert isinstance(named.aggregator, PriorDividedProduct)
    assert type(mvtcae.aggregator) is ProductOfExperts and not mvtcae.aggregator.prior_expert
    assert type(explicit.aggregator) is ProductOfExperts and not explicit.aggregator.prior_expert
    assert isinstance(swapped.aggregator, WassersteinBarycenter)
    assert mvae.aggregator.prior_expert  # the other recipes are unchanged
    assert MODELS["jmvae"].warmup_epochs == 10.0
    assert MODELS["mvtcae"].warmup_epochs == 0.0
    table = model_table()
    assert "jmvae" in table and "mvtcae" in table and "Eq. 12" in table


def test_old_configs_without_the_new_fields_still_load():
    stored = tiny_config("mwb").to_json()
    assert "alpha" not in stored and "tc_ratio" not in stored  # method settings live in options
    stored.pop("joint_encoder")
    config = ModelConfig.from_json(stored)
    assert (config.alpha, config.tc_ratio, config.joint_encoder) == (None, None, "heads")
    config.validate()
    for name in ("jmvae", "mvtcae"):
        again = ModelConfig.from_json({**stored, "model": name})
        model, objective = build_model(again, VECTORS)
        out = objective(model, vector_batch(dtype=torch.float32), torch.ones(3, B, dtype=torch.bool))
        assert torch.isfinite(out.loss)
    round_trip = ModelConfig.from_json(tiny_config("jmvae", alpha=0.5, joint_encoder="concat").to_json())
    assert (round_trip.settings().alpha, round_trip.joint_encoder) == (0.5, "concat")


def test_old_top_level_alpha_and_tc_ratio_fold_into_the_options():
    # config.json before typed options: alpha and tc_ratio at the top level for every model
    old = {**tiny_config("mwb").to_json(), "alpha": 0.1, "tc_ratio": 5 / 6}
    assert ModelConfig.from_json(old).to_json()["options"] == {}  # mwb has neither: ignored, as before
    jmvae = ModelConfig.from_json({**old, "model": "jmvae", "alpha": 0.3})
    assert jmvae.to_json()["options"] == {"alpha": 0.3} and "alpha" not in jmvae.to_json()
    assert build_model(jmvae, VECTORS)[1].alpha == 0.3
    mvtcae = ModelConfig.from_json({**old, "model": "mvtcae", "tc_ratio": 0.7})
    assert build_model(mvtcae, VECTORS)[1].tc_ratio == 0.7
    assert ModelConfig.from_json(mvtcae.to_json()).settings().tc_ratio == 0.7  # round trip through options
    with pytest.raises(UserError, match="alpha is given twice"):
        tiny_config("jmvae", alpha=0.3, options={"alpha": 0.4}).validate()


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": math.inf}, "alpha"),
        ({"alpha": "0.1"}, "alpha must be a number"),
        ({"tc_ratio": 1.5}, "tc_ratio"),
        ({"tc_ratio": -0.01}, "tc_ratio"),
        ({"tc_ratio": math.nan}, "tc_ratio"),
        ({"joint_encoder": "sum"}, "joint encoder 'sum'.*concat, heads"),
        ({"model": "jmvae", "covariance": "lowrank", "rank": 2}, "covariance='diag'"),
        ({"model": "jmvae", "prior": "laplace"}, "prior='normal'"),
    ],
)
def test_config_errors(overrides, pattern):
    options = {"model": "jmvae", **overrides}
    with pytest.raises(UserError, match=pattern):
        build_model(tiny_config(**options), VECTORS)
