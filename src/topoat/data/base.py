"""The in-memory dataset every loader returns: uint8 NCHW images and int64 labels, as tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import TopoatError


@dataclass
class ImageDataset:
    name: str
    x_train: Tensor  # uint8, (N, C, H, W)
    y_train: Tensor  # int64, (N,)
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    class_names: list[str] | None = None
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise TopoatError(
                    f"{self.name}: {split} images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            if min(x.shape[1:]) < 1:
                raise TopoatError(
                    f"{self.name}: {split} images must have at least 1 channel and 1x1 pixels, "
                    f"got (C, H, W) = {tuple(x.shape[1:])}"
                )
            if y.shape != (x.shape[0],):
                raise TopoatError(f"{self.name}: {split} has {x.shape[0]} images but {y.numel()} labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise TopoatError(f"{self.name}: {split} labels must lie in 0..{self.num_classes - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise TopoatError(f"{self.name}: train and test images differ in shape")
        if not self.mean:
            self.mean, self.std = channel_stats(self.x_train)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def split_validation(self, val_size: int, seed: int = 0) -> ImageDataset:
        """Move a fixed random `val_size` images out of train into a validation split."""
        if val_size <= 0:
            return self
        n = self.x_train.shape[0]
        if val_size >= n:
            raise TopoatError(f"{self.name}: val_size {val_size} leaves no training data (train has {n})")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val, train = perm[:val_size], perm[val_size:].sort().values
        return ImageDataset(
            self.name,
            self.x_train[train],
            self.y_train[train],
            self.x_test,
            self.y_test,
            self.num_classes,
            self.class_names,
            self.x_train[val],
            self.y_train[val],
            self.mean,
            self.std,
        )

    def subset_train(self, k: int | None, seed: int = 0) -> ImageDataset:
        """Keep a fixed random k of the training images (the same k for every run with this seed)."""
        n = self.x_train.shape[0]
        if k is None or k >= n:
            return self
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:k].sort().values
        return ImageDataset(
            self.name,
            self.x_train[keep],
            self.y_train[keep],
            self.x_test,
            self.y_test,
            self.num_classes,
            self.class_names,
            self.x_val,
            self.y_val,
            self.mean,
            self.std,
        )


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, from a fixed sample of at most 10k."""
    sample = x[:10000].float().div_(255.0)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def exact_channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Mean and std per channel over every uint8 image (in [0, 1] units), from each channel's histogram
    of the 256 values: exact, and fast where float64 sums over every pixel would take seconds.

    For training splits ordered by class (Tiny ImageNet, image folders), where the first-10k sample
    `channel_stats` takes would see only a few classes.
    """
    counts = torch.zeros(x.shape[1], 256, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        for c in range(x.shape[1]):
            counts[c] += torch.bincount(block[:, c].reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    std = ((counts * (values - mean[:, None]).square()).sum(dim=1) / total).sqrt().clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]
