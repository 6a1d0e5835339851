"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-34-10 by default as in TRADES and AWP."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ImageClassifier, PointwiseShortcut


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = PointwiseShortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(ImageClassifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__(mean, std)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"wide-resnet depth must be 6n + 4, got {depth}")
        if not 0 <= dropout < 1:  # checked here: F.dropout would refuse it only in the first training step
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        in_planes = widths[0]
        for stage, planes in enumerate(widths[1:]):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                layers.append(WideBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        layers += [nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_planes, num_classes)
