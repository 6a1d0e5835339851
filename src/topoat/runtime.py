"""Device, precision, seeding and determinism: the few switches every entry point shares."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import torch

from .errors import TopoatError

M = TypeVar("M", bound=torch.nn.Module)
C = TypeVar("C", bound=Callable)


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """The device `name` means on this machine; one the machine lacks is a TopoatError here, not a
    traceback at the first tensor sent to it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TopoatError(f"bad device {name!r} (use {DEVICES})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TopoatError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TopoatError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise TopoatError(f"device {name!r} requested but MPS (Apple's GPU backend) is not available")
    elif device.type != "cpu":
        raise TopoatError(f"device {name!r} is not supported (use {DEVICES})")
    return device


THREADS_PER_CPU = 4  # more threads than this only queue for the cores; far more crash torch's thread pool


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (runtime.threads; None keeps torch's choice), at most THREADS_PER_CPU per CPU:
    torch.set_num_threads(100000) crashes the process."""
    if threads is None:
        return
    limit = THREADS_PER_CPU * (os.cpu_count() or 1)
    if threads > limit:
        raise TopoatError(
            f"runtime.threads {threads} is more than {THREADS_PER_CPU} per CPU of this machine "
            f"({os.cpu_count()} CPUs, so at most {limit}); null lets torch choose"
        )
    torch.set_num_threads(threads)


def provenance(device: torch.device) -> dict:
    """What produced a result, so a results.json can be traced: versions, code, machine, command."""
    from . import __version__

    return {
        "topoat": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "command": _command_line(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _command_line() -> str:
    """The command as typed: `topoat ...` whether it ran as the console script or `python -m topoat`."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if program.name == "topoat" or program.parts[-2:] == ("topoat", "__main__.py"):
        return " ".join(["topoat", *sys.argv[1:]])
    return " ".join(sys.argv)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() is often empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _git_commit() -> str | None:
    """The commit of the checkout the package runs from (with "+changes" when it has uncommitted edits);
    None for an installed copy or without git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast (weights stay fp32) on CUDA when amp is auto or bf16; fp32 otherwise."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_channels_last(setting: str) -> bool:
    # "auto" is on for CPU too: cuDNN's and oneDNN's convolutions both prefer NHWC (on a 2-core AMD EPYC,
    # PGD-AT ran 1.14x faster for preact-resnet18 and 1.45x for small-cnn). The residual shortcuts avoid
    # the one CPU kernel it broke (`models.base.PointwiseShortcut`). "off" keeps NCHW.
    return setting != "off"


def use_compile(device: torch.device, setting: str) -> bool:
    # on CPU the compile costs more than a short run gains, and CI must not need a C++ compiler
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compiled(target: C, mode: str) -> C:
    """`target` (a module or a function) under torch.compile, for fixed shapes (the loader drops the last,
    smaller batch), so a new shape never triggers a dynamic-shape recompile; a module's train and eval
    mode get one graph each."""
    graph = torch.compile(target, mode=None if mode == "default" else mode, dynamic=False)
    return cast(C, graph)  # a module comes back as an OptimizedModule: itself a Module wrapping `target`


def as_channels_last(model: M) -> M:
    """The model with its weights in channels-last layout (`use_channels_last` decides when)."""
    # torch's stubs omit Module.to's memory_format keyword, which torch has accepted since 1.5
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def bar_disabled(wanted: bool) -> bool | None:
    """tqdm's `disable`: None shows a bar only on a terminal, so piped logs get no carriage returns."""
    return None if wanted else True


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
