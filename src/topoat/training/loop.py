"""The one training loop, shared by every method: schedule, validation, checkpoints, resume, signals."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import TrainConfig, dump_config, from_dict, to_dict
from ..data import ImageDataset
from ..errors import Interrupted, TopoatError, TrainingDiverged
from ..evaluation.accuracy import evaluate
from ..evaluation.graph_metrics import extract, graph_shape, topology_metrics
from ..files import write_text_atomic
from ..objectives import Objective, TopologyRegularized
from ..runs.checkpoint import load_checkpoint, model_record, save_atomic
from ..runs.folder import RunFolder
from ..runtime import autocast, bar_disabled, provenance, rng_state, set_rng_state
from ..signals import handling_signals
from ..topology import TopologyLoss
from .board import EpochBoard
from .build import build_run
from .distributed import SINGLE, DistContext, all_reduce_max, all_reduce_sum, barrier

GUARD_EVERY = 25  # steps between checks for a diverged loss (each check is one host sync)


class TrainingInterrupted(Interrupted):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path, when: str = ""):
        super().__init__(signum, when, f"checkpoint saved to {checkpoint}; continue with --resume")
        self.checkpoint = checkpoint


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

    def handler(signum, _frame):
        flag["signum"] = signum

    with handling_signals(handler):
        yield flag


def _comparable(cfg: TrainConfig) -> dict:
    """The config minus the switches that do not change what is trained (progress bars, threads, logging,
    compilation) or only act after training (the evaluation)."""
    d = to_dict(cfg)
    for speed_or_display in ("progress", "threads", "tensorboard", "compile", "compile_mode", "ddp_timeout"):
        d["runtime"].pop(speed_or_display, None)
    d.pop("evaluation", None)
    return d


class Trainer:
    """One run: its state (epoch, step, best, running totals), the loop, and saving and resuming it.
    What it trains with comes from build_run; where it writes, from RunFolder."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | Path,
        resume: bool = False,
        dataset: ImageDataset | None = None,
        dist: DistContext = SINGLE,
    ):
        self.folder = RunFolder(out)
        self.dist = dist
        self.rank, self.world = dist.rank, dist.world
        if resume and not self.folder.last.is_file() and self.folder.restartable():
            resume = False  # it never completed an epoch: resuming it is starting it again
        if resume:
            self.folder.prepare(resume=True)
            saved = from_dict(TrainConfig, load_checkpoint(self.folder.last)["config"]).validate()
            if _comparable(saved) != _comparable(cfg):
                raise TopoatError(
                    f"the config differs from the one {self.folder.root} was started with; resume without changing it"
                )
        else:
            # every rank checks before rank 0 creates, so all of them agree on an error
            self.folder.prepare(resume=False, create=False)
            barrier()
            if dist.is_main:
                self.folder.prepare(resume=False)
                # before the data loads: a folder killed then still holds what `--resume` starts again from
                write_text_atomic(self.folder.config, dump_config(cfg))
        if cfg.optim.batch_size % dist.world:
            raise TopoatError(
                f"optim.batch_size {cfg.optim.batch_size} (the global batch) must be divisible "
                f"by the {dist.world} processes"
            )
        self.cfg, self.resume = cfg, resume
        try:
            self.parts = parts = build_run(cfg, dataset, dist)
        except TopoatError:
            if not resume and dist.is_main:  # a refused start leaves no trace (a kill leaves config.yaml)
                self.folder.config.unlink(missing_ok=True)
            raise
        self.data, self.device, self.channels_last = parts.data, parts.device, parts.channels_last
        self.x_train, self.x_val, self.y_val = parts.x_train, parts.x_val, parts.y_val
        self.model, self.train_model, self.reference = parts.model, parts.train_model, parts.reference
        self.objective, self.optimizer, self.loader = parts.objective, parts.optimizer, parts.loader
        self.reference_features: Tensor | None = None  # frozen model, fixed split: computed once
        self.reference_shape: dict[str, float] = {}
        self.board: EpochBoard | None = None
        self.epoch, self.step_in_epoch = 0, 0
        self.perm: Tensor | None = None  # the epoch's shuffle, kept so a resume continues it
        self.totals = EpochTotals.fresh(self.device)
        self.last_record: dict | None = None  # the last metrics line, kept in the checkpoint as well
        self.best = {"metric": -1.0, "epoch": 0}
        self.train_seconds = 0.0
        if resume:
            self._load_state()

    # -- checkpoints -------------------------------------------------------------------------------
    def _record(self) -> dict:
        d = self.data
        return model_record(
            self.model,
            self.cfg.model.arch,
            self.cfg.model.args,
            d.num_classes,
            d.in_channels,
            d.image_size,
            class_names=d.class_names,
        )

    def _save_state(self, perm: Tensor | None, totals: EpochTotals | None = None) -> None:
        if self.rank != 0:
            return
        state = self._record()
        state.update(
            {
                "config": to_dict(self.cfg),
                "dataset": self.data.name,
                "optimizer": self.optimizer.state_dict(),
                "objective": self.objective.state_dict(),
                "epoch": self.epoch,
                "step": self.step_in_epoch,
                "perm": None if perm is None else perm.cpu(),
                "rng": rng_state(self.device),
                "data_rng": self.parts.data_generator.get_state(),
                "best": dict(self.best),
                "train_seconds": self.train_seconds,
                "epoch_totals": None if totals is None else totals.state(),
                "last_record": self.last_record,
            }
        )
        save_atomic(state, self.folder.last)

    def _load_state(self) -> None:
        state = load_checkpoint(self.folder.last, map_location="cpu")
        try:
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.objective.load_state_dict(state.get("objective", {}))
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
            self.perm = state["perm"]
            set_rng_state(state["rng"], self.device)
            self.parts.data_generator.set_state(state["data_rng"])
            self.best = dict(state["best"])
            self.train_seconds = float(state["train_seconds"])
            self.totals = EpochTotals.from_state(state.get("epoch_totals"), self.device, zero=self.rank != 0)
            self.last_record = state.get("last_record")
        except (KeyError, RuntimeError, TypeError) as e:
            raise TopoatError(
                f"{self.folder.last} is not a resumable training checkpoint ({e.__class__.__name__})"
            ) from None
        if self.rank == 0:
            self.folder.repair_metrics(self.epoch, self.last_record)

    # -- the loop ----------------------------------------------------------------------------------
    def _set_lr(self, global_step: int) -> float:
        lr = self.cfg.optim.lr * lr_factor(self.cfg, global_step / len(self.loader))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.rank == 0:
            start = {**provenance(self.device), "resumed_at_epoch": self.epoch if self.resume else None}
            self.folder.record_start(start, resumed=self.resume)
            if cfg.runtime.tensorboard:
                self.board = EpochBoard(self.folder.board, dump_config(cfg))
        try:
            with stop_on_signals() as stop:
                while self.epoch < cfg.optim.epochs:
                    self._train_epoch(stop)
                    if self._should_stop(stop):  # it came during validation or the save: the epoch is kept
                        raise TrainingInterrupted(
                            stop["signum"], self.folder.last, f"after epoch {self.epoch} of {cfg.optim.epochs}"
                        )
        finally:
            if self.board is not None:
                self.board.close()
        if stop["signum"] is not None:  # it came after the last check, before the handlers were restored
            raise TrainingInterrupted(stop["signum"], self.folder.last, "after training")
        return {"epochs": self.epoch, "train_seconds": self.train_seconds, "best": dict(self.best)}

    def _train_epoch(self, stop: dict) -> None:
        """Train what is left of the current epoch, validate, then write its metrics line and checkpoint."""
        cfg = self.cfg
        steps = len(self.loader)
        t0 = time.perf_counter()
        if self.perm is None:
            self.perm = self.loader.new_epoch()
        perm = self.perm
        totals = self.totals
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        bar = tqdm(
            total=steps,
            initial=self.step_in_epoch,
            leave=False,
            disable=bar_disabled(cfg.runtime.progress and self.rank == 0),
            desc=f"{cfg.name} epoch {self.epoch + 1}/{cfg.optim.epochs}",
        )
        self.model.train()
        self.objective.set_epoch(self.epoch)  # e.g. AWP's warm-up
        lr = self._set_lr(self.epoch * steps + self.step_in_epoch)
        if self.board is not None:
            self.board.start_steps()
        for x, y in self.loader.batches(self.step_in_epoch, perm):
            lr = self._set_lr(self.epoch * steps + self.step_in_epoch)
            self.objective.set_progress(self.epoch + self.step_in_epoch / steps)
            out = self.train_step(x, y)
            loss = out.loss
            self.step_in_epoch += 1
            if self.board is not None:
                self.board.step(self.epoch * steps + self.step_in_epoch, lr, loss, out.parts)
            bad |= ~torch.isfinite(loss) | (loss.detach() > cfg.optim.max_loss)
            self._accumulate(totals.sums, out, loss, y)
            totals.n_seen += y.shape[0]
            bar.update(1)
            if self.step_in_epoch % GUARD_EVERY == 0 or self.step_in_epoch == steps:
                self._check_divergence(bad)
                if self.board is not None:  # the check has just synchronised: the queued steps cost nothing
                    self.board.flush_steps()
                bar.set_postfix(loss=f"{float(totals.sums['loss'] / totals.n_seen):.4f}", lr=f"{lr:.3g}")
            if self._should_stop(stop):
                bar.close()
                self._check_divergence(bad)
                self._stop_mid_epoch(stop, perm, t0)
        bar.close()
        self.train_seconds += time.perf_counter() - t0
        self.epoch += 1
        self.step_in_epoch, self.perm = 0, None
        record = {"epoch": self.epoch, "lr": lr}
        for v in [totals.n_seen, *totals.sums.values()]:
            all_reduce_sum(v)
        if float(totals.n_seen) > 0:  # zero only when a pre-totals checkpoint resumed exactly at an epoch's end
            record.update({k: float(v / totals.n_seen) for k, v in totals.sums.items()})
        record.update(self._validate())
        record["seconds"] = round(totals.seconds + time.perf_counter() - t0, 3)
        record["train_seconds"] = round(self.train_seconds, 3)
        self.last_record = record
        # The line first: a kill between the two leaves a line the checkpoint does not cover, which the
        # resume drops and writes again; the other order would lose the line for good.
        if self.rank == 0:
            self.folder.append_metrics(record)
        self._save_state(None)
        self.totals = EpochTotals.fresh(self.device)
        if self.rank == 0:
            print(epoch_line(cfg.name, record, cfg.optim.epochs), flush=True)
            if self.board is not None:
                self.board.log(record)

    def _stop_mid_epoch(self, stop: dict, perm: Tensor, t0: float) -> None:
        """Save a checkpoint with the epoch's running totals (summed over the processes), then stop."""
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        totals = self.totals
        for v in [totals.n_seen, *totals.sums.values()]:
            all_reduce_sum(v)
        self._save_state(perm, EpochTotals(totals.sums, totals.n_seen, totals.seconds + elapsed))
        raise TrainingInterrupted(
            stop["signum"] or signal.SIGTERM, self.folder.last, f"in epoch {self.epoch + 1} of {self.cfg.optim.epochs}"
        )

    def train_step(self, x: Tensor, y: Tensor):
        """One optimisation step on a batch (the benchmark times exactly this)."""
        if self.channels_last:
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

    def _should_stop(self, stop: dict) -> bool:
        """A signal seen by any process stops all of them at the same step (checked every GUARD_EVERY
        steps under DDP, where agreeing costs a collective)."""
        if not self.dist.enabled:
            return stop["signum"] is not None
        if self.step_in_epoch % GUARD_EVERY:
            return False
        flag = torch.tensor(0 if stop["signum"] is None else 1, device=self.device)
        return bool(all_reduce_max(flag))

    def _check_divergence(self, bad: Tensor) -> None:
        if bool(all_reduce_max(bad.to(torch.int32))):
            hint = " (lower topology.lambda_* or use topology.layer: features)" if self.cfg.topology else ""
            kept = (
                f"the last good checkpoint is kept in {self.folder.last}"
                if self.folder.last.is_file()
                else f"no checkpoint was saved yet, so the run can be started again into {self.folder.root}"
            )
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch + 1}: the loss became non-finite or "
                f"exceeded optim.max_loss={self.cfg.optim.max_loss:g}{hint}; {kept}"
            )

    @staticmethod
    def _accumulate(sums: dict[str, Tensor], out, loss: Tensor, y: Tensor) -> None:
        n = y.shape[0]
        items = {"loss": loss.detach().float() * n}
        for k, v in out.parts.items():
            items[k] = v.float() * n
        logits = out.logits_adv if out.logits_adv is not None else out.logits_nat
        if logits is not None:
            key = "train_adv_acc" if out.logits_adv is not None else "train_acc"
            items[key] = (logits.detach().argmax(1) == y).sum().float()
        for k, v in items.items():
            sums[k] = sums[k] + v if k in sums else v

    def _validate(self) -> dict[str, float]:
        cfg = self.cfg
        if self.x_val is None or self.epoch % cfg.validation.every != 0 and self.epoch != cfg.optim.epochs:
            return {}
        model = self.model
        attacks = [f"pgd-{cfg.validation.attack_steps}"] if cfg.validation.attack_steps > 0 else []
        # Each process validates its strided share; the counts are summed, so every rank agrees on "best".
        assert self.y_val is not None  # set together with x_val
        x_val, y_val = self.x_val[self.rank :: self.world], self.y_val[self.rank :: self.world]
        res = evaluate(
            model,
            x_val,
            y_val,
            attacks,
            norm=cfg.attack.norm,
            eps=cfg.attack.eps,
            batch_size=cfg.evaluation.batch_size,
            progress=False,
        )
        local = torch.tensor(
            [res.natural_acc * res.n] + [res.robust_acc[a] * res.n for a in attacks] + [res.n],
            device=self.device,
            dtype=torch.float64,
        )
        counts = all_reduce_sum(local).tolist()
        record: dict[str, float] = {"val_natural_acc": counts[0] / counts[-1]}
        if attacks:
            record["val_robust_acc"] = counts[1] / counts[-1]
        if self.rank == 0 and self.reference is not None and cfg.validation.topology and self.x_val.shape[0] > 10:
            record.update(self._validate_topology(self.reference, self.x_val))
        metric = record.get("val_robust_acc", record["val_natural_acc"])
        if metric > self.best["metric"]:
            self.best = {"metric": metric, "epoch": self.epoch}
            if self.rank == 0:
                best = self._record()
                best.update(
                    {"epoch": self.epoch, "config": to_dict(cfg), "dataset": self.data.name, "validation": record}
                )
                save_atomic(best, self.folder.best)
        return record

    def _validate_topology(self, reference: nn.Module, x_val: Tensor) -> dict[str, float]:
        """Graph KL (under the run's own topology loss; the default one for runs without TRAIN) and kNN
        overlap against the reference at the run's layer, and the shape of the penultimate features' graphs
        (entropy, mean cosine) of the model and, once, of the reference, comparable across all runs."""
        topo = self.cfg.topology
        layer = topo.layer if topo is not None else "features"
        if self.reference_features is None:
            reference_layer = (topo.teacher_layer or layer) if topo is not None else "features"
            self.reference_features = extract(reference, x_val, reference_layer)
            penultimate = self.reference_features if reference_layer == "features" else extract(reference, x_val)
            self.reference_shape = graph_shape(penultimate, self.cfg.optim.batch_size)
        s = extract(self.model, x_val, layer)
        loss = _topology_loss(self.objective) or TopologyLoss()
        m = topology_metrics(s, self.reference_features, graph_size=self.cfg.optim.batch_size, kernel=loss)
        shape = graph_shape(s if layer == "features" else extract(self.model, x_val), self.cfg.optim.batch_size)
        m.update(shape)
        m["reference_graph_entropy"] = self.reference_shape["graph_entropy"]
        return {f"val_{k}": v for k, v in m.items()}


def _topology_loss(objective: Objective) -> TopologyLoss | None:
    """The topology loss of the TRAIN wrapper inside an objective (under AWP or distillation), or None."""
    inner: Objective | None = objective
    while inner is not None and not isinstance(inner, TopologyRegularized):
        inner = getattr(inner, "base", None) or getattr(inner, "inner", None)
    return inner.topology if inner is not None else None


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
        and isinstance(value, (int, float))
    ]
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
