"""The conditional VAE (CVAE) baseline: generate one target modality given the others.

Sohn, Lee & Yan, *Learning Structured Output Representation using Deep Conditional
Generative Models*, NeurIPS 2015 (not among the project's stored papers; equation numbers
below were not checked offline). With x_c the condition modalities and x_t the target,
the model is

    p(x_t | x_c) = int p(x_t | z, x_c) p(z | x_c) dz,

trained with the conditional ELBO of the paper's Sec. 3 (Sohn et al.'s Eq. 4, as recalled;
not checked offline)

    log p(x_t | x_c) >= E_{q(z | x_t, x_c)} log p(x_t | z, x_c) - beta KL(q(z | x_t, x_c) || p(z | x_c)).

A CVAE is not symmetric: only the target has a decoder, the conditions are inputs of
every network (the recognition network q(z | x_t, x_c), the decoder p(x_t | z, x_c) and,
optionally, the prior network p(z | x_c)) and are never reconstructed.

Choices (where Sohn et al. and MultiVae's ``CVAE`` leave room; docs/architecture.md,
"The conditional VAE"):

- ``target`` (default: the dataset's first modality) and ``condition`` (default: every
  other modality), as MultiVae's ``main_modality`` and ``conditioning_modalities``.
- p(z | x_c) = N(0, I) by default, as MultiVae without a ``prior_network``;
  ``conditional_prior=True`` learns the Gaussian prior network of Sohn et al.
- q(z | x_t, x_c) is a joint encoder (:class:`~omnivae.nn.JointEncoder`: one head per
  modality, concatenation, a merging MLP), as MultiVae's default ``MultipleHeadJointEncoder``.
- The decoder reads [z, h(x_c)], where h concatenates a learnt feature network per
  condition (the body of that modality's usual encoder); MultiVae's default
  ``ConditionalDecoderMLP`` reads the raw flattened conditions instead.
- Rows where the target or a condition is unobserved add nothing to the loss; the loss is
  the mean over the rows that count (MultiVae: the mean over the batch, always complete).

The inference hook ``posterior(x, members)`` for any subset S: q(z | x_t, x_c) where S
holds the target and every condition, p(z | x_c) where S holds every condition but not
the target (what the model knows of z before seeing x_t), and N(0, I) where a condition is
missing (no network of the CVAE reads such a subset). Decoding needs the conditions, so a
latent alone cannot be decoded (``decode`` and ``generate`` refuse, naming what to use);
``conditional_generate``, ``reconstruct`` and ``impute`` give the target from the
conditions, and :meth:`CVAEModel.decode_given` decodes a z with the conditions of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from omnivae.distributions import diagonal_normal, kl_divergence
from omnivae.errors import DataError, UserError
from omnivae.modalities import ModalitySpec
from omnivae.models.base import Mask, MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import JointEncoder, build_decoder, build_encoder, build_joint_encoder
from omnivae.nn.precision import network_autocast
from omnivae.objectives import Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["CVAELoss", "CVAEModel", "CVAEOptions", "RECIPES", "resolve_roles"]


@dataclass(frozen=True)
class CVAEOptions(MethodOptions):
    """The CVAE's settings (``--set target=image --set condition=text``)."""

    target: str = option("", "the modality the model generates (empty: the dataset's first modality)")
    condition: str = option("", "comma-separated modalities it conditions on (empty: every other modality)")
    conditional_prior: bool = option(False, "learn p(z | conditions) (Sohn et al. 2015) instead of N(0, I) (MultiVae)")

    def check(self) -> None:
        names = [n.strip() for n in self.condition.split(",")] if self.condition.strip() else []
        if any(not n for n in names):
            raise UserError(f"condition must be comma-separated modality names, got {self.condition!r}",
                            parameter="condition")
        if len(set(names)) != len(names):
            raise UserError(f"condition names a modality twice: {self.condition!r}", parameter="condition")


def resolve_roles(options: CVAEOptions, names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``(target, conditions)`` of ``options`` for a dataset's modality ``names``.

    Raises:
        UserError: for a name that is not a modality, a target among the conditions, or a
            dataset with a single modality.
    """
    listed = ", ".join(names)
    if len(names) < 2:
        raise UserError(f"cvae needs a target and at least one condition modality; the data has only {listed}")
    target = options.target.strip() or names[0]
    if target not in names:
        raise UserError(f"target {target!r} is not a modality; the modalities are {listed}", parameter="target")
    if options.condition.strip():
        conditions = tuple(n.strip() for n in options.condition.split(","))
    else:
        conditions = tuple(n for n in names if n != target)
    for name in conditions:
        if name not in names:
            raise UserError(f"condition {name!r} is not a modality; the modalities are {listed}", parameter="condition")
    if target in conditions:
        raise UserError(f"the target {target!r} cannot also be a condition", parameter="condition")
    order = {n: i for i, n in enumerate(names)}
    return target, tuple(sorted(conditions, key=order.__getitem__))


class CVAEModel(MultimodalVAE):
    """A conditional VAE (Sohn et al. 2015): q(z | x_t, x_c), p(z | x_c), p(x_t | z, x_c).

    ``decoders`` holds the target's decoder only and ``encoders`` is empty: the networks
    are the recognition network, the condition features and the optional prior network.

    Args:
        modalities: The dataset's modalities (the model ignores those neither target nor condition).
        recognition: q(z | x_t, x_c), a joint encoder over the target and the conditions.
        condition_features: ``name -> module`` mapping ``x_c [B, *shape]`` to features ``[B, F_c]``.
        decoder: The target's decoder, reading ``[z, h(x_c)]`` of width D + sum F_c.
        prior: p(z) = N(0, I) (over D dimensions), the prior where no condition network applies.
        target: The generated modality.
        conditions: The condition modalities, in dataset order.
        prior_network: p(z | x_c), a joint encoder over the conditions, or None for N(0, I).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        recognition: JointEncoder,
        condition_features: nn.ModuleDict,
        decoder: nn.Module,
        prior: nn.Module,
        target: str,
        conditions: Sequence[str],
        prior_network: JointEncoder | None = None,
    ) -> None:
        super().__init__(modalities, nn.ModuleDict(), nn.ModuleDict({target: decoder}), None, prior)
        self.target = target
        self.conditions = tuple(conditions)
        self.recognition = recognition
        self.condition_features = condition_features
        self.prior_network = prior_network

    @property
    def generated(self) -> tuple[str, ...]:
        """The one modality a CVAE generates, its target."""
        return (self.target,)

    # -- networks ------------------------------------------------------------------------
    def _has(self, x: dict[str, Tensor], names: Sequence[str]) -> bool:
        return all(name in x for name in names)

    def _standard(self, batch: int) -> tuple[Tensor, Tensor]:
        loc = torch.zeros(batch, self.latent_dim, dtype=self.likelihood_weights.dtype, device=self.device)
        return loc, torch.ones_like(loc)

    def recognition_posterior(self, x: dict[str, Tensor]) -> Independent:
        """q(z | x_t, x_c), batch ``[B]``; ``x`` must hold the target and every condition."""
        loc, scale = self.recognition({name: x[name] for name in (self.target, *self.conditions)})
        return diagonal_normal(loc, scale)

    def conditional_prior(self, x: dict[str, Tensor]) -> Independent:
        """p(z | x_c), batch ``[B]``: the prior network's Gaussian, or N(0, I) without one."""
        if self.prior_network is None:
            return diagonal_normal(*self._standard(self.batch_size(x)))
        loc, scale = self.prior_network({name: x[name] for name in self.conditions})
        return diagonal_normal(loc, scale)

    def condition_embedding(self, x: dict[str, Tensor]) -> Tensor:
        """h(x_c) ``[B, sum F_c]``: the condition features the decoder reads beside z."""
        missing = [name for name in self.conditions if name not in x]
        if missing:
            raise DataError(f"cvae generates {self.target!r} given {', '.join(self.conditions)}; "
                            f"the input lacks {', '.join(missing)}")
        first = x[self.conditions[0]]
        with network_autocast(first.device):
            features = torch.cat([self.condition_features[name](x[name]) for name in self.conditions], -1)
        return features.to(self.likelihood_weights.dtype)

    def decoder_inputs(self, z: Tensor, x: dict[str, Tensor]) -> Tensor:
        """``[z, h(x_c)]`` for ``z [*L, B, D]``: ``[*L, B, D + sum F_c]`` (h broadcast over L)."""
        features = self.condition_embedding(x)
        return torch.cat([z, features.expand(*z.shape[:-1], features.shape[-1])], -1)

    # -- the inference hook --------------------------------------------------------------
    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """q(z | x_S) for ``members [M, *S, B]`` (see the module docstring): the recognition
        network where S holds the target and every condition, p(z | x_c) where S holds every
        condition only, N(0, I) elsewhere. The training posterior (``proposal``) is the same."""
        index = {name: i for i, name in enumerate(self.names)}
        conditioned = members[[index[c] for c in self.conditions]].all(0)  # [*S, B]
        full = conditioned & members[index[self.target]]
        loc, scale = self._standard(self.batch_size(x))
        if self._has(x, self.conditions):
            prior = self.conditional_prior(x)
            loc = torch.where(conditioned.unsqueeze(-1), prior.mean, loc)
            scale = torch.where(conditioned.unsqueeze(-1), prior.stddev, scale)
        if self._has(x, (self.target, *self.conditions)):
            q = self.recognition_posterior(x)
            loc = torch.where(full.unsqueeze(-1), q.mean, loc)
            scale = torch.where(full.unsqueeze(-1), q.stddev, scale)
        shape = (*members.shape[1:], self.latent_dim)
        return diagonal_normal(loc.expand(shape), scale.expand(shape))

    # -- decoding needs the conditions ---------------------------------------------------
    def decode(self, z: Tensor, names: Sequence[str] | None = None) -> dict[str, Distribution]:
        """Refused: p(x_t | z, x_c) needs the conditions; use :meth:`decode_given`."""
        raise UserError(f"cvae decodes {self.target!r} from z and its conditions ({', '.join(self.conditions)}), "
                        "not from z alone; use decode_given(z, x) or conditional_generate(x)")

    def decode_given(self, z: Tensor, x: dict[str, Tensor]) -> Distribution:
        """p(x_t | z, x_c) for ``z [N, D]`` and the conditions of ``x`` (``[N, *shape]`` each)."""
        return self.decoders[self.target](self.decoder_inputs(z, x))

    def decode_mean_given(self, z: Tensor, x: dict[str, Tensor]) -> Tensor:
        """The mean of p(x_t | z, x_c) for ``z [*L, B, D]``: ``[*L, B, *shape]``."""
        inputs = self.decoder_inputs(z, x)
        mean = self.decoders[self.target](inputs.reshape(-1, inputs.shape[-1])).mean
        return mean.reshape(*inputs.shape[:-1], *mean.shape[1:])

    def target_log_prob(self, x: dict[str, Tensor], z: Tensor) -> Tensor:
        """log p(x_t | z, x_c) for ``z [*L, B, D]``: ``[*L, B]`` (one decoder call)."""
        return self.decoder_log_prob(self.target, x[self.target], self.decoder_inputs(z, x))

    def require_conditions(self, x: dict[str, Tensor], mask: Tensor) -> None:
        """A :class:`DataError` unless every condition is observed in every row."""
        missing = [name for name in self.conditions if name not in x]
        if missing:
            raise DataError(f"cvae generates {self.target!r} given {', '.join(self.conditions)}; "
                            f"the input lacks {', '.join(missing)}")
        for name in self.conditions:
            row = mask[self.names.index(name)]
            if not bool(row.all()):
                raise DataError(f"cvae generates {self.target!r} given {', '.join(self.conditions)}; "
                                f"{int((~row).sum())} row(s) lack {name!r}")

    def conditional_log_likelihood(self, x: dict[str, Tensor], num_samples: int) -> Tensor:
        """Importance-sampled log p(x_t | x_c) per row, ``[B]`` (Burda et al. 2016, Eq. 8, with
        the recognition network as proposal and p(z | x_c) as prior); x holds every role."""
        q, prior = self.recognition_posterior(x), self.conditional_prior(x)
        z = q.sample(torch.Size([num_samples]))  # [K, B, D]
        log_w = self.target_log_prob(x, z) + prior.log_prob(z) - q.log_prob(z)
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    # -- the high-level API --------------------------------------------------------------
    @torch.no_grad()
    def generate(self, num_samples: int) -> dict[str, Tensor]:
        """Refused: a CVAE generates its target only given its conditions."""
        raise UserError(f"cvae generates {self.target!r} only given {', '.join(self.conditions)}; "
                        "use conditional_generate(x)")

    @torch.no_grad()
    def conditional_generate(self, x: dict[str, Tensor], mask: Mask = None, num_samples: int = 1) -> dict[str, Tensor]:
        """Samples of the target, ``{target: [num_samples, B, *shape]}``: z from p(z | x_c)
        (or q(z | x_t, x_c) where the target is observed), decoded with the conditions.

        Raises:
            DataError: if a row lacks a condition.
        """
        mask_tensor = self.stack_mask(x, mask)
        self.require_conditions(x, mask_tensor)
        z = self.posterior(x, mask_tensor).sample(torch.Size([num_samples]))
        return {self.target: self.decode_mean_given(z, x)}

    @torch.no_grad()
    def reconstruct(self, x: dict[str, Tensor], mask: Mask = None) -> dict[str, Tensor]:
        """The target decoded from the posterior mean (conditions required): ``{target: [B, *shape]}``."""
        mask_tensor = self.stack_mask(x, mask)
        self.require_conditions(x, mask_tensor)
        return {self.target: self.decode_mean_given(self.posterior(x, mask_tensor).mean, x)}

    @torch.no_grad()
    def impute(self, x: dict[str, Tensor], mask: Mask = None) -> dict[str, Tensor]:
        """The input with the target filled where unobserved (decoded mean of p(z | x_c));
        observed values are kept.

        Raises:
            DataError: if a condition is unobserved in some row (a CVAE cannot fill it), or
                ``x`` does not fit the model.
        """
        self.check_inputs(x)
        mask_tensor = self.stack_mask(x, mask)
        self.require_conditions(x, mask_tensor)
        filled = self.decode_mean_given(self.posterior(x, mask_tensor).mean, x)
        out = dict(x)
        if self.target not in x:
            out[self.target] = filled
        else:
            keep = mask_tensor[self.names.index(self.target)]
            keep = keep.reshape(-1, *([1] * (x[self.target].dim() - 1)))
            out[self.target] = torch.where(keep, x[self.target], filled.to(x[self.target].dtype))
        return {name: out[name] for name in self.names if name in out}


class CVAELoss(Objective):
    """The negative conditional ELBO of Sohn et al. (2015), averaged over the rows that count.

    For each row whose target and conditions are all observed, with z ~ q(z | x_t, x_c)
    (one reparameterised draw) and a the trainer's KL warm-up factor,

        loss_b = -w_t log p(x_t | z, x_c) + a beta KL(q(z | x_t, x_c) || p(z | x_c)),

    the KL in closed form (both Gaussians); the loss is the mean of loss_b over those
    rows (0 when there are none). Nothing reconstructs a condition.

    Args:
        beta: Weight of the KL term (MultiVae's ``beta``).
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(self, model: CVAEModel, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        roles = [model.names.index(name) for name in (model.target, *model.conditions)]
        valid = mask[roles].all(0)  # [B]
        q = model.recognition_posterior(x)
        z = q.rsample()
        weight = model.likelihood_weights[model.names.index(model.target)]
        rec = weight * model.target_log_prob(x, z)
        kl = kl_divergence(q, model.conditional_prior(x))
        zero = rec.new_zeros(())
        count = valid.sum().clamp_min(1).to(rec.dtype)
        rec_mean = torch.where(valid, rec, zero).sum() / count
        kl_mean = torch.where(valid, kl, zero).sum() / count
        loss = -rec_mean + self.beta * kl_weight * kl_mean
        return ObjectiveOutput(loss, {"rec": -rec_mean, "kl": kl_mean})


def _build(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> CVAEModel:
    """The CVAE's networks for ``target`` and ``condition`` (see the module docstring)."""
    if config.aggregator is not None:
        raise UserError("cvae encodes the target and its conditions with one recognition network; "
                        "an aggregator does not apply to it", parameter="aggregator")
    parts.require("covariance", "diag", "recognition and prior networks give diagonal Gaussians")
    parts.require("prior", "normal", "KL to p(z | x_c) is between Gaussians")
    options = config.settings_as(CVAEOptions)
    target, conditions = resolve_roles(options, [m.name for m in modalities])
    spec = {m.name: m for m in modalities}
    roles = [m for m in modalities if m.name == target or m.name in conditions]
    recognition = build_joint_encoder(
        roles, config.latent_dim, backbone=config.backbone, hidden=config.hidden, variant=config.joint_encoder
    )
    features: dict[str, nn.Module] = {}
    width = 0
    for name in conditions:
        # Only the body of the modality's usual encoder: its Gaussian layers would get no gradient.
        encoder = build_encoder(spec[name], config.latent_dim, backbone=config.backbone, hidden=config.hidden)
        features[name] = encoder.body
        width += encoder.loc.in_features
    decoder = build_decoder(
        spec[target], config.latent_dim + width, backbone=config.backbone, hidden=config.hidden,
        likelihood=config.likelihood,
    )
    prior_network = None
    if options.conditional_prior:
        prior_network = build_joint_encoder(
            [spec[c] for c in conditions], config.latent_dim, backbone=config.backbone, hidden=config.hidden,
            variant=config.joint_encoder,
        )
    return CVAEModel(modalities, recognition, nn.ModuleDict(features), decoder, parts.prior(), target, conditions,
                     prior_network)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "cvae", "CVAE (generates one target modality given the others; q(z | x_t, x_c))",
        "Sohn, Lee & Yan, NeurIPS 2015", "joint encoder",
        lambda c: CVAELoss(beta=c.beta),
        build=_build,
        options_type=CVAEOptions,
        complete_rows_only=True,  # exact for the default roles, which cover every modality
        swappable=False,
        generates="target",
    ),
)
