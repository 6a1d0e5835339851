"""The shared shape of every topoat model: [0, 1] inputs, normalisation inside, logits + features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageClassifier(nn.Module):
    """Subclasses define `self.body` (image -> penultimate features) and `self.head` (features -> logits).

    `forward(x)` takes NCHW images in [0, 1] (the RobustBench convention) and normalises them with the
    dataset's mean and std held as buffers, so a checkpoint cannot be evaluated with the wrong one.
    """

    body: nn.Module
    head: nn.Module
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        z = self.features(x)
        logits = self.head(z)
        return (logits, z) if return_features else logits


class PointwiseShortcut(nn.Conv2d):
    """The residual shortcut's 1x1 convolution with a stride, computed as subsampling followed by a
    stride-1 1x1 convolution: the same function and the same parameters (checkpoints are unchanged).

    Why: torch 2.13's CPU backward of a strided 1x1 convolution in channels-last layout hangs or
    corrupts the heap when it has few channels (a width-4 PreAct ResNet at 64x64); the stride-1 kernel
    does not, which lets channels-last be the CPU default too.
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__(in_planes, planes, 1, 1, bias=False)
        self.subsample = stride

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, subsample={self.subsample}"

    def forward(self, x: Tensor) -> Tensor:
        s = self.subsample
        return F.conv2d(x[:, :, ::s, ::s] if s > 1 else x, self.weight)
