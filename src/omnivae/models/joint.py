"""The joint encoder q(z | X) shared by the methods that have one (JMVAE, JNF).

JMVAE (Suzuki et al. 2016) and JNF (Senellart et al. 2024, Sec. 3.1) both encode the
complete observation X with one network beside the unimodal encoders. What they share
(whether the joint encoder can run, its posterior, and using it on the fully observed
rows of a batch) is written here once; :mod:`omnivae.methods.jmvae` and
:mod:`omnivae.methods.jnf` subclass :class:`JointEncoderBase`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from omnivae.aggregators import Aggregator
from omnivae.distributions import RowwiseChoice, diagonal_normal
from omnivae.modalities import ModalitySpec
from omnivae.models.base import MultimodalVAE
from omnivae.nn import JointEncoder

__all__ = ["JointEncoderBase"]


class JointEncoderBase(MultimodalVAE):
    """A :class:`MultimodalVAE` with a joint encoder ``joint_encoder(X) -> (loc [B, D], scale [B, D])``.

    Args:
        modalities, encoders, decoders, aggregator, prior, likelihood_weights,
        covariance_rank: As for :class:`MultimodalVAE`.
        joint_encoder: The network of q(z | X), reading every modality.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        encoders: nn.ModuleDict,
        decoders: nn.ModuleDict,
        aggregator: Aggregator | None,
        prior: nn.Module,
        joint_encoder: JointEncoder,
        likelihood_weights: dict[str, float] | None = None,
        covariance_rank: int = 0,
    ) -> None:
        super().__init__(modalities, encoders, decoders, aggregator, prior, likelihood_weights, covariance_rank)
        self.joint_encoder = joint_encoder

    def has_every_modality(self, x: dict[str, Tensor]) -> bool:
        """Whether ``x`` holds every modality, so the joint encoder can run at all."""
        return all(name in x for name in self.names)

    def encode_joint(self, x: dict[str, Tensor]) -> Independent:
        """The joint encoder's q(z | X), batch ``[B]`` (Suzuki et al. 2016; JNF paper, Sec. 3.1)."""
        loc, scale = self.joint_encoder(x)
        return diagonal_normal(loc, scale)

    def with_joint(self, x: dict[str, Tensor], full: Tensor, other: Distribution) -> Distribution:
        """``other`` with the joint posterior in the elements (batch ``full.shape``, rows last)
        where ``full``, i.e. where every modality is a member."""
        if not self.has_every_modality(x):
            return other
        loc, scale = self.joint_encoder(x)
        shape = (*full.shape, loc.shape[-1])
        return RowwiseChoice(full, diagonal_normal(loc.expand(shape), scale.expand(shape)), other)
