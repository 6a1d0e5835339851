"""A study: several named runs (a teacher and the models that use it, over seeds), trained, evaluated
and tabulated into one results.json. Re-running with resume continues where it stopped."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ..config import load_config, override, preset_path
from ..errors import TopoatError, TrainingDiverged
from ..files import write_atomic
from ..schema import TrainConfig
from ..signals import stage
from .folder import STUDY_FILE, STUDY_LEFTOVERS, RunFolder
from .results import ResultEntry, format_table, read_results, results_document, write_results
from .scoring import evaluate_missing, evaluate_more_images, method_name, train_and_evaluate
from .study_file import PlannedRun, load_study, selected, teacher_links


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
    study = _study_folder(out, resume)
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
        hint = f"`topoat study {path} --out {out} --resume` continues without training {p.name} again"
        _run_planned(p, configs[p.name], study, hint, progress, echo, runs, failed)
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


def _study_folder(out: Path, resume: bool) -> RunFolder:
    """The study's folder, refused when it is a run's or (unless resuming) already used; not created yet."""
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
    return study


def _run_planned(
    p: PlannedRun,
    cfg: TrainConfig,
    study: RunFolder,
    hint: str,
    progress: bool,
    echo: Callable[[str], None],
    runs: dict[str, ResultEntry],
    failed: dict[str, str],
) -> None:
    """Complete run `p` if it finished, else train and evaluate it once its teacher and reference have;
    its entry goes to `runs`, or why it has none to `failed`."""
    folder = study.run(p.name)
    if folder.results.is_file() and _torn(folder.results):
        echo(f"[{p.name}] {folder.results} is not valid JSON (a torn write): evaluating the run again")
    elif folder.results.is_file():
        with folder.locked():
            finished = _complete_finished_run(cfg, folder, p.name, hint, progress, echo)
        runs[p.name] = finished.rebased(p.name)
        return
    unfinished = [r for r in p.needs if r in failed or not _wait_until_finished(study, r, p.name, echo)]
    if unfinished:
        role = "teacher" if unfinished[0] == p.teacher else "reference"
        failed[p.name] = f"{role} run {unfinished[0]} " + (
            "failed" if unfinished[0] in failed else "did not finish (its process stopped without results.json)"
        )
        echo(f"[{p.name}] not trained: {failed[p.name]}")
        return
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
        return
    assert entry is not None  # a study runs in one process, which is the main one
    runs[p.name] = entry.rebased(p.name)


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
