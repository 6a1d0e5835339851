"""ResNet-18 (post-activation), CIFAR variant: 3x3 stem, no max-pool, adaptive pooling for any size."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ImageClassifier, PointwiseShortcut


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(PointwiseShortcut(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ImageClassifier):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ):
        super().__init__(mean, std)
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride=(1 if i == 0 or j > 0 else 2)))
                in_planes = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_planes, num_classes)
