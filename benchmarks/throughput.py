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
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the measurements, beside this file (channels_last.py reaches them through this module too)
from throughput_costs import MODELS, matmul_peak, share_of_peak, topology_cost  # noqa: E402
from throughput_timing import (  # noqa: E402, F401
    CPU_SIZES,
    TrainerTimer,
    config_for,
    interleaved,
    measure_batch_scaling,
    measure_model,
    paired_ratio,
)

from topoat.runtime import cpu_name  # noqa: E402

MODES = "standard,pgd-at,pgd-at+train,trades,trades+train"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    p.add_argument("--modes", default=MODES)
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = [256, 512] if args.quick else ([512, 1024, 2048, 4096] if device.type == "cpu" else [4096, 8192, 16384])
    uses_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    peak_key = "bf16" if uses_bf16 else "fp32"
    # Only the precision the modes run in: a CPU without bf16 units takes minutes per large bf16 matmul.
    dtype = torch.bfloat16 if uses_bf16 else torch.float32
    peaks = {peak_key: matmul_peak(device, dtype, sizes, 0.1 if args.quick else 1.0)}
    peak = peaks[peak_key]["flops_per_s"]
    report = {
        "machine": _machine(device),
        "command": " ".join(["python", "benchmarks/throughput.py"] + (argv if argv is not None else sys.argv[1:])),
        "peak_flops": peaks,
        "models": {},
    }
    print(f"matmul peak: {peak_key} {peak / 1e9:.1f} GFLOP/s ({peaks[peak_key]['best']})")
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for arch in [m for m in args.models.split(",") if m]:
            report["models"][arch] = entry = measure_model(arch, modes, args, tmp, peak)
            _print_model(arch, entry, peak, peak_key)
        scaling = []
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        for arch in [m for m in args.scaling_models.split(",") if m in report["models"]]:
            rows = measure_batch_scaling(arch, batch_sizes, args, tmp)
            for row in rows:
                print(f"{arch:16s} batch {row['batch_size']:5d} {row['mode']:14s} {row['images_per_s']:9.1f} img/s")
            scaling += rows
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


def _machine(device: torch.device) -> dict:
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def _print_model(arch: str, entry: dict, peak: float, peak_key: str) -> None:
    for mode, row in entry["modes"].items():
        achieved = row["flops_per_s"]
        print(
            f"{arch:16s} {mode:14s} {row['images_per_s']:9.1f} img/s  {achieved / 1e9:8.1f} GFLOP/s "
            f"({format_share(achieved, peak)} of {peak_key} peak; warm-up {row['warmup_seconds']:.1f} s)"
        )
    passes = entry["pass_seconds"]
    print(f"{arch:16s} passes, s per batch: " + ", ".join(f"{k} {v:.4f}" for k, v in passes.items()))
    if "speedup_vs_textbook" in entry:
        print(
            f"{arch:16s} textbook PGD-AT {entry['textbook_pgd_at_images_per_s']:9.1f} img/s -> speed-up "
            f"{format_ratio(entry['speedup_vs_textbook_rounds'])}x "
            f"(the passes alone, in one layout: {entry['speedup_from_passes']:.2f}x)"
        )
    for base in ("pgd-at", "trades"):
        overhead = entry.get(f"train_overhead_{base}")
        if overhead is not None:
            print(
                f"{arch:16s} TRAIN overhead on {base}: {format_ratio(overhead)} "
                f"(ideal {overhead['ideal']:.3f} counted, "
                f"{overhead['ideal_from_timed_passes']:.3f} from the timed passes)"
            )


def format_share(achieved: float, peak: float) -> str:
    share = share_of_peak(achieved, peak)
    return "above the measured peak: no share" if share is None else f"{100 * share:.0f}%"


def format_ratio(r: dict) -> str:
    spread = f" (rounds {r['min']:.3f} to {r['max']:.3f})" if r["rounds"] > 1 else ""
    return f"{r['median']:.3f}{spread}"


if __name__ == "__main__":
    sys.exit(main())
