"""Deterministic synthetic images of any shape, for tests and benchmarks.

Each class has a fixed random prototype; images are that prototype plus noise, so the task is
learnable (accuracy moves) while the data costs nothing to make.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import TopoatError
from .base import ImageDataset
from .registry import register_dataset

MAX_SYNTHETIC_BYTES = 8 * 2**30  # far beyond a test or benchmark; a typo (100000 for 100) stops here


def make_synthetic(
    shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    n_train: int = 512,
    n_test: int = 256,
    seed: int = 0,
    noise: float = 0.25,
) -> ImageDataset:
    if len(shape) != 3 or min(shape) < 1:
        raise TopoatError(f"synthetic shape must be [C, H, W], got {list(shape)}")
    if num_classes < 2 or n_train < 2 or n_test < 1:
        raise TopoatError("synthetic data needs >= 2 classes, >= 2 train and >= 1 test images")
    # the images are drawn as float32 (prototypes, then each split) before they become bytes
    needed = 4 * (num_classes + n_train + n_test) * math.prod(shape)
    if needed > MAX_SYNTHETIC_BYTES:
        raise TopoatError(
            f"synthetic images of shape {list(shape)} ({n_train} + {n_test} of them, {num_classes} classes) "
            f"would need {needed / 2**30:,.0f} GiB to make; the limit is {MAX_SYNTHETIC_BYTES // 2**30} GiB"
        )
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn((n, *shape), generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    prototypes = torch.rand((num_classes, *shape), generator=g)
    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return ImageDataset("synthetic", x_train, y_train, x_test, y_test, num_classes)


def load_synthetic(
    root: str | None = None,
    *,
    seed: int = 0,
    shape: tuple[int, ...] = (1, 28, 28),
    classes: int = 10,
    train: int = 512,
    test: int = 256,
) -> ImageDataset:
    """The synthetic set as `data.args` describe it (`root` is unused: nothing is read)."""
    return make_synthetic(tuple(shape), classes, train, test, seed)


register_dataset("synthetic", load_synthetic)
