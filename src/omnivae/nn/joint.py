"""The joint encoder q(z | X) of JMVAE: one network that reads every modality at once.

Each modality goes through its own head (the body of the unimodal encoder, without its
Gaussian layers), the head features are concatenated, and either a merging MLP
(``"heads"``) or nothing (``"concat"``) sits between them and the Gaussian layers.

References:
    Suzuki, Nakayama & Matsuo (2016). Joint Multimodal Learning with Deep Generative
    Models. arXiv:1611.01891, Sec. 3.1 (the joint encoder q(z | x, w)).
    Senellart, Chadebec & Allassonnière. Bridging the inference gap in Multimodal
    Variational Autoencoders. Appendix E.1-E.2 (heads and a merging network with two
    hidden layers of 512 units) and E.3 (concatenated heads, no merging network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from omnivae.errors import unknown_name
from omnivae.modalities import ModalitySpec
from omnivae.nn.backbones import MLP
from omnivae.nn.factory import build_encoder
from omnivae.nn.heads import GaussianEncoder
from omnivae.nn.precision import network_autocast

__all__ = ["JOINT_ENCODERS", "JointEncoder", "build_joint_encoder"]

JOINT_ENCODERS: tuple[str, ...] = ("heads", "concat")
"""``"heads"``: heads, concatenation, merging MLP (JNF paper, App. E.1-E.2).
``"concat"``: heads and concatenation only (JNF paper, App. E.3)."""

_DEFAULT_MERGE_WIDTH = 512  # JNF paper, App. E.1: "two-layer MLP with 512 neurons in each layer"


class JointEncoder(nn.Module):
    r"""A Gaussian q(z | X) from all modalities (Suzuki et al. 2016, Sec. 3.1; JNF paper, App. E).

    ``features(X) = merge(concat_m head_m(x_m))`` and ``q(z | X) = N(loc, diag(scale^2))``
    from linear layers on the features, with the log-variance soft-clamped as in
    :class:`~omnivae.nn.heads.GaussianEncoder`.

    Arguments:
        heads: ``name -> module`` mapping ``x_m [B, *shape]`` to features ``[B, F_m]``;
            the order of the mapping is the order of concatenation.
        head_features: ``name -> F_m``.
        latent_dim: The latent dimension ``D``.
        merge_hidden: Widths of the merging MLP's hidden layers (each followed by a
            ReLU); empty for the plain concatenation.

    Example:
        >>> heads = {"a": nn.Linear(3, 8), "b": nn.Linear(5, 8)}
        >>> encoder = JointEncoder(heads, {"a": 8, "b": 8}, latent_dim=2, merge_hidden=(16, 16))
        >>> loc, scale = encoder({"a": torch.randn(4, 3), "b": torch.randn(4, 5)})
        >>> loc.shape, scale.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        heads: Mapping[str, nn.Module],
        head_features: Mapping[str, int],
        latent_dim: int,
        merge_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.names = list(heads)
        self.heads = nn.ModuleDict(dict(heads))
        width = sum(int(head_features[name]) for name in self.names)
        self.merge: nn.Module
        if merge_hidden:
            self.merge = MLP(width, tuple(merge_hidden[:-1]), int(merge_hidden[-1]), final_activation=True)
            width = int(merge_hidden[-1])
        else:
            self.merge = nn.Identity()
        self.gaussian = GaussianEncoder(nn.Identity(), width, latent_dim)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        r"""
        Arguments:
            x: ``name -> [B, *shape]`` for every modality of the encoder.

        Returns:
            ``loc [B, D]`` and ``scale [B, D]`` (standard deviations).
        """
        first = x[self.names[0]]
        with network_autocast(first.device):
            features = self.merge(torch.cat([self.heads[name](x[name]) for name in self.names], dim=-1))
        loc, scale, _ = self.gaussian(features)
        return loc, scale


def build_joint_encoder(
    modalities: Sequence[ModalitySpec],
    latent_dim: int,
    backbone: str = "auto",
    hidden: Sequence[int] = (512, 512),
    variant: str = "heads",
) -> JointEncoder:
    r"""The joint encoder of JMVAE for a dataset's modalities (JNF paper, App. E).

    Each head is the body that :func:`~omnivae.nn.build_encoder` builds for the modality
    with the same ``backbone`` and ``hidden`` (so the heads match the unimodal encoders,
    as in App. E.1-E.2). For ``variant="heads"`` the merging MLP has two hidden layers of
    width ``hidden[-1]`` (512 by default, the paper's width; 512 too when ``hidden`` is
    empty); ``"concat"`` feeds the concatenated head features straight to the Gaussian
    layers (App. E.3, which avoids conflicting gradients between modalities).

    Arguments:
        modalities: The dataset's modalities, in order.
        latent_dim: The latent dimension ``D``.
        backbone: As for :func:`~omnivae.nn.build_encoder`.
        hidden: As for :func:`~omnivae.nn.build_encoder`; also sets the merging width.
        variant: One of :data:`JOINT_ENCODERS`.

    Raises:
        UserError: For an unknown variant, or what :func:`~omnivae.nn.build_encoder` refuses.
    """
    if variant not in JOINT_ENCODERS:
        raise unknown_name("joint encoder", variant, JOINT_ENCODERS)
    heads: dict[str, nn.Module] = {}
    features: dict[str, int] = {}
    for spec in modalities:
        # Only the body is kept; the unimodal Gaussian layers would get no gradient here.
        encoder = build_encoder(spec, latent_dim, backbone=backbone, hidden=hidden)
        heads[spec.name] = encoder.body
        features[spec.name] = encoder.loc.in_features
    width = int(hidden[-1]) if len(hidden) else _DEFAULT_MERGE_WIDTH
    merge = (width, width) if variant == "heads" else ()
    return JointEncoder(heads, features, latent_dim, merge)
