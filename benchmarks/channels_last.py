"""PGD-AT throughput in channels-last against NCHW, the two layouts timed in interleaved rounds.

This is the measurement behind `runtime.channels_last: auto` being on for CPU as well as CUDA: the
same Trainer.train_step as benchmarks/throughput.py, once per layout, each round timing both in turn,
and the ratio channels-last / NCHW as the median of the per-round ratios with their range.

Run:  python -u benchmarks/channels_last.py --json benchmarks/results/cpu-fp32-epyc-layout.json   (about 6 min here)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the benchmark's timers and configs, beside this file)

from topoat.models import build_model  # noqa: E402
from topoat.runs.checkpoint import model_record, save_atomic  # noqa: E402
from topoat.runtime import cpu_name  # noqa: E402


def compare(arch: str, device: str, rounds: int, tmp: Path) -> dict:
    batch_size, steps = throughput.CPU_SIZES[arch]
    c = throughput.MODELS[arch][0]
    teacher = tmp / f"{arch}-teacher.pt"
    save_atomic(model_record(build_model(arch, 10, c, [0.5] * c, [0.25] * c), arch, {}, 10, c), teacher)
    timers = {}
    for layout in ("off", "on"):
        a = argparse.Namespace(
            batch_size=batch_size,
            steps=steps,
            warmup=1,
            device=device,
            amp="auto",
            compile=False,
            compile_mode="default",
            channels_last=layout,
        )
        timers[layout] = throughput.TrainerTimer(
            throughput.config_for(arch, "pgd-at", a, str(teacher)), tmp / f"{arch}-{layout}", 1
        )
    measured = throughput.interleaved(timers, steps, rounds)
    ratio = throughput.paired_ratio(measured["on"], measured["off"])
    print(f"{arch:16s} PGD-AT img/s NCHW {[round(v, 2) for v in measured['off']]}")
    print(f"{arch:16s} PGD-AT img/s channels-last {[round(v, 2) for v in measured['on']]}")
    print(f"{arch:16s} channels-last / NCHW: {throughput.format_ratio(ratio)}")
    return {
        "batch_size": batch_size,
        "timed_steps": steps,
        "nchw": measured["off"],
        "channels_last": measured["on"],
        "ratio": ratio,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default=",".join(throughput.CPU_SIZES))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    report = {
        "machine": {"processor": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "command": " ".join(["python", "benchmarks/channels_last.py"] + (argv if argv is not None else sys.argv[1:])),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [m for m in args.models.split(",") if m]:
            report["models"][arch] = compare(arch, args.device, args.rounds, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
