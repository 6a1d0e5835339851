"""PreAct ResNet-18 (He et al. 2016), the CIFAR variant used by the adversarial-training literature."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ImageClassifier, PointwiseShortcut


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = PointwiseShortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ImageClassifier):
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
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, stride=(1 if i == 0 or j > 0 else 2)))
                in_planes = planes
        layers += [nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_planes, num_classes)
