"""On-device batches: shuffling, random crop with padding and flips as whole-batch tensor ops."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(x: Tensor) -> Tensor:
    return x.float().div_(255.0)


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> Tensor:
    """Batched augmentation: each image gets its own crop offset and flip, in a few tensor ops."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class DeviceLoader:
    """Iterates (x in [0, 1] float, y) batches of tensors that already live on the device.

    The permutation and the augmentation draw from `generator` (on the data's device), whose state
    is checkpointed, so a resumed run sees exactly the batches an uninterrupted run would.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.crop_padding, self.flip = crop_padding, flip
        self.drop_last = drop_last
        self.generator = generator
        self.rank, self.world = shard
        self.perm: Tensor | None = None

    def __len__(self) -> int:
        n = self.x.shape[0] // self.world
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def new_epoch(self) -> Tensor:
        n = self.x.shape[0]
        if self.shuffle:
            self.perm = torch.randperm(n, device=self.x.device, generator=self.generator)
        else:
            self.perm = torch.arange(n, device=self.x.device)
        return self.perm

    def batches(self, start: int = 0, perm: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of the current epoch from batch index `start` (a resumed epoch passes its perm)."""
        if perm is not None:
            self.perm = perm.to(self.x.device)
        epoch_perm = self.perm if self.perm is not None else self.new_epoch()
        # Every rank takes the same-sized strided share of the global permutation.
        per_rank = self.x.shape[0] // self.world
        idx_all = epoch_perm[: per_rank * self.world].view(per_rank, self.world)[:, self.rank]
        for b in range(start, len(self)):
            idx = idx_all[b * self.batch_size : (b + 1) * self.batch_size]
            x = to_float(self.x[idx])
            if self.crop_padding or self.flip:
                x = random_crop_flip(x, self.crop_padding, self.flip, self.generator)
            yield x, self.y[idx]
        self.perm = None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()
