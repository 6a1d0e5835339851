"""The one training loop, shared by every method: schedule, steps, validation, checkpoints, signals.

What it trains with comes from build_run (`RunParts`), where it writes from `RunFolder`, where it reports
from its sinks; where it stands is a `TrainingState`, which last.pt saves and a resume restores."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import dump_config
from ..data import ImageDataset
from ..errors import Interrupted, TopoatError, TrainingDiverged
from ..objectives.base import ObjectiveOutput
from ..runs.folder import RunFolder
from ..runtime import autocast, provenance
from ..schema import TrainConfig
from ..signals import handling_signals
from . import checkpoints, validation
from .board import EpochBoard
from .build import RunParts, build_run
from .distributed import SINGLE, DistContext, all_reduce_max, all_reduce_sum
from .sinks import Board, Console, MetricsFile, ProgressBar, Sink, Sinks
from .state import Best, EpochTotals, TrainingState

GUARD_EVERY = 25  # steps between checks for a diverged loss (each check is one host sync)


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path, when: str = ""):
        super().__init__(signum, when, f"checkpoint saved to {checkpoint}; continue with --resume")
        self.checkpoint = checkpoint


def lr_factor(cfg: TrainConfig, epoch_float: float) -> float:
    """Learning-rate multiplier at a fractional epoch, for every schedule."""
    o = cfg.optim
    t, total = epoch_float, float(o.epochs)
    if o.schedule == "onecycle":
        peak = o.warmup_epochs if o.warmup_epochs > 0 else 0.4 * total
        return t / peak if t < peak else max(0.0, (total - t) / max(total - peak, 1e-12))
    if o.warmup_epochs > 0 and t < o.warmup_epochs:
        return t / o.warmup_epochs
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "multistep":
        return o.gamma ** sum(1 for m in o.milestones if t >= m)
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t / total, 1.0)))
    raise TopoatError(f"unknown schedule {o.schedule!r}")


@contextmanager
def stop_on_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop polls between steps (it then saves and stops)."""
    flag: dict[str, int | None] = {"signum": None}

    def handler(signum: int, _frame: object) -> None:
        flag["signum"] = signum

    with handling_signals(handler):
        yield flag


def default_sinks(cfg: TrainConfig, folder: RunFolder, dist: DistContext = SINGLE) -> list[Sink]:
    """metrics.jsonl, the progress bar, the console line and, if asked for, TensorBoard (rank 0 only)."""
    if not dist.is_main:
        return []
    sinks: list[Sink] = [
        MetricsFile(folder),
        ProgressBar(cfg.name, cfg.optim.epochs, cfg.runtime.progress),
        Console(cfg.name, cfg.optim.epochs),
    ]
    if cfg.runtime.tensorboard:
        sinks.append(Board(EpochBoard(folder.board, dump_config(cfg))))
    return sinks


def step_sums(out: ObjectiveOutput, y: Tensor) -> dict[str, Tensor]:
    """One step's contribution to the epoch's sums: the loss and its parts (per image), training accuracy."""
    n = y.shape[0]
    items = {"loss": out.loss.detach().float() * n}
    for k, v in out.parts.items():
        items[k] = v.float() * n
    logits = out.logits_adv if out.logits_adv is not None else out.logits_nat
    if logits is not None:
        key = "train_adv_acc" if out.logits_adv is not None else "train_acc"
        items[key] = (logits.detach().argmax(1) == y).sum().float()
    return items


class Trainer:
    """Trains `parts` into `folder` as `cfg` says. `from_config` builds the parts, prepares the folder and
    resumes; `sinks` (default: `default_sinks`, made when the run starts) get its progress."""

    def __init__(
        self,
        parts: RunParts,
        folder: RunFolder,
        cfg: TrainConfig,
        *,
        dist: DistContext = SINGLE,
        sinks: Sequence[Sink] | None = None,
    ):
        self.parts, self.folder, self.cfg, self.dist = parts, folder, cfg, dist
        self.model, self.train_model, self.loader = parts.model, parts.train_model, parts.loader
        self.objective, self.optimizer, self.device = parts.objective, parts.optimizer, parts.device
        self.state = TrainingState.fresh(self.device)
        self.resumed = False
        self.sinks = None if sinks is None else Sinks(sinks)
        self.validate = (
            None
            if parts.x_val is None or parts.y_val is None
            else validation.Validator(
                cfg, parts.x_val, parts.y_val, parts.reference, validation.topology_loss_of(parts.objective), dist
            )
        )

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        out: str | Path,
        *,
        resume: bool = False,
        dataset: ImageDataset | None = None,
        dist: DistContext = SINGLE,
        sinks: Sequence[Sink] | None = None,
    ) -> Trainer:
        """A run of `cfg` into folder `out`, new or resumed from its last.pt."""
        folder = RunFolder(out)
        resume = checkpoints.prepare_folder(folder, cfg, resume, dist)
        if cfg.optim.batch_size % dist.world:
            raise TopoatError(
                f"optim.batch_size {cfg.optim.batch_size} (the global batch) must be divisible "
                f"by the {dist.world} processes"
            )
        try:
            parts = build_run(cfg, dataset, dist)
        except TopoatError:
            if not resume and dist.is_main:  # a refused start leaves no trace (a kill leaves config.yaml)
                folder.config.unlink(missing_ok=True)
            raise
        trainer = cls(parts, folder, cfg, dist=dist, sinks=sinks)
        if resume:
            trainer.state = checkpoints.restore(folder, parts, trainer.objective, dist)
            trainer.resumed = True
        return trainer

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        if self.dist.is_main:
            start = {**provenance(self.device), "resumed_at_epoch": state.epoch if self.resumed else None}
            self.folder.record_start(start, resumed=self.resumed)
        if self.sinks is None:
            self.sinks = Sinks(default_sinks(cfg, self.folder, self.dist))
        try:
            with stop_on_signals() as stop:
                while state.epoch < cfg.optim.epochs:
                    self.train_epoch(stop)
                    if self.should_stop(stop):  # it came during validation or the save: the epoch is kept
                        raise TrainingInterrupted(
                            stop["signum"], self.folder.last, f"after epoch {state.epoch} of {cfg.optim.epochs}"
                        )
        finally:
            self.sinks.close()
        if stop["signum"] is not None:  # it came after the last check, before the handlers were restored
            raise TrainingInterrupted(stop["signum"], self.folder.last, "after training")
        return {"epochs": state.epoch, "train_seconds": state.train_seconds, "best": state.best.as_dict()}

    def train_epoch(self, stop: dict) -> None:
        """Train what is left of the current epoch, validate, then write its metrics line and checkpoint."""
        state, sinks, steps = self.state, self.sinks or Sinks(), len(self.loader)
        t0 = time.perf_counter()
        if state.perm is None:
            state.perm = self.loader.new_epoch()
        diverged = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        self.objective.set_epoch(state.epoch)  # e.g. AWP's warm-up
        lr = self.set_lr(state.epoch * steps + state.step)
        sinks.epoch_start(state.epoch + 1, steps, state.step)
        for x, y in self.loader.batches(state.step, state.perm):
            lr = self.set_lr(state.epoch * steps + state.step)
            self.objective.set_progress(state.epoch + state.step / steps)
            out = self.train_step(x, y)
            state.step += 1
            sinks.step(state.epoch * steps + state.step, lr, out.loss, out.parts)
            diverged |= ~torch.isfinite(out.loss) | (out.loss.detach() > self.cfg.optim.max_loss)
            state.totals.add(step_sums(out, y), y.shape[0])
            if state.step % GUARD_EVERY == 0 or state.step == steps:
                self.check_divergence(diverged)  # a host sync: the sinks read their values now
                sinks.synced(state.totals.sums["loss"] / state.totals.n_seen, lr)
            if self.should_stop(stop):
                sinks.steps_end()
                self.check_divergence(diverged)
                self.stop_mid_epoch(stop, t0)
        sinks.steps_end()
        self.end_epoch(lr, t0)

    def end_epoch(self, lr: float, t0: float) -> None:
        """Validate, then the metrics line (sinks) and last.pt. The line first: a kill between the two leaves
        a line the checkpoint does not cover, which the resume drops and writes again; the other order
        would lose the line for good."""
        state = self.state
        state.train_seconds += time.perf_counter() - t0
        state.end_epoch()
        for v in state.totals.tensors():
            all_reduce_sum(v)
        record: dict[str, Any] = {"epoch": state.epoch, "lr": lr, **state.totals.means()}
        record.update(self.validated())
        record["seconds"] = round(state.totals.seconds + time.perf_counter() - t0, 3)
        record["train_seconds"] = round(state.train_seconds, 3)
        state.last_record = record
        if self.sinks is not None:
            self.sinks.epoch_end(record)
        if self.dist.is_main:
            checkpoints.save_last(self.folder, self.parts, self.objective, self.cfg, state)
        state.totals = EpochTotals.fresh(self.device)

    def validated(self) -> dict[str, float]:
        """The validation line when one is due, and best.pt when the model is the best so far."""
        state = self.state
        if self.validate is None or not validation.due(self.cfg, state.epoch):
            return {}
        record = self.validate(self.model, self.device)
        if validation.improves(record, state.best):
            state.best = Best(validation.score(record), state.epoch)
            if self.dist.is_main:
                checkpoints.save_best(self.folder, self.parts, self.cfg, state.epoch, record)
        return record

    def stop_mid_epoch(self, stop: dict, t0: float) -> None:
        """Save a checkpoint with the epoch's running totals (summed over the processes), then stop."""
        state = self.state
        elapsed = time.perf_counter() - t0
        state.train_seconds += elapsed
        totals = state.totals
        for v in totals.tensors():
            all_reduce_sum(v)
        if self.dist.is_main:
            saved = EpochTotals(totals.sums, totals.n_seen, totals.seconds + elapsed)
            checkpoints.save_last(self.folder, self.parts, self.objective, self.cfg, state, saved)
        raise TrainingInterrupted(
            stop["signum"] or signal.SIGTERM,
            self.folder.last,
            f"in epoch {state.epoch + 1} of {self.cfg.optim.epochs}",
        )

    # -- one step ----------------------------------------------------------------------------------
    def set_lr(self, global_step: int) -> float:
        lr = self.cfg.optim.lr * lr_factor(self.cfg, global_step / len(self.loader))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, x: Tensor, y: Tensor) -> ObjectiveOutput:
        """One optimisation step on a batch (the benchmark times exactly this)."""
        if self.parts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.train_model is not self.model:
            # CUDA graphs (compile_mode reduce-overhead) reuse their output memory from one step to the
            # next; marking where a step begins keeps the attack's passes and the training passes of one
            # step from overwriting each other's outputs. Without CUDA graphs this does nothing.
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.cfg.runtime.amp):
            out = self.objective(self.train_model, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        if out.after_step is not None:  # e.g. AWP takes its weight perturbation back
            out.after_step()
        return out

    # -- stopping ----------------------------------------------------------------------------------
    def should_stop(self, stop: dict) -> bool:
        """A signal seen by any process stops all of them at the same step (checked every GUARD_EVERY
        steps under DDP, where agreeing costs a collective)."""
        if not self.dist.enabled:
            return stop["signum"] is not None
        if self.state.step % GUARD_EVERY:
            return False
        flag = torch.tensor(0 if stop["signum"] is None else 1, device=self.device)
        return bool(all_reduce_max(flag))

    def check_divergence(self, diverged: Tensor) -> None:
        if bool(all_reduce_max(diverged.to(torch.int32))):
            hint = " (lower topology.lambda_* or use topology.layer: features)" if self.cfg.topology else ""
            kept = (
                f"the last good checkpoint is kept in {self.folder.last}"
                if self.folder.last.is_file()
                else f"no checkpoint was saved yet, so the run can be started again into {self.folder.root}"
            )
            raise TrainingDiverged(
                f"training diverged in epoch {self.state.epoch + 1}: the loss became non-finite or "
                f"exceeded optim.max_loss={self.cfg.optim.max_loss:g}{hint}; {kept}"
            )
