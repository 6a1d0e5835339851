"""How fast topoat trains, measured: the Trainer's step and a textbook PGD-AT loop timed in interleaved
rounds, and every measurement of one model that benchmarks/throughput.py prints."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from throughput_costs import (
    MODELS,
    forward_equivalents,
    forward_flops,
    pass_cost,
    pass_seconds,
    share_of_peak,
    sync,
)

from topoat.config import load_config
from topoat.models import build_model
from topoat.runs.checkpoint import model_record, save_atomic
from topoat.schema import TrainConfig
from topoat.training.loop import Trainer

# Batch size and timed steps per model on a CPU (the default of --batch-size and --steps there).
CPU_SIZES = {"small-cnn": (128, 6), "preact-resnet18": (32, 2)}


def config_for(arch: str, mode: str, args, teacher: str) -> TrainConfig:
    c, h, w = MODELS[arch]
    method = mode.split("+")[0]
    sets = [
        "data.dataset=synthetic",
        f"data.args.shape=[{c}, {h}, {w}]",
        "data.val_size=0",
        f"data.args.train={args.batch_size * (args.steps + args.warmup)}",
        "data.args.test=8",
        f"model.arch={arch}",
        f"method.name={method}",
        "attack.steps=10",
        "attack.eps=0.03137254901960784",
        "attack.step_size=0.00784313725490196",
        f"optim.batch_size={args.batch_size}",
        "optim.epochs=1",
        f"runtime.device={args.device}",
        f"runtime.amp={args.amp}",
        f"runtime.compile={'on' if args.compile else 'off'}",
        f"runtime.compile_mode={args.compile_mode}",
        "runtime.progress=false",
        f"runtime.channels_last={args.channels_last}",
    ]
    if mode.endswith("+train"):
        sets += [f"topology.teacher={teacher}", "topology.lambda_nat=30", "topology.lambda_adv=30"]
    return load_config(data={}, overrides=sets)


class TrainerTimer:
    """Images per second of Trainer.train_step over the on-device loader, the loop the CLI runs. The
    warm-up steps run once, at construction (with `--compile`, the compilation a run pays once), and
    their seconds are kept apart."""

    def __init__(self, cfg: TrainConfig, out: Path, warmup: int):
        self.trainer = Trainer.from_config(cfg, out)
        self.device = self.trainer.device
        sync(self.device)
        start = time.perf_counter()
        for _ in range(warmup):
            self._step(next(self.trainer.loader.batches()))
        sync(self.device)
        self.warmup_seconds = time.perf_counter() - start

    def _step(self, batch) -> int:
        x, y = batch
        self.trainer.train_step(x, y)
        return y.shape[0]

    def measure(self, steps: int) -> float:
        batches = self.trainer.loader.batches()
        sync(self.device)
        start = time.perf_counter()
        n = sum(self._step(next(batches)) for _ in range(steps))
        sync(self.device)
        return n / (time.perf_counter() - start)


class TextbookTimer:
    """The loop of the reference repositories: DataLoader of CPU tensors, fp32, NCHW, and an attack
    that calls loss.backward() (so every step also computes parameter gradients)."""

    def __init__(self, arch: str, batch_size: int, steps: int, device: torch.device, warmup: int):
        c, h, w = MODELS[arch]
        n = batch_size * max(steps, warmup)
        data = torch.utils.data.TensorDataset(torch.rand(n, c, h, w), torch.randint(0, 10, (n,)))
        self.loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
        self.device = device
        self.model = build_model(arch, 10, c, [0.5] * c, [0.25] * c).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False)
        self.measure(warmup)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model, eps, alpha = self.model, 8 / 255, 2 / 255
        x, y = x.to(self.device), y.to(self.device)
        model.eval()
        delta = torch.empty_like(x).uniform_(-eps, eps)
        for _ in range(10):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
            loss.backward()
            delta = (delta + alpha * delta.grad.sign()).clamp(-eps, eps).detach()
        model.train()
        self.opt.zero_grad()
        F.cross_entropy(model((x + delta).clamp(0, 1)), y).backward()
        self.opt.step()

    def measure(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        count = 0
        for i, (x, y) in enumerate(self.loader):
            if i == steps:
                break
            self._step(x, y)
            count += y.shape[0]
        sync(self.device)
        return count / (time.perf_counter() - start)


def interleaved(timers: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Every timer measured once per round, in turn. On a shared machine the speed drifts over minutes;
    within a round all timers see about the same machine, so ratios are taken round by round."""
    measured: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            measured[name].append(timer.measure(steps))
    return measured


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """The median of the per-round ratios, and their range (the spread a single run would show)."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "rounds": len(ratios)}


def measure_model(arch: str, modes: list[str], args: argparse.Namespace, tmp: Path, peak: float) -> dict:
    """Every measurement of one model: each mode's throughput and share of `peak`, the seconds of each
    kind of pass, the speed-up over the textbook loop, and TRAIN's overhead on each base method."""
    c, h, w = MODELS[arch]
    bs_default, steps_default = CPU_SIZES[arch] if torch.device(args.device).type == "cpu" else (512, 20)
    a = argparse.Namespace(**vars(args))
    a.batch_size = args.batch_size or bs_default
    a.steps = args.steps or steps_default
    model = build_model(arch, 10, c, [0.5] * c, [0.25] * c)
    flops = forward_flops(model, (c, h, w))
    teacher = tmp / f"{arch}-teacher.pt"
    save_atomic(model_record(model, arch, {}, 10, c), teacher)
    timers: dict = {
        mode: TrainerTimer(config_for(arch, mode, a, str(teacher)), tmp / f"{arch}-{mode}", a.warmup) for mode in modes
    }
    if "pgd-at" in modes:
        timers["textbook"] = TextbookTimer(arch, a.batch_size, a.steps, torch.device(args.device), a.warmup)
    measured = interleaved(timers, a.steps, args.repeats)
    rows = {}
    for mode in modes:
        ips = max(measured[mode])  # other load on the machine only ever slows a run down
        achieved = ips * forward_equivalents(mode, 10) * flops
        rows[mode] = {
            "images_per_s": ips,
            "images_per_s_rounds": measured[mode],
            "forward_equivalents": forward_equivalents(mode, 10),
            "flops_per_s": achieved,
            "share_of_peak": share_of_peak(achieved, peak),
            "warmup_seconds": timers[mode].warmup_seconds,
        }
    entry = {
        "input_shape": [c, h, w],
        "batch_size": a.batch_size,
        "timed_steps": a.steps,
        "rounds": args.repeats,
        "forward_gflops_per_image": flops / 1e9,
        "modes": rows,
    }
    passes = entry["pass_seconds"] = pass_seconds(arch, a, args.repeats)
    if "textbook" in measured:
        speedup = paired_ratio(measured["pgd-at"], measured["textbook"])
        entry["textbook_pgd_at_images_per_s"] = max(measured["textbook"])
        entry["textbook_pgd_at_images_per_s_rounds"] = measured["textbook"]
        entry["speedup_vs_textbook"] = speedup["median"]
        entry["speedup_vs_textbook_rounds"] = speedup
        # the textbook's attack steps are training passes (a parameter backward each); same layout
        entry["speedup_from_passes"] = 11 * passes["training_pass"] / pass_cost("pgd-at", 10, passes)
    for base in ("pgd-at", "trades"):
        if base in rows and base + "+train" in rows:
            overhead = paired_ratio(measured[base], measured[base + "+train"])
            entry[f"train_overhead_{base}"] = {
                **overhead,
                "measured": overhead["median"],
                "ideal": forward_equivalents(base + "+train", 10) / forward_equivalents(base, 10),
                "ideal_from_timed_passes": pass_cost(base + "+train", 10, passes) / pass_cost(base, 10, passes),
            }
    return entry


def measure_batch_scaling(arch: str, batch_sizes: list[int], args: argparse.Namespace, tmp: Path) -> list[dict]:
    """PGD-AT and PGD-AT + TRAIN images/s of `arch` at each batch size (its teacher is in `tmp` already)."""
    rows = []
    for bs in batch_sizes:
        a = argparse.Namespace(**vars(args))
        a.batch_size = bs
        cpu = torch.device(args.device).type == "cpu"
        a.steps = 2 if args.quick else (max(2, 768 // bs) if cpu else 20)  # CPU: about 768 images each
        teacher = tmp / f"{arch}-teacher.pt"
        pair = {
            mode: TrainerTimer(config_for(arch, mode, a, str(teacher)), tmp / f"{arch}-bs{bs}-{mode}", a.warmup)
            for mode in ("pgd-at", "pgd-at+train")
        }
        for mode, rounds in interleaved(pair, a.steps, args.repeats).items():
            rows.append({"model": arch, "batch_size": bs, "mode": mode, "images_per_s": max(rounds)})
    return rows
