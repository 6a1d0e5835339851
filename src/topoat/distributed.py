"""Multi-process training through PyTorch DDP, launched by torchrun (its own rendezvous, nothing home-made).

`torchrun --nproc_per_node N -m topoat train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_from_env`
turns them into a process group (NCCL on CUDA, gloo on CPU). `optim.batch_size` stays the global batch,
so a config means the same on one process or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import TopoatError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def init_from_env(device_setting: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_setting != "cpu"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise TopoatError(f"local rank {local_rank} has no GPU (found {torch.cuda.device_count()})")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank)


def device_for(ctx: DistContext, device_setting: str) -> str:
    """Under DDP on CUDA each process owns the GPU of its local rank."""
    if ctx.enabled and torch.cuda.is_available() and device_setting in ("auto", "cuda"):
        return f"cuda:{ctx.local_rank}"
    return device_setting


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    if is_active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate every rank's rows; gradients flow back to each rank's own rows."""
    if not is_active():
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def gather(t: Tensor) -> Tensor:
    """Concatenate every rank's rows, without gradient (teacher features, labels)."""
    if not is_active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def barrier() -> None:
    if is_active():
        dist.barrier()
