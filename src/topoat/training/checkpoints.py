"""A run's two checkpoints as the training loop writes and resumes them: last.pt (the model and everything
a resume needs, after each epoch or at an interruption) and best.pt (the best model by validation)."""

from __future__ import annotations

from ..config import dump_config
from ..errors import TopoatError
from ..files import write_text_atomic
from ..objectives import Objective
from ..runs.checkpoint import CheckpointRecord, ResumeState, model_record, read_checkpoint, write_checkpoint
from ..runs.folder import RunFolder
from ..runtime import rng_state, set_rng_state
from ..schema import TrainConfig, from_dict, to_dict
from .build import RunParts
from .distributed import SINGLE, DistContext, barrier
from .state import EpochTotals, TrainingState


def comparable(cfg: TrainConfig) -> dict:
    """The config minus the switches that do not change what is trained (progress bars, threads, logging,
    compilation) or only act after training (the evaluation)."""
    d = to_dict(cfg)
    for speed_or_display in ("progress", "threads", "tensorboard", "compile", "compile_mode", "ddp_timeout"):
        d["runtime"].pop(speed_or_display, None)
    d.pop("evaluation", None)
    return d


def prepare_folder(folder: RunFolder, cfg: TrainConfig, resume: bool, dist: DistContext = SINGLE) -> bool:
    """Make `folder` ready for `cfg`: checked for a resume (same config), or emptied with config.yaml written
    for a new start. Returns whether the run resumes (a run that never completed an epoch starts again)."""
    if resume and not folder.last.is_file() and folder.restartable():
        resume = False
    if resume:
        folder.prepare(resume=True)
        saved = read_checkpoint(folder.last).config or {}
        if comparable(from_dict(TrainConfig, saved).validate()) != comparable(cfg):
            raise TopoatError(
                f"the config differs from the one {folder.root} was started with; resume without changing it"
            )
        return True
    # every rank checks before rank 0 creates, so all of them agree on an error
    folder.prepare(resume=False, create=False)
    barrier()
    if dist.is_main:
        folder.prepare(resume=False)
        # before the data loads: a folder killed then still holds what `--resume` starts again from
        write_text_atomic(folder.config, dump_config(cfg))
    return False


def model_of(parts: RunParts, cfg: TrainConfig) -> dict:
    d = parts.data
    return model_record(
        parts.model, cfg.model.arch, cfg.model.args, d.num_classes, d.in_channels, d.image_size, d.class_names
    )


def save_last(
    folder: RunFolder,
    parts: RunParts,
    objective: Objective,
    cfg: TrainConfig,
    state: TrainingState,
    totals: EpochTotals | None = None,
) -> None:
    """last.pt: the model, the optimiser and objective, the state, the random generators; `totals` only in
    the middle of an epoch."""
    resume = ResumeState(
        optimizer=parts.optimizer.state_dict(),
        objective=objective.state_dict(),
        step=state.step,
        perm=None if state.perm is None else state.perm.cpu(),
        rng=rng_state(parts.device),
        data_rng=parts.data_generator.get_state(),
        best=state.best.as_dict(),
        train_seconds=state.train_seconds,
        epoch_totals=None if totals is None else totals.state(),
        last_record=state.last_record,
    )
    record = CheckpointRecord(model_of(parts, cfg), to_dict(cfg), parts.data.name, state.epoch, resume=resume)
    write_checkpoint(record, folder.last)


def save_best(folder: RunFolder, parts: RunParts, cfg: TrainConfig, epoch: int, validation: dict) -> None:
    record = CheckpointRecord(model_of(parts, cfg), to_dict(cfg), parts.data.name, epoch, validation=validation)
    write_checkpoint(record, folder.best)


def restore(folder: RunFolder, parts: RunParts, objective: Objective, dist: DistContext = SINGLE) -> TrainingState:
    """Load last.pt into the parts and the random generators; the state to continue from."""
    saved = read_checkpoint(folder.last, map_location="cpu")
    if saved.resume is None or saved.epoch is None:
        raise TopoatError(f"{folder.last} is not a resumable training checkpoint (KeyError)")
    try:
        parts.model.load_state_dict(saved.model["model_state"])
        parts.optimizer.load_state_dict(saved.resume.optimizer)
        objective.load_state_dict(saved.resume.objective)
        set_rng_state(saved.resume.rng, parts.device)
        parts.data_generator.set_state(saved.resume.data_rng)
        state = TrainingState.resumed(saved.epoch, saved.resume, parts.device, zero_totals=dist.rank != 0)
    except (KeyError, RuntimeError, TypeError) as e:
        raise TopoatError(f"{folder.last} is not a resumable training checkpoint ({e.__class__.__name__})") from None
    if dist.is_main:
        folder.repair_metrics(state.epoch, state.last_record)
    return state
