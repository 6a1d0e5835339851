"""Optional TensorBoard logging (`runtime.tensorboard: true`): each epoch's metrics line as scalars and the
run's config as text. metrics.jsonl stays the record; this is a view of it."""

from __future__ import annotations

from pathlib import Path

from .errors import TopoatError

INSTALL = "pip install 'topoat[tensorboard]' (or pip install tensorboard)"


class EpochBoard:
    def __init__(self, folder: Path, config_text: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TopoatError(f"runtime.tensorboard needs the tensorboard package: {INSTALL}") from None
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "))  # indented: a code block

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
