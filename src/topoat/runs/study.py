"""A study: several named runs (a teacher and the models that use it, over seeds), trained, evaluated
and tabulated into one results.json. Re-running with resume continues where it stopped."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, from_dict, load_config, override, preset_path, read_yaml
from ..errors import TopoatError, TrainingDiverged
from ..files import write_atomic
from ..signals import stage
from .folder import LOCK, RESULTS, STUDY_FILE, STUDY_LEFTOVERS, RunFolder
from .results import ResultEntry, format_table, read_results, results_document, write_results
from .scoring import evaluate_missing, evaluate_more_images, method_name, train_and_evaluate

# What a study folder holds besides its runs (report.md, figures/ and analysis.json come from `report`).
STUDY_NAMES = frozenset({STUDY_FILE, RESULTS, LOCK, "report.md", "figures", "analysis.json"})
MAX_FOLDER_NAME_BYTES = 255  # what ext4, APFS and NTFS take (a run's name is its folder's)


@dataclass
class StudyRun:
    name: str
    config: str  # relative to the study file
    set: list[str] = field(default_factory=list)
    teacher: str | None = None  # name of the run whose last checkpoint is the TRAIN teacher
    # A subset of the study's seeds for this run (e.g. an ablation on one seed). Such runs come after
    # the whole grid, so the runs every seed needs for paired comparisons finish first.
    seeds: list[int] | None = None


@dataclass
class StudySpec:
    name: str = "study"
    runs: list[StudyRun] = field(default_factory=list)
    set: list[str] = field(default_factory=list)  # overrides applied to every run
    seeds: list[int] | None = None  # each run once per seed, named NAME-sSEED
    # Name of the standard run whose last checkpoint every later run logs its per-epoch topology
    # metrics against (validation.reference), so PGD-AT gets curves as well as TRAIN.
    reference: str | None = None


@dataclass
class PlannedRun:
    name: str
    config_path: Path
    overrides: list[str]
    teacher: str | None
    reference: str | None = None

    @property
    def needs(self) -> list[str]:
        """The runs whose last checkpoint this one reads: its teacher and its reference."""
        return [r for r in (self.teacher, self.reference) if r is not None]


def load_study(path: str | Path, extra: list[str] | None = None) -> tuple[StudySpec, list[PlannedRun]]:
    path = preset_path(path, "studies")
    raw = read_yaml(path)
    runs = raw.get("runs")
    for run in runs if isinstance(runs, list) else []:
        if isinstance(run, dict) and "name" in run and not isinstance(run["name"], str):
            raise TopoatError(
                f"study {path}: run name {run['name']!r} is not a string (YAML reads yes, 12 or ~ as a "
                "boolean, number or null); quote it, e.g. name: 'yes'"
            )
    spec = from_dict(StudySpec, raw)
    if not spec.runs:
        raise TopoatError(f"study {path}: no runs listed")
    names = [r.name for r in spec.runs]
    for name in names:
        check_run_name(path, name)
    if len(set(names)) != len(names):
        raise TopoatError(f"study {path}: run names must be unique")
    if spec.reference is not None and spec.reference not in names:
        raise TopoatError(f"study {path}: reference {spec.reference!r} is not one of its runs")
    for r in spec.runs:
        if r.seeds is not None and (spec.seeds is None or not set(r.seeds) <= set(spec.seeds)):
            raise TopoatError(
                f"study {path}: run {r.name!r} lists seeds {r.seeds} that are not among the study's seeds {spec.seeds}"
            )
        if r.teacher is not None and r.teacher not in names:
            raise TopoatError(f"study {path}: run {r.name!r} names unknown teacher run {r.teacher!r}")
        if r.teacher is not None and names.index(r.teacher) > names.index(r.name):
            raise TopoatError(f"study {path}: teacher run {r.teacher!r} must come before {r.name!r}")
        if r.seeds is not None and (r.name == spec.reference or any(q.teacher == r.name for q in spec.runs)):
            raise TopoatError(
                f"study {path}: run {r.name!r} is a teacher or the reference, so it runs on every seed "
                f"(remove its seeds)"
            )
    grid: list[PlannedRun] = []
    subset: list[PlannedRun] = []
    for seed in spec.seeds if spec.seeds is not None else [None]:
        suffix = "" if seed is None else f"-s{seed}"
        for r in spec.runs:
            if r.seeds is not None and seed not in r.seeds:
                continue
            overrides = list(spec.set) + list(r.set) + list(extra or [])
            if seed is not None:
                overrides.append(override("seed", seed))
            after_reference = spec.reference is not None and names.index(r.name) > names.index(spec.reference)
            (grid if r.seeds is None else subset).append(
                PlannedRun(
                    r.name + suffix,
                    (path.parent / r.config),
                    overrides,
                    None if r.teacher is None else r.teacher + suffix,
                    spec.reference + suffix if after_reference else None,
                )
            )
    planned = grid + subset
    for run in planned:  # checked now, not when the study reaches that run and cannot make its folder
        if len(os.fsencode(run.name)) > MAX_FOLDER_NAME_BYTES:
            raise TopoatError(
                f"study {path}: run name {run.name[:40]}... is {len(os.fsencode(run.name))} bytes long; "
                f"a folder name takes at most {MAX_FOLDER_NAME_BYTES}"
            )
    return spec, planned


def selected(name: str, only: list[str] | None) -> bool:
    """Run `name` is one `--runs` asks for (every run without --runs)."""
    return only is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in only)


def check_run_name(path: Path, name: object) -> None:
    """A run's folder is `--out/NAME`: a name with a separator, `..` or an absolute path would put it (and
    its training) outside the study folder."""
    bad = (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    )
    if bad:
        raise TopoatError(
            f"study {path}: run name {name!r} must be a plain folder name (no '/', '..' or absolute path)"
        )
    if name in STUDY_NAMES:
        raise TopoatError(f"study {path}: run name {name!r} is the name of a file the study folder holds itself")


def teacher_links(p: PlannedRun, teacher: Path) -> list[str]:
    """Overrides pointing the run's TRAIN and distillation sections (whichever it has) at `teacher`."""
    cfg = load_config(p.config_path, p.overrides + [override("name", p.name)])
    links = [
        override(f"{section}.teacher", str(teacher))
        for section in ("topology", "distillation")
        if getattr(cfg, section) is not None
    ]
    if not links:
        raise TopoatError(
            f"study run {p.name!r} names a teacher but has neither a topology: nor a distillation: section"
        )
    return links


def run_study(
    path: str | Path,
    out: str | Path,
    resume: bool = False,
    extra: list[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    only: list[str] | None = None,
) -> dict:
    """Train and evaluate every planned run (those matching a pattern of `only`, if given) not yet done.

    On resume, a finished run whose results lack attacks the study now lists is evaluated with just
    those, and one scored on fewer test images than `evaluation.n` now asks for is scored on the images
    it lacks (a study can grow its evaluation after a screening phase without retraining)."""
    path = preset_path(path, "studies")
    spec, planned = load_study(path, extra)
    whole_study = planned
    if only is not None:
        planned = [p for p in planned if selected(p.name, only)]
        if not planned:
            raise TopoatError(f"no run of study {path} matches {', '.join(only)}")
    out = Path(out).resolve()
    if resume and not out.is_dir():
        raise TopoatError(f"nothing to resume: {out} does not exist")
    study = RunFolder(out)
    if study.config.is_file() or study.last.is_file():
        raise TopoatError(
            f"{out} is a run's folder (it holds {study.config.name if study.config.is_file() else study.last.name}), "
            "not a study folder; give the study its own --out"
        )
    if not resume:  # refuse a used folder before the configs are read; create it only once they are valid
        study.prepare(resume=False, create=False, leftovers=STUDY_LEFTOVERS)
    configs = _validated_configs(planned, study, progress)  # before the first hour of training is spent
    _check_dependencies(planned, study)
    for p in planned:
        if study.run(p.name).root.is_symlink():  # a study writes inside its folder, never through a link
            raise TopoatError(f"study run folder {study.run(p.name).root} is a symbolic link; replace it with a folder")
    if not resume:
        study.prepare(resume=False, leftovers=STUDY_LEFTOVERS)
    if not (resume and (out / STUDY_FILE).resolve() == Path(path).resolve()):
        _copy_study_file(path, out / STUDY_FILE)  # the study file as last run
    runs: dict[str, ResultEntry] = {}
    failed: dict[str, str] = {}
    for p in planned:
        cfg = configs[p.name]
        folder = study.run(p.name)
        hint = f"`topoat study {path} --out {out} --resume` continues without training {p.name} again"
        if folder.results.is_file() and _torn(folder.results):
            echo(f"[{p.name}] {folder.results} is not valid JSON (a torn write): evaluating the run again")
        elif folder.results.is_file():
            with folder.locked():
                finished = _complete_finished_run(cfg, folder, p.name, hint, progress, echo)
            runs[p.name] = finished.rebased(p.name)
            continue
        unfinished = [r for r in p.needs if r in failed or not _wait_until_finished(study, r, p.name, echo)]
        if unfinished:
            role = "teacher" if unfinished[0] == p.teacher else "reference"
            failed[p.name] = f"{role} run {unfinished[0]} " + (
                "failed" if unfinished[0] in failed else "did not finish (its process stopped without results.json)"
            )
            echo(f"[{p.name}] not trained: {failed[p.name]}")
            continue
        echo(
            f"[{p.name}] training ({method_name(cfg)}{'' if cfg.topology is None else ' + TRAIN'}, "
            f"{cfg.optim.epochs} epochs)"
        )
        try:
            entry = train_and_evaluate(
                cfg,
                folder.root,
                resume=folder.last.is_file(),
                echo=echo,
                stage_name=f"during the evaluation of run {p.name}",
                resume_hint=hint,
            )
        except TrainingDiverged as e:
            failed[p.name] = str(e)
            echo(f"[{p.name}] failed: {e}")
            continue
        assert entry is not None  # a study runs in one process, which is the main one
        runs[p.name] = entry.rebased(p.name)
    first = configs[planned[0].name]
    if only is not None:  # processes sharing the folder (--runs) each write the whole study's results.json
        runs, failed = _with_runs_done_elsewhere(whole_study, runs, failed, study)
    document = results_document(first, runs, failed)
    write_results(document, study.results)
    echo("")
    echo(format_table(runs))
    for name, why in failed.items():
        echo(f"{name}: FAILED: {why}")
    echo(f"\nresults: {out / 'results.json'}")
    return document.to_dict()


def _validated_configs(planned: list[PlannedRun], study: RunFolder, progress: bool) -> dict[str, TrainConfig]:
    """Every run's config, teacher and reference links filled in, all checked before anything is written."""
    configs = {}
    for p in planned:
        links = [] if p.teacher is None else teacher_links(p, study.run(p.teacher).last)
        if p.reference is not None:
            links.append(override("validation.reference", str(study.run(p.reference).last)))
        cfg = load_config(p.config_path, p.overrides + links + [override("name", p.name)])
        if not progress:
            cfg.runtime.progress = False
        configs[p.name] = cfg
    return configs


POLL_SECONDS = 10.0  # how often a run waiting for a teacher trained by another process looks again


def _check_dependencies(planned: list[PlannedRun], study: RunFolder) -> None:
    """A teacher or reference outside this process's runs must be finished, or being trained by another
    process sharing the study folder (whose lock on its folder says so); else nothing would ever train it
    and its run would read a missing or half-trained checkpoint."""
    selected = {p.name for p in planned}
    for p in planned:
        for r in p.needs:
            if r not in selected and not _finished(study.run(r)) and not study.run(r).in_use():
                raise TopoatError(
                    f"run {p.name} needs run {r}, which is not finished in {study.root} and is not being trained "
                    f"by another process; train it first (--runs {r}) or add it to --runs"
                )


def _finished(folder: RunFolder) -> bool:
    """A run is finished once its results.json is written (after its last epoch and evaluation)."""
    return folder.results.is_file() and not _torn(folder.results)


def _wait_until_finished(study: RunFolder, name: str, waiting: str, echo: Callable[[str], None]) -> bool:
    """Whether run `name` is finished, waiting while another process trains it (holds its lock). A run of
    this process came earlier in the loop, so it is finished or failed, never locked here."""
    folder = study.run(name)
    announced = False
    while not _finished(folder):
        if not folder.in_use():
            return _finished(folder)  # it may have finished between the two looks
        if not announced:
            echo(f"[{waiting}] waiting for run {name} to finish (trained by another process)")
            announced = True
        time.sleep(POLL_SECONDS)
    return True


def _complete_finished_run(
    cfg: TrainConfig, folder: RunFolder, name: str, hint: str, progress: bool, echo: Callable[[str], None]
) -> ResultEntry:
    """A trained run's entry, first scored on the images and with the attacks the study now asks for
    and it lacks (a study may grow its evaluation after a screening phase without retraining)."""
    entry = read_results(folder.results, name).runs[name]
    n_eval = entry.n_eval
    if isinstance(n_eval, int) and (cfg.evaluation.n is None or cfg.evaluation.n > n_eval):
        with stage(f"during the evaluation of run {name}", hint):
            entry = evaluate_more_images(cfg, folder.root, name, progress=progress, echo=echo)
    scores = entry.scores("last" if "last" in cfg.evaluation.checkpoints else "best")
    scored = scores.robust_acc if scores is not None else {}
    missing = [a for a in cfg.evaluation.attacks if a not in scored]
    if not missing:
        echo(f"[{name}] already done")
        return entry
    echo(f"[{name}] done; evaluating the attacks it lacks: {', '.join(missing)}")
    with stage(f"during the evaluation of run {name}", hint):
        return evaluate_missing(cfg, folder.root, name, missing, progress=progress)


def _with_runs_done_elsewhere(
    whole_study: list[PlannedRun], runs: dict[str, ResultEntry], failed: dict[str, str], study: RunFolder
) -> tuple[dict[str, ResultEntry], dict[str, str]]:
    """This invocation's runs and failures, joined by the finished runs of the rest of the study (read
    from their folders, never evaluated here) and the failures the study's results.json already lists,
    in the study's order."""
    earlier: dict[str, str] = {}
    if study.results.is_file() and not _torn(study.results):
        with contextlib.suppress(TopoatError):  # a damaged study results.json is written anew below
            earlier = read_results(study.results).failed
    joined, failures = {}, {}
    for p in whole_study:
        folder = study.run(p.name)
        if p.name in runs:
            joined[p.name] = runs[p.name]
        elif p.name in failed:
            failures[p.name] = failed[p.name]
        elif folder.results.is_file() and not _torn(folder.results):
            with contextlib.suppress(TopoatError):  # its own process, or a later --resume, reports it
                joined[p.name] = read_results(folder.results, p.name).runs[p.name].rebased(p.name)
        elif p.name in earlier:
            failures[p.name] = earlier[p.name]
    return joined, failures


def _torn(results: Path) -> bool:
    """A run's results.json that is not JSON at all: the run is evaluated again from its last checkpoint
    (the same images and seeds give the same scores)."""
    try:
        json.loads(results.read_text())
    except ValueError:  # JSONDecodeError and undecodable bytes
        return True
    except OSError:
        return False  # unreadable: read_json reports it
    return False


def _copy_study_file(src: str | Path, dst: Path) -> None:
    try:
        data = Path(src).read_bytes()
    except OSError as e:
        raise TopoatError(f"cannot read study file {src}: {e.strerror or e}") from None
    write_atomic(dst, data)
