"""The runs a report covers: read from study or run folders (their results.json), grouped by seed, and
each matched with the reference model its topology is measured against.

Runs named `NAME-sK` are seed K of group NAME; tables and pictures show a group's mean ± std over seeds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TopoatError
from ..runs.folder import LAST, RunFolder
from ..runs.results import CheckpointScores, ResultEntry, as_entry, weights_label

if TYPE_CHECKING:
    from ..schema import TrainConfig

SEED_SUFFIX = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")


@dataclass
class Run:
    """One run of a results.json: its entry (typed; a dict as written is read into one), its folder
    (config.yaml, metrics.jsonl) and checkpoint."""

    name: str
    entry: ResultEntry
    folder: Path
    checkpoint: Path
    threat: dict
    config: TrainConfig | None = None  # None when the folder has no readable config.yaml
    reference: Path | None = None  # checkpoint of the model its topology is compared with
    reference_name: str | None = None

    @property
    def group(self) -> str:
        m = SEED_SUFFIX.match(self.name)
        return m.group("group") if m else self.name

    @property
    def seed(self) -> int | None:
        m = SEED_SUFFIX.match(self.name)
        return int(m.group("seed")) if m else None

    def __post_init__(self) -> None:
        self.entry = as_entry(self.entry)

    def scores(self, which: str) -> CheckpointScores | None:
        """The scores of its checkpoint "last" or "best" (None: it has no best)."""
        return self.entry.scores(which)

    @property
    def is_train(self) -> bool:
        return bool(self.entry.topology)

    @property
    def method(self) -> str:
        return self.entry.method

    def epochs(self) -> list[dict]:
        path = RunFolder(self.folder).metrics
        if not path.is_file():
            return []
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash; the others are still worth plotting
        return lines


def robust_attacks(entries: Iterable[ResultEntry]) -> list[str]:
    """The attacks these results entries report robust accuracy under (last checkpoint), in order of
    first appearance."""
    return list(dict.fromkeys(a for e in entries for a in e.last.robust_acc))


def lambda_label(entry: ResultEntry) -> str:
    """TRAIN's weights in a results entry (see `weights_label`)."""
    return weights_label(entry.topology)


def primary_attack(runs: Sequence[Run]) -> str | None:
    """The robust accuracy a single-number view uses: the per-sample worst case if there is one,
    else the first attack evaluated."""
    names = robust_attacks(r.entry for r in runs)
    if "worst" in names:
        return "worst"
    return names[0] if names else None


def groups_of(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    return groups


def base_group(group: str, members: Sequence[Run], groups: dict[str, list[Run]]) -> str | None:
    """The base-method group a TRAIN group is compared with: same method, no topology term; the one
    whose name prefixes the TRAIN group's if several."""
    method = members[0].method
    candidates = [g for g, rs in groups.items() if g != group and rs[0].method == method and not rs[0].is_train]
    prefixed = [g for g in candidates if group.startswith(g + "-")]
    if prefixed:
        return max(prefixed, key=len)
    return candidates[0] if len(candidates) == 1 else None


def lambda_ablation(runs: Sequence[Run]) -> tuple[str, dict[float, list[Run]]]:
    """The method whose runs cover the most TRAIN weights (λ_nat = λ_adv; its base method is λ = 0),
    with its runs by λ; empty when no method has three or more."""
    by_method: dict[str, dict[float, list[Run]]] = {}
    for r in runs:
        if r.method == "standard":
            continue
        topo = r.entry.topology or {}
        nat, adv = topo.get("lambda_nat", 0.0), topo.get("lambda_adv", 0.0)
        if nat != adv:
            continue
        by_method.setdefault(r.method, {}).setdefault(float(nat), []).append(r)
    if not by_method:
        return "", {}
    method = max(by_method, key=lambda m: len(by_method[m]))
    weights = by_method[method]
    return (method, dict(sorted(weights.items()))) if len(weights) >= 3 else ("", {})


def collect_runs(run_dirs: Sequence[str | Path]) -> tuple[list[Run], dict]:
    """All runs of the given study or run folders, in order; plus the document-level facts: "datasets",
    "failed" (run name -> why) and "sources" (the folders)."""
    from ..runs.results import read_results

    runs: list[Run] = []
    info: dict = {"datasets": [], "failed": {}, "sources": []}
    for folder in map(Path, run_dirs):
        doc = read_results(_results_file(folder))
        info["sources"].append(str(folder))
        if doc.dataset not in info["datasets"]:
            info["datasets"].append(doc.dataset)
        info["failed"].update(doc.failed)
        for name, entry in doc.runs.items():
            checkpoint = (folder / (entry.last.checkpoint or LAST)).resolve()
            name = _unique_name(name, folder, runs)
            config = _read_config(checkpoint.parent)
            runs.append(Run(name, entry, checkpoint.parent, checkpoint, doc.threat, config))
    if len(info["datasets"]) > 1:
        raise TopoatError(f"report: the runs use different datasets ({', '.join(map(str, info['datasets']))})")
    return runs, info


def _results_file(folder: Path) -> Path:
    if not folder.is_dir():
        raise TopoatError(f"report: {folder} is not a folder")
    results = RunFolder(folder).results
    if not results.is_file():
        raise TopoatError(f"report: {folder} has no {results.name} (train or study into it first)")
    return results


def _read_config(run_folder: Path) -> TrainConfig | None:
    from ..config import load_config

    config = RunFolder(run_folder).config
    if not config.is_file():
        return None
    try:
        return load_config(config)
    except TopoatError:
        return None  # written by another topoat version: tables still work, analysis defaults


def _unique_name(name: str, folder: Path, runs: Sequence[Run]) -> str:
    """Two folders may each hold a run of the same name: the second is told apart by its folder."""
    if any(r.name == name for r in runs):
        name = f"{folder.name}/{name}"
        if any(r.name == name for r in runs):
            raise TopoatError(f"report: run {name!r} given twice")
    return name


def assign_references(runs: list[Run], reference: str | Path | None = None) -> None:
    """Each run's reference model: `reference` if given; else the one its config names
    (validation.reference, or a TRAIN run's teacher), matched to a run of the report where possible;
    else a standard run of the report, of the same seed if there is one."""
    by_checkpoint = {r.checkpoint: r for r in runs}
    by_folder = {r.folder.name: r for r in runs}
    standard = [r for r in runs if r.method == "standard" and not r.is_train]
    for run in runs:
        target: Run | None = None
        path: Path | None = None
        if reference is not None:
            path = Path(reference).resolve()
            target = by_checkpoint.get(path)
        else:
            configured = _configured_reference(run)
            if configured is not None:
                # match by file, or by run folder name when the study was moved after training
                target = by_checkpoint.get(configured.resolve()) or by_folder.get(configured.parent.name)
                path = configured.resolve() if target is None and configured.is_file() else None
            if target is None and path is None and standard:
                same_seed = [r for r in standard if r.seed == run.seed]
                target = (same_seed or standard)[0]
        if target is not None:
            run.reference, run.reference_name = target.checkpoint, target.name
        elif path is not None:
            run.reference, run.reference_name = path, str(path)


def _configured_reference(run: Run) -> Path | None:
    cfg = run.config
    if cfg is None:
        return None
    path = cfg.validation.reference or (cfg.topology.teacher if cfg.topology is not None else None)
    return Path(path) if path else None
