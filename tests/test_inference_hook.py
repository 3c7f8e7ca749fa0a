"""The one inference hook: every method implements ``posterior(x, members)``; the base class
writes ``encode``, ``subset_posteriors`` and ``joint_posterior`` once on top of it.

Properties checked for every registered method (tiny networks, one batch):
- no method class re-writes the inference skeleton (only the hook);
- one batched ``subset_posteriors`` call gives, for each subset, the posterior that
  ``encode`` gives with that subset as the mask (batching changes nothing);
- ``joint_posterior`` is the hook's proposal;
- methods that build their own networks ask ModelParts for nothing they then discard.
"""

from __future__ import annotations

import pytest
import torch

from helpers import MODALITIES, tiny_batch, tiny_config
from omnivae.errors import UserError
from omnivae.functional import subset_matrix
from omnivae.models import MODELS, ModelParts, MultimodalVAE, build_model

FAST = {name: {"hmc_steps": 2, "mean_samples": 4, "flow_hidden": 8} for name in ("jnf", "jnf-dcca", "jnf-cl")}


def _model(name: str) -> MultimodalVAE:
    torch.manual_seed(0)
    model, _ = build_model(tiny_config(name, options=FAST.get(name, {})), MODALITIES)
    return model.eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_no_method_rewrites_the_inference_skeleton(name):
    model = _model(name)
    for method in ("encode", "subset_posteriors", "joint_posterior"):
        assert getattr(type(model), method) is getattr(MultimodalVAE, method), f"{type(model).__name__}.{method}"


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_subset_posteriors_equal_one_encode_per_subset(name):
    model = _model(name)
    x = tiny_batch(5)
    subsets = subset_matrix(len(MODALITIES))
    with torch.no_grad():
        batched = model.subset_posteriors(x, subsets)
        assert batched.batch_shape == (len(subsets), 5)
        means = batched.mean
        z = means + 0.1
        log_probs = batched.log_prob(z)
        for s, subset in enumerate(subsets):
            mask = subset.unsqueeze(-1).expand(-1, 5)
            single = model.encode(x, mask)
            torch.testing.assert_close(single.mean, means[s], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(single.log_prob(z[s]), log_probs[s], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_joint_posterior_is_the_hooks_proposal(name):
    model = _model(name)
    x = tiny_batch(4)
    mask = torch.ones(len(MODALITIES), 4, dtype=torch.bool)
    mask[0, 1] = False
    with torch.no_grad():
        proposal = model.posterior(x, mask, proposal=True)
        joint = model.joint_posterior(x, mask)
        z = model.encode(x, mask).mean
        torch.testing.assert_close(joint.log_prob(z), proposal.log_prob(z))


@pytest.mark.parametrize("name", ["mmvae+", "nexus", "jnf-dcca", "jnf-cl"])
def test_methods_with_their_own_networks_build_no_shared_ones(name, monkeypatch):
    def refuse(self):
        raise AssertionError("a shared network was built")

    monkeypatch.setattr(ModelParts, "encoders", refuse)
    model = _model(name)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", ["nexus", "jnf"])
def test_models_that_do_not_aggregate_have_no_aggregator(name):
    model = _model(name)
    assert model.aggregator is None
    with pytest.raises(NotImplementedError, match="no aggregator"):
        model.require_aggregator()


def test_a_subset_with_no_observed_member_is_refused():
    model = _model("mwb")
    x = tiny_batch(3)
    observed = torch.ones(len(MODALITIES), 3, dtype=torch.bool)
    observed[1:, 0] = False  # row 0 observes only the image
    with pytest.raises(UserError, match="no observed modality"):
        model.subset_posteriors(x, subset_matrix(len(MODALITIES)), observed)
