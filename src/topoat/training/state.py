"""Where a run stands: the training state a checkpoint saves and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..runs.checkpoint import ResumeState


@dataclass
class EpochTotals:
    """The running sums an epoch's metrics line averages. They go into a mid-epoch checkpoint, so the line
    of a resumed epoch covers all of its steps, not just those after the resume."""

    sums: dict[str, Tensor]
    n_seen: Tensor
    seconds: float = 0.0  # wall time of the epoch before the last interruption

    @classmethod
    def fresh(cls, device: torch.device) -> EpochTotals:
        return cls({}, torch.zeros((), device=device))

    def add(self, items: dict[str, Tensor], n: int) -> None:
        for k, v in items.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n_seen += n

    def means(self) -> dict[str, float]:
        """Each sum over the images seen (one host sync); {} when none were (a checkpoint from before the
        totals were saved, resumed exactly at an epoch's end)."""
        if float(self.n_seen) <= 0:
            return {}
        return {k: float(v / self.n_seen) for k, v in self.sums.items()}

    def tensors(self) -> list[Tensor]:
        """Every number to sum over the processes, in place."""
        return [self.n_seen, *self.sums.values()]

    def state(self) -> dict:
        return {
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "n_seen": self.n_seen.cpu(),
            "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: dict | None, device: torch.device, zero: bool = False) -> EpochTotals:
        """`zero`: the keys without the values (DDP ranks other than 0; rank 0 saved the summed totals)."""
        if not state:  # a checkpoint from before the totals were saved, or one at an epoch's end
            return cls.fresh(device)
        scale = 0.0 if zero else 1.0
        return cls(
            {k: v.to(device) * scale for k, v in state["sums"].items()},
            state["n_seen"].to(device) * scale,
            float(state["seconds"]) * scale,
        )


@dataclass
class Best:
    """The best validation score so far and its epoch (-1: nothing validated yet)."""

    metric: float = -1.0
    epoch: int = 0

    def as_dict(self) -> dict:
        return {"metric": self.metric, "epoch": self.epoch}


@dataclass
class TrainingState:
    """Epochs done, steps done in the next one and its shuffle, the running totals, the best score, the
    training time and the last metrics line. The random generators are saved beside it (`ResumeState`)."""

    totals: EpochTotals
    epoch: int = 0
    step: int = 0
    perm: Tensor | None = None  # the epoch's shuffle, kept so a resume continues it
    best: Best = field(default_factory=Best)
    train_seconds: float = 0.0
    last_record: dict | None = None

    @classmethod
    def fresh(cls, device: torch.device) -> TrainingState:
        return cls(EpochTotals.fresh(device))

    @classmethod
    def resumed(cls, epoch: int, saved: ResumeState, device: torch.device, zero_totals: bool) -> TrainingState:
        return cls(
            totals=EpochTotals.from_state(saved.epoch_totals, device, zero=zero_totals),
            epoch=epoch,
            step=saved.step,
            perm=saved.perm,
            best=Best(float(saved.best["metric"]), int(saved.best["epoch"])),
            train_seconds=saved.train_seconds,
            last_record=saved.last_record,
        )

    def end_epoch(self) -> None:
        self.epoch += 1
        self.step, self.perm = 0, None
