"""The networks of the coherence classifiers: a small CNN for images (the PolyMNIST digit
classifier of Sutter et al. 2021) and an MLP for everything else.

:mod:`omnivae.metrics.classifiers` trains, scores and caches them.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from omnivae.data.base import ModalitySpec


class ConvClassifier(nn.Module):
    """The PolyMNIST digit classifier, for images ``[B, C, H, W]``.

    Conv(C->10, k4, s2, p1) - Dropout2d(.5) - ReLU - Conv(10->20, k4, s2, p1) - Dropout2d(.5)
    - ReLU - Flatten - Linear(128) - ReLU - Linear(classes), as in the MoPoE evaluation of
    PolyMNIST (Sutter et al. 2021; ``ConvNetworkImgClfCMNIST``). At 28x28 the flattened
    size is 20*7*7 = 980; other sizes use the same layers with their own flattened size.

    Args:
        channels: Input channels C.
        height: Input height H (>= 4).
        width: Input width W (>= 4).
        num_classes: Output logits.
    """

    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        out_h, out_w = (height // 2) // 2, (width // 2) // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, 10, kernel_size=4, stride=2, padding=1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=4, stride=2, padding=1),
            nn.Dropout2d(0.5),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(20 * out_h * out_w, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[B, 128]`` (the feature space of the Frechet distance)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MLPClassifier(nn.Module):
    """Flatten - Linear(256) - ReLU - Dropout - Linear(128) - ReLU - Dropout - Linear(classes).

    Args:
        in_features: Flattened input size.
        num_classes: Output logits.
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[B, 128]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


def build_classifier(spec: ModalitySpec, num_classes: int) -> nn.Module:
    """A classifier returning logits for one modality, with a ``features(x)`` method.

    Images ``(C, H, W)`` get :class:`ConvClassifier` (exactly the PolyMNIST classifier at
    28x28); every other shape gets :class:`MLPClassifier` on the flattened input.

    Example:
        >>> import torch
        >>> net = build_classifier(ModalitySpec("m0", (3, 28, 28), "image"), 10)
        >>> net(torch.rand(2, 3, 28, 28)).shape, net.features(torch.rand(2, 3, 28, 28)).shape
        (torch.Size([2, 10]), torch.Size([2, 128]))
    """
    shape = tuple(spec.shape)
    if spec.kind == "image" and len(shape) == 3 and min(shape[1:]) >= 4:
        return ConvClassifier(shape[0], shape[1], shape[2], num_classes)
    return MLPClassifier(int(np.prod(shape)), num_classes)
