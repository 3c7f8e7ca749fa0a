"""Tests of omnivae.nn: shapes, bounded scales, closed-form likelihoods, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.distributions import LowRankMultivariateNormal

from omnivae.data.base import ModalitySpec
from omnivae.errors import UserError
from omnivae.nn import (
    BACKBONES,
    LIKELIHOODS,
    MLP,
    BernoulliHead,
    CategoricalHead,
    ConvDecoder28,
    ConvEncoder28,
    GaussianEncoder,
    GaussianHead,
    LaplaceHead,
    ResNetDecoder28,
    ResNetEncoder28,
    build_decoder,
    build_encoder,
    soft_clamp,
)

HIDDEN = (32, 16)
LATENT = 6

IMAGE3 = ModalitySpec("img", (3, 28, 28), "image")
IMAGE1 = ModalitySpec("mnist", (1, 28, 28), "image")
IMAGE32 = ModalitySpec("svhn", (3, 32, 32), "image")
VECTOR = ModalitySpec("vec", (10,), "vector")
TABLE = ModalitySpec("table", (4, 5), "vector")
BINARY = ModalitySpec("bits", (12,), "binary")
BINARY_IMAGE = ModalitySpec("binmnist", (1, 28, 28), "binary")
TEXT = ModalitySpec("text", (8, 71), "categorical")
LABEL = ModalitySpec("label", (10,), "categorical")

# Every (modality, backbone) pair the factory accepts.
VALID = [
    (IMAGE3, "auto"),
    (IMAGE3, "mlp"),
    (IMAGE3, "conv"),
    (IMAGE3, "resnet"),
    (IMAGE1, "conv"),
    (IMAGE1, "resnet"),
    (IMAGE32, "auto"),
    (IMAGE32, "mlp"),
    (VECTOR, "auto"),
    (VECTOR, "mlp"),
    (TABLE, "mlp"),
    (BINARY, "auto"),
    (BINARY_IMAGE, "conv"),
    (TEXT, "auto"),
    (TEXT, "mlp"),
    (LABEL, "auto"),
]


def sample_data(spec: ModalitySpec, n: int, generator: torch.Generator) -> Tensor:
    """Data of the spec's kind: [0, 1] images, reals, {0, 1} bits, one-hot rows."""
    shape = (n, *spec.shape)
    if spec.kind == "image":
        return torch.rand(shape, generator=generator)
    if spec.kind == "binary":
        return torch.rand(shape, generator=generator).round()
    if spec.kind == "categorical":
        index = torch.randint(spec.shape[-1], shape[:-1], generator=generator)
        return torch.nn.functional.one_hot(index, spec.shape[-1]).float()
    return torch.randn(shape, generator=generator)


def case_id(case: tuple[ModalitySpec, str]) -> str:
    return f"{case[0].name}-{case[1]}"


@pytest.mark.parametrize("covariance", ["diag", "lowrank"])
@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_shapes(case: tuple[ModalitySpec, str], covariance: str) -> None:
    spec, backbone = case
    g = torch.Generator().manual_seed(0)
    x = sample_data(spec, 5, g)
    encoder = build_encoder(spec, LATENT, backbone, HIDDEN, covariance=covariance, rank=3)
    loc, scale, factor = encoder(x)
    assert loc.shape == scale.shape == (5, LATENT)
    if covariance == "lowrank":
        assert factor is not None and factor.shape == (5, LATENT, 3)
        q = LowRankMultivariateNormal(loc, factor, scale**2)
        assert torch.isfinite(q.log_prob(q.rsample())).all()
    else:
        assert factor is None

    decoder = build_decoder(spec, LATENT, backbone, HIDDEN)
    px = decoder(torch.randn(7, LATENT, generator=g))
    assert px.batch_shape == (7,)
    assert px.event_shape == spec.shape
    assert px.mean.shape == (7, *spec.shape)
    assert px.sample().shape == (7, *spec.shape)
    log_prob = px.log_prob(sample_data(spec, 7, g))
    assert log_prob.shape == (7,) and torch.isfinite(log_prob).all()


def test_auto_backbone_choice() -> None:
    assert isinstance(build_encoder(IMAGE3, LATENT).body, ConvEncoder28)
    assert isinstance(build_decoder(IMAGE3, LATENT).body, ConvDecoder28)
    assert isinstance(build_encoder(IMAGE32, LATENT).body, MLP)
    # A (1, 28, 28) shape that is not an image kind keeps the MLP under "auto".
    assert isinstance(build_encoder(BINARY_IMAGE, LATENT).body, MLP)
    assert isinstance(build_encoder(IMAGE1, LATENT, "resnet").body, ResNetEncoder28)
    assert isinstance(build_decoder(IMAGE1, LATENT, "resnet").body, ResNetDecoder28)


@pytest.mark.parametrize(
    ("spec", "head", "scale"),
    [
        (IMAGE3, LaplaceHead, 0.75),
        (VECTOR, GaussianHead, 1.0),
        (BINARY, BernoulliHead, None),
        (TEXT, CategoricalHead, None),
    ],
)
def test_auto_likelihood_choice(spec: ModalitySpec, head: type, scale: float | None) -> None:
    decoder = build_decoder(spec, LATENT, hidden=HIDDEN)
    assert type(decoder.head) is head
    if scale is not None:
        assert decoder.head.scale == scale
        assert decoder.head.sigmoid_loc == (spec.kind == "image")


def test_soft_clamp_bounds_and_identity() -> None:
    x = torch.linspace(-1e6, 1e6, 10001, dtype=torch.float64)
    y = soft_clamp(x, -12.0, 8.0)
    assert y.min() >= -12.0 - 1e-6 and y.max() <= 8.0
    assert (y.diff() >= 0).all()
    middle = torch.linspace(-6.0, 2.0, 50, dtype=torch.float64)
    assert torch.allclose(soft_clamp(middle, -12.0, 8.0), middle, atol=0.01)


@pytest.mark.parametrize("magnitude", [0.0, 1e-30, 1e4, 1e30])
def test_scale_positive_and_bounded_for_extreme_inputs(magnitude: float) -> None:
    torch.manual_seed(0)
    encoder = GaussianEncoder(torch.nn.Identity(), 4, 3, covariance="lowrank", rank=2)
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]]) * magnitude
    loc, scale, factor = encoder(x.requires_grad_())
    assert (scale > 0).all() and torch.isfinite(scale).all()
    assert scale.min() >= math.exp(-6.0) * 0.999 and scale.max() <= math.exp(4.0) * 1.001
    scale.sum().backward()
    assert torch.isfinite(encoder.logvar.weight.grad).all()

    image_encoder = build_encoder(IMAGE3, LATENT, "conv")
    with torch.no_grad():
        _, scale, _ = image_encoder(torch.full((2, 3, 28, 28), magnitude))
    assert (scale > 0).all() and torch.isfinite(scale).all()


def test_scale_saturates_at_both_ends() -> None:
    encoder = GaussianEncoder(torch.nn.Identity(), 1, 1)
    with torch.no_grad():
        encoder.logvar.weight.fill_(1.0)
        encoder.logvar.bias.zero_()
        _, scale, _ = encoder(torch.tensor([[-1e6], [0.0], [1e6]]))
    expected = torch.tensor([[math.exp(-6.0)], [1.0], [math.exp(4.0)]])
    assert torch.allclose(scale, expected, rtol=1e-3)


# Closed-form log-likelihoods, written out by hand, in float64.


def test_laplace_log_prob_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    x = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64)
    b = 0.75
    mu = 1.0 / (1.0 + torch.exp(-raw))
    expected = (-(x - mu).abs() / b - math.log(2 * b)).sum((1, 2, 3))
    px = LaplaceHead((3, 5, 5), scale=b, sigmoid_loc=True)(raw)
    assert torch.allclose(px.log_prob(x), expected)
    assert torch.allclose(px.mean, mu)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_gaussian_log_prob_closed_form(learn_scale: bool) -> None:
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    head = GaussianHead((6,), scale=0.5, learn_scale=learn_scale).double()
    if learn_scale:
        with torch.no_grad():
            head.log_scale.copy_(torch.linspace(-1.0, 1.0, 6))
        sigma = soft_clamp(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64), -7.0, 5.0).exp()
        assert head.log_scale.requires_grad
    else:
        sigma = torch.full((6,), 0.5, dtype=torch.float64)
    expected = (
        -0.5 * ((x - raw) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    px = head(raw)
    assert torch.allclose(px.log_prob(x), expected)
    assert torch.allclose(px.mean, raw)


def test_bernoulli_log_prob_closed_form_accepts_soft_targets() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 2, 7, generator=g, dtype=torch.float64) * 3
    x = torch.rand(4, 2, 7, generator=g, dtype=torch.float64)
    p = 1.0 / (1.0 + torch.exp(-logits))
    expected = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum((1, 2))
    px = BernoulliHead((2, 7))(logits)
    assert torch.allclose(px.log_prob(x), expected)
    assert torch.allclose(px.mean, p)


def test_categorical_log_prob_closed_form() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 8, 71, generator=g, dtype=torch.float64)
    index = torch.randint(71, (4, 8), generator=g)
    x = torch.nn.functional.one_hot(index, 71).double()
    log_p = logits - torch.log(torch.exp(logits).sum(-1, keepdim=True))
    expected = (x * log_p).sum((1, 2))
    px = CategoricalHead((8, 71))(logits)
    assert px.batch_shape == (4,) and px.event_shape == (8, 71)
    assert torch.allclose(px.log_prob(x), expected)
    assert torch.allclose(px.mean, log_p.exp())


@pytest.mark.parametrize("backbone", ["conv", "resnet", "mlp"])
@pytest.mark.parametrize("likelihood", ["laplace", "gaussian", "bernoulli"])
def test_image_means_in_unit_interval(backbone: str, likelihood: str) -> None:
    torch.manual_seed(5)
    decoder = build_decoder(IMAGE3, LATENT, backbone, HIDDEN, likelihood=likelihood)
    with torch.no_grad():
        mean = decoder(torch.randn(6, LATENT) * 1e3).mean
    assert mean.shape == (6, 3, 28, 28)
    assert (mean >= 0).all() and (mean <= 1).all()


def test_vector_gaussian_mean_is_unbounded() -> None:
    torch.manual_seed(6)
    decoder = build_decoder(VECTOR, LATENT, hidden=HIDDEN)
    with torch.no_grad():
        mean = decoder(torch.randn(64, LATENT) * 1e3).mean
    assert mean.min() < 0 or mean.max() > 1


def test_categorical_mean_rows_sum_to_one() -> None:
    torch.manual_seed(7)
    decoder = build_decoder(TEXT, LATENT, hidden=HIDDEN)
    with torch.no_grad():
        mean = decoder(torch.randn(5, LATENT) * 10).mean
    assert (mean >= 0).all()
    assert torch.allclose(mean.sum(-1), torch.ones(5, 8))


@pytest.mark.parametrize(
    ("spec", "backbone"),
    [(IMAGE3, "conv"), (IMAGE1, "resnet"), (VECTOR, "mlp"), (TEXT, "mlp")],
    ids=["conv", "resnet", "mlp-vector", "mlp-text"],
)
def test_gradients_reach_every_parameter(spec: ModalitySpec, backbone: str) -> None:
    torch.manual_seed(8)
    encoder = build_encoder(spec, LATENT, backbone, HIDDEN, covariance="lowrank", rank=2)
    learn_scale = spec.kind == "vector"
    decoder = build_decoder(spec, LATENT, backbone, HIDDEN, learn_scale=learn_scale)
    x = sample_data(spec, 4, torch.Generator().manual_seed(0))
    loc, scale, factor = encoder(x)
    z = LowRankMultivariateNormal(loc, factor, scale**2).rsample()
    loss = -decoder(z).log_prob(x).sum()
    loss.backward()
    for module in (encoder, decoder):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backbone", ["conv", "resnet"])
def test_rows_are_encoded_independently(backbone: str) -> None:
    # No batch statistics: a sample's posterior must not depend on its batch-mates,
    # since masked batches encode only the rows where a modality is observed.
    torch.manual_seed(9)
    encoder = build_encoder(IMAGE3, LATENT, backbone)
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        loc, scale, _ = encoder(x)
        loc_one, scale_one, _ = encoder(x[2:3])
    assert torch.allclose(loc[2:3], loc_one, atol=1e-5)
    assert torch.allclose(scale[2:3], scale_one, atol=1e-5)


# User mistakes.


def test_unknown_backbone_lists_valid_names() -> None:
    for build in (build_encoder, build_decoder):
        with pytest.raises(UserError) as error:
            build(VECTOR, LATENT, backbone="transformer")
        assert "transformer" in str(error.value)
        assert all(name in str(error.value) for name in BACKBONES)


def test_unknown_likelihood_lists_valid_names() -> None:
    with pytest.raises(UserError) as error:
        build_decoder(VECTOR, LATENT, likelihood="poisson")
    assert "poisson" in str(error.value)
    assert all(name in str(error.value) for name in LIKELIHOODS)


def test_unknown_covariance_lists_valid_names() -> None:
    with pytest.raises(UserError) as error:
        build_encoder(VECTOR, LATENT, covariance="full")
    assert "diag" in str(error.value) and "lowrank" in str(error.value)


@pytest.mark.parametrize("backbone", ["conv", "resnet"])
@pytest.mark.parametrize("spec", [IMAGE32, VECTOR, TEXT], ids=lambda s: s.name)
def test_image_backbone_rejects_other_shapes(backbone: str, spec: ModalitySpec) -> None:
    for build in (build_encoder, build_decoder):
        with pytest.raises(UserError) as error:
            build(spec, LATENT, backbone=backbone)
        assert "(C, 28, 28)" in str(error.value)
        assert "mlp" in str(error.value)


def test_other_bad_choices_raise_user_error() -> None:
    with pytest.raises(UserError):
        build_decoder(BINARY, LATENT, scale=0.5)
    with pytest.raises(UserError):
        build_decoder(IMAGE3, LATENT, likelihood="laplace", scale=-1.0)
    with pytest.raises(UserError):
        build_decoder(IMAGE3, LATENT, likelihood="laplace", learn_scale=True)
    with pytest.raises(UserError):
        build_encoder(ModalitySpec("scalar", (), "categorical"), LATENT)
    with pytest.raises(UserError):
        build_encoder(VECTOR, 0)
    with pytest.raises(UserError):
        build_encoder(VECTOR, LATENT, covariance="lowrank", rank=0)
    with pytest.raises(UserError) as error:
        build_encoder(ModalitySpec("odd", (3,), "audio"), LATENT)  # type: ignore[arg-type]
    assert "vector" in str(error.value)


def test_decoder_scale_override() -> None:
    decoder = build_decoder(IMAGE3, LATENT, likelihood="laplace", scale=0.1)
    assert decoder.head.scale == 0.1
    decoder = build_decoder(VECTOR, LATENT, hidden=HIDDEN, likelihood="gaussian", scale=2.0)
    assert decoder(torch.zeros(1, LATENT)).base_dist.scale.unique().item() == 2.0


@pytest.mark.parametrize(
    "head, target_kind",
    [
        (LaplaceHead((2, 3, 3), scale=0.6, sigmoid_loc=True), "unit"),
        (LaplaceHead((5,), scale=2.0), "real"),
        (GaussianHead((2, 3, 3), scale=0.3, sigmoid_loc=True), "unit"),
        (GaussianHead((5,), scale=1.7, learn_scale=True), "real"),
        (BernoulliHead((2, 3, 3)), "unit"),
        (CategoricalHead((4, 6)), "onehot"),
    ],
    ids=["laplace-image", "laplace-vector", "gaussian-image", "gaussian-learned", "bernoulli", "categorical"],
)
def test_broadcast_log_prob_equals_the_distribution_on_a_repeated_target(head, target_kind: str) -> None:
    """The closed forms of ``head.log_prob(raw [C, B, ...], target [B, ...])`` equal torch's
    distributions scored against C copies of the target, values and gradients (float64)."""
    torch.manual_seed(0)
    head = head.double()
    if head.__class__ is GaussianHead and head.log_scale is not None:
        with torch.no_grad():
            head.log_scale.copy_(torch.randn_like(head.log_scale))
    copies, batch, shape = 3, 4, head.event_shape
    raw = torch.randn(copies, batch, *shape, dtype=torch.float64, requires_grad=True)
    if target_kind == "unit":
        target = torch.rand(batch, *shape, dtype=torch.float64)
    elif target_kind == "real":
        target = 3 * torch.randn(batch, *shape, dtype=torch.float64)
    else:
        target = torch.nn.functional.one_hot(torch.randint(shape[-1], (batch, shape[0])), shape[-1]).double()
    differentiable_target = target_kind != "onehot"  # torch's OneHotCategorical scores argmax(x)
    target.requires_grad_(differentiable_target)
    mine = head.log_prob(raw, target)
    assert mine.shape == (copies, batch)
    repeated = target.expand(copies, *target.shape).reshape(copies * batch, *shape)
    theirs = head(raw.reshape(copies * batch, *shape)).log_prob(repeated).reshape(copies, batch)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-10)
    weights = torch.randn(copies, batch, dtype=torch.float64)
    parameters = [raw, *([target] if differentiable_target else []), *head.parameters()]
    grads_mine = torch.autograd.grad((mine * weights).sum(), parameters)
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), parameters)
    for a, b in zip(grads_mine, grads_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
