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
    from .distributed import init_from_env, shutdown

    dist = init_from_env(cfg.runtime.device)
    try:
        summary = Trainer(cfg, out, resume=args.resume, dist=dist).run()
    finally:
        shutdown()
    if not dist.is_main:  # rank 0 alone evaluates and writes results
        return 0
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


def _analysis_data(args, reference_ckpt: dict):
    """The dataset the topology metrics use: --dataset, else the reference checkpoint's own data config."""
    from .config import TrainConfig, from_dict
    from .data import dataset_from_config, load_dataset

    if args.dataset:
        return load_dataset(args.dataset, args.data_root)
    if isinstance(reference_ckpt.get("config"), dict):
        try:
            cfg = from_dict(TrainConfig, reference_ckpt["config"])
        except TopoatError:
            cfg = None  # a config from another topoat version: fall back to the dataset name
        if cfg is not None:
            if args.data_root:
                cfg.data.root = args.data_root
            return dataset_from_config(cfg.data)
    if reference_ckpt.get("dataset"):
        return load_dataset(reference_ckpt["dataset"], args.data_root)
    raise TopoatError("analyze: --dataset is required (the reference checkpoint does not name its dataset)")


def _analyze(args) -> int:
    from .analysis import analyze_checkpoints, held_out_subset
    from .checkpoint import load_checkpoint
    from .report import format_topology_table
    from .runtime import resolve_device

    if args.k < 1 or args.n <= 2 * args.k:
        raise TopoatError(f"analyze: --n must be more than twice --k (got n={args.n}, k={args.k})")
    if args.attack_steps < 1:
        raise TopoatError("analyze: --attack-steps must be >= 1")
    reference = load_checkpoint(args.reference)
    for path in args.checkpoints:
        load_checkpoint(path)  # a bad path fails now, not after the reference's attack has run
    eps = args.eps
    if eps is None:
        eps = (reference.get("config") or {}).get("attack", {}).get("eps")
        if eps is None:
            raise TopoatError("analyze: --eps is required (the reference checkpoint does not record one)")
    norm = args.norm or (reference.get("config") or {}).get("attack", {}).get("norm", "Linf")
    device = resolve_device(args.device)
    x, y = held_out_subset(_analysis_data(args, reference), args.n, args.seed, device)
    attack = f"pgd-{args.attack_steps}"
    metrics = analyze_checkpoints(args.checkpoints, args.reference, x, y, norm=norm, eps=eps, attack=attack,
                                  step_size=args.step_size, k=args.k, layer=args.layer, seed=args.seed)
    print(f"topology against {args.reference}: {x.shape[0]} test images, {norm} eps={eps:.4g}, "
          f"adversarial = {attack} against each model, k={args.k}")
    print(format_topology_table(metrics, args.k))
    if args.json:
        document = {"reference": str(args.reference), "n": int(x.shape[0]), "k": args.k, "attack": attack,
                    "norm": norm, "eps": eps, "layer": args.layer, "seed": args.seed, "models": metrics}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _report(args) -> int:
    from .report import ReportSettings, write_report

    settings = ReportSettings(n=args.n, k=args.k, attack_steps=args.attack_steps, tsne_points=args.tsne_points,
                              device=args.device)
    write_report(args.run_dirs, args.out, reference=args.reference, settings=settings)
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

    p = sub.add_parser("analyze", help="topology metrics of checkpoints against a reference (standard) model")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    p.add_argument("--reference", required=True, metavar="TEACHER", help="the standard model's checkpoint")
    p.add_argument("--dataset", help="dataset name (default: the reference checkpoint's data config)")
    p.add_argument("--data-root")
    p.add_argument("--n", type=int, default=1000, help="held-out test images (a fixed seeded choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10, help="neighbours for kNN overlap and trustworthiness")
    p.add_argument("--norm", choices=["Linf", "L2"], default=None, help="default: the reference's config")
    p.add_argument("--eps", type=_eps, default=None, help="default: the reference's config")
    p.add_argument("--attack-steps", type=int, default=20, help="PGD steps for the adversarial representations")
    p.add_argument("--step-size", type=_eps, default=None, help="PGD step (default eps / 4)")
    p.add_argument("--layer", default="features", help="features (penultimate), logits, or a module name")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the metrics here")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("report", help="report.md with tables, topology metrics and pictures of finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a study folder or single run folders")
    p.add_argument("--out", help="where report.md and figures/ go (default: the only RUN_DIR)")
    p.add_argument("--reference", help="checkpoint every run is compared with (default: each run's standard model)")
    p.add_argument("--n", type=int, default=1000, help="held-out test images for the topology metrics")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--tsne-points", type=int, default=1000, help="natural images per t-SNE map")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .train import TrainingInterrupted

    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise TopoatError("topoat: give a command: train, study, eval, analyze or report (see --help)")
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
