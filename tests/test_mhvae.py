"""MHVAE (Dorent et al. 2023): the hierarchical ELBO by hand, the hierarchy's densities,
masking, subsets, command line and round trip.

The contract suite (test_models.py, test_inference_hook.py) runs the recipe through the
generic checks; here are the properties specific to it: the loss against a hand
computation in float64 (PoE with the prior at every level, per-level KLs, the average
over subsets of the observed modalities), the exact densities of the posterior and the
prior over u = [z_1, ..., z_L], zero gradient for masked entries, the subset sampler,
training from the command line and a save/load round trip.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from helpers import tiny_config, tiny_splits, write_tiny_npz
from omnivae.cli import main
from omnivae.data.base import ModalitySpec
from omnivae.methods.mhvae import MHVAE, MHVAELoss
from omnivae.models import build_model
from omnivae.train import TrainConfig, load_run, train

VECTORS = (ModalitySpec("a", (3,), "vector"), ModalitySpec("b", (4,), "vector"))
B, D = 5, 2


def vector_model(levels: int = 3, **options: object) -> tuple[MHVAE, MHVAELoss]:
    torch.manual_seed(0)
    config = tiny_config("mhvae", latent_dim=D, hidden=[8], options={"levels": levels, **options})
    model, objective = build_model(config, VECTORS)
    assert isinstance(model, MHVAE) and isinstance(objective, MHVAELoss)
    return model.double(), objective


def vector_batch(seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(B, *m.shape, generator=gen, dtype=torch.float64) for m in VECTORS}


def partial_mask() -> Tensor:
    """Rows 0, 2, 4 observe both; row 1 only ``b``; row 3 only ``a``."""
    mask = torch.ones(2, B, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, 3] = False
    return mask


def log_normal(x: Tensor, loc: Tensor, var: Tensor) -> Tensor:
    return (-0.5 * (x - loc) ** 2 / var - 0.5 * var.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_normal(loc: Tensor, var: Tensor, prior_loc: Tensor, prior_var: Tensor) -> Tensor:
    return 0.5 * (var / prior_var + (loc - prior_loc) ** 2 / prior_var - 1 - (var / prior_var).log()).sum(-1)


def product(experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The product of diagonal Gaussians given as ``(loc, var)``."""
    precision = sum(1 / var for _, var in experts)
    loc = sum(loc / var for loc, var in experts) / precision
    return loc, 1 / precision


def bottom_up(model: MHVAE, x: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor, list[Tensor]]]:
    """Per modality: top expert (loc, var) and the skip features, block by block."""
    out = {}
    for name in model.names:
        enc = model.encoders[name]
        d = enc.body(x[name])
        skips = []
        for block in enc.up:
            skips.append(d)
            d = block(d)
        loc, scale, _ = enc.top(d)
        out[name] = (loc, scale**2, skips)
    return out


def block(net: torch.nn.Module, inputs: Tensor) -> tuple[Tensor, Tensor]:
    loc, scale, _ = net(inputs)
    return loc, scale**2


@pytest.mark.parametrize("kind", ["all", "partial"])
def test_objective_matches_a_hand_computation(kind):
    model, objective = vector_model(levels=3)
    objective.beta = 1.5
    x = vector_batch()
    mask = torch.ones(2, B, dtype=torch.bool) if kind == "all" else partial_mask()
    kl_weight = 0.4
    torch.manual_seed(7)
    out = objective(model, x, mask, kl_weight)

    torch.manual_seed(7)
    up = bottom_up(model, x)
    subsets = [[True, False], [False, True], [True, True]]  # omnivae.functional.subset_matrix(2)
    noise = [torch.randn(len(subsets), B, D, dtype=torch.float64) for _ in range(3)]  # z_3, z_2, z_1
    total = torch.zeros(B, dtype=torch.float64)
    for k, subset in enumerate(subsets):
        for b in range(B):
            observed = [bool(mask[i, b]) for i in range(2)]
            if not all(o for s, o in zip(subset, observed, strict=True) if s):
                continue  # not a subset of the row's observed modalities
            weight = 1 / (2 ** sum(observed) - 1)
            members = [name for name, s in zip(model.names, subset, strict=True) if s]
            ones = torch.ones(D, dtype=torch.float64)
            loc, var = product([(0 * ones, ones)] + [(up[m][0][b], up[m][1][b]) for m in members])
            kl = kl_normal(loc, var, 0 * ones, ones)
            z = loc + var.sqrt() * noise[0][k, b]
            for index, eps in ((1, noise[1][k, b]), (0, noise[2][k, b])):
                h = model.top_down[index](z.unsqueeze(0))
                prior = block(model.level_priors[index], h)
                experts = [block(model.encoders[m].experts[index], torch.cat([h, up[m][2][index][b : b + 1]], -1))
                           for m in members]
                loc, var = product([prior] + experts)
                kl = kl + kl_normal(loc, var, *prior)[0]
                z = (loc + var.sqrt() * eps)[0]
            rec = 0.0
            for i, name in enumerate(model.names):
                if observed[i]:
                    dist = model.decoders[name](z.unsqueeze(0)).base_dist
                    rec = rec + log_normal(x[name][b : b + 1], dist.loc, dist.scale**2)[0]
            total[b] += weight * (rec - 1.5 * kl_weight * kl)
    torch.testing.assert_close(out.loss, -total.mean())
    assert set(out.terms) == {"rec", "kl", "kl_1", "kl_2", "kl_3"}


def test_one_level_is_the_product_of_experts_vae():
    """With L = 1 the posterior of a subset is PoE-with-prior of the top experts (MVAE's)."""
    model, _ = vector_model(levels=1)
    x = vector_batch()
    members = partial_mask()
    q = model.posterior(x, members)
    up = bottom_up(model, x)
    ones = torch.ones(B, D, dtype=torch.float64)
    experts = [(0 * ones, ones)] + [
        (torch.where(members[i, :, None], up[n][0], 0.0), torch.where(members[i, :, None], up[n][1], math.inf))
        for i, n in enumerate(model.names)
    ]
    loc, var = product(experts)
    torch.testing.assert_close(q.mean, loc)
    u = torch.randn(B, D, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(u), log_normal(u, loc, var))


def test_posterior_log_prob_walks_the_hierarchy_and_mean_is_the_ancestral_path():
    model, _ = vector_model(levels=2)
    x = vector_batch()
    members = torch.ones(2, B, dtype=torch.bool)
    q = model.posterior(x, members)
    up = bottom_up(model, x)
    assert q.batch_shape == (B,) and q.event_shape == (2 * D,)
    ones = torch.ones(B, D, dtype=torch.float64)
    top = product([(0 * ones, ones)] + [up[n][:2] for n in model.names])
    u = torch.randn(B, 2 * D, dtype=torch.float64)
    z1, z2 = u[:, :D], u[:, D:]

    def lower(z_above: Tensor) -> tuple[Tensor, Tensor]:
        h = model.top_down[0](z_above)
        return product([block(model.level_priors[0], h)]
                       + [block(model.encoders[n].experts[0], torch.cat([h, up[n][2][0]], -1)) for n in model.names])

    expected = log_normal(z2, *top) + log_normal(z1, *lower(z2))
    torch.testing.assert_close(q.log_prob(u), expected)
    torch.testing.assert_close(q.mean, torch.cat([lower(top[0])[0], top[0]], -1))
    # Decoding reads z_1 only.
    changed = u.clone()
    changed[:, D:] += 3.0
    assert torch.equal(model.decode_mean(u)["a"], model.decode_mean(changed)["a"])


def test_prior_and_posterior_densities_are_normalised():
    """E_{u ~ p}[q(u | x) / p(u)] = 1 for the exact densities of both (L = 2, D = 1)."""
    torch.manual_seed(0)
    config = tiny_config("mhvae", latent_dim=1, hidden=[8], options={"levels": 2})
    model, _ = build_model(config, VECTORS)
    model = model.double()
    x = {k: v[:1] for k, v in vector_batch().items()}
    q = model.posterior(x, torch.ones(2, 1, dtype=torch.bool))
    p = model.prior()
    assert p.batch_shape == () and p.event_shape == (2,)
    with torch.no_grad():
        u = p.sample(torch.Size([200_000]))  # [N, 2]
        ratio = (q.log_prob(u.unsqueeze(1)) - p.log_prob(u).unsqueeze(1)).exp()
    assert abs(float(ratio.mean()) - 1) < 0.05


def test_masked_entries_get_zero_gradient_and_change_nothing():
    model, objective = vector_model(levels=3)
    x, mask = vector_batch(), partial_mask()
    inputs = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    torch.manual_seed(1)
    loss = objective(model, inputs, mask).loss
    loss.backward()
    for i, m in enumerate(VECTORS):
        grad = inputs[m.name].grad
        assert grad is not None and bool((grad[~mask[i]] == 0).all()), m.name
        assert bool((grad[mask[i]] != 0).any()), m.name
    changed = {k: v.clone() for k, v in x.items()}
    changed["a"][1] += 5.0
    changed["b"][3] -= 3.0
    torch.manual_seed(1)
    assert torch.equal(objective(model, changed, mask).loss, loss.detach())


def test_sampled_subsets_are_uniform_over_the_observed_ones():
    objective = MHVAELoss(subsets="sampled")
    # [M = 3, B = 3]: row 0 observes every modality, row 1 modalities 0 and 1, row 2 modality 2.
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, True]]).t()
    torch.manual_seed(0)
    counts = torch.zeros(3, 8)
    for _ in range(1400):
        members, weights = objective.members(mask)
        assert members.shape == (3, 1, 3) and bool((weights == 1).all())
        assert bool((members[:, 0] <= mask).all()) and bool(members[:, 0].any(0).all())
        code = (members[:, 0].long() * torch.tensor([[1], [2], [4]])).sum(0)
        counts[torch.arange(3), code] += 1
    assert counts[0, 1:].min() > 150  # 7 subsets, about 200 each
    assert counts[1, [1, 2, 3]].min() > 400 and counts[1, 4:].sum() == 0  # {0}, {1}, {0, 1}
    assert counts[2, 4] == 1400
    everything = MHVAELoss(subsets="all").members(mask)[1]
    torch.testing.assert_close(everything.sum(0), torch.ones(3))


def test_save_load_round_trip(tmp_path):
    config = tiny_config("mhvae", options={"levels": 2, "width": 12})
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"),
                    tiny_splits(), "tiny", tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, MHVAE) and loaded.model.levels == 2
    assert loaded.model.top_down[0][-2].out_features == 12
    assert loaded.model_config == config
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_cli_trains_and_lists_the_method(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "data.npz", n=40)
    run = tmp_path / "run"
    argv = ["train", "--model", "mhvae", "--dataset", f"npz:{npz}", "--epochs", "2", "--set", "levels=2",
            "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "after 2 epoch(s)" in out and "kl_2" in out
    assert isinstance(load_run(run).model, MHVAE)
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mhvae "))
    assert "Dorent" in line
    for bad_setting, word in (("levels=0", "levels"), ("subsets=some", "subsets")):
        bad = argv[:-1] + [str(tmp_path / "bad")]
        bad[bad.index("levels=2")] = bad_setting
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0] and not (tmp_path / "bad").exists()
    assert main(argv[:-1] + [str(tmp_path / "agg"), "--aggregator", "moe"]) == 2
    assert "aggregator" in capsys.readouterr().err


def test_experts_computed_for_members_only_give_the_same_terms():
    """``expert_rows`` (experts of a modality only on the subsets holding it) changes no number."""
    model, objective = vector_model(levels=3)
    x, mask = vector_batch(), partial_mask()
    members, _ = objective.members(mask)
    noise = [torch.randn(3, B, D, dtype=torch.float64) for _ in range(3)]
    rows = objective.expert_rows(2, mask.device)
    assert rows is not None and [r.tolist() for r in rows if r is not None] == [[0, 2], [1, 2]]
    fast = objective.elbo_terms(model, x, members, mask, noise=noise, rows=rows)
    slow = objective.elbo_terms(model, x, members, mask, noise=noise)
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=1e-12)
    for a, b in zip(fast[1], slow[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
