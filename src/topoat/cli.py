"""The `topoat` command: a thin layer of argparse over the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import TopoatError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise TopoatError(f"{self.prog}: {message} (see --help)")


def _train(args) -> int:
    from .config import load_config, read_yaml
    from .runs import evaluate_run, format_table, results_document, write_json_atomic
    from .train import Trainer

    out = Path(args.out)
    if args.resume:
        if args.config is None and not (out / "config.yaml").is_file():
            raise TopoatError(f"nothing to resume in {out} (no config.yaml)")
        cfg = load_config(args.config or out / "config.yaml", args.set)
    else:
        if args.config is None:
            raise TopoatError("train: --config is required (unless --resume)")
        cfg = load_config(args.config, args.set)
    if args.no_progress:
        cfg.runtime.progress = False
    summary = Trainer(cfg, out, resume=args.resume).run()
    entry = evaluate_run(cfg, out, cfg.name, summary["train_seconds"], relative_to=out,
                         progress=cfg.runtime.progress)
    document = results_document(cfg, {cfg.name: entry})
    write_json_atomic(document, out / "results.json")
    print(format_table(document["runs"]))
    return 0


def _study(args) -> int:
    from .study import run_study

    run_study(args.spec, args.out, resume=args.resume, extra=args.set, progress=not args.no_progress)
    return 0


def _eval(args) -> int:
    import torch

    from .checkpoint import load_checkpoint, model_from_record
    from .data import load_dataset, to_float
    from .evaluate import evaluate, fixed_subset
    from .runtime import resolve_device

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_record(ckpt, device).eval()
    dataset = args.dataset or ckpt.get("dataset")
    if not dataset:
        raise TopoatError("eval: --dataset is required (the checkpoint does not name its dataset)")
    ds = load_dataset(dataset, args.data_root)
    idx = fixed_subset(ds.x_test.shape[0], args.n, args.seed)
    x, y = to_float(ds.x_test[idx].to(device)), ds.y_test[idx].to(device)
    attacks = [a for a in args.attacks.split(",") if a]
    res = evaluate(model, x, y, attacks, norm=args.norm, eps=args.eps, step_size=args.step_size,
                   batch_size=args.batch_size, progress=not args.no_progress)
    print(f"natural   {100 * res.natural_acc:.2f}")
    for name, acc in res.robust_acc.items():
        print(f"{name:<9} {100 * acc:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(res.as_dict(), checkpoint=str(args.checkpoint),
                                                   norm=args.norm, eps=args.eps), indent=2) + "\n")
    return 0


def _eps(text: str) -> float:
    """Accept 0.1, 8/255 or 8/255.0: eps must be exact, so fractions are welcome."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"bad eps {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="topoat", description="Topology-preserving adversarial training (TRAIN).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("train", help="train one model (standard, an AT method, optionally + TRAIN)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", required=True, help="run folder (must not exist, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("study", help="train and evaluate the runs of a study file")
    p.add_argument("spec", help="study YAML")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_study)

    p = sub.add_parser("eval", help="accuracy of a checkpoint under attacks")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root")
    p.add_argument("--attacks", default="pgd-20", help="comma-separated: fgsm, pgd-K, pgd-K-rR, cw-K")
    p.add_argument("--norm", choices=["Linf", "L2"], default="Linf")
    p.add_argument("--eps", type=_eps, default=0.1)
    p.add_argument("--step-size", type=_eps, default=None)
    p.add_argument("--n", type=int, default=1000, help="test images (a fixed seeded choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .train import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise TopoatError("topoat: give a command: train, study or eval (see --help)")
        return args.func(args)
    except TopoatError as e:
        print(f"topoat: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"topoat: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("topoat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
