"""CMVAE (Palumbo et al. 2024): the bound against the paper's explicit sum over clusters,
the mixture prior's density, masking, cluster assignments and selection, CLI and round trip.

The contract suite (test_models.py and the other MODELS-wide tests) covers the recipe
generically; here are the properties specific to it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from helpers import VECTORS, gaussian_log_prob, partial_mask, tiny_config, tiny_dataset, tiny_splits, vector_batch, write_tiny_npz
from omnivae.cli import main
from omnivae.errors import UserError
from omnivae.methods.cmvae import CMVAE, GaussianMixturePrior, select_clusters
from omnivae.metrics.clustering import latent_clustering
from omnivae.models import build_model
from omnivae.train import TrainConfig, load_run, train

B, W, K_CLUSTERS = 5, 2, 3


def vector_model(**options: object) -> tuple:
    torch.manual_seed(0)
    config = tiny_config("cmvae", num_samples=3, options={"w_dim": W, "number_of_clusters": K_CLUSTERS, **options})
    model, objective = build_model(config, VECTORS)
    model = model.double()
    with torch.no_grad():  # a non-uniform pi, so that log pi_c matters
        model.mixture.logits.copy_(torch.linspace(0.5, -0.3, model.mixture.num_clusters))
    return model, objective


def explicit_bound(model: CMVAE, x, mask, blocks, samples, beta: float) -> Tensor:
    """The paper's bound with the expectation over c written out, row by row, in float64."""
    prior = model.mixture
    log_pi = torch.log_softmax(prior.logits, -1)
    rows = []
    for b in range(B):
        observed = [m for m in range(3) if mask[m, b]]
        per_component = []
        for r in observed:
            lws = []
            for k in range(samples.z.shape[1]):
                z = samples.z[r, k, b]
                rec = 0.0
                for d in observed:
                    w_d = samples.w_posterior[d, r, k, b] if d == r else samples.w_auxiliary[d, r, k, b]
                    inputs = torch.cat([z, w_d])[None]
                    rec = rec + model.decoder_log_prob(model.names[d], x[model.names[d]][b : b + 1], inputs)[0]
                log_q_z = torch.logsumexp(
                    torch.stack([gaussian_log_prob(z, blocks.shared.loc[m, b], blocks.shared.scale[m, b])
                                 for m in observed]), 0) - math.log(len(observed))
                w_r = samples.w_posterior[r, r, k, b]
                log_p_w = gaussian_log_prob(w_r, torch.zeros_like(w_r), torch.ones_like(w_r))
                log_q_w = gaussian_log_prob(w_r, blocks.loc[r, b], blocks.scale[r, b])
                log_joint = torch.stack([log_pi[c] + gaussian_log_prob(z, prior.loc[c], torch.ones_like(z))
                                         for c in range(K_CLUSTERS)])
                q_c = torch.softmax(log_joint, 0)  # q(c | z, X) = p(c | z)
                lw = sum(q_c[c] * (rec + beta * (log_joint[c] + log_p_w - log_q_z - log_q_w - q_c[c].log()))
                         for c in range(K_CLUSTERS))
                lws.append(lw)
            per_component.append(torch.logsumexp(torch.stack(lws), 0) - math.log(len(lws)))
        rows.append(torch.stack(per_component).mean())
    return torch.stack(rows).mean()


@pytest.mark.parametrize("mask_kind", ["all", "partial"])
def test_objective_equals_the_explicit_sum_over_clusters(mask_kind):
    model, objective = vector_model()
    objective.dreg, objective.beta = False, 1.5
    x = vector_batch()
    mask = torch.ones(3, B, dtype=torch.bool) if mask_kind == "all" else partial_mask()
    blocks = model.encode_blocks(x)
    posterior = model.aggregate(blocks.shared, mask)
    torch.manual_seed(2)
    samples = objective.draw(model, blocks, posterior)
    out = objective.evaluate(model, x, mask, blocks, posterior, samples)
    expected = explicit_bound(model, x, mask, blocks, samples, beta=1.5)
    assert out.loss.item() == pytest.approx(-expected.item(), rel=1e-10, abs=1e-10)
    # Same function of every parameter, so the same gradient (incl. pi and the cluster means).
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    ours = torch.autograd.grad(out.loss, params, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(-expected, params, allow_unused=True)
    for (name, param), g1, g2 in zip(named, ours, theirs, strict=True):
        torch.testing.assert_close(torch.zeros_like(param) if g1 is None else g1,
                                   torch.zeros_like(param) if g2 is None else g2, rtol=1e-8, atol=1e-10, msg=name)
        if name.startswith("prior_module."):
            assert g1 is not None and (g1 != 0).any(), f"{name}: the check would be vacuous"


def test_dreg_keeps_the_value():
    model, objective = vector_model()
    x, mask = vector_batch(), partial_mask()
    blocks = model.encode_blocks(x)
    posterior = model.aggregate(blocks.shared, mask)
    samples = objective.draw(model, blocks, posterior)
    objective.dreg = True
    with_dreg = objective.evaluate(model, x, mask, blocks, posterior, samples).loss
    objective.dreg = False
    without = objective.evaluate(model, x, mask, blocks, posterior, samples).loss
    assert with_dreg.item() == pytest.approx(without.item(), rel=1e-12)


@pytest.mark.parametrize("learn_scales", [False, True])
def test_mixture_log_density_matches_the_closed_form(learn_scales):
    torch.manual_seed(0)
    prior = GaussianMixturePrior(3, 4, learn_scales=learn_scales).double()
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 0.0, 1.2]))
        if learn_scales:
            prior.log_scale.copy_(0.3 * torch.randn(4, 3))
    z = torch.randn(6, 3, dtype=torch.float64) * 2
    pi = torch.softmax(prior.logits.detach(), -1).numpy()
    loc, scale = prior.loc.detach().numpy(), prior.scale().detach().numpy()
    density = sum(pi[c] * multivariate_normal(loc[c], np.diag(scale[c] ** 2)).pdf(z.numpy()) for c in range(4))
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(), np.log(density), rtol=1e-10)
    # Bayes: p(c | z) = pi_c p(z | c) / p(z).
    each = np.stack([pi[c] * multivariate_normal(loc[c], np.diag(scale[c] ** 2)).pdf(z.numpy()) for c in range(4)], -1)
    np.testing.assert_allclose(prior.responsibilities(z).detach().numpy(), each / density[:, None], rtol=1e-9)
    # A removed cluster (logit -inf) has pi = 0: the density of the other three, renormalised.
    with torch.no_grad():
        prior.logits[1] = -math.inf
    kept = [0, 2, 3]
    rest = sum(pi[c] * multivariate_normal(loc[c], np.diag(scale[c] ** 2)).pdf(z.numpy()) for c in kept)
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(), np.log(rest / pi[kept].sum()), rtol=1e-10)
    assert (prior.responsibilities(z)[:, 1] == 0).all()


def test_prior_samples_follow_the_cluster_weights():
    torch.manual_seed(0)
    prior = GaussianMixturePrior(2, 3)
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]]))
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    z = prior().sample(torch.Size([20000]))
    frequencies = torch.bincount(prior.responsibilities(z).argmax(-1), minlength=3) / 20000
    assert torch.allclose(frequencies, prior.weights(), atol=0.015)


def test_unobserved_modality_gets_zero_gradient_including_its_auxiliary_prior():
    model, objective = vector_model()
    mask = torch.ones(3, B, dtype=torch.bool)
    mask[1] = False  # "b" unobserved in every row
    objective(model, vector_batch(), mask).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("encoders.b.", "decoders.b.")):
            assert param.grad is None or (param.grad == 0).all(), name
    assert (model.aux_log_scale.grad[1] == 0).all() and (model.aux_log_scale.grad[[0, 2]] != 0).any()
    assert (model.mixture.loc.grad != 0).any() and (model.mixture.logits.grad != 0).any()


def test_cluster_probabilities_average_the_members_responsibilities():
    model, _ = vector_model()
    x = vector_batch()
    members = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)  # [M, S=3]: {a}, {b}, {a,b,c}
    members = members[:, :, None].expand(3, 3, B)
    with torch.no_grad():
        probs = model.cluster_probabilities(x, members)  # [S, B, K]
        per_expert = model.mixture.responsibilities(model.encode_blocks(x).shared.loc)  # [M, B, K]
    assert probs.shape == (3, B, K_CLUSTERS)
    torch.testing.assert_close(probs[0], per_expert[0])
    torch.testing.assert_close(probs[1], per_expert[1])
    torch.testing.assert_close(probs[2], per_expert.mean(0))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, B, dtype=torch.float64))
    assert torch.equal(model.cluster(x, members), probs.argmax(-1))


def test_clustering_metric_scores_the_models_own_assignments():
    torch.manual_seed(0)
    model, _ = build_model(tiny_config("cmvae", options={"w_dim": 2, "number_of_clusters": 4}), tiny_splits().test.modalities)
    data = tiny_dataset(40, seed=3, observed=0.7)
    out = latent_clustering(model, data, batch_size=16)
    own = out["model"]
    assert own["num_clusters"] == 4 and set(own["nmi"]["per_subset"]) == set(out["nmi"]["per_subset"])
    # The reported score is sklearn's on what model.cluster returns for the rows that observe "img".
    batch = next(iter(data.batches(len(data))))
    rows = batch.mask["img"].numpy()
    members = torch.zeros(3, 1, len(rows), dtype=torch.bool)
    members[model.names.index("img")] = True
    with torch.no_grad():
        assigned = model.cluster(batch.x, members)[0].numpy()
    labels = data.labels.numpy()
    assert own["nmi"]["per_subset"]["img"] == pytest.approx(normalized_mutual_info_score(labels[rows], assigned[rows]))
    assert own["ari"]["per_subset"]["img"] == pytest.approx(adjusted_rand_score(labels[rows], assigned[rows]))


def test_cluster_selection_finds_the_occupied_clusters():
    """Rows whose experts sit at three of six cluster means: selection keeps those three."""
    model, _ = vector_model(number_of_clusters=6)
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0], [8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0],
                            [0.0, 0.0, 8.0, 0.0], [0.0, 0.0, 0.0, 8.0], [-8.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        model.mixture.loc.copy_(centres)
        model.mixture.logits.zero_()
    gen = torch.Generator().manual_seed(0)
    occupied = torch.tensor([1, 3, 4])
    n = 90
    labels = occupied[torch.arange(n) % 3]
    locs = centres[labels] + 0.2 * torch.randn(3, n, 4, generator=gen, dtype=torch.float64)

    class Fixed:
        def __init__(self, loc: Tensor) -> None:
            self.shared = type("E", (), {"loc": loc})()

    x = {m.name: torch.zeros(n, *m.shape, dtype=torch.float64) for m in VECTORS}
    model.encode_blocks = lambda part: Fixed(locs)  # type: ignore[method-assign]  # experts' means by hand
    result = select_clusters(model, x, batch_size=n)
    assert result.chosen == 3 and model.num_clusters == 3
    assert set(result.scores) == {6, 5, 4, 3, 2}
    assert sorted(result.removed) == [0, 2, 5]
    assert torch.isfinite(model.mixture.logits[occupied]).all()
    with pytest.raises(UserError, match="min_clusters"):
        select_clusters(model, x, min_clusters=9)


def test_options_are_checked():
    for options, parameter in (({"w_dim": 0}, "w_dim"), ({"number_of_clusters": 0}, "number_of_clusters")):
        with pytest.raises(UserError, match=parameter):
            build_model(tiny_config("cmvae", options=options), VECTORS)
    with pytest.raises(UserError, match="prior"):
        build_model(tiny_config("cmvae", prior="laplace"), VECTORS)


def test_save_load_round_trip(tmp_path):
    config = tiny_config("cmvae", options={"w_dim": 3, "number_of_clusters": 5, "learn_cluster_scales": True})
    splits = tiny_splits()
    trainer = train(config, TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu"), splits, "tiny",
                    tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, CMVAE) and loaded.model.num_clusters == 5 and loaded.model.mixture.learn_scales
    assert loaded.model_config == config
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    batch = next(iter(splits.test.batches(len(splits.test))))
    mask = torch.ones(3, len(batch), dtype=torch.bool)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model.cluster(batch.x, mask), loaded.model.cluster(batch.x, mask))


def test_cli_trains_evaluates_and_lists_the_method(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "data.npz", n=40)
    run = tmp_path / "run"
    argv = ["train", "--model", "cmvae", "--dataset", f"npz:{npz}", "--epochs", "2", "--set", "w_dim=3",
            "--set", "number_of_clusters=3", "--backbone", "mlp", "--hidden", "16", "--latent-dim", "4",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(argv) == 0
    assert "after 2 epoch(s)" in capsys.readouterr().out
    loaded = load_run(run)
    assert isinstance(loaded.model, CMVAE) and loaded.model.num_clusters == 3
    eval_argv = ["--num-importance-samples", "3", "--eval-batch-size", "32", "--device", "cpu", "--no-figures"]
    assert main(["evaluate", str(run), "--metrics", "clustering", *eval_argv]) == 0
    own = json.loads((run / "eval.json").read_text())["clustering"]["model"]
    assert own["num_clusters"] == 3 and len(own["nmi"]["per_subset"]) == 7
    assert "own cluster assignments" in (run / "report.md").read_text()
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cmvae "))
    assert "Palumbo" in line
    bad = argv[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("number_of_clusters=3")] = "number_of_clusters=0"
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "number_of_clusters" in err[0] and not (tmp_path / "bad").exists()
