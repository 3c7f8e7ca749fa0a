"""Backbones: networks that map a modality to features and latents back to raw outputs.

A backbone knows nothing of distributions. Encoder bodies map ``[B, *shape]`` to
``[B, out_features]``; decoder bodies map ``[N, latent_dim]`` to raw ``[N, *shape]``
outputs that a likelihood head (:mod:`omnivae.nn.heads`) turns into a distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = [
    "MLP",
    "ConvEncoder28",
    "ConvDecoder28",
    "ResNetEncoder28",
    "ResNetDecoder28",
    "ResidualBlock",
]


class MLP(nn.Sequential):
    r"""A multi-layer perceptron that flattens its input.

    Inputs of shape ``[B, *shape]`` are flattened to ``[B, prod(shape)]`` first, so the
    same class serves vectors, tables and small images.

    Arguments:
        in_features: The number of input features, ``prod(shape)``.
        hidden: The widths of the hidden layers, each followed by ``activation``.
        out_features: The number of output features.
        activation: The activation class, instantiated once per hidden layer.
        final_activation: Whether to apply ``activation`` after the output layer too,
            as an encoder body feeding a linear head wants.

    Example:
        >>> import torch
        >>> net = MLP(784, (512, 512), 20)
        >>> net(torch.randn(8, 1, 28, 28)).shape
        torch.Size([8, 20])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        final_activation: bool = False,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        widths = [in_features, *hidden]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(widths[-1], out_features))
        if final_activation:
            layers.append(activation())
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


class ConvEncoder28(nn.Sequential):
    r"""The PolyMNIST convolutional encoder body for ``C x 28 x 28`` images.

    Three strided convolutions (28 -> 14 -> 7 -> 4) to ``128 x 4 x 4 = 2048`` features,
    the image network of the MoPoE-VAE PolyMNIST experiments.

    References:
        | Generalized Multimodal ELBO (Sutter et al., 2021)
        | https://arxiv.org/abs/2105.02470

    Arguments:
        channels: The number of image channels ``C``.

    Example:
        >>> import torch
        >>> body = ConvEncoder28(3)
        >>> body(torch.rand(8, 3, 28, 28)).shape
        torch.Size([8, 2048])
    """

    out_features: int = 2048

    def __init__(self, channels: int = 3) -> None:
        super().__init__(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1),
            nn.ReLU(),
            nn.Flatten(start_dim=1),
        )
        self.channels = channels


class ConvDecoder28(nn.Sequential):
    r"""The PolyMNIST convolutional decoder body: latents to raw ``C x 28 x 28`` images.

    Mirrors :class:`ConvEncoder28` with transposed convolutions (4 -> 7 -> 14 -> 28).
    The output is unbounded; the likelihood head decides how to squash it.

    References:
        | Generalized Multimodal ELBO (Sutter et al., 2021)
        | https://arxiv.org/abs/2105.02470

    Arguments:
        latent_dim: The latent dimension ``D``.
        channels: The number of image channels ``C``.

    Example:
        >>> import torch
        >>> body = ConvDecoder28(20, 3)
        >>> body(torch.randn(8, 20)).shape
        torch.Size([8, 3, 28, 28])
    """

    def __init__(self, latent_dim: int, channels: int = 3) -> None:
        super().__init__(
            nn.Linear(latent_dim, 2048),
            nn.ReLU(),
            nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )
        self.channels = channels


class ResidualBlock(nn.Module):
    r"""A pre-activation residual block without normalisation.

    ``out = shortcut(x) + 0.1 * conv(act(conv(act(x))))``. There is no batch norm, so a
    sample's output never depends on which other samples share its batch (batches with
    missing modalities encode only a subset of rows). The small residual weight keeps
    the identity path dominant at initialisation, which trains stably without norms.

    Arguments:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: 2 to halve the spatial size, 1 to keep it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + 0.1 * self.branch(x)


class ResNetEncoder28(nn.Sequential):
    r"""A small residual encoder body for ``C x 28 x 28`` images.

    A stem convolution, two stride-2 residual blocks (28 -> 14 -> 7) and a linear layer
    to ``out_features``, in the spirit of the PolyMNIST ResNets used by MMVAE+ and the
    MM-VAMP VAE, but smaller.

    References:
        | MMVAE+: Enhancing the Generative Quality of Multimodal VAEs without
        | Compromises (Palumbo et al., 2023)
        | https://openreview.net/forum?id=sdQGxouELX

    Arguments:
        channels: The number of image channels ``C``.
        width: Channels after the stem; doubled by each downsampling block.
        out_features: The number of output features.

    Example:
        >>> import torch
        >>> body = ResNetEncoder28(3)
        >>> body(torch.rand(8, 3, 28, 28)).shape
        torch.Size([8, 512])
    """

    def __init__(self, channels: int = 3, width: int = 32, out_features: int = 512) -> None:
        super().__init__(
            nn.Conv2d(channels, width, 3, 1, 1),
            ResidualBlock(width, 2 * width, stride=2),
            ResidualBlock(2 * width, 4 * width, stride=2),
            nn.LeakyReLU(0.2),
            nn.Flatten(start_dim=1),
            nn.Linear(4 * width * 7 * 7, out_features),
            nn.LeakyReLU(0.2),
        )
        self.channels = channels
        self.out_features = out_features


class ResNetDecoder28(nn.Sequential):
    r"""A small residual decoder body: latents to raw ``C x 28 x 28`` images.

    Mirrors :class:`ResNetEncoder28`: a linear layer to ``4w x 7 x 7``, two blocks that
    upsample by nearest-neighbour interpolation (7 -> 14 -> 28), then a 3x3 convolution
    to ``C`` channels. Upsampling before a convolution avoids the checkerboard artefacts
    of transposed convolutions.

    References:
        | MMVAE+: Enhancing the Generative Quality of Multimodal VAEs without
        | Compromises (Palumbo et al., 2023)
        | https://openreview.net/forum?id=sdQGxouELX

    Arguments:
        latent_dim: The latent dimension ``D``.
        channels: The number of image channels ``C``.
        width: Channels before the output convolution; the first block has ``4 * width``.

    Example:
        >>> import torch
        >>> body = ResNetDecoder28(20, 3)
        >>> body(torch.randn(8, 20)).shape
        torch.Size([8, 3, 28, 28])
    """

    def __init__(self, latent_dim: int, channels: int = 3, width: int = 32) -> None:
        super().__init__(
            nn.Linear(latent_dim, 4 * width * 7 * 7),
            nn.Unflatten(1, (4 * width, 7, 7)),
            nn.Upsample(scale_factor=2, mode="nearest"),
            ResidualBlock(4 * width, 2 * width),
            nn.Upsample(scale_factor=2, mode="nearest"),
            ResidualBlock(2 * width, width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, 1, 1),
        )
        self.channels = channels
