"""Deterministic synthetic images of any shape, for tests and benchmarks.

Each class has a fixed random prototype; images are that prototype plus noise, so the task is
learnable (accuracy moves) while the data costs nothing to make.
"""

from __future__ import annotations

import torch

from ..errors import TopoatError
from .base import ImageDataset


def make_synthetic(
    shape=(1, 28, 28), num_classes: int = 10, n_train: int = 512, n_test: int = 256, seed: int = 0, noise: float = 0.25
) -> ImageDataset:
    if len(shape) != 3 or min(shape) < 1:
        raise TopoatError(f"synthetic shape must be [C, H, W], got {list(shape)}")
    if num_classes < 2 or n_train < 2 or n_test < 1:
        raise TopoatError("synthetic data needs >= 2 classes, >= 2 train and >= 1 test images")
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes, *shape), generator=g)

    def draw(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn((n, *shape), generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return ImageDataset("synthetic", x_train, y_train, x_test, y_test, num_classes)
