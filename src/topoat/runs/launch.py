"""Starting a run from what a user names: a config file or packaged config, a run folder to resume, a
dataset's standard model. What `topoat train` and `topoat teacher` do around `train_and_evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import dump_config, load_config, preset_names, preset_path
from ..errors import TopoatError
from ..schema import TrainConfig
from .folder import RunFolder
from .results import ResultEntry


def run_config(
    config: str | None, out: str | Path, overrides: Sequence[str] = (), *, resume: bool = False, force: bool = False
) -> TrainConfig:
    """The validated config of the run in folder `out`: `config` (a file or a packaged name) with
    `overrides` ("KEY=VALUE"); when resuming without `config`, the one the folder saved. Unless `force`,
    a `config` that is the folder's own config.yaml and says something else than the resolved config is
    refused: the run would replace the user's file (with its `base:`)."""
    folder = RunFolder(out)
    if resume:
        if config is None and not folder.config.is_file():
            raise TopoatError(f"nothing to resume in {out} (no {folder.config.name})")
        cfg = load_config(config or folder.config, list(overrides))
    else:
        if config is None:
            raise TopoatError("train: --config is required (unless --resume)")
        cfg = load_config(config, list(overrides))
    if config is not None and not force:
        _check_config_kept(config, folder, cfg)
    return cfg


def _check_config_kept(config: str, folder: RunFolder, cfg: TrainConfig) -> None:
    """A run writes its resolved config to its folder's config.yaml when it starts: refuse to replace a
    config.yaml that is the --config itself and says something else (the user's file, with its `base:`)."""
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


def train_in_folder(cfg: TrainConfig, out: str | Path, *, resume: bool = False) -> ResultEntry | None:
    """Train `cfg` into folder `out` (or resume it) and evaluate it, on this process or, when launched by
    torchrun, on all of them; returns the run's results entry on rank 0, None on the others."""
    from ..training.distributed import init_from_env, shutdown
    from .scoring import train_and_evaluate

    dist = init_from_env(cfg.runtime.device, cfg.runtime.ddp_timeout)
    try:
        return train_and_evaluate(
            cfg,
            Path(out),
            resume=resume,
            dist=dist,
            stage_name="during the final evaluation",
            resume_hint=f"training is complete; `topoat train --out {out} --resume` "
            "evaluates it without training again",
        )
    finally:
        shutdown()


def standard_config(dataset: str) -> str:
    """The packaged standard config of `dataset` (e.g. "cifar10/standard"): its teacher, the frozen model
    TRAIN and the reports compare with."""
    datasets = sorted(name.rpartition("/")[0] for name in preset_names("configs") if name.endswith("/standard"))
    if dataset not in datasets:
        raise TopoatError(f"teacher: no packaged standard config for {dataset!r}; choose from {', '.join(datasets)}")
    return f"{dataset}/standard"


def written_files(out: str | Path) -> list[str]:
    """The files a run left in its folder, by name (hidden ones, such as the lock, left out)."""
    return sorted(p.name for p in Path(out).iterdir() if p.is_file() and not p.name.startswith("."))
