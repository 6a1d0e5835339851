"""The shared shape of every topoat model: [0, 1] inputs, normalisation inside, logits + features."""

from __future__ import annotations

from typing import Sequence, Union

import torch
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

    def forward(self, x: Tensor, return_features: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        z = self.features(x)
        logits = self.head(z)
        return (logits, z) if return_features else logits
