"""Where a run's progress goes: each sink gets the same calls from the training loop (steps, the points where
the device is synchronised anyway, the epoch's metrics line) and shows or keeps what it wants of them.
The metrics file is the record; the console line, the progress bar and TensorBoard are views of it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from tqdm.auto import tqdm

from ..runs.folder import RunFolder
from ..runtime import bar_disabled
from .board import EpochBoard


class Sink:
    """The calls a sink gets, all optional. Values are on the device until `synced` (reading them earlier
    would cost the loop a host sync per step)."""

    def epoch_start(self, epoch: int, steps: int, done: int) -> None:
        """Epoch `epoch` (1-based) of `steps` steps begins, `done` of them already trained (a resume)."""

    def step(self, global_step: int, lr: float, loss: Tensor, parts: dict[str, Tensor]) -> None:
        """One step was taken (`global_step` counts from 1 over the whole run)."""

    def synced(self, mean_loss: Tensor, lr: float) -> None:
        """The device was just synchronised (the divergence check): values are cheap to read now."""

    def steps_end(self) -> None:
        """The epoch's steps are over (or stopped): validation or a save comes next."""

    def epoch_end(self, record: dict) -> None:
        """The epoch's metrics line."""

    def close(self) -> None:
        """The run ends, normally or not."""


class Sinks(Sink):
    """Several sinks as one, called in order."""

    def __init__(self, sinks: Sequence[Sink] = ()):
        self.sinks = list(sinks)

    def epoch_start(self, epoch: int, steps: int, done: int) -> None:
        for s in self.sinks:
            s.epoch_start(epoch, steps, done)

    def step(self, global_step: int, lr: float, loss: Tensor, parts: dict[str, Tensor]) -> None:
        for s in self.sinks:
            s.step(global_step, lr, loss, parts)

    def synced(self, mean_loss: Tensor, lr: float) -> None:
        for s in self.sinks:
            s.synced(mean_loss, lr)

    def steps_end(self) -> None:
        for s in self.sinks:
            s.steps_end()

    def epoch_end(self, record: dict) -> None:
        for s in self.sinks:
            s.epoch_end(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class MetricsFile(Sink):
    """metrics.jsonl, one line per epoch."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def epoch_end(self, record: dict) -> None:
        self.folder.append_metrics(record)


class ProgressBar(Sink):
    """A progress bar over an epoch's steps, with the running loss and the learning rate."""

    def __init__(self, name: str, epochs: int, enabled: bool):
        self.name, self.epochs, self.disable = name, epochs, bar_disabled(enabled)
        self.bar: tqdm | None = None

    def epoch_start(self, epoch: int, steps: int, done: int) -> None:
        desc = f"{self.name} epoch {epoch}/{self.epochs}"
        self.bar = tqdm(total=steps, initial=done, leave=False, disable=self.disable, desc=desc)

    def step(self, global_step: int, lr: float, loss: Tensor, parts: dict[str, Tensor]) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def synced(self, mean_loss: Tensor, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{float(mean_loss):.4f}", lr=f"{lr:.3g}")

    def steps_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    close = steps_end


class Console(Sink):
    """One plain line per epoch on stdout (it survives pipes and log files, unlike the bar)."""

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs

    def epoch_end(self, record: dict) -> None:
        print(epoch_line(self.name, record, self.epochs), flush=True)


class Board(Sink):
    """TensorBoard (training/board.py): per-step scalars, flushed where the loop synchronises anyway."""

    def __init__(self, board: EpochBoard):
        self.board = board

    def epoch_start(self, epoch: int, steps: int, done: int) -> None:
        self.board.start_steps()

    def step(self, global_step: int, lr: float, loss: Tensor, parts: dict[str, Tensor]) -> None:
        self.board.step(global_step, lr, loss, parts)

    def synced(self, mean_loss: Tensor, lr: float) -> None:
        self.board.flush_steps()

    def epoch_end(self, record: dict) -> None:
        self.board.log(record)

    def close(self) -> None:
        self.board.close()


def epoch_line(name: str, record: dict, epochs: int) -> str:
    """One plain line per epoch for the console and piped logs; metrics.jsonl keeps every number."""
    parts = [f"[{name}] epoch {record['epoch']}/{epochs}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    for key, label in (("val_natural_acc", "val natural"), ("val_robust_acc", "val robust")):
        if key in record:
            parts.append(f"{label} {100 * record[key]:.1f}%")
    parts += [
        f"{key[4:]} {value:.4g}"
        for key, value in record.items()
        if key.startswith("val_")
        and key not in ("val_natural_acc", "val_robust_acc")
        and isinstance(value, int | float)
    ]
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
