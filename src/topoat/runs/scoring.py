"""A finished run folder: evaluate its checkpoints on the test split and write results.json (whose
contract is in runs/results.py); or, for a run already scored, add the attacks or images it lacks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import ImageDataset, dataset_from_config, to_float
from ..evaluation.accuracy import EvalResult, evaluate, fixed_subset, held_out_subset
from ..runtime import as_channels_last, resolve_device, set_threads, use_channels_last
from ..schema import TrainConfig, to_dict
from ..training.distributed import SINGLE, DistContext
from .checkpoint import load_model, model_from_record, read_checkpoint
from .folder import RunFolder
from .merge import merge_evaluation
from .results import CheckpointScores, ResultEntry, read_results, results_document, write_results


def method_name(cfg: TrainConfig) -> str:
    return cfg.method.name if cfg.method.awp is None else f"awp-{cfg.method.name}"


def train_and_evaluate(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    stage_name: str,
    resume_hint: str,
    dist: DistContext = SINGLE,
    echo: Callable[[str], None] | None = None,
) -> ResultEntry | None:
    """One run from start to results: train `cfg` into `run_dir` (or resume it), evaluate it and write its
    results.json. Returns its entry; None on the processes other than rank 0, which only train. The CLI
    and a study both run a run through here, holding the folder's lock from the first check to results.json."""
    from ..training.loop import Trainer

    folder = RunFolder(run_dir)
    if not dist.is_main:  # rank 0 holds the folder's lock for all of them
        Trainer.from_config(cfg, run_dir, resume=resume, dist=dist).run()
        return None
    check_startable(folder, resume)  # before the lock file goes into a folder that is not a run's
    with folder.locked():
        summary = Trainer.from_config(cfg, run_dir, resume=resume, dist=dist).run()
        return _evaluated(cfg, run_dir, summary, stage_name, resume_hint, echo)


def check_startable(folder: RunFolder, resume: bool) -> None:
    """Refuse a folder that can neither take a new run nor be resumed, in the words of RunFolder.prepare."""
    if not resume:
        folder.prepare(resume=False, create=False)
    elif not folder.last.is_file() and not folder.restartable():
        folder.prepare(resume=True)


def _evaluated(
    cfg: TrainConfig,
    run_dir: Path,
    summary: dict,
    stage_name: str,
    resume_hint: str,
    echo: Callable[[str], None] | None,
) -> ResultEntry:
    from ..signals import stage

    if echo is not None:
        aa_n, ev = cfg.evaluation.autoattack_n, cfg.evaluation
        echo(
            f"[{cfg.name}] evaluating {', '.join(ev.attacks)} on {ev.n or 'all'} test images"
            f"{'' if aa_n is None else f' (AutoAttack on a fixed {aa_n} of them)'}, "
            f"{' and '.join(ev.checkpoints) or 'no'} checkpoint(s)"
        )
    with stage(stage_name, resume_hint):
        entry = evaluate_run(
            cfg, run_dir, cfg.name, summary["train_seconds"], relative_to=run_dir, progress=cfg.runtime.progress
        )
        write_results(results_document(cfg, {cfg.name: entry}), RunFolder(run_dir).results)
    return entry


def evaluate_run(
    cfg: TrainConfig,
    run_dir: Path,
    name: str,
    train_seconds: float,
    relative_to: Path,
    dataset: ImageDataset | None = None,
    progress: bool = True,
) -> ResultEntry:
    """The results.json entry of one run: its last checkpoint evaluated on the fixed test subset, and
    under `best` its best-by-validation checkpoint on the same images (robust overfitting is real)."""
    device = resolve_device(cfg.runtime.device)
    ds = dataset if dataset is not None else dataset_from_config(cfg.data)
    x, y = held_out_subset(ds, cfg.evaluation.n, cfg.evaluation.seed, device)
    folder = RunFolder(run_dir)
    checkpoint = folder.last
    model = load_model(checkpoint, device)
    res = _evaluate_model(cfg, model, x, y, progress, attacks_for(cfg, "last"))
    return ResultEntry(
        method=method_name(cfg),
        topology=None if cfg.topology is None else to_dict(cfg.topology),
        method_config={k: v for k, v in to_dict(cfg.method).items() if k != "name"},
        distillation=None if cfg.distillation is None else to_dict(cfg.distillation),
        last=_scores(res, os.path.relpath(checkpoint, relative_to)),
        train_seconds=round(train_seconds, 3),
        n_eval=res.n,
        best=_evaluate_best(cfg, folder.best, model, res, x, y, relative_to, progress),
    )


def evaluate_missing(
    cfg: TrainConfig, run_dir: Path, name: str, attacks: list[str], progress: bool = True
) -> ResultEntry:
    """A finished run's entry (its results.json) with `attacks` evaluated on the same images and merged
    in, for the last checkpoint and, unless it holds the same weights, the best one."""
    results = RunFolder(run_dir).results
    entry = read_results(results, name).runs[name]
    device = resolve_device(cfg.runtime.device)
    ds = dataset_from_config(cfg.data)
    # the images the run was scored on, even if the study now asks for more: scores of one entry share images
    n = entry.n_eval if entry.n_eval is not None else cfg.evaluation.n
    x, y = held_out_subset(ds, n, cfg.evaluation.seed, device)
    copies_last = entry.best is not None and entry.best.same_as_last and "last" in cfg.evaluation.checkpoints
    for kind, slot in entry.checkpoints.items():
        wanted = [a for a in attacks if a in attacks_for(cfg, kind)]
        if not wanted or (kind == "best" and copies_last):
            continue
        path = (run_dir / str(slot.checkpoint)).resolve()
        res = _evaluate_model(cfg, load_model(path, device), x, y, progress, wanted)
        merge_evaluation(
            results, name, path, res, norm=cfg.attack.norm, eps=cfg.attack.eps, dataset=cfg.data.display_name
        )
    doc = read_results(results, name)
    entry = doc.runs[name]
    if copies_last and entry.best is not None:
        last = entry.last
        entry.best.robust_acc, entry.best.n_by_attack = last.robust_acc, last.n_by_attack
        entry.best.autoattack_subset, entry.best.eval_seconds = last.autoattack_subset, last.eval_seconds
        write_results(doc, results)
    return entry


def images_to_add(cfg: TrainConfig, entry: ResultEntry, n_test: int) -> int:
    """How many test images a finished run lacks for `cfg.evaluation.n` (all of them when None): 0 when
    it was scored on at least as many (a study that asks for fewer keeps the larger sample)."""
    wanted = n_test if cfg.evaluation.n is None else min(cfg.evaluation.n, n_test)
    return max(wanted - int(entry.n_eval if entry.n_eval is not None else wanted), 0)


def evaluate_more_images(
    cfg: TrainConfig, run_dir: Path, name: str, progress: bool = True, echo: Callable[[str], None] = lambda line: None
) -> ResultEntry:
    """A finished run's entry grown to `cfg.evaluation.n` test images: the images it lacks are scored
    with every attack it already holds, and each score becomes the count-weighted mean of both parts.

    The chosen subsets are nested (`fixed_subset`), so the old images are among the new ones and the
    result is a score on exactly the images a fresh evaluation on `cfg.evaluation.n` would use. The
    random starts on the added images differ from a fresh run's (they are other batches); each image
    still gets the same attack. A run whose AutoAttack ran on a fixed fraction (`autoattack_n`) is
    evaluated again from scratch instead: its subsets do not nest."""
    results = RunFolder(run_dir).results
    doc = read_results(results, name)
    entry = doc.runs[name]
    device = resolve_device(cfg.runtime.device)
    ds = dataset_from_config(cfg.data)
    n_test = ds.x_test.shape[0]
    if not images_to_add(cfg, entry, n_test):
        return entry
    n_old = int(entry.n_eval or 0)
    slots = entry.checkpoints
    if cfg.evaluation.autoattack_n is not None or any(
        s.n_by_attack or s.autoattack_subset is not None for s in slots.values()
    ):
        echo(
            f"[{name}] done on {n_old} test images; evaluating it again on {cfg.evaluation.n or 'all'} "
            "(its AutoAttack ran on a fraction of them, which does not grow)"
        )
        entry = evaluate_run(
            cfg,
            run_dir,
            name,
            float(entry.train_seconds or 0.0),
            relative_to=run_dir,
            dataset=ds,
            progress=progress,
        )
        write_results(results_document(cfg, {name: entry}), results)
        return entry
    echo(
        f"[{name}] done on {n_old} test images; scoring the {images_to_add(cfg, entry, n_test)} more that "
        f"evaluation.n={cfg.evaluation.n} asks for"
    )
    new_idx = fixed_subset(n_test, cfg.evaluation.n, cfg.evaluation.seed)
    added = new_idx[~torch.isin(new_idx, fixed_subset(n_test, n_old, cfg.evaluation.seed))]
    x, y = to_float(ds.x_test[added].to(device)), ds.y_test[added].to(device)
    scored: dict[str, tuple[EvalResult, list[str]]] = {}
    for kind, slot in slots.items():
        attacks = [a for a in slot.robust_acc if a != "worst"]
        if kind == "best" and slot.same_as_last and attacks == scored["last"][1]:
            scored[kind] = scored["last"]
            continue
        model = load_model((run_dir / str(slot.checkpoint)).resolve(), device)
        scored[kind] = (_evaluate_model(cfg, model, x, y, progress, attacks), attacks)
    n_new = n_old + len(added)
    for kind, slot in slots.items():
        _grow(slot, scored[kind][0], n_old, n_new)
    entry.n_eval = n_new
    write_results(doc, results)
    return entry


def _grow(slot: CheckpointScores, res: EvalResult, n_old: int, n_new: int) -> None:
    """`slot`'s scores on `n_old` images joined by `res` on the images added: count-weighted means."""

    def mean(old: float, new: float) -> float:
        return (round(old * n_old) + round(new * res.n)) / n_new

    slot.natural_acc = mean(slot.natural_acc or 0.0, res.natural_acc)
    robust = slot.robust_acc
    for a in list(robust):
        if a in res.robust_acc:
            robust[a] = mean(robust[a], res.robust_acc[a])
        else:
            del robust[a]  # a per-sample worst case over attacks that were not all rerun
    seconds = slot.eval_seconds if slot.eval_seconds is not None else {}
    for a, s in res.seconds.items():
        seconds[a] = round(seconds.get(a, 0.0) + s, 2)
    slot.eval_seconds = seconds


def attacks_for(cfg: TrainConfig, checkpoint: str) -> list[str]:
    """The attacks a checkpoint ("last" or "best") is evaluated with: all of evaluation.attacks if
    evaluation.checkpoints lists it, else none (natural accuracy only, which costs next to nothing)."""
    return list(cfg.evaluation.attacks) if checkpoint in cfg.evaluation.checkpoints else []


def _evaluate_model(
    cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor, progress: bool, attacks: list[str] | None = None
) -> EvalResult:
    ev = cfg.evaluation
    set_threads(cfg.runtime.threads)  # a resumed study evaluates without building a Trainer
    if use_channels_last(cfg.runtime.channels_last):
        # the run's own memory format: on a CPU small-cnn, channels-last halves the cost of AutoAttack
        model = as_channels_last(model)
    return evaluate(
        model,
        x,
        y,
        ev.attacks if attacks is None else attacks,
        norm=cfg.attack.norm,
        eps=cfg.attack.eps,
        step_size=ev.step_size,
        batch_size=ev.batch_size,
        progress=progress,
        autoattack_n=ev.autoattack_n,
        seed=ev.seed,
    )


def _scores(res: EvalResult, checkpoint: str, epoch: int | None = None) -> CheckpointScores:
    """A checkpoint's scores: its accuracies, where attacks ran on fewer images, what the evaluation cost."""
    return CheckpointScores(
        checkpoint=checkpoint,
        natural_acc=res.natural_acc,
        robust_acc=res.robust_acc,
        epoch=epoch,
        n_by_attack={k: res.n_of(k) for k in res.robust_acc if k != "worst" and res.n_of(k) != res.n},
        autoattack_subset=res.subset,
        eval_seconds={k: round(v, 2) for k, v in res.seconds.items()},
    )


def _evaluate_best(
    cfg: TrainConfig,
    path: Path,
    last_model: nn.Module,
    last: EvalResult,
    x: Tensor,
    y: Tensor,
    relative_to: Path,
    progress: bool,
) -> CheckpointScores | None:
    """best.pt on the same images; when it holds the last checkpoint's weights its scores are the same."""
    if not path.is_file():
        return None  # no validation split: nothing chose a best checkpoint
    ckpt = read_checkpoint(path)
    model = model_from_record(ckpt.model, x.device).eval()
    last_state = last_model.state_dict()
    same = all(torch.equal(v, last_state[k]) for k, v in model.state_dict().items())
    attacks = attacks_for(cfg, "best")
    reuse = same and attacks == attacks_for(cfg, "last")
    res = last if reuse else _evaluate_model(cfg, model, x, y, progress, attacks)
    best = _scores(res, os.path.relpath(path, relative_to), ckpt.epoch)
    best.same_as_last = same
    return best
