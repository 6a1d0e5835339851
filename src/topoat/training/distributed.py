"""Multi-process training through PyTorch DDP, launched by torchrun (its own rendezvous, nothing home-made).

`torchrun --nproc_per_node N -m topoat train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_from_env`
turns them into a process group (NCCL on CUDA, gloo on CPU). `optim.batch_size` stays the global batch,
so a config means the same on one process or many.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import TopoatError


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


LAUNCH = "launch with torchrun (e.g. torchrun --nproc_per_node 2 -m topoat train ...)"


def _env_number(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """The whole number in variable `name`; `default` when it is unset (required when there is none)."""
    text = env.get(name)
    if text is None or not text.strip():
        if default is None:
            raise TopoatError(f"distributed: WORLD_SIZE is {env['WORLD_SIZE']} but {name} is not set; {LAUNCH}")
        return default
    try:
        return int(text)
    except ValueError:
        raise TopoatError(f"distributed: {name} must be a whole number, got {text!r}") from None


def launch_environment(env: Mapping[str, str]) -> DistContext:
    """Rank, world size and local rank from torchrun's variables, checked before any process waits for
    another: a rank outside the world or a missing MASTER_ADDR would otherwise wait in the rendezvous
    (deaf to SIGINT and SIGTERM, which Python handles only once torch returns) or fail with a traceback."""
    world = _env_number(env, "WORLD_SIZE", 1)
    if world < 1:
        raise TopoatError(f"distributed: WORLD_SIZE must be >= 1, got {world}")
    if world == 1:
        return SINGLE
    rank = _env_number(env, "RANK")
    if not 0 <= rank < world:
        raise TopoatError(f"distributed: RANK {rank} is not a rank of WORLD_SIZE {world} (0 to {world - 1})")
    local_world = _env_number(env, "LOCAL_WORLD_SIZE", world)
    local_rank = _env_number(env, "LOCAL_RANK", 0)
    if not 0 <= local_rank < local_world:
        raise TopoatError(f"distributed: LOCAL_RANK {local_rank} must lie in 0 to {local_world - 1}")
    if not env.get("MASTER_ADDR", "").strip():
        raise TopoatError(f"distributed: WORLD_SIZE is {world} but MASTER_ADDR is not set; {LAUNCH}")
    port = _env_number(env, "MASTER_PORT")
    if not 0 < port < 65536:
        raise TopoatError(f"distributed: MASTER_PORT must be a port number (1 to 65535), got {port}")
    return DistContext(rank, world, local_rank)


def init_from_env(device_setting: str = "auto", timeout: float = 600.0) -> DistContext:
    """Join the process group torchrun describes in the environment; a no-op without torchrun. A process
    that waits `timeout` seconds for the others (to start, or in a collective) stops with an error."""
    ctx = launch_environment(os.environ)
    if not ctx.enabled:
        return SINGLE
    use_cuda = torch.cuda.is_available() and device_setting != "cpu"
    if use_cuda:
        if ctx.local_rank >= torch.cuda.device_count():
            raise TopoatError(f"local rank {ctx.local_rank} has no GPU (found {torch.cuda.device_count()})")
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        try:
            with _native_stderr_shown_on_success():
                dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:  # torch's DistStoreError and DistNetworkError are RuntimeErrors
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TopoatError(
                f"distributed: rank {ctx.rank} of {ctx.world} could not join the others at {where} within "
                f"{timeout:g} s (runtime.ddp_timeout): {cause}"
            ) from None
    return ctx


@contextmanager
def _native_stderr_shown_on_success() -> Iterator[None]:
    """torch's C++ side writes a stack trace to the stderr descriptor for each failed connection attempt:
    held in a file while the group forms, then passed on if it formed; a failure is the caller's one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        text = held.read()
        while text:
            text = text[os.write(2, text) :]


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
