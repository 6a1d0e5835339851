"""What each `topoat` command prints around the library call that does its work.

The library is imported inside each command, not here: `topoat` installs its signal handlers before torch
loads (seconds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import TopoatError


def train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..runs.folder import RunFolder
    from ..runs.launch import run_config, train_in_folder, written_files
    from ..runs.results import format_table
    from ..signals import stage

    if args.print_config:
        from ..config import dump_config

        if args.config is None:
            raise TopoatError("train: --print-config needs --config")
        print(dump_config(load_config(args.config, args.set)), end="")
        return 0
    if args.out is None:
        raise TopoatError("train: --out is required (the run folder)")
    out = Path(args.out)
    cfg = run_config(args.config, out, args.set, resume=args.resume, force=args.force)
    if args.no_progress:
        cfg.runtime.progress = False
    entry = train_in_folder(cfg, out, resume=args.resume)
    if entry is not None:  # rank 0
        with stage("after training and evaluating", f"the run is complete: {RunFolder(out).results}"):
            print(format_table({cfg.name: entry}))
            print(f"wrote {out} ({', '.join(written_files(out))})")
    return 0


def teacher(args: argparse.Namespace) -> int:
    """`train` with the dataset's packaged standard config: the frozen model TRAIN and the reports compare with."""
    from ..runs.launch import standard_config

    config = standard_config(args.dataset)
    overrides = ([f"data.root={args.data_root}"] if args.data_root else []) + args.set
    settings = {"config": None if args.resume else config, "set": overrides, "print_config": False, "force": False}
    return train(argparse.Namespace(**{**vars(args), **settings}))


def study(args: argparse.Namespace) -> int:
    from ..runs.study import run_study, selected

    only = [pattern for item in args.runs for pattern in item.split(",") if pattern] or None
    document = run_study(
        args.spec, args.out, resume=args.resume, extra=args.set, progress=not args.no_progress, only=only
    )
    if args.report:
        from ..report import write_report

        write_report([args.out], args.out)
    # this process's runs that failed (a process sharing the folder reports its own); the others are done
    failed = [name for name in document.get("failed") or {} if selected(name, only)]
    if failed:
        print(
            f"topoat: study: run(s) failed: {', '.join(failed)} (see {Path(args.out) / 'results.json'})",
            file=sys.stderr,
        )
        return 1
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.checkpoint_accuracy import evaluate_checkpoint

    outcome = evaluate_checkpoint(
        args.checkpoint,
        [a.strip() for a in args.attacks.split(",") if a.strip()],
        dataset=args.dataset,
        root=args.data_root,
        arch=args.arch,
        num_classes=args.num_classes,
        arch_args=_arch_args(args.arch_args) if args.arch is not None else None,
        model=args.model,
        norm=args.norm,
        eps=args.eps,
        step_size=args.step_size,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        autoattack_n=args.autoattack_n,
        device=args.device,
        sanity=args.sanity,
        sanity_steps=args.sanity_steps,
        reference=args.reference,
        json_path=args.json,
        results=args.results,
        run=args.run,
        progress=not args.no_progress,
        echo=print,
    )
    if outcome.sanity is not None and not outcome.sanity.passed:
        names = ", ".join(c.name for c in outcome.sanity.failed)
        bar = "!" * 78
        print(
            f"\n{bar}\nWARNING: {len(outcome.sanity.failed)} sanity check(s) FAILED ({names}).\n"
            f"The robust accuracies above are probably overestimated (gradient masking or a broken attack):\n"
            f"do not report them without an adaptive attack.\n{bar}",
            file=sys.stderr,
        )
        return 1
    return 0


def _arch_args(text: str) -> dict:
    import yaml

    from ..yamltext import safe_load

    try:
        value = safe_load(text, "eval: --arch-args")
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise TopoatError(f"eval: --arch-args must be a YAML mapping such as '{{width: 64}}', got {text!r}")
    return value


def export(args: argparse.Namespace) -> int:
    from ..evaluation.external import export_checkpoint

    weights, meta = export_checkpoint(args.checkpoint, args.out, force=args.force)
    print(f"wrote {weights} (state_dict) and {meta} (how to rebuild it)")
    return 0


def analyze(args: argparse.Namespace) -> int:
    from ..evaluation.checkpoint_topology import analyze_against_reference, common_folder

    json_path = str(common_folder(args.checkpoints) / "topology.json") if args.json == "" else args.json
    analyze_against_reference(
        args.checkpoints,
        args.reference,
        dataset=args.dataset,
        root=args.data_root,
        n=args.n,
        seed=args.seed,
        k=args.k,
        norm=args.norm,
        eps=args.eps,
        attack_steps=args.attack_steps,
        step_size=args.step_size,
        layer=args.layer,
        device=args.device,
        json_path=json_path,
        echo=print,
    )
    return 0


def report(args: argparse.Namespace) -> int:
    from ..report import ReportSettings, write_report

    tsne_models = [m.strip() for m in args.tsne_models.split(",") if m.strip()] if args.tsne_models else None
    settings = ReportSettings(
        n=args.n,
        k=args.k,
        attack_steps=args.attack_steps,
        tsne_points=args.tsne_points,
        tsne_models=tsne_models,
        device=args.device,
    )
    write_report(args.run_dirs, args.out, reference=args.reference, settings=settings)
    return 0


def configs(args: argparse.Namespace) -> int:
    from ..config import PRESETS, preset_names

    for kind, use in (("configs", "topoat train --config NAME"), ("studies", "topoat study NAME")):
        print(f"{kind} ({use}; the files are in {PRESETS / kind}):")
        for name in preset_names(kind):
            print(f"  {name}")
    return 0
