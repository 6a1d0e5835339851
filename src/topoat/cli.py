"""The `topoat` command: a thin layer of argparse over the library."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .errors import Interrupted, TopoatError
from .files import write_text_atomic


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise TopoatError(f"{self.prog}: {message} (see --help)")


def _train(args) -> int:
    from .config import load_config
    from .runs.folder import RunFolder
    from .runs.results import format_table
    from .runs.scoring import train_and_evaluate
    from .signals import stage

    if args.print_config:
        from .config import dump_config

        if args.config is None:
            raise TopoatError("train: --print-config needs --config")
        print(dump_config(load_config(args.config, args.set)), end="")
        return 0
    if args.out is None:
        raise TopoatError("train: --out is required (the run folder)")
    out = Path(args.out)
    if args.resume:
        saved = RunFolder(out).config
        if args.config is None and not saved.is_file():
            raise TopoatError(f"nothing to resume in {out} (no {saved.name})")
        cfg = load_config(args.config or saved, args.set)
    else:
        if args.config is None:
            raise TopoatError("train: --config is required (unless --resume)")
        cfg = load_config(args.config, args.set)
    if args.config is not None and not args.force:
        _check_config_kept(args.config, RunFolder(out), cfg)
    if args.no_progress:
        cfg.runtime.progress = False
    from .training.distributed import init_from_env, shutdown

    dist = init_from_env(cfg.runtime.device, cfg.runtime.ddp_timeout)
    try:
        entry = train_and_evaluate(
            cfg,
            out,
            resume=args.resume,
            dist=dist,
            stage_name="during the final evaluation",
            resume_hint=f"training is complete; `topoat train --out {out} --resume` "
            "evaluates it without training again",
        )
    finally:
        shutdown()
    if entry is not None:  # rank 0
        with stage("after training and evaluating", f"the run is complete: {RunFolder(out).results}"):
            print(format_table({cfg.name: entry}))
            written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
            print(f"wrote {out} ({', '.join(written)})")
    return 0


def _teacher(args) -> int:
    """`train` with the dataset's packaged standard config: the frozen model TRAIN and the reports compare with."""
    from .config import preset_names

    datasets = sorted(name.rpartition("/")[0] for name in preset_names("configs") if name.endswith("/standard"))
    if args.dataset not in datasets:
        raise TopoatError(
            f"teacher: no packaged standard config for {args.dataset!r}; choose from {', '.join(datasets)}"
        )
    overrides = ([f"data.root={args.data_root}"] if args.data_root else []) + args.set
    config = None if args.resume else f"{args.dataset}/standard"
    settings = {"config": config, "set": overrides, "print_config": False, "force": False}
    return _train(argparse.Namespace(**{**vars(args), **settings}))


def _check_config_kept(config: str, folder, cfg) -> None:
    """A run writes its resolved config to its folder's config.yaml when it starts: refuse to replace a
    config.yaml that is the --config itself and says something else (the user's file, with its `base:`)."""
    from .config import dump_config, preset_path

    path = preset_path(config, "configs")
    if folder.last.is_file() or not folder.config.is_file() or path.resolve() != folder.config.resolve():
        return
    try:
        same = folder.config.read_text() == dump_config(cfg)
    except OSError:
        same = False
    if not same:
        raise TopoatError(
            f"train: --config {config} is the run folder's config.yaml, which the run replaces with the resolved "
            "config; copy it out of the folder, or pass --force to replace it"
        )


def _study(args) -> int:
    from .runs.study import run_study, selected

    only = [pattern for item in args.runs for pattern in item.split(",") if pattern] or None
    document = run_study(
        args.spec, args.out, resume=args.resume, extra=args.set, progress=not args.no_progress, only=only
    )
    if args.report:
        from .report import write_report

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


def _eval(args) -> int:
    from .evaluation.accuracy import evaluate, format_result, held_out_subset
    from .evaluation.target import load_target, recorded_threat
    from .runtime import resolve_device

    attacks = _checked_eval_arguments(args)
    device = resolve_device(args.device)
    target = load_target(
        args.checkpoint,
        device,
        dataset=args.dataset,
        root=args.data_root,
        arch=args.arch,
        num_classes=args.num_classes,
        factory=args.model,
        arch_args=_arch_args(args.arch_args) if args.arch is not None else None,
    )
    norm, eps = recorded_threat(target.record, args.norm, args.eps, args.step_size)
    if args.sanity and eps == 0:
        raise TopoatError("eval: --sanity needs --eps > 0")
    if args.results:  # a results.json that does not fit fails before the attacks run, not after
        _check_results_fit(args, target, norm, eps)
    reference = _sanity_reference(args, target.data, device)
    x, y = held_out_subset(target.data, args.n, args.seed, device)
    epoch = f", epoch {target.record['epoch']}" if isinstance(target.record.get("epoch"), int) else ""
    for note in target.record.get("notes", []):
        print(f"note: {note}")
    print(
        f"{target.label} ({target.record['arch']}{epoch}) on {target.data.name} test: {x.shape[0]} images "
        f"(seed {args.seed}), {norm} eps {eps:.6g}"
    )
    res = evaluate(
        target.model,
        x,
        y,
        attacks,
        norm=norm,
        eps=eps,
        step_size=args.step_size,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        autoattack_n=args.autoattack_n,
        seed=args.seed,
    )
    print(format_result(res))
    for note in res.notes:
        print(f"note: {note}")
    report = None
    if args.sanity:
        from .evaluation.sanity import sanity_checks

        report = sanity_checks(
            target.model,
            x,
            y,
            norm=norm,
            eps=eps,
            step_size=args.step_size,
            steps=args.sanity_steps,
            reference=reference,
            autoattack_n=args.autoattack_n,
            known=res,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            seed=args.seed,
        )
        print()
        print(report.format())
    _write_eval_outputs(args, res, report, target.data.name, norm, eps)
    if report is not None and not report.passed:
        names = ", ".join(c.name for c in report.failed)
        bar = "!" * 78
        print(
            f"\n{bar}\nWARNING: {len(report.failed)} sanity check(s) FAILED ({names}).\n"
            f"The robust accuracies above are probably overestimated (gradient masking or a broken attack):\n"
            f"do not report them without an adaptive attack.\n{bar}",
            file=sys.stderr,
        )
        return 1
    return 0


def _checked_eval_arguments(args) -> list[str]:
    """The attacks to run, after every check that needs no file read: a mistake costs no loading."""
    from .evaluation.accuracy import parse_attack

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise TopoatError("eval: --attacks lists no attack")
    for a in attacks:
        parse_attack(a)
    if (args.results is None) != (args.run is None):
        raise TopoatError("eval: --results and --run go together")
    if args.reference and not args.sanity:
        raise TopoatError("eval: --reference is used by --sanity only")
    if args.results and (args.arch is not None or args.model is not None):
        raise TopoatError("eval: --results merges into a topoat run; a model from --arch/--model has none")
    _check_output_file("--json", args.json)
    return attacks


def _check_results_fit(args, target, norm: str, eps: float) -> None:
    """--results names a run this checkpoint belongs to, scored on the same threat model and images."""
    from .runs.merge import find_run_slot

    find_run_slot(Path(args.results), args.run, Path(args.checkpoint), norm=norm, eps=eps, dataset=target.data.name)
    config = target.record.get("config")
    evaluation = config.get("evaluation") if isinstance(config, dict) else None
    run_seed = evaluation.get("seed", args.seed) if isinstance(evaluation, dict) else args.seed
    if run_seed != args.seed:
        raise TopoatError(
            f"eval: the run chose its test images with seed {run_seed}; pass --seed {run_seed} "
            "to merge into its results"
        )


def _sanity_reference(args, data, device):
    """The standard model of --sanity's transfer check, refused if it was made for other data."""
    if not args.reference:
        return None
    from .evaluation.target import check_fits
    from .runs.checkpoint import load_checkpoint, load_model

    reference = load_model(args.reference, device)
    check_fits(reference, load_checkpoint(args.reference), data, args.reference, device, role="--reference")
    return reference


def _write_eval_outputs(args, res, report, dataset: str, norm: str, eps: float) -> None:
    """--json's document and --results' merge."""
    if args.json:
        step_size = args.step_size if args.step_size is not None else eps / 4
        document = dict(
            res.as_dict(),
            checkpoint=str(args.checkpoint),
            dataset=dataset,
            norm=norm,
            eps=eps,
            step_size=step_size,
            seed=args.seed,
        )
        if report is not None:
            document["sanity"] = report.as_dict()
        write_text_atomic(Path(args.json), json.dumps(document, indent=2) + "\n")
    if args.results:
        from .runs.merge import merge_evaluation

        slot = merge_evaluation(
            Path(args.results), args.run, Path(args.checkpoint), res, norm=norm, eps=eps, dataset=dataset, sanity=report
        )
        print(f"merged into {args.results}: run {args.run} ({slot} checkpoint)")


def _arch_args(text: str) -> dict:
    import yaml

    from .yamltext import safe_load

    try:
        value = safe_load(text, "eval: --arch-args")
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise TopoatError(f"eval: --arch-args must be a YAML mapping such as '{{width: 64}}', got {text!r}")
    return value


def _export(args) -> int:
    from .evaluation.external import export_checkpoint

    weights, meta = export_checkpoint(args.checkpoint, args.out, force=args.force)
    print(f"wrote {weights} (state_dict) and {meta} (how to rebuild it)")
    return 0


def _check_output_file(flag: str, path: str | None) -> None:
    """An output file whose folder does not exist fails before the work, not after it."""
    if path is not None and not Path(path).parent.is_dir():
        raise TopoatError(f"{flag} {path}: folder {Path(path).parent} does not exist")


def _analyze(args) -> int:
    from .evaluation.accuracy import held_out_subset
    from .evaluation.graph_metrics import analyze_checkpoints
    from .evaluation.target import check_fits, recorded_dataset, recorded_threat
    from .models import check_layer
    from .report import format_topology_table
    from .runs.checkpoint import load_checkpoint, model_from_record
    from .runtime import resolve_device

    if args.n <= 2 * args.k:
        raise TopoatError(f"analyze: --n must be more than twice --k (got n={args.n}, k={args.k})")
    if args.json == "":
        args.json = str(_common_folder(args.checkpoints) / "topology.json")
    _check_output_file("--json", args.json)
    reference = load_checkpoint(args.reference)
    checkpoints = {path: load_checkpoint(path) for path in args.checkpoints}  # bad paths fail before any attack
    norm, eps = recorded_threat(reference, args.norm, args.eps, args.step_size, command="analyze")
    device = resolve_device(args.device)
    ds = recorded_dataset(reference, args.dataset, args.data_root, command="analyze")
    for path, ckpt in [(args.reference, reference), *checkpoints.items()]:
        model = model_from_record(ckpt, device).eval()
        check_fits(model, ckpt, ds, path, device, role="--reference" if path == args.reference else "checkpoint")
        check_layer(model, args.layer, "analyze: --layer")
    x, y = held_out_subset(ds, args.n, args.seed, device)
    attack = f"pgd-{args.attack_steps}"
    metrics = analyze_checkpoints(
        args.checkpoints,
        args.reference,
        x,
        y,
        norm=norm,
        eps=eps,
        attack=attack,
        step_size=args.step_size,
        k=args.k,
        layer=args.layer,
        seed=args.seed,
    )
    print(
        f"topology against {args.reference}: {x.shape[0]} test images, {norm} eps={eps:.4g}, "
        f"adversarial = {attack} against each model, k={args.k}"
    )
    print(format_topology_table(metrics, args.k))
    if args.json:
        document = {
            "reference": str(args.reference),
            "n": int(x.shape[0]),
            "k": args.k,
            "attack": attack,
            "norm": norm,
            "eps": eps,
            "layer": args.layer,
            "seed": args.seed,
            "models": metrics,
        }
        write_text_atomic(Path(args.json), json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _common_folder(paths: Sequence[str]) -> Path:
    """The deepest folder holding all `paths`: a run's folder for one checkpoint, the study's for several runs."""
    import os

    return Path(os.path.commonpath([Path(p).resolve().parent for p in paths]))


def _report(args) -> int:
    from .report import ReportSettings, write_report

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


def _eps(text: str) -> float:
    """Accept 0.1, 8/255 or 8/255.0: eps must be exact, so fractions are welcome."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"bad eps {text!r}") from None
    if not math.isfinite(value):  # a NaN or infinite radius or step makes every attack meaningless
        raise argparse.ArgumentTypeError(f"bad eps {text!r}: not a finite number")
    return value


def _radius(text: str) -> float:
    value = _eps(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def _step(text: str) -> float:
    value = _eps(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def _seed(text: str) -> int:
    from .config import SEED_RANGE, seed_fits

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not seed_fits(value):
        raise argparse.ArgumentTypeError(f"a seed {SEED_RANGE}, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _configs(args) -> int:
    from .config import PRESETS, preset_names

    for kind, use in (("configs", "topoat train --config NAME"), ("studies", "topoat study NAME")):
        print(f"{kind} ({use}; the files are in {PRESETS / kind}):")
        for name in preset_names(kind):
            print(f"  {name}")
    return 0


def _version() -> str:
    import torch

    from . import __version__

    return f"topoat {__version__} (torch {torch.__version__})"


DEVICE_HELP = "auto (CUDA if there is one, else CPU), cpu, cuda or cuda:N"
NO_PROGRESS_HELP = "no progress bars (log lines only)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="topoat", description="Topology-preserving adversarial training (TRAIN).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_configs_command(sub)
    _add_train_command(sub)
    _add_teacher_command(sub)
    _add_study_command(sub)
    _add_eval_command(sub)
    _add_export_command(sub)
    _add_analyze_command(sub)
    _add_report_command(sub)
    return parser


def _add_configs_command(sub) -> None:
    p = sub.add_parser("configs", help="list the packaged configs and studies (usable by name)")
    p.set_defaults(func=_configs)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train one model (standard, an AT method, optionally + TRAIN)")
    p.add_argument("--config", help="YAML config file, or a packaged config's name (e.g. fashion-mnist/pgd-at)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run folder (must not exist, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--force", action="store_true", help="let the run replace --config when it is the folder's own config.yaml"
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved, validated config (defaults filled in) and exit"
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=_train)


def _add_teacher_command(sub) -> None:
    p = sub.add_parser(
        "teacher",
        help="train the standard model of a dataset (TRAIN's frozen teacher), as `topoat train` with its packaged "
        "standard config",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="fashion-mnist, cifar10, cifar10-jpg, cifar100, tiny-imagenet (or cifar10/wrn-34-10: WRN-34-10)",
    )
    p.add_argument(
        "--out", required=True, help="run folder (must not exist, unless --resume); the teacher is OUT/last.pt"
    )
    p.add_argument("--data-root", help="where the dataset lives (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=_teacher)


def _add_study_command(sub) -> None:
    p = sub.add_parser(
        "study",
        help="train and evaluate the runs of a study file (or a packaged study, by name)",
        description="Train and evaluate the runs of a study. Exit status: 0 done, 1 a run failed (diverged, "
        "or its teacher did; the other runs are finished and tabulated), 2 a user error.",
    )
    p.add_argument("spec", help="study YAML")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--resume", action="store_true", help="continue the study in --out")
    p.add_argument(
        "--report",
        action="store_true",
        help="then write report.md and figures/ into --out (as `topoat report OUT` with its defaults)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="PATTERN[,PATTERN]",
        help="train only the runs whose names match (shell-style, e.g. 'trades-*-s1'); two processes "
        "with disjoint --runs can share one study folder, each with --resume",
    )
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=_study)


def _add_eval_command(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of a checkpoint under attacks (and gradient-masking checks)",
        description="Natural and robust accuracy of a topoat checkpoint on a fixed, seeded choice of "
        "test images. Exit status: 0 done, 1 a --sanity check failed, 2 a user error.",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a topoat checkpoint; with --arch a plain state_dict; with --model optional weights",
    )
    p.add_argument("--arch", help="a topoat architecture whose plain state_dict the file holds (needs --num-classes)")
    p.add_argument("--num-classes", type=_count, help="classes of the --arch model")
    p.add_argument("--arch-args", default="{}", metavar="YAML", help="arguments of --arch, e.g. '{width: 64}'")
    p.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="any importable model: FACTORY() returns an nn.Module taking [0, 1] images, giving logits",
    )
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--data-root", help="where the dataset lives (default: the checkpoint's, else the dataset's own)")
    p.add_argument(
        "--attacks",
        default="pgd-20",
        help="comma-separated: fgsm, pgd-K, pgd-K-rR (R restarts), cw-K, cw-K-rR; AutoAttack: autoattack "
        "(standard), autoattack-plus, autoattack-rand, apgd-ce, apgd-t, apgd-dlr, fab, fab-t, square, "
        "or a list such as aa:apgd-ce+apgd-t (default: pgd-20)",
    )
    p.add_argument("--norm", choices=["Linf", "L2"], default=None, help="default: the checkpoint's threat model")
    p.add_argument("--eps", type=_radius, default=None, help="e.g. 0.1 or 8/255 (default: the checkpoint's)")
    p.add_argument("--step-size", type=_step, default=None, help="PGD/CW step (default eps / 4)")
    p.add_argument("--n", type=_count, default=1000, help="test images (a fixed seeded choice; default 1000)")
    p.add_argument(
        "--autoattack-n",
        type=_count,
        default=None,
        help="run AutoAttack attacks on a fixed subset of this many of the n images (default: all)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="chooses the images and the attacks' random starts")
    p.add_argument("--batch-size", type=_count, default=500, help="images per attack batch (default 500)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--results", metavar="RESULTS_JSON", help="merge the robust accuracies into this results.json (with --run)"
    )
    p.add_argument("--run", metavar="NAME", help="the run of --results the checkpoint belongs to (last or best)")
    p.add_argument(
        "--sanity",
        action="store_true",
        help="check for gradient masking; a failed check is reported loudly and exits with status 1",
    )
    p.add_argument(
        "--reference", metavar="STANDARD_CKPT", help="standard model for --sanity's transfer check (skipped without it)"
    )
    p.add_argument("--sanity-steps", type=_count, default=20, help="PGD steps of the sanity checks (default 20)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.set_defaults(func=_eval)


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint as a plain state_dict and a JSON of how to rebuild the model")
    p.add_argument("checkpoint")
    p.add_argument("out", help="the state_dict file (.pt); its .json is written beside it")
    p.add_argument("--force", action="store_true", help="replace OUT and its .json if they exist")
    p.set_defaults(func=_export)


def _add_analyze_command(sub) -> None:
    p = sub.add_parser("analyze", help="topology metrics of checkpoints against a reference (standard) model")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    p.add_argument("--reference", required=True, metavar="TEACHER", help="the standard model's checkpoint")
    p.add_argument("--dataset", help="dataset name (default: the reference checkpoint's data config)")
    p.add_argument("--data-root", help="where the dataset lives (default: the checkpoint's, else the dataset's own)")
    p.add_argument("--n", type=_count, default=1000, help="held-out test images (a fixed seeded choice)")
    p.add_argument("--seed", type=_seed, default=0, help="chooses the images and the attack's random starts")
    p.add_argument("--k", type=_count, default=10, help="neighbours for kNN overlap and trustworthiness")
    p.add_argument("--norm", choices=["Linf", "L2"], default=None, help="default: the reference's config")
    p.add_argument("--eps", type=_radius, default=None, help="default: the reference's config")
    p.add_argument("--attack-steps", type=_count, default=20, help="PGD steps for the adversarial representations")
    p.add_argument("--step-size", type=_step, default=None, help="PGD step (default eps / 4)")
    p.add_argument("--layer", default="features", help="features (penultimate), logits, or a module name")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        metavar="FILE",
        help="also write the metrics as JSON: to FILE, or with no FILE to topology.json in the checkpoints' "
        "common folder (the run or study folder)",
    )
    p.set_defaults(func=_analyze)


def _add_report_command(sub) -> None:
    p = sub.add_parser("report", help="report.md with tables, topology metrics and pictures of finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a study folder or single run folders")
    p.add_argument("--out", help="where report.md and figures/ go (default: the only RUN_DIR)")
    p.add_argument("--reference", help="checkpoint every run is compared with (default: each run's standard model)")
    p.add_argument(
        "--n", type=_count, default=1000, help="held-out test images for the topology metrics (default 1000)"
    )
    p.add_argument("--k", type=_count, default=10, help="neighbours for kNN overlap and trustworthiness (default 10)")
    p.add_argument(
        "--attack-steps", type=_count, default=20, help="PGD steps for the adversarial representations (default 20)"
    )
    p.add_argument("--tsne-points", type=_count, default=1000, help="natural images per t-SNE map")
    p.add_argument(
        "--tsne-models",
        metavar="NAME[,NAME]",
        help="runs (or groups of seeds) drawn as t-SNE columns, in order (default: the reference, "
        "each TRAIN run beside its base method, then the rest, up to 6)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_report)


def main(argv: Sequence[str] | None = None) -> int:
    """The `topoat` command. With `argv` (tests, scripts) it returns the exit status and gives the caller's
    signal handlers back. Without, it is the program itself (the console script, `python -m topoat`): it
    answers SIGINT and SIGTERM with one line from its first moment to its last, and ends the process."""
    from .signals import exit_on_signals, restore

    # first of all, before torch loads (seconds): a signal while starting is one line too
    previous = exit_on_signals("while topoat was starting", "nothing was written")
    if argv is not None:
        try:
            return _run(argv)
        finally:
            restore(previous)
    status = _run(None)
    exit_on_signals("after the command had ended", "its outputs are complete" if status in (0, 1) else "")
    _end_process(status)


def _end_process(status: int) -> NoReturn:
    """Exit without the interpreter's teardown of torch's modules: seconds in which Python runs no signal
    handler, so a SIGTERM killed the finished command without a word. What topoat writes is on disk by now
    (atomically); the atexit callbacks (torch's compile workers) still run."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status)


def _run(argv: Sequence[str] | None) -> int:
    from .signals import raise_on_signals, stage

    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise TopoatError("topoat: give a command: train, study, eval, analyze or report (see --help)")
        # every stage answers SIGINT/SIGTERM with one line (the training loop saves a checkpoint first)
        with raise_on_signals(), stage(f"in topoat {args.command}"):
            return args.func(args)
    except TopoatError as e:
        print(f"topoat: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `topoat configs | head`: the reader has gone, which is no error of ours
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a tool killed by the signal reports
    except OSError as e:  # a path the system refuses (too long, a loop, no permission) where no check named it
        from .files import describe_os_error

        print(f"topoat: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"topoat: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("topoat: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of the dead pipe raises nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
