"""Training throughput of topoat against a textbook loop and against the machine's matmul peak.

Everything is measured side by side in one run, so the figures are ratios that hold on any machine:
  * images/s of each training mode (standard, PGD-AT, PGD-AT + TRAIN, TRADES, TRADES + TRAIN) for
    small-cnn on 28x28x1 and preact-resnet18 on 32x32x3 synthetic data, PGD-10;
  * (a) a textbook PGD-AT loop (CPU tensors through a DataLoader, fp32, NCHW, parameter backward inside
    the attack, plain SGD) for the speed-up;
  * (b) the dense matmul peak (the best torch.mm over several sizes and operand layouts, in the
    precision the modes run in: fp32, or bf16 under autocast) and each mode's achieved FLOP/s from an
    analytic count, for the share of peak; a mode above the peak gets no share (the peak was not the
    machine's best);
  * the warm-up seconds of each mode (with --compile: the compilation a run pays once);
  * (c) the TRAIN overhead as a ratio to its base, against the ideal ratio from counting passes, and
    against the ratio predicted by timing each kind of pass on the model (an attack step, a training
    pass, a teacher forward): on a CPU a parameter backward costs more than its FLOP count says;
  * the modes of a model (and the textbook loop) are timed in rounds, each round all of them in turn,
    and every ratio is the median of the per-round ratios, with their range: a shared machine's speed
    drifts over minutes, and a ratio of two timings taken minutes apart carries that drift;
  * how cost grows with the batch size and with the topology graph size n.

FLOP count: forward FLOPs per image are counted analytically from the model's Conv2d and Linear
layers (2 x multiply-accumulates; BatchNorm, ReLU and pooling are not counted). A backward pass costs
2 forwards when parameter gradients are needed and 1 forward for an input-only attack gradient.
Forward-equivalents per image: standard 3; PGD-AT 2K + 3; PGD-AT + TRAIN 2K + 3 + 3 + teacher 1;
TRADES 2K + 7 (clean forward for the attack target, K attack steps, natural and adversarial
forward+backward); TRADES + TRAIN adds the teacher forward (1).

Run:  python -u benchmarks/throughput.py  (CPU: about 13 minutes with --repeats 3 on 2 AMD EPYC cores; --quick: seconds)
      python benchmarks/throughput.py --device cuda --batch-size 512 --amp bf16 [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from topoat.config import TrainConfig, load_config
from topoat.models import build_model
from topoat.runs.checkpoint import model_record, save_atomic
from topoat.runtime import as_channels_last, autocast, cpu_name, use_channels_last
from topoat.topology import TopologyLoss
from topoat.training.loop import Trainer

MODELS = {"small-cnn": (1, 28, 28), "preact-resnet18": (3, 32, 32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model: nn.Module, shape) -> float:
    """Analytic forward FLOPs per image: 2 x MACs of every Conv2d and Linear."""
    total = 0.0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += 2.0 * out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += 2.0 * m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.rand(1, *shape))
    for h in handles:
        h.remove()
    return total


# Forward-equivalents of each kind of pass: an input-only backward costs 1 forward, a parameter
# backward 2; a frozen teacher runs one no-grad forward.
COUNTED_PASSES = {"attack_step": 2.0, "training_pass": 3.0, "teacher_forward": 1.0}

# Batch size and timed steps per model on a CPU (the default of --batch-size and --steps there).
CPU_SIZES = {"small-cnn": (128, 6), "preact-resnet18": (32, 2)}


def forward_equivalents(mode: str, k: int) -> float:
    return pass_cost(mode, k, COUNTED_PASSES)


def pass_seconds(arch: str, args, reps: int) -> dict[str, float]:
    """Seconds per batch of each kind of pass the modes are made of, timed on the model itself in the
    modes' layout and precision: a forward with an input-only backward (one attack step), a forward with
    a parameter backward (a training pass), and a no-grad forward in eval mode (a frozen teacher).
    Each is the fastest of `reps` rounds, every round timing all three in turn. The passes run eager,
    also under --compile: the prediction is what the uncompiled network costs."""
    device = torch.device(args.device)
    c, h, w = MODELS[arch]
    model = build_model(arch, 10, c, [0.5] * c, [0.25] * c).to(device)
    x = torch.rand(args.batch_size, c, h, w, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if use_channels_last(args.channels_last):
        model, x = as_channels_last(model), x.contiguous(memory_format=torch.channels_last)

    def attack_step():
        xg = x.clone().requires_grad_(True)
        with autocast(device, args.amp):
            loss = F.cross_entropy(model.train()(xg).float(), y)
        torch.autograd.grad(loss, xg)

    def training_pass():
        with autocast(device, args.amp):
            loss = F.cross_entropy(model.train()(x).float(), y)
        loss.backward()

    def teacher_forward():
        with torch.no_grad(), autocast(device, args.amp):
            model.eval()(x)

    passes = {"attack_step": attack_step, "training_pass": training_pass, "teacher_forward": teacher_forward}
    best = {name: float("inf") for name in passes}
    for round_ in range(reps + 1):
        for name, run in passes.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if round_ > 0:  # round 0 warms up
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def pass_cost(mode: str, k: int, s: dict[str, float]) -> float:
    """A mode's cost from the cost of each kind of pass: its seconds per batch from `pass_seconds` (what
    the step would cost if nothing but the network's passes took time), or its forward-equivalents from
    `COUNTED_PASSES`."""
    base = {
        "standard": s["training_pass"],
        "pgd-at": k * s["attack_step"] + s["training_pass"],
        # the clean target p(x), K attack steps, the natural and adversarial training passes
        "trades": s["teacher_forward"] + k * s["attack_step"] + 2 * s["training_pass"],
    }[mode.split("+")[0]]
    if mode.endswith("+train"):
        base += s["teacher_forward"] + (s["training_pass"] if mode.startswith("pgd-at") else 0.0)
    return base


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int, layout: str, seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a, b = {"nn": (a, b), "nt": (a, b.t()), "tn": (a.t(), b)}[layout]
    torch.mm(a, b)
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
        sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes, seconds: float = 1.0) -> dict:
    """The best dense matmul rate over several sizes and operand layouts: a peak is the most the machine
    does, and one size or layout alone can lose to tuned convolution kernels (measured: a single
    2048 x 2048 fp32 mm on a 2-core AMD EPYC, beaten by the training modes)."""
    rates = {
        f"{n}-{layout}": _matmul_rate(device, dtype, n, layout, seconds) for n in sizes for layout in ("nn", "nt", "tn")
    }
    best = max(rates, key=rates.get)
    return {"flops_per_s": rates[best], "best": best, "rates": rates}


def share_of_peak(achieved: float, peak: float) -> float | None:
    """The achieved share of the peak; None where a mode beat the peak, which says the peak was not the
    machine's best (a failed measurement), not that the mode ran above 100 %."""
    return achieved / peak if achieved <= peak else None


def format_share(achieved: float, peak: float) -> str:
    share = share_of_peak(achieved, peak)
    return "above the measured peak: no share" if share is None else f"{100 * share:.0f}%"


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
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "rounds": len(ratios)}


def format_ratio(r: dict) -> str:
    spread = f" (rounds {r['min']:.3f} to {r['max']:.3f})" if r["rounds"] > 1 else ""
    return f"{r['median']:.3f}{spread}"


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def aten_ops(run) -> int:
    """How many aten operations `run` dispatches to kernels, its backward included: on a GPU, about
    the kernel launches, whose fixed cost dominates small tensors."""
    with _OpCounter() as counter:
        run()
    return counter.count


def topology_cost(device: torch.device, sizes, dim: int, reps: int = 5) -> list[dict]:
    """Forward + backward of one topology term, and of TRAIN's two terms (natural and adversarial
    features against one teacher) computed apart and fused (`TopologyLoss.terms`), with the number of
    aten operations each runs: on a GPU a small graph's cost is these launches, not its arithmetic."""
    loss = TopologyLoss()
    rows = []
    for n in sizes:
        nat, adv = (torch.randn(n, dim, device=device, requires_grad=True) for _ in range(2))
        t = torch.randn(n, dim, device=device)
        variants = {
            "ms": lambda: loss(nat, t).backward(),
            "ms_two_terms_apart": lambda: (loss(nat, t) + loss(adv, t)).backward(),
            "ms_two_terms_fused": lambda: loss.terms([nat, adv], t).sum().backward(),
        }
        row: dict = {"n": n}
        for key, run in variants.items():
            run()
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                run()
            sync(device)
            row[key] = 1000 * (time.perf_counter() - start) / reps
            row["aten_ops" + key[len("ms") :]] = aten_ops(run)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 (small-cnn), 32 (preact) on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds: each round times every mode of a model once, in turn; a throughput is the best round, "
        "a ratio (speed-up, TRAIN overhead) the median of the per-round ratios (default 3)",
    )
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the training model (off by default)")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile's mode; reduce-overhead adds CUDA graphs",
    )
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--models", default=None, help=f"default: {','.join(MODELS)}")
    p.add_argument("--modes", default="standard,pgd-at,pgd-at+train,trades,trades+train")
    p.add_argument("--batch-sizes", default=None, help="batch scaling (PGD-AT, PGD-AT + TRAIN); default 32,64,128,256")
    p.add_argument("--scaling-models", default="small-cnn", help="the models whose batch scaling is measured")
    p.add_argument("--graph-sizes", default=None, help="topology loss cost; default 128,256,512,1024,2048,4096")
    p.add_argument("--json", default=None, help="write all measurements here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a CI-sized check of the benchmark itself (small-cnn, tiny batches): no figures to quote; "
        "options given explicitly still apply",
    )
    args = p.parse_args(argv)
    defaults = (
        dict(models="small-cnn", batch_size=16, steps=1, repeats=1, batch_sizes="16,32", graph_sizes="64,128")
        if args.quick
        else dict(
            models=",".join(MODELS), repeats=3, batch_sizes="32,64,128,256", graph_sizes="128,256,512,1024,2048,4096"
        )
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    sizes = [256, 512] if args.quick else ([512, 1024, 2048, 4096] if cpu else [4096, 8192, 16384])
    seconds = 0.1 if args.quick else 1.0
    uses_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    peak_key = "bf16" if uses_bf16 else "fp32"
    # Only the precision the modes run in: a CPU without bf16 units takes minutes per large bf16 matmul.
    peaks = {peak_key: matmul_peak(device, torch.bfloat16 if uses_bf16 else torch.float32, sizes, seconds)}
    peak = peaks[peak_key]["flops_per_s"]
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "command": " ".join(["python", "benchmarks/throughput.py"] + (argv if argv is not None else sys.argv[1:])),
        "peak_flops": peaks,
        "models": {},
    }
    print(f"matmul peak: {peak_key} {peak / 1e9:.1f} GFLOP/s ({peaks[peak_key]['best']})")
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in [m for m in args.models.split(",") if m]:
            c, h, w = MODELS[arch]
            bs_default, steps_default = CPU_SIZES[arch] if cpu else (512, 20)
            a = argparse.Namespace(**vars(args))
            a.batch_size = args.batch_size or bs_default
            a.steps = args.steps or steps_default
            model = build_model(arch, 10, c, [0.5] * c, [0.25] * c)
            flops = forward_flops(model, (c, h, w))
            teacher = tmp / f"{arch}-teacher.pt"
            save_atomic(model_record(model, arch, {}, 10, c), teacher)
            timers: dict = {}
            for mode in modes:
                cfg = config_for(arch, mode, a, str(teacher))
                timers[mode] = TrainerTimer(cfg, tmp / f"{arch}-{mode}", a.warmup)
            if "pgd-at" in modes:
                timers["textbook"] = TextbookTimer(arch, a.batch_size, a.steps, device, a.warmup)
            measured = interleaved(timers, a.steps, args.repeats)
            rows = {}
            for mode in modes:
                ips = max(measured[mode])  # other load on the machine only ever slows a run down
                fe = forward_equivalents(mode, 10)
                achieved = ips * fe * flops
                warmup_seconds = timers[mode].warmup_seconds
                rows[mode] = {
                    "images_per_s": ips,
                    "images_per_s_rounds": measured[mode],
                    "forward_equivalents": fe,
                    "flops_per_s": achieved,
                    "share_of_peak": share_of_peak(achieved, peak),
                    "warmup_seconds": warmup_seconds,
                }
                print(
                    f"{arch:16s} {mode:14s} {ips:9.1f} img/s  {achieved / 1e9:8.1f} GFLOP/s "
                    f"({format_share(achieved, peak)} of {peak_key} peak; warm-up {warmup_seconds:.1f} s)"
                )
            entry = {
                "input_shape": [c, h, w],
                "batch_size": a.batch_size,
                "timed_steps": a.steps,
                "rounds": args.repeats,
                "forward_gflops_per_image": flops / 1e9,
                "modes": rows,
            }
            passes = pass_seconds(arch, a, args.repeats)
            entry["pass_seconds"] = passes
            print(f"{arch:16s} passes, s per batch: " + ", ".join(f"{k} {v:.4f}" for k, v in passes.items()))
            if "textbook" in measured:
                textbook = max(measured["textbook"])
                speedup = paired_ratio(measured["pgd-at"], measured["textbook"])
                # the textbook's attack steps are training passes (a parameter backward each); same layout
                from_passes = 11 * passes["training_pass"] / pass_cost("pgd-at", 10, passes)
                entry["textbook_pgd_at_images_per_s"] = textbook
                entry["textbook_pgd_at_images_per_s_rounds"] = measured["textbook"]
                entry["speedup_vs_textbook"] = speedup["median"]
                entry["speedup_vs_textbook_rounds"] = speedup
                entry["speedup_from_passes"] = from_passes
                print(
                    f"{arch:16s} textbook PGD-AT {textbook:9.1f} img/s -> speed-up {format_ratio(speedup)}x "
                    f"(the passes alone, in one layout: {from_passes:.2f}x)"
                )
            for base in ("pgd-at", "trades"):
                if base in rows and base + "+train" in rows:
                    overhead = paired_ratio(measured[base], measured[base + "+train"])
                    ideal = forward_equivalents(base + "+train", 10) / forward_equivalents(base, 10)
                    timed = pass_cost(base + "+train", 10, passes) / pass_cost(base, 10, passes)
                    entry[f"train_overhead_{base}"] = {
                        **overhead,
                        "measured": overhead["median"],
                        "ideal": ideal,
                        "ideal_from_timed_passes": timed,
                    }
                    print(
                        f"{arch:16s} TRAIN overhead on {base}: {format_ratio(overhead)} "
                        f"(ideal {ideal:.3f} counted, {timed:.3f} from the timed passes)"
                    )
            report["models"][arch] = entry
        scaling = []
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        for arch in [m for m in args.scaling_models.split(",") if m in report["models"]]:
            for bs in batch_sizes:
                a = argparse.Namespace(**vars(args))
                a.batch_size = bs
                a.steps = 2 if args.quick else (max(2, 768 // bs) if cpu else 20)  # CPU: about 768 images each
                teacher = tmp / f"{arch}-teacher.pt"
                pair = {
                    mode: TrainerTimer(config_for(arch, mode, a, str(teacher)), tmp / f"{arch}-bs{bs}-{mode}", a.warmup)
                    for mode in ("pgd-at", "pgd-at+train")
                }
                for mode, rounds in interleaved(pair, a.steps, args.repeats).items():
                    ips = max(rounds)
                    scaling.append({"model": arch, "batch_size": bs, "mode": mode, "images_per_s": ips})
                    print(f"{arch:16s} batch {bs:5d} {mode:14s} {ips:9.1f} img/s")
        if scaling:
            report["batch_scaling"] = scaling
        dim = 512
        graph = topology_cost(device, [int(n) for n in args.graph_sizes.split(",") if n], dim)
        for row in graph:
            print(
                f"topology loss fwd+bwd n={row['n']:5d} d={dim}: {row['ms']:8.2f} ms ({row['aten_ops']} aten ops); "
                f"two terms apart {row['ms_two_terms_apart']:8.2f} ms ({row['aten_ops_two_terms_apart']}), "
                f"fused {row['ms_two_terms_fused']:8.2f} ms ({row['aten_ops_two_terms_fused']})"
            )
        report["topology_graph_cost"] = {"dim": dim, "rows": graph}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
