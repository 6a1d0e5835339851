"""A study file read into planned runs: every run once per seed, named, linked to its teacher and
reference, and checked before anything is trained."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config, override, preset_path, read_yaml
from ..errors import TopoatError
from ..schema import from_dict
from .folder import LOCK, RESULTS, STUDY_FILE

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
    _check_runs(path, spec)
    planned = _plan(path, spec, extra or [])
    for run in planned:  # checked now, not when the study reaches that run and cannot make its folder
        if len(os.fsencode(run.name)) > MAX_FOLDER_NAME_BYTES:
            raise TopoatError(
                f"study {path}: run name {run.name[:40]}... is {len(os.fsencode(run.name))} bytes long; "
                f"a folder name takes at most {MAX_FOLDER_NAME_BYTES}"
            )
    return spec, planned


def _check_runs(path: Path, spec: StudySpec) -> None:
    """The runs' names, seeds, teachers and reference refer to each other consistently."""
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


def _plan(path: Path, spec: StudySpec, extra: list[str]) -> list[PlannedRun]:
    """Every run once per seed: the whole grid first, then the runs limited to some seeds."""
    names = [r.name for r in spec.runs]
    grid: list[PlannedRun] = []
    subset: list[PlannedRun] = []
    for seed in spec.seeds if spec.seeds is not None else [None]:
        suffix = "" if seed is None else f"-s{seed}"
        for r in spec.runs:
            if r.seeds is not None and seed not in r.seeds:
                continue
            overrides = list(spec.set) + list(r.set) + list(extra)
            if seed is not None:
                overrides.append(override("seed", seed))
            reference = None  # the reference is logged against by the runs after it
            if spec.reference is not None and names.index(r.name) > names.index(spec.reference):
                reference = spec.reference + suffix
            (grid if r.seeds is None else subset).append(
                PlannedRun(
                    r.name + suffix,
                    (path.parent / r.config),
                    overrides,
                    None if r.teacher is None else r.teacher + suffix,
                    reference,
                )
            )
    return grid + subset


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
