"""The one training loop, shared by every method: schedule, validation, checkpoints, resume, signals."""
from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .analysis import extract, topology_metrics
from .board import EpochBoard
from .checkpoint import check_fits_data, load_checkpoint, model_from_record, model_record, save_atomic
from .config import TrainConfig, dump_config, from_dict, to_dict
from .data import DeviceLoader, ImageDataset, dataset_from_config, to_float
from .distributed import SINGLE, DistContext, all_reduce_max, all_reduce_sum, barrier, device_for
from .errors import Interrupted, TopoatError, TrainingDiverged
from .evaluate import evaluate
from .files import is_temp_name, write_atomic, write_text_atomic
from .models import build_model
from .objectives import build_objective
from .objectives.train_wrapper import check_layer
from .runtime import (
    autocast,
    bar_disabled,
    provenance,
    resolve_device,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
    use_channels_last,
)
from .signals import handling_signals

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
    def fresh(cls, device: torch.device) -> "EpochTotals":
        return cls({}, torch.zeros((), device=device))

    def state(self) -> dict:
        return {"sums": {k: v.detach().cpu() for k, v in self.sums.items()}, "n_seen": self.n_seen.cpu(),
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: Optional[dict], device: torch.device, zero: bool = False) -> "EpochTotals":
        """`zero`: the keys without the values (DDP ranks other than 0; rank 0 saved the summed totals)."""
        if not state:  # a checkpoint from before the totals were saved, or one at an epoch's end
            return cls.fresh(device)
        scale = 0.0 if zero else 1.0
        return cls({k: v.to(device) * scale for k, v in state["sums"].items()}, state["n_seen"].to(device) * scale,
                   float(state["seconds"]) * scale)


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"


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
    flag: dict[str, Optional[int]] = {"signum": None}

    def handler(signum, _frame):
        flag["signum"] = signum

    with handling_signals(handler):
        yield flag


# What a run writes before its first last.pt: a folder holding only these never completed an epoch
# (it failed or was killed in epoch 1), so starting it again loses nothing.
RUN_LEFTOVERS = frozenset({"config.yaml", "metrics.jsonl", "best.pt", "provenance.json"})


def restartable(out: Path, leftovers: frozenset[str] = RUN_LEFTOVERS) -> bool:
    """`out` is a folder that holds nothing but `leftovers` and temporary files of an interrupted write."""
    return out.is_dir() and all(p.is_file() and (p.name in leftovers or is_temp_name(p.name))
                                for p in out.iterdir())


def clear_leftovers(out: Path, leftovers: frozenset[str] = RUN_LEFTOVERS) -> None:
    for p in out.iterdir():
        if p.name in leftovers or is_temp_name(p.name):
            try:
                p.unlink()
            except OSError as e:
                raise TopoatError(f"cannot remove {p} to start again: {e.strerror or e}") from None


def prepare_output(out: Path, resume: bool, create: bool = True, leftovers: frozenset[str] = RUN_LEFTOVERS) -> None:
    if resume:
        if not (out / "last.pt").is_file():
            raise TopoatError(f"nothing to resume in {out} (no last.pt)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not restartable(out, leftovers):
            raise TopoatError(f"output folder {out} already exists and is not empty; pass --resume to continue "
                              "that run, or choose another --out")
        if create:
            clear_leftovers(out, leftovers)
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TopoatError(f"cannot create output folder {out}: {e.strerror}") from None


def _comparable(cfg: TrainConfig) -> dict:
    """The config minus the switches that do not change what is trained (progress bars, threads, logging) or
    only act after training (the evaluation)."""
    d = to_dict(cfg)
    d["runtime"].pop("progress", None)
    d["runtime"].pop("threads", None)
    d["runtime"].pop("tensorboard", None)
    d.pop("evaluation", None)
    return d


def _metrics_epoch(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError, IndexError):  # json's errors are ValueErrors
        return None


def repair_metrics(path: Path, epochs_done: int, last_record: Optional[dict]) -> None:
    """Make metrics.jsonl hold exactly the lines of the epochs the checkpoint covers: later lines go (those
    epochs are trained again), a torn last line goes (a kill mid-write by an older topoat, or a full disk),
    and the checkpoint's own last line comes back if it is missing."""
    lines = [line for line in (path.read_text() if path.exists() else "").splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines):
        epoch = _metrics_epoch(line)
        if epoch is None and i < len(lines) - 1:
            raise TopoatError(f"{path}: line {i + 1} is not a metrics record; remove it to resume")
        if epoch is not None and epoch <= epochs_done:
            keep.append(line)
    if last_record is not None and last_record.get("epoch") == epochs_done and \
            all(_metrics_epoch(line) != epochs_done for line in keep):
        keep.append(json.dumps(last_record))
    if keep != lines:
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def _check_takes_images(model: torch.nn.Module, x: Tensor, what: str, dataset: str) -> None:
    """One image through `model` (eval mode, no gradient): images too small for its pooling, or a model
    built wrongly (a width of 0), fail here in one line rather than inside the first step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(to_float(x))
    except RuntimeError as e:
        raise TopoatError(f"{what} cannot take {dataset} images of shape {list(x.shape[1:])}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    finally:
        model.train(was_training)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, resume: bool = False,
                 dataset: Optional[ImageDataset] = None, dist: DistContext = SINGLE):
        self.paths = RunPaths(Path(out))
        self.dist = dist
        self.rank, self.world = dist.rank, dist.world
        if resume and not self.paths.last.is_file() and restartable(self.paths.root):
            resume = False  # it never completed an epoch: resuming it is starting it again
        if resume:
            prepare_output(self.paths.root, True)
            saved = from_dict(TrainConfig, load_checkpoint(self.paths.last)["config"]).validate()
            if _comparable(saved) != _comparable(cfg):
                raise TopoatError(f"the config differs from the one {self.paths.root} was started with; "
                                  "resume without changing it")
        else:
            # every rank checks before rank 0 creates, so all of them agree on an error
            prepare_output(self.paths.root, False, create=False)
            barrier()
            if dist.is_main:
                prepare_output(self.paths.root, False)
        if cfg.optim.batch_size % dist.world:
            raise TopoatError(f"optim.batch_size {cfg.optim.batch_size} (the global batch) must be divisible "
                              f"by the {dist.world} processes")
        self.cfg, self.resume = cfg, resume
        self.device = resolve_device(device_for(dist, cfg.runtime.device))
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        set_deterministic(cfg.runtime.deterministic)
        seed_everything(cfg.seed)
        self.data = dataset if dataset is not None else dataset_from_config(cfg.data)
        d = self.data
        self.x_train, self.y_train = d.x_train.to(self.device), d.y_train.to(self.device)
        if d.x_val is not None:
            n_val = min(cfg.validation.n, d.x_val.shape[0])
            self.x_val, self.y_val = to_float(d.x_val[:n_val].to(self.device)), d.y_val[:n_val].to(self.device)
        else:
            self.x_val = self.y_val = None
        self.channels_last = use_channels_last(self.device, cfg.runtime.channels_last)
        self.model = build_model(cfg.model.arch, d.num_classes, d.in_channels, d.mean, d.std,
                                 **cfg.model.args).to(self.device)
        _check_takes_images(self.model, self.x_train[:1], f"model {cfg.model.arch}", d.name)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher = None
        if cfg.topology is not None:
            if not cfg.topology.teacher:
                raise TopoatError("topology.teacher: give the path of a standard model's checkpoint")
            self.teacher = self._frozen_model(cfg.topology.teacher, "topology.teacher")
            check_layer(self.model, cfg.topology.layer, "topology.layer")
            check_layer(self.teacher, cfg.topology.teacher_layer or cfg.topology.layer,
                        "topology.teacher_layer" if cfg.topology.teacher_layer else "topology.layer (of the teacher)")
        # The model the per-epoch topology metrics compare with: validation.reference, else the teacher.
        self.reference = self.teacher
        reference = cfg.validation.reference
        if reference and cfg.validation.topology and not (
                cfg.topology is not None and Path(reference).resolve() == Path(cfg.topology.teacher).resolve()):
            self.reference = self._frozen_model(reference, "validation.reference", layout=False)
            if cfg.topology is not None:
                check_layer(self.reference, cfg.topology.teacher_layer or cfg.topology.layer,
                            "topology.layer (of validation.reference)")
        self.reference_features: Optional[Tensor] = None  # frozen model, fixed split: computed once
        self.board: Optional[EpochBoard] = None
        if dist.enabled and cfg.runtime.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_model = torch.compile(self.model) if cfg.runtime.compile else self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)
        self.distillation_teacher = None
        if cfg.distillation is not None:
            path = cfg.distillation.teacher
            if not path:
                raise TopoatError("distillation.teacher: give the path of a standard model's checkpoint")
            same = cfg.topology is not None and Path(path).resolve() == Path(cfg.topology.teacher).resolve()
            self.distillation_teacher = self.teacher if same else self._frozen_model(path, "distillation.teacher")
        self.objective = build_objective(cfg, self.teacher, self.distillation_teacher)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov,
                                         **({"fused": True} if fused else {"foreach": True}))
        self.data_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.loader = DeviceLoader(self.x_train, self.y_train, cfg.optim.batch_size // dist.world, shuffle=True,
                                   crop_padding=cfg.data.augment.crop_padding, flip=cfg.data.augment.flip,
                                   drop_last=True, generator=self.data_gen, shard=(dist.rank, dist.world))
        if len(self.loader) == 0:
            raise TopoatError(f"optim.batch_size {cfg.optim.batch_size} is larger than the training set "
                              f"({self.x_train.shape[0]} images)")
        self.epoch, self.step_in_epoch, self.perm = 0, 0, None
        self.totals = EpochTotals.fresh(self.device)
        self.last_record: Optional[dict] = None  # the last metrics line, kept in the checkpoint as well
        self.best = {"metric": -1.0, "epoch": 0}
        self.train_seconds = 0.0
        if resume:
            self._load_state()

    def _frozen_model(self, path: str, role: str, layout: bool = True) -> torch.nn.Module:
        """A teacher (or reference) checkpoint made for this data, eval-mode on the training device, in the
        training memory layout unless `layout` is False. One from other data is refused: it would still run
        (see check_fits_data) and train against a meaningless graph."""
        d = self.data
        ckpt = load_checkpoint(path)
        check_fits_data(ckpt, path, role, d.num_classes, d.in_channels, d.image_size, d.name)
        model = model_from_record(ckpt, self.device).eval()
        _check_takes_images(model, self.x_train[:1], f"{role} {path}", d.name)
        return model.to(memory_format=torch.channels_last) if self.channels_last and layout else model

    # -- checkpoints -------------------------------------------------------------------------------
    def _record(self) -> dict:
        d = self.data
        return model_record(self.model, self.cfg.model.arch, self.cfg.model.args, d.num_classes, d.in_channels,
                            d.image_size)

    def _save_state(self, perm: Optional[Tensor], totals: Optional[EpochTotals] = None) -> None:
        if self.rank != 0:
            return
        state = self._record()
        state.update({
            "config": to_dict(self.cfg),
            "dataset": self.data.name,
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict") else {},
            "epoch": self.epoch,
            "step": self.step_in_epoch,
            "perm": None if perm is None else perm.cpu(),
            "rng": rng_state(self.device),
            "data_rng": self.data_gen.get_state(),
            "best": dict(self.best),
            "train_seconds": self.train_seconds,
            "epoch_totals": None if totals is None else totals.state(),
            "last_record": self.last_record,
        })
        save_atomic(state, self.paths.last)

    def _load_state(self) -> None:
        state = load_checkpoint(self.paths.last, map_location="cpu")
        try:
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer"])
            if hasattr(self.objective, "load_state_dict"):
                self.objective.load_state_dict(state.get("objective", {}))
            self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
            self.perm = state["perm"]
            set_rng_state(state["rng"], self.device)
            self.data_gen.set_state(state["data_rng"])
            self.best = dict(state["best"])
            self.train_seconds = float(state["train_seconds"])
            self.totals = EpochTotals.from_state(state.get("epoch_totals"), self.device, zero=self.rank != 0)
            self.last_record = state.get("last_record")
        except (KeyError, RuntimeError, TypeError) as e:
            raise TopoatError(f"{self.paths.last} is not a resumable training checkpoint "
                              f"({e.__class__.__name__})") from None
        if self.rank == 0:
            repair_metrics(self.paths.metrics, self.epoch, self.last_record)

    # -- the loop ----------------------------------------------------------------------------------
    def _set_lr(self, global_step: int) -> float:
        lr = self.cfg.optim.lr * lr_factor(self.cfg, global_step / len(self.loader))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.rank == 0 and not self.resume:
            write_text_atomic(self.paths.config, dump_config(cfg))
        if self.rank == 0:
            self._record_provenance()
            if cfg.runtime.tensorboard:
                self.board = EpochBoard(self.paths.root / "tensorboard", dump_config(cfg))
        try:
            with stop_on_signals() as stop:
                while self.epoch < cfg.optim.epochs:
                    self._train_epoch(stop)
                    if self._should_stop(stop):  # it came during validation or the save: the epoch is kept
                        raise TrainingInterrupted(stop["signum"], self.paths.last,
                                                  f"after epoch {self.epoch} of {cfg.optim.epochs}")
        finally:
            if self.board is not None:
                self.board.close()
        if stop["signum"] is not None:  # it came after the last check, before the handlers were restored
            raise TrainingInterrupted(stop["signum"], self.paths.last, "after training")
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
        bar = tqdm(total=steps, initial=self.step_in_epoch, leave=False,
                   disable=bar_disabled(cfg.runtime.progress and self.rank == 0),
                   desc=f"{cfg.name} epoch {self.epoch + 1}/{cfg.optim.epochs}")
        self.model.train()
        if hasattr(self.objective, "set_epoch"):  # e.g. AWP's warm-up; any callable may be an objective
            self.objective.set_epoch(self.epoch)
        lr = self._set_lr(self.epoch * steps + self.step_in_epoch)
        for x, y in self.loader.batches(self.step_in_epoch, perm):
            lr = self._set_lr(self.epoch * steps + self.step_in_epoch)
            out = self.train_step(x, y)
            loss = out.loss
            self.step_in_epoch += 1
            bad |= ~torch.isfinite(loss) | (loss.detach() > cfg.optim.max_loss)
            self._accumulate(totals.sums, out, loss, y)
            totals.n_seen += y.shape[0]
            bar.update(1)
            if self.step_in_epoch % GUARD_EVERY == 0 or self.step_in_epoch == steps:
                self._check_divergence(bad)
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
        self._log(record)
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
        raise TrainingInterrupted(stop["signum"] or signal.SIGTERM, self.paths.last,
                                  f"in epoch {self.epoch + 1} of {self.cfg.optim.epochs}")

    def train_step(self, x: Tensor, y: Tensor):
        """One optimisation step on a batch (the benchmark times exactly this)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.cfg.runtime.amp):
            out = self.objective(self.train_model, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
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
            kept = (f"the last good checkpoint is kept in {self.paths.last}" if self.paths.last.is_file() else
                    f"no checkpoint was saved yet, so the run can be started again into {self.paths.root}")
            raise TrainingDiverged(f"training diverged in epoch {self.epoch + 1}: the loss became non-finite or "
                              f"exceeded optim.max_loss={self.cfg.optim.max_loss:g}{hint}; {kept}")

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
        x_val, y_val = self.x_val[self.rank::self.world], self.y_val[self.rank::self.world]
        res = evaluate(model, x_val, y_val, attacks, norm=cfg.attack.norm, eps=cfg.attack.eps,
                       batch_size=cfg.evaluation.batch_size, progress=False)
        counts = torch.tensor([res.natural_acc * res.n] + [res.robust_acc[a] * res.n for a in attacks] + [res.n],
                              device=self.device, dtype=torch.float64)
        counts = all_reduce_sum(counts).tolist()
        record = {"val_natural_acc": counts[0] / counts[-1]}
        if attacks:
            record["val_robust_acc"] = counts[1] / counts[-1]
        if self.rank == 0 and self.reference is not None and cfg.validation.topology and self.x_val.shape[0] > 10:
            topo = cfg.topology
            layer = topo.layer if topo is not None else "features"
            if self.reference_features is None:
                reference_layer = (topo.teacher_layer or layer) if topo is not None else "features"
                self.reference_features = extract(self.reference, self.x_val, reference_layer)
            s = extract(model, self.x_val, layer)
            m = topology_metrics(s, self.reference_features, graph_size=cfg.optim.batch_size,
                                 kernel=topo.kernel if topo is not None else "cosine")
            record.update({f"val_{k}": v for k, v in m.items()})
        metric = record.get("val_robust_acc", record["val_natural_acc"])
        if metric > self.best["metric"]:
            self.best = {"metric": metric, "epoch": self.epoch}
            if self.rank == 0:
                best = self._record()
                best.update({"epoch": self.epoch, "config": to_dict(cfg), "dataset": self.data.name,
                             "validation": record})
                save_atomic(best, self.paths.best)
        return record

    def _record_provenance(self) -> None:
        """provenance.json: one entry per start of the run (a resume may be on another machine or code)."""
        path = self.paths.root / "provenance.json"
        starts = []
        if self.resume and path.is_file():
            try:
                starts = list(json.loads(path.read_text()).get("starts", []))
            except (OSError, ValueError, AttributeError):
                starts = []  # a damaged record is replaced, never a reason to stop training
        starts.append({**provenance(self.device), "resumed_at_epoch": self.epoch if self.resume else None})
        write_text_atomic(path, json.dumps({"starts": starts}, indent=1) + "\n")

    def _log(self, record: dict) -> None:
        """Append one line, atomically: the file is rewritten whole (a few kB), so a kill or a full disk
        never leaves a torn line."""
        if self.rank != 0:
            return
        path = self.paths.metrics
        try:
            old = path.read_bytes() if path.exists() else b""
        except OSError as e:
            raise TopoatError(f"cannot read {path}: {e.strerror or e}") from None
        write_atomic(path, old + (json.dumps(record) + "\n").encode())


def epoch_line(name: str, record: dict, epochs: int) -> str:
    """One plain line per epoch for the console and piped logs; metrics.jsonl keeps every number."""
    parts = [f"[{name}] epoch {record['epoch']}/{epochs}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    for key, label in (("val_natural_acc", "val natural"), ("val_robust_acc", "val robust")):
        if key in record:
            parts.append(f"{label} {100 * record[key]:.1f}%")
    parts += [f"{key[4:]} {value:.4g}" for key, value in record.items()
              if key.startswith("val_") and key not in ("val_natural_acc", "val_robust_acc")
              and isinstance(value, (int, float))]
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)
