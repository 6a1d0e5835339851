"""Optional TensorBoard logging (`runtime.tensorboard: true`): each epoch's metrics line as scalars, the
run's config as text, and per-step scalars under `step/` (the loss and its parts, the learning rate and the
time per step). metrics.jsonl stays the record; this is a view of it.

Per-step values stay on the device until the training loop synchronises anyway (its divergence check, every
few dozen steps): then all the queued steps come over in one copy, so watching a run costs no extra sync."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from ..errors import TopoatError

INSTALL = "pip install 'topoat[tensorboard]' (or pip install tensorboard)"
STEP = "step/"  # the tag prefix of per-step scalars (the epoch's keep their metrics.jsonl names)


class EpochBoard:
    def __init__(self, folder: Path, config_text: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TopoatError(f"runtime.tensorboard needs the tensorboard package: {INSTALL}") from None
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "))  # indented: a code block
        self._queued: list[tuple[int, float, list[str], Tensor]] = []
        self._since: float | None = None

    def start_steps(self) -> None:
        """Steps are timed from here (an epoch's start), so validation and saving do not count as step time."""
        self._since = time.perf_counter()

    def step(self, global_step: int, lr: float, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """Queue one step's scalars; nothing leaves the device until `flush_steps`."""
        values = torch.stack(
            [loss.detach().float().reshape(()), *(v.detach().float().reshape(()) for v in parts.values())]
        )
        self._queued.append((global_step, lr, ["loss", *parts], values))

    def flush_steps(self) -> None:
        """Write the queued steps (call where the device is synchronised anyway). The step time is the mean
        over the queued steps since the last flush: exact on a GPU too, where single steps run asynchronously."""
        if not self._queued:
            return
        host = (
            torch.stack([values for *_, values in self._queued]).cpu().tolist() if _same_shape(self._queued) else None
        )
        now = time.perf_counter()
        seconds = (now - self._since) / len(self._queued) if self._since is not None else None
        for i, (global_step, lr, names, values) in enumerate(self._queued):
            row = host[i] if host is not None else values.cpu().tolist()
            for name, value in zip(names, row, strict=True):
                self.writer.add_scalar(STEP + name, value, global_step)
            self.writer.add_scalar(STEP + "lr", lr, global_step)
            if seconds is not None:
                self.writer.add_scalar(STEP + "seconds", seconds, global_step)
        self._queued.clear()
        self._since = now

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.flush_steps()  # an interrupted epoch's steps were trained (its checkpoint holds them): keep them
        self.writer.close()


def _same_shape(queued: list) -> bool:
    return len({tuple(values.shape) for *_, values in queued}) == 1
