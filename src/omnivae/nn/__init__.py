"""Networks: backbones, the Gaussian encoder head and likelihood heads returning distributions.

Example:
    >>> import torch
    >>> from omnivae.modalities import ModalitySpec
    >>> from omnivae.nn import build_decoder, build_encoder
    >>> spec = ModalitySpec("m0", (3, 28, 28), "image")
    >>> encoder, decoder = build_encoder(spec, 20), build_decoder(spec, 20)
    >>> loc, scale, _ = encoder(torch.rand(4, 3, 28, 28))
    >>> decoder(loc).log_prob(torch.rand(4, 3, 28, 28)).shape
    torch.Size([4])
"""

from omnivae.nn.backbones import (
    MLP,
    ConvDecoder28,
    ConvEncoder28,
    ResidualBlock,
    ResNetDecoder28,
    ResNetEncoder28,
)
from omnivae.nn.factory import BACKBONES, LIKELIHOODS, build_decoder, build_encoder
from omnivae.nn.heads import (
    COVARIANCES,
    BernoulliHead,
    CategoricalHead,
    Decoder,
    GaussianEncoder,
    GaussianHead,
    LaplaceHead,
    LikelihoodHead,
    soft_clamp,
)
from omnivae.nn.joint import JOINT_ENCODERS, JointEncoder, build_joint_encoder

__all__ = [
    "BACKBONES",
    "COVARIANCES",
    "JOINT_ENCODERS",
    "LIKELIHOODS",
    "MLP",
    "BernoulliHead",
    "CategoricalHead",
    "ConvDecoder28",
    "ConvEncoder28",
    "Decoder",
    "GaussianEncoder",
    "GaussianHead",
    "JointEncoder",
    "LaplaceHead",
    "LikelihoodHead",
    "ResNetDecoder28",
    "ResNetEncoder28",
    "ResidualBlock",
    "build_decoder",
    "build_encoder",
    "build_joint_encoder",
    "soft_clamp",
]
