"""JNF's losses and training schedule (Senellart et al., Sec. 3.1, 3.2, 3.4).

Stage 0 (JNF-Shared): :class:`ProjectorLoss` (App. B); stage 1: :class:`JointVAELoss`
(Eq. 3); stage 2: :class:`UnimodalPosteriorLoss` (Eq. 8, Eq. 15); :class:`JNFObjective`
gives the stages to the trainer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

from omnivae.distributions import diagonal_normal, kl_divergence
from omnivae.errors import UserError, unknown_name
from omnivae.methods.jnf.model import JNFVAE
from omnivae.methods.jnf.projectors import contrastive_loss, dcca_loss
from omnivae.objectives import Objective, ObjectiveOutput, check_beta
from omnivae.stages import Stage

__all__ = ["JointVAELoss", "UnimodalPosteriorLoss", "ProjectorLoss", "JNFObjective"]


def _no_gradient_loss(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Loss 0 for a batch with nothing to learn from: a leaf, so no parameter gets a gradient."""
    return torch.zeros((), device=device, dtype=dtype, requires_grad=True)


def _rows(x: dict[str, Tensor], names: Sequence[str], rows: Tensor) -> dict[str, Tensor]:
    return {name: x[name][rows] for name in names}


def _complete_batch(
    model: JNFVAE, x: dict[str, Tensor], mask: Tensor, terms: Sequence[str]
) -> tuple[dict[str, Tensor], Tensor] | ObjectiveOutput:
    """The fully observed rows of the batch and their indices, or, when there is none, the
    output of a loss that learns nothing (0, no gradient) with the named ``terms`` at 0."""
    rows = model.complete_rows(x, mask)
    if not rows.numel():
        zero = _no_gradient_loss(mask.device, model.likelihood_weights.dtype)
        return ObjectiveOutput(zero, {name: zero.detach() for name in terms})
    return _rows(x, model.names, rows), rows


class JointVAELoss(Objective):
    """Stage 1 of JNF: the beta-ELBO of the joint VAE (JNF paper, Sec. 3.1, Eq. 3).

    L = -mean_rows [sum_m w_m log p(x_m | z) - a beta KL(q(z | X) || p(z))], z ~ q(z | X)
    (one reparameterised draw), over the fully observed rows of the batch only (the
    joint encoder reads every modality); a the trainer's KL warm-up factor. A batch
    without such a row gives loss 0 and no gradient. The KL is in closed form for the
    normal prior, a one-draw estimate log q(z | X) - log p(z) otherwise.

    Args:
        beta: Weight of the KL term.
    """

    def __init__(self, beta: float = 1.0) -> None:
        check_beta(beta)
        self.beta = beta

    def __call__(self, model: JNFVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        batch = _complete_batch(model, x, mask, ("rec", "kl"))
        if isinstance(batch, ObjectiveOutput):
            return batch
        xc, rows = batch
        loc, scale = model.joint_encoder(xc)
        posterior = diagonal_normal(loc, scale)
        z = loc + scale * torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)  # reparameterised
        rec = model.log_likelihood(xc, z, mask[:, rows])
        prior = model.prior()
        try:
            kl = kl_divergence(posterior, prior)
        except NotImplementedError:
            kl = posterior.log_prob(z) - prior.log_prob(z)
        loss = -(rec - self.beta * kl_weight * kl).mean()
        return ObjectiveOutput(loss, {"rec": -rec.mean(), "kl": kl.mean()})


class UnimodalPosteriorLoss(Objective):
    r"""Stage 2 of JNF: Eq. 8 (equivalently Eq. 7; Eq. 15 for JNF-Shared).

    L = -(1 / (n K)) sum_rows sum_{k=1}^K sum_j log q_j(z_k | x_j),  z_k ~ q(z | X),

    with q(z | X) the frozen joint encoder (the draws z_k are detached, so this loss never
    trains it) and q_j the flow posteriors of Eq. 10, over the n fully observed rows of the
    batch (q(z | X) needs every modality); a batch without one gives loss 0 and no
    gradient. With projectors, q_j reads the detached g_j(x_j). ``kl_weight`` is unused.

    Args:
        num_samples: K, draws of q(z | X) per row.
    """

    def __init__(self, num_samples: int = 1) -> None:
        if num_samples < 1:
            raise UserError(f"stage2_samples must be >= 1, got {num_samples}", parameter="stage2_samples")
        self.num_samples = num_samples

    def __call__(self, model: JNFVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        batch = _complete_batch(model, x, mask, ("uni",))
        if isinstance(batch, ObjectiveOutput):
            return batch
        xc, _ = batch
        with torch.no_grad():
            loc, scale = model.joint_encoder(xc)
            noise = torch.randn(self.num_samples, *loc.shape, dtype=loc.dtype, device=loc.device)
            z = loc + scale * noise  # [K, n, D]
        terms: dict[str, Tensor] = {}
        total = z.new_zeros(z.shape[:-1])
        for index, name in enumerate(model.names):
            base_loc, base_scale = model.base_posterior(name, xc[name])
            log_q = model.flow_log_prob(index, z, base_loc, base_scale)  # [K, n]
            total = total + log_q
            terms[f"nll_{name}"] = -log_q.detach().mean()
        loss = -total.mean()
        terms["uni"] = loss.detach()
        return ObjectiveOutput(loss, terms)


class ProjectorLoss(Objective):
    """Stage 0 of JNF-Shared: train the projectors g_j (Sec. 3.4, App. B).

    ``method="dcca"``: the negated sum of pairwise total CCA correlations (App. B.1,
    :func:`~omnivae.methods.jnf.projectors.dcca_loss`); ``"contrastive"``: the pairwise InfoNCE loss
    of App. B.2 (:func:`~omnivae.methods.jnf.projectors.contrastive_loss`) averaged over the batch.
    On the fully observed rows only; fewer than two give loss 0 and no gradient.

    Args:
        method: ``"dcca"`` or ``"contrastive"``.
        temperature: tau of the contrastive loss (0.1 in the paper).
    """

    def __init__(self, method: Literal["dcca", "contrastive"], temperature: float = 0.1) -> None:
        if method not in ("dcca", "contrastive"):
            raise unknown_name("projector objective", method, ("dcca", "contrastive"))
        if not temperature > 0:
            raise UserError(f"temperature must be positive, got {temperature}", parameter="temperature")
        self.method = method
        self.temperature = temperature

    def __call__(self, model: JNFVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        rows = model.complete_rows(x, mask)
        if rows.numel() < 2 or model.num_modalities < 2:
            zero = _no_gradient_loss(mask.device, model.likelihood_weights.dtype)
            return ObjectiveOutput(zero, {self.method: zero.detach()})
        projections = [model.project(name, x[name][rows]) for name in model.names]
        if self.method == "dcca":
            loss = dcca_loss(projections)
        else:
            loss = contrastive_loss(projections, self.temperature, reduction="mean")
        return ObjectiveOutput(loss, {self.method: loss.detach()})


def _projector_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Stage 0: the projectors g_j."""
    model = cast(JNFVAE, module)
    assert model.projectors is not None, "plain JNF has no projector stage"
    return model.projectors.parameters()


def _joint_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Stage 1: the joint encoder, the decoders and the prior (theta and phi of Eq. 3)."""
    model = cast(JNFVAE, module)
    return itertools.chain(
        model.joint_encoder.parameters(), model.decoders.parameters(), model.prior_module.parameters()
    )


def _unimodal_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Stage 2: the base encoders and the flows of the unimodal posteriors (phi_j of Eq. 8)."""
    model = cast(JNFVAE, module)
    return itertools.chain(model.encoders.parameters(), model.flows.parameters())


_PROJECTOR_STAGE = {"dcca": "projectors (DCCA)", "contrastive": "projectors (contrastive)"}


class JNFObjective(Objective):
    """JNF's training schedule (Sec. 3.1-3.2, 3.4) and, called directly, the sum of its losses.

    :meth:`stages` gives the stages the trainer runs, each with its own parameters:
    [``"projectors (DCCA)"`` | ``"projectors (contrastive)"``] (JNF-Shared only),
    ``"joint VAE"`` (:class:`JointVAELoss`, ``--epochs`` epochs), ``"unimodal posteriors"``
    (:class:`UnimodalPosteriorLoss`, ``stage2_epochs`` or ``--epochs``). Calling the
    objective sums the stages' losses on one batch (each loss only reaches its own
    parameters), a diagnostic; training goes through :meth:`stages`.

    Args:
        beta: Weight of the KL term of stage 1.
        stage2_epochs: Epochs of stage 2; 0 means ``--epochs``.
        stage2_samples: Draws of q(z | X) per row in Eq. 8.
        projector: ``"dcca"`` or ``"contrastive"`` for JNF-Shared, None for JNF.
        projector_epochs: Epochs of stage 0; 0 means ``--epochs``.
        temperature: The contrastive loss's tau.
    """

    def __init__(
        self,
        beta: float = 1.0,
        stage2_epochs: int = 0,
        stage2_samples: int = 1,
        projector: Literal["dcca", "contrastive"] | None = None,
        projector_epochs: int = 0,
        temperature: float = 0.1,
    ) -> None:
        for name, value in (("stage2_epochs", stage2_epochs), ("projector_epochs", projector_epochs)):
            if value < 0:
                raise UserError(f"{name} must be >= 0 (0: as many as the joint VAE), got {value}", parameter=name)
        self.joint = JointVAELoss(beta)
        self.unimodal = UnimodalPosteriorLoss(stage2_samples)
        self.projector = None if projector is None else ProjectorLoss(projector, temperature)
        self.stage2_epochs = stage2_epochs
        self.projector_epochs = projector_epochs

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        schedule: list[Stage] = []
        if self.projector is not None:
            schedule.append(
                Stage(
                    _PROJECTOR_STAGE[self.projector.method], self.projector, self.projector_epochs or epochs,
                    parameters=_projector_parameters, warmup=False,
                )
            )
        schedule.append(Stage("joint VAE", self.joint, epochs, parameters=_joint_parameters))
        schedule.append(
            Stage(
                "unimodal posteriors", self.unimodal, self.stage2_epochs or epochs,
                parameters=_unimodal_parameters, warmup=False,
            )
        )
        return tuple(schedule)

    def __call__(self, model: JNFVAE, x: dict[str, Tensor], mask: Tensor, kl_weight: float = 1.0) -> ObjectiveOutput:
        parts: list[JointVAELoss | UnimodalPosteriorLoss | ProjectorLoss] = [self.joint, self.unimodal]
        if self.projector is not None:
            parts.append(self.projector)
        loss: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for part in parts:
            out = part(model, x, mask, kl_weight)
            loss = out.loss if loss is None else loss + out.loss
            terms.update(out.terms)
        assert loss is not None
        return ObjectiveOutput(loss, terms)
