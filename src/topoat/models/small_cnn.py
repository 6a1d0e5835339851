"""A small CNN for 28x28 grey images (Fashion-MNIST) that still accepts any size and channel count."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import ImageClassifier


def _conv(c_in: int, c_out: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return layers + [nn.ReLU(inplace=True)]


class SmallCNN(ImageClassifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 32,
        feature_dim: int = 256,
        batchnorm: bool = True,
    ):
        super().__init__(mean, std)
        w = width
        self.body = nn.Sequential(
            *_conv(in_channels, w, batchnorm),
            nn.MaxPool2d(2),
            *_conv(w, 2 * w, batchnorm),
            nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w, batchnorm),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
