"""Nexus (Vasco, Yin, Melo & Paiva, Neural Networks 2022): a hierarchy of per-modality VAEs and a shared top latent.

Bottom level: one VAE per modality m, with latent z_m (dimension ``bottom_dim``),
encoder q(z_m | x_m) and decoder p(x_m | z_m). Top level: each detached z_m is turned
into a message by a per-modality message encoder (``msg_dim`` wide). The messages of the
observed modalities are averaged, with forced perceptual dropout during training, and
the top encoder maps the average to q(z_sigma | msg) over the nexus latent z_sigma
(dimension ``latent_dim``). Top decoder m predicts z_m from z_sigma, as
N(z_m; dec_m(z_sigma), I). The objective as written in the peer protocols (Sec. 3,
"Nexus"; MultiVae ``nexus_model.py``), to maximise:

    bottom = sum_m [lambda_m log p(x_m | z_m) - a beta KL(q(z_m | x_m) || N(0, I))],
    top    = sum_m gamma_m log N(sg(z_m); dec_m(z_sigma), I) - a beta KL(q(z_sigma | msg) || N(0, I)),

with z_m ~ q(z_m | x_m), z_sigma ~ q(z_sigma | msg), sg the stop-gradient, a the trainer's
KL warm-up factor, and the sums over the observed modalities of each row. The top loss
never reaches the bottom networks: both the messages' inputs and the targets of the top
decoders are detached.

Forced perceptual dropout (:func:`perceptual_dropout`): while training, each row that
observes n >= 2 modalities has, with probability ``dropout``, its message average taken
over a random subset of size 1..n-1 of them (size uniform, then members uniform). The
top decoders still predict every observed z_m, so the nexus learns to infer missing
modalities. The original code drops with rate 0.2.

Single-latent API
-----------------
The exposed latent is the top latent z_sigma (dimension D = ``latent_dim``):

- ``encode`` / ``subset_posteriors`` / ``joint_posterior`` give q(z_sigma | mean of the
  messages of the subset). The messages are computed from the bottom posterior **means**,
  so inference is deterministic given x. Training feeds the bottom samples, the inputs
  the message encoders are fitted on; at test time the means avoid sampling noise.
- ``prior()`` is N(0, I_D).
- ``decode`` / ``decode_mean`` / ``modality_log_likelihood`` compose top decoder m and
  bottom decoder m: p(x_m | z_sigma) := p(x_m | z_m = dec_m(z_sigma)). The bottom latent
  is integrated out by its **mean** (a plug-in approximation). Sampling z_m ~ N(dec_m, I)
  would make decoding random, and with unit variance it would be very noisy next to the
  bottom posteriors. The likelihood metrics therefore score the model
  p(z_sigma) prod_m p(x_m | dec_m(z_sigma)), not Nexus's marginal
  int p(z_sigma) prod_m N(z_m; dec_m(z_sigma), I) p(x_m | z_m) dz.

Defaults: ``bottom_dim`` 32, ``msg_dim`` 512 (the original message size; the message
networks are small MLPs, so it costs little on a CPU), ``dropout`` 0.2, ``gamma`` 1 for
every modality (the original uses 50 for trajectory and symbol modalities and 1 for image
and sound, peer protocols, Sec. 3), beta = ``--beta`` for both levels. KL warm-up over 10
epochs; the original warms up over 20 of its 100 epochs, so pass ``--warmup-epochs 20``
to match it. The networks reuse :mod:`omnivae.nn`: the bottom VAEs are the package's
encoders and decoders; the message encoders, top encoder and top decoders are MLPs with
``--hidden`` widths.

References:
    Vasco, Yin, Melo & Paiva (2022). Leveraging hierarchy in multimodal generative models
    for effective cross-modality inference. Neural Networks 146, 238-255.
    Senellart & Allasonnière (2025). Bridging the inference gap in multimodal VAEs
    (the JNF paper), App. E.4: Nexus with its original hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from omnivae.distributions import GaussianExperts, diagonal_normal
from omnivae.errors import UserError
from omnivae.functional import kl_normal_standard
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.models.options import MethodOptions, option
from omnivae.models.recipe import ModelParts, Recipe
from omnivae.nn import MLP, GaussianEncoder, build_decoder, build_encoder
from omnivae.objectives import Objective, ObjectiveOutput, check_beta

if TYPE_CHECKING:
    from omnivae.models.config import ModelConfig

__all__ = ["perceptual_dropout", "Nexus", "NexusNoise", "NexusObjective", "NexusOptions", "RECIPES"]

_LOG_2PI = math.log(2 * math.pi)


def perceptual_dropout(mask: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Nexus's forced perceptual dropout: which modalities each row's message average keeps.

    Args:
        mask: ``BoolTensor[M, B]``, the observed modalities.
        rate: Probability that a row with n >= 2 observed modalities keeps only a random
            non-empty proper subset of them: size uniform in 1..n-1, members uniform.
        generator: Optional random generator.

    Returns:
        ``BoolTensor[M, B]``, a subset of ``mask``. Rows with fewer than two observed
        modalities are kept as they are, so no row loses its last modality.
    """
    if not 0 <= rate <= 1:
        raise UserError(f"the perceptual dropout rate must lie in [0, 1], got {rate}", parameter="rate")
    count, batch = mask.shape
    device = mask.device
    observed = mask.sum(0)  # [B]
    drop = (torch.rand(batch, generator=generator, device=device) < rate) & (observed >= 2)
    u = torch.rand(batch, generator=generator, device=device)
    size = (u * (observed - 1).clamp_min(1)).floor().long().clamp_max((observed - 2).clamp_min(0)) + 1
    # Observed modalities rank before unobserved ones, so the `size` lowest ranks are observed.
    scores = torch.rand(count, batch, generator=generator, device=device)
    scores = torch.where(mask, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(0).argsort(0)
    subset = (rank < size.unsqueeze(0)) & mask
    return torch.where(drop.unsqueeze(0), subset, mask)


def _mlp_encoder(in_features: int, hidden: Sequence[int], latent_dim: int) -> GaussianEncoder:
    """A Gaussian head on an MLP body, as :func:`omnivae.nn.build_encoder` builds for vectors."""
    if hidden:
        body: nn.Module = MLP(in_features, tuple(hidden[:-1]), int(hidden[-1]), final_activation=True)
        return GaussianEncoder(body, int(hidden[-1]), latent_dim)
    return GaussianEncoder(nn.Flatten(start_dim=1), in_features, latent_dim)


class Nexus(MultimodalVAE):
    """The Nexus model: bottom VAEs per modality and a top latent z_sigma (Vasco et al. 2022).

    Args:
        modalities: The dataset's modalities, in order.
        encoders: Bottom encoders ``name -> module`` returning ``(loc, scale, None)`` of
            q(z_m | x_m), ``[B, bottom_dim]``.
        decoders: Bottom decoders ``name -> module`` mapping ``z_m [N, bottom_dim]`` to p(x_m | z_m).
        message_encoders: ``name -> module`` mapping ``z_m [N, bottom_dim]`` to a message ``[N, msg_dim]``.
        top_encoder: Maps the mean message ``[N, msg_dim]`` to ``(loc, scale, None)`` of
            q(z_sigma | msg), ``[N, D]``.
        top_decoders: ``name -> module`` mapping ``z_sigma [N, D]`` to the predicted mean of z_m.
        prior: p(z_sigma), a module with ``latent_dim`` D whose ``forward()`` is N(0, I).
        likelihood_weights: lambda_m, per-modality weights of log p(x_m | z_m).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        message_encoders: nn.ModuleDict,
        top_encoder: GaussianEncoder,
        top_decoders: nn.ModuleDict,
        prior: nn.Module,
        bottom_dim: int,
        likelihood_weights: dict[str, float] | None = None,
    ) -> None:
        # Messages are averaged, not Gaussian experts: no aggregator.
        super().__init__(modalities, encoders, decoders, None, prior, likelihood_weights, 0)
        self.message_encoders = message_encoders
        self.top_encoder = top_encoder
        self.top_decoders = top_decoders
        self.bottom_dim = int(bottom_dim)

    # -- bottom level and messages ----------------------------------------------------------
    def bottom_posteriors(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """loc and scale of q(z_m | x_m) for every modality: ``[M, B, bottom_dim]`` each.

        Modalities absent from ``x`` get N(0, I) placeholders; callers mask them out.
        """
        return self.run_encoders(x, self.bottom_dim, self.gaussian_encoding)

    def messages(self, bottom: Tensor) -> Tensor:
        """The message of every modality from its bottom latent ``[M, B, bottom_dim]``: ``[M, B, msg_dim]``."""
        return torch.stack([self.message_encoders[name](bottom[i]) for i, name in enumerate(self.names)])

    def top_posterior(self, messages: Tensor, kept: Tensor) -> Independent:
        """q(z_sigma | mean of the kept messages): diagonal Gaussian with batch ``[*B]``.

        Args:
            messages: ``[M, *B, msg_dim]``.
            kept: ``[M, *B]``; the mean runs over these (a row with none gets the zero message).
        """
        zero = torch.zeros((), dtype=messages.dtype, device=messages.device)
        count = kept.sum(0).clamp_min(1).unsqueeze(-1).to(messages.dtype)
        mean = torch.where(kept.unsqueeze(-1), messages, zero).sum(0) / count  # [*B, msg_dim]
        lead = mean.shape[:-1]
        loc, scale, _ = self.top_encoder(mean.reshape(-1, mean.shape[-1]))
        return diagonal_normal(loc.reshape(*lead, -1), scale.reshape(*lead, -1))

    def predicted_bottom(self, name: str, z: Tensor) -> Tensor:
        """dec_name(z_sigma): the predicted mean of z_name for ``z [*, D]``: ``[*, bottom_dim]``."""
        flat = self.top_decoders[name](z.reshape(-1, z.shape[-1]))
        return flat.reshape(*z.shape[:-1], flat.shape[-1])

    # -- inference ----------------------------------------------------------------------
    def _observed_messages(self, x: dict[str, Tensor]) -> Tensor:
        loc, _ = self.bottom_posteriors(x)
        return self.messages(loc)

    def encode_experts(self, x: dict[str, Tensor], mask: Tensor) -> GaussianExperts:
        """Not defined: Nexus averages messages, it has no Gaussian experts of a shared latent."""
        raise UserError("nexus has no Gaussian experts of a shared latent; use encode or subset_posteriors")

    def posterior(self, x: dict[str, Tensor], members: Tensor, *, proposal: bool = False) -> Distribution:
        """q(z_sigma | mean of the members' messages) from one bottom encoder pass: a diagonal
        Gaussian with batch ``members.shape[1:]`` and event ``[D]`` (the same for the ``proposal``)."""
        messages = self._observed_messages(x)  # [M, B, msg]
        lead = members.shape[1:-1]
        view = (messages.shape[0], *([1] * len(lead)), *messages.shape[1:])
        return self.top_posterior(messages.reshape(view).expand(-1, *lead, -1, -1), members)

    # -- generation ----------------------------------------------------------------------
    def decoder_input(self, name: str, z: Tensor) -> Tensor:
        """Decoder m reads the bottom latent predicted from the top one, z_m = dec_m(z_sigma):
        p(x_m | dec_m(z_sigma)) for ``z_sigma [..., D]``."""
        return self.predicted_bottom(name, z)


@dataclass
class NexusNoise:
    """The randomness of one Nexus step.

    Attributes:
        bottom: ``[M, B, bottom_dim]`` standard normal noise of z_m = mu_m + sigma_m * noise.
        top: ``[B, D]`` standard normal noise of z_sigma.
        kept: ``BoolTensor[M, B]``, the modalities whose messages are averaged.
    """

    bottom: Tensor
    top: Tensor
    kept: Tensor


class NexusObjective(Objective):
    """The Nexus loss: bottom VAEs plus the top level on detached bottom latents (peer protocols, Sec. 3).

    Per row, with sums over the observed modalities m and a the warm-up factor:

        bottom = sum_m [lambda_m log p(x_m | z_m) - a beta KL(q(z_m | x_m) || N(0, I))],
        top    = sum_m gamma log N(sg(z_m); dec_m(z_sigma), I) - a beta KL(q(z_sigma | msg) || N(0, I)),

    z_m ~ q(z_m | x_m), msg the mean of the messages of sg(z_m) over the modalities kept
    by :func:`perceptual_dropout` (only while the model is in training mode), and
    z_sigma ~ q(z_sigma | msg). The loss is -(bottom + top) averaged over the batch.

    Args:
        beta: beta of both levels' KL terms.
        gamma: Weight of every top-level prediction term.
        dropout: Perceptual dropout rate (0.2 in the original).
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, dropout: float = 0.2) -> None:
        check_beta(beta)
        if not gamma >= 0:
            raise UserError(f"gamma (Nexus's top-level weight) must be >= 0, got {gamma}", parameter="gamma")
        if not 0 <= dropout <= 1:
            raise UserError(f"dropout (Nexus's perceptual dropout rate) must lie in [0, 1], got {dropout}", parameter="dropout")
        self.beta = beta
        self.gamma = gamma
        self.dropout = dropout

    def draw(self, model: Nexus, mask: Tensor, dtype: torch.dtype = torch.float32) -> NexusNoise:
        """The randomness of one step: standard normal noise and the perceptual dropout.

        Dropout applies only while ``model.training`` (not to validation losses).
        """
        count, batch = mask.shape
        bottom = torch.randn(count, batch, model.bottom_dim, dtype=dtype, device=mask.device)
        top = torch.randn(batch, model.latent_dim, dtype=dtype, device=mask.device)
        kept = perceptual_dropout(mask, self.dropout) if model.training and self.dropout > 0 else mask
        return NexusNoise(bottom, top, kept)

    def levels(
        self, model: Nexus, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0, noise: NexusNoise | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The bottom and top objectives per row (to maximise), ``[B]`` each, and the named terms.

        Args:
            model: The Nexus model.
            x: ``name -> [B, *shape]``.
            mask: ``[M, B]`` observed modalities.
            kl_weight: The warm-up factor a.
            noise: Fixed randomness (tests); drawn by :meth:`draw` when None.
        """
        loc, scale = model.bottom_posteriors(x)  # [M, B, Db]
        if noise is None:
            noise = self.draw(model, mask, loc.dtype)
        z_bottom = loc + scale * noise.bottom
        kl_bottom = kl_normal_standard(loc, scale.pow(2))  # [M, B]
        zero = torch.zeros((), dtype=loc.dtype, device=loc.device)
        batch = loc.shape[1]
        rec = torch.zeros(batch, dtype=loc.dtype, device=loc.device)
        for index, name in enumerate(model.names):
            if name not in x:
                continue
            log_p = model.decoder_log_prob(name, x[name], z_bottom[index])
            rec = rec + torch.where(mask[index], model.likelihood_weights[index] * log_p, zero)
        kl = torch.where(mask, kl_bottom, zero).sum(0)
        bottom = rec - self.beta * kl_weight * kl

        targets = z_bottom.detach()
        q_top = model.top_posterior(model.messages(targets), noise.kept & mask)
        top_loc, top_scale = q_top.base_dist.loc, q_top.base_dist.scale
        z_top = top_loc + top_scale * noise.top  # [B, D]
        prediction = torch.zeros(batch, dtype=loc.dtype, device=loc.device)
        for index, name in enumerate(model.names):
            predicted = model.predicted_bottom(name, z_top)
            log_n = -0.5 * ((targets[index] - predicted).pow(2) + _LOG_2PI).sum(-1)
            prediction = prediction + torch.where(mask[index], self.gamma * log_n, zero)
        kl_top = torch.where(mask.any(0), kl_normal_standard(top_loc, top_scale.pow(2)), zero)
        top = prediction - self.beta * kl_weight * kl_top
        terms = {"rec": -rec.mean(), "kl": kl.mean(), "top_rec": -prediction.mean(), "top_kl": kl_top.mean()}
        return bottom, top, terms

    def __call__(
        self, model: Nexus, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0
    ) -> ObjectiveOutput:
        bottom, top, terms = self.levels(model, x, mask, kl_weight)
        return ObjectiveOutput(-(bottom + top).mean(), terms)


@dataclass(frozen=True)
class NexusOptions(MethodOptions):
    """Nexus's settings (Vasco et al. 2022; peer protocols Sec. 3)."""

    bottom_dim: int = option(32, "size of each modality's bottom latent z_m")
    msg_dim: int = option(512, "size of each modality's message")
    dropout: float = option(0.2, "perceptual dropout rate, in [0, 1]")
    gamma: float = option(1.0, "weight of the top level's prediction terms, >= 0")

    def check(self) -> None:
        if self.bottom_dim < 1 or self.msg_dim < 1:
            bad = "bottom_dim" if self.bottom_dim < 1 else "msg_dim"
            raise UserError(f"bottom_dim and msg_dim must be >= 1, got {self.bottom_dim} and {self.msg_dim}", parameter=bad)
        if not 0 <= self.dropout <= 1:
            raise UserError(
                f"dropout (Nexus's perceptual dropout rate) must lie in [0, 1], got {self.dropout}", parameter="dropout"
            )
        if not self.gamma >= 0:
            raise UserError(f"gamma (Nexus's top-level weight) must be >= 0, got {self.gamma}", parameter="gamma")


def _build_nexus(config: ModelConfig, modalities: Sequence[ModalitySpec], parts: ModelParts) -> Nexus:
    """Nexus's networks from the options ``bottom_dim`` and ``msg_dim`` (Vasco et al. 2022)."""
    if config.aggregator is not None:
        raise UserError(
            "nexus averages deterministic messages, not Gaussian experts; an aggregator does not apply to it",
            parameter="aggregator",
        )
    parts.require("covariance", "diag", "posteriors are diagonal Gaussians")
    parts.require("prior", "normal", "KL terms are to N(0, I)")
    settings = config.settings_as(NexusOptions)
    bottom_dim, msg_dim = settings.bottom_dim, settings.msg_dim
    hidden = [int(h) for h in config.hidden]
    encoders = nn.ModuleDict(
        {m.name: build_encoder(m, bottom_dim, backbone=config.backbone, hidden=hidden) for m in modalities}
    )
    decoders = nn.ModuleDict(
        {
            m.name: build_decoder(m, bottom_dim, backbone=config.backbone, hidden=hidden, likelihood=config.likelihood)
            for m in modalities
        }
    )
    message_encoders = nn.ModuleDict({m.name: MLP(bottom_dim, tuple(hidden), msg_dim) for m in modalities})
    top_encoder = _mlp_encoder(msg_dim, hidden, config.latent_dim)
    top_decoders = nn.ModuleDict(
        {m.name: MLP(config.latent_dim, tuple(reversed(hidden)), bottom_dim) for m in modalities}
    )
    return Nexus(
        modalities, encoders, decoders, message_encoders, top_encoder, top_decoders, parts.prior(), bottom_dim,
        parts.likelihood_weights,
    )


def _objective(config: ModelConfig) -> NexusObjective:
    settings = config.settings_as(NexusOptions)
    return NexusObjective(beta=config.beta, gamma=settings.gamma, dropout=settings.dropout)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "nexus",
        "Nexus (per-modality VAEs + top latent from averaged messages)",
        "Vasco et al., Neural Networks 2022; peer protocols Sec. 3",
        "message-mean",
        _objective,
        warmup_epochs=10.0,
        build=_build_nexus,
        options_type=NexusOptions,
        swappable=False,
    ),
)
