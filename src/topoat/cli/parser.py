"""The `topoat` command line: its commands, their options, and the checks of single values."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, NoReturn

from ..errors import TopoatError
from . import commands


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        raise TopoatError(f"{self.prog}: {message} (see --help)")


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[_Parser]


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


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _seed(text: str) -> int:
    from ..schema import SEED_RANGE, seed_fits

    value = _whole(text)
    if not seed_fits(value):
        raise argparse.ArgumentTypeError(f"a seed {SEED_RANGE}, got {value}")
    return value


def _count(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _version() -> str:
    import torch

    from .. import __version__

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


def _add_configs_command(sub: Subcommands) -> None:
    p = sub.add_parser("configs", help="list the packaged configs and studies (usable by name)")
    p.set_defaults(func=commands.configs)


def _add_train_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.train)


def _add_teacher_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.teacher)


def _add_study_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.study)


def _add_eval_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.evaluate)


def _add_export_command(sub: Subcommands) -> None:
    p = sub.add_parser("export", help="a checkpoint as a plain state_dict and a JSON of how to rebuild the model")
    p.add_argument("checkpoint")
    p.add_argument("out", help="the state_dict file (.pt); its .json is written beside it")
    p.add_argument("--force", action="store_true", help="replace OUT and its .json if they exist")
    p.set_defaults(func=commands.export)


def _add_analyze_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.analyze)


def _add_report_command(sub: Subcommands) -> None:
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
    p.set_defaults(func=commands.report)
