"""results.json: its contract as typed records, the one reader and the one writer, and its text table
(runs/merge.py merges later scores in).

The contract (every key a run's evaluation writes; `?` marks those written only when they apply):
{"dataset": str, "threat": {"norm": "Linf"|"L2", "eps": float},
 "runs": {NAME: ENTRY}, "failed"?: {NAME: why it has no entry}, "provenance": {...}}
ENTRY (`ResultEntry`):
 {"method": str (e.g. "pgd-at", "awp-trades"), "topology": null | {the topology config},
  "method_config": {the method's settings but its name}, "distillation": null | {the distillation config},
  SCORES of the last checkpoint, "train_seconds": float, "n_eval": int (test images),
  "best": null | SCORES of best.pt (best validation robust accuracy, on the same images) and its "epoch": int}
SCORES (`CheckpointScores`):
 {"checkpoint": path relative to results.json, "natural_acc": float,
  "robust_acc": {ATTACK: float, "worst"?: float (per image, the worst of the attacks)},
  "n_by_attack"?: {ATTACK: int} (attacks run on fewer images, e.g. AutoAttack),
  "autoattack_subset"?: {every score on those images}, "eval_seconds": {ATTACK: float},
  "sanity"?: {"passed": bool, "failed": [check names]} (`topoat eval --sanity --results`),
  "same_as_last"?: true (best only: best.pt holds the last checkpoint's weights)}
"provenance": versions, git commit, device, command line: what produced the file. Files written before a
key existed lack it (`method_config`, `n_eval`, ...); keys this version does not know are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import TopoatError
from ..runtime import provenance, resolve_device
from ..schema import TopologyConfig, TrainConfig
from ..table_format import text_table
from .folder import read_json, write_json_atomic


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(d: dict, prefix: str, checks: list[tuple[str, Any, str]]) -> None:
    for key, ok, what in checks:
        if key in d and not ok(d[key]):
            raise ValueError(f"'{prefix}{key}' must be {what}")


SCORE_CHECKS: list[tuple[str, Any, str]] = [
    ("checkpoint", lambda v: isinstance(v, str), "a path"),
    ("natural_acc", _number, "a number"),
    (
        "robust_acc",
        lambda v: isinstance(v, dict) and all(_number(a) for a in v.values()),
        "a mapping of attacks to numbers",
    ),
    ("n_by_attack", lambda v: isinstance(v, dict), "a mapping"),
]
ENTRY_CHECKS: list[tuple[str, Any, str]] = [
    ("method", lambda v: isinstance(v, str), "a string"),
    ("topology", lambda v: v is None or isinstance(v, dict), "a mapping or null"),
    ("best", lambda v: v is None or isinstance(v, dict), "a mapping or null"),
]
SCORE_KEYS: tuple[str, ...] = ("checkpoint", "epoch", "natural_acc", "robust_acc", "n_by_attack", "autoattack_subset")
SCORE_KEYS += ("eval_seconds", "sanity", "same_as_last")
ENTRY_KEYS = ("method", "topology", "method_config", "distillation", "train_seconds", "n_eval", "best")


@dataclass
class CheckpointScores:
    """One checkpoint's scores on the run's test images (the SCORES of the contract)."""

    checkpoint: str | None = None
    natural_acc: float | None = None
    robust_acc: dict[str, float] = field(default_factory=dict)
    epoch: int | None = None  # best.pt: the epoch validation chose it at
    n_by_attack: dict[str, int] = field(default_factory=dict)
    autoattack_subset: dict | None = None
    eval_seconds: dict[str, float] | None = None
    sanity: dict | None = None
    same_as_last: bool = False
    extra: dict = field(default_factory=dict)

    def head(self, with_epoch: bool) -> dict:
        """The keys written before an entry's own: the checkpoint, its epoch (best only) and its scores."""
        d: dict[str, Any] = {} if self.checkpoint is None else {"checkpoint": self.checkpoint}
        if with_epoch:
            d["epoch"] = self.epoch
        if self.natural_acc is not None:
            d["natural_acc"] = self.natural_acc
        d["robust_acc"] = self.robust_acc
        return d

    def tail(self) -> dict:
        """The optional keys, written after."""
        d: dict[str, Any] = {"n_by_attack": self.n_by_attack} if self.n_by_attack else {}
        optional = {"autoattack_subset": self.autoattack_subset, "eval_seconds": self.eval_seconds}
        optional["sanity"] = self.sanity
        d.update({k: v for k, v in optional.items() if v is not None})
        if self.same_as_last:
            d["same_as_last"] = True
        return d

    def to_dict(self) -> dict:
        """A best block as written."""
        return {**self.head(with_epoch=True), **self.tail(), **self.extra}

    @classmethod
    def from_dict(cls, d: dict, prefix: str = "", known: tuple[str, ...] = ()) -> CheckpointScores:
        """ValueError naming the key when one has the wrong type; `known`: keys that belong to someone else."""
        _check(d, prefix, SCORE_CHECKS)
        epoch = d.get("epoch")
        return cls(
            checkpoint=d.get("checkpoint"),
            natural_acc=d.get("natural_acc"),
            robust_acc=dict(d.get("robust_acc", {})),
            epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
            n_by_attack=dict(d.get("n_by_attack", {})),
            autoattack_subset=d.get("autoattack_subset"),
            eval_seconds=d.get("eval_seconds"),
            sanity=d.get("sanity"),
            same_as_last=bool(d.get("same_as_last", False)),
            extra={k: v for k, v in d.items() if k not in SCORE_KEYS and k not in known},
        )

    def n_of(self, attack: str, n_eval: int | None) -> int | None:
        """How many test images `attack` ran on."""
        return self.n_by_attack.get(attack, n_eval)


@dataclass
class ResultEntry:
    """One run of results.json (the ENTRY of the contract): what it is, and its checkpoints' scores."""

    method: str
    last: CheckpointScores
    best: CheckpointScores | None = None
    topology: dict | None = None
    method_config: dict | None = None
    distillation: dict | None = None
    train_seconds: float | None = None
    n_eval: int | None = None

    def scores(self, which: str) -> CheckpointScores | None:
        """The scores of checkpoint "last" or "best" (None: the run has no best checkpoint)."""
        if which not in ("last", "best"):
            raise ValueError(f"checkpoint must be 'last' or 'best', not {which!r}")
        return self.last if which == "last" else self.best

    def scores_or_last(self, which: str) -> CheckpointScores:
        """The scores of checkpoint `which`, the last checkpoint's when it has no best."""
        return self.scores(which) or self.last

    @property
    def checkpoints(self) -> dict[str, CheckpointScores]:
        """Its checkpoints' scores by name: "last", and "best" when there is one."""
        return {"last": self.last} | ({} if self.best is None else {"best": self.best})

    @property
    def is_regularized(self) -> bool:
        """It adds a term to its base method (TRAIN or distillation)."""
        return bool(self.topology) or bool(self.distillation)

    def to_dict(self) -> dict:
        """The entry as written, key for key."""
        d: dict[str, Any] = {"method": self.method, "topology": self.topology}
        if self.method_config is not None:
            d["method_config"] = self.method_config
        d["distillation"] = self.distillation
        d.update(self.last.head(with_epoch=False))
        if self.train_seconds is not None:
            d["train_seconds"] = self.train_seconds
        if self.n_eval is not None:
            d["n_eval"] = self.n_eval
        d.update(self.last.tail())
        d["best"] = None if self.best is None else self.best.to_dict()
        d.update(self.last.extra)  # keys of other versions
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ResultEntry:
        """ValueError naming the first key of the wrong type."""
        if not isinstance(d, dict):
            raise ValueError("the entry is not a mapping")
        _check(d, "", ENTRY_CHECKS)
        best = None if d.get("best") is None else CheckpointScores.from_dict(d["best"], "best.")
        return cls(
            method=d.get("method", "?"),
            last=CheckpointScores.from_dict(d, known=ENTRY_KEYS),
            best=best,
            topology=d.get("topology"),
            method_config=d.get("method_config"),
            distillation=d.get("distillation"),
            train_seconds=d.get("train_seconds"),
            n_eval=d.get("n_eval"),
        )

    def rebased(self, prefix: str) -> ResultEntry:
        """The entry with its checkpoint paths made relative to the folder above the run's."""

        def moved(s: CheckpointScores) -> CheckpointScores:
            return replace(s, checkpoint=f"{prefix}/{s.checkpoint}")

        return replace(self, last=moved(self.last), best=None if self.best is None else moved(self.best))


def weights_label(topology: Mapping | None) -> str:
    """TRAIN's weights: "λ=10", or "λnat=1, λadv=6" when they differ ("λ=0" without TRAIN)."""
    if not topology:
        return "λ=0"
    nat, adv = topology.get("lambda_nat", 0), topology.get("lambda_adv", 0)
    return f"λ={nat:g}" if nat == adv else f"λnat={nat:g}, λadv={adv:g}"


# TRAIN options that name a variant when they differ from topology's defaults
_OPTION_KEYS = (
    "layer",
    "divergence",
    "entropy_weight",
    "center",
    "clean_batchnorm",
    "warmup_epochs",
    "balance",
    "teacher_perplexity",
    "projection",
)
# the value of an option a results entry does not record: runs from before the option existed trained without it
_UNRECORDED = {"warmup_epochs": 0.0}


def added_term(entry: ResultEntry) -> str:
    """What a run adds to its base method, e.g. 'TRAIN softmax-cosine T=0.1, λ=10' ("" for none)."""
    topo, kd = entry.topology, entry.distillation
    parts = []
    if topo:
        parts.append(f"TRAIN {_kernel_label(topo)}, {weights_label(topo)}{_option_labels(topo)}")
    if kd:
        parts.append(f"distillation T={kd.get('temperature', 4):g}, λ={kd.get('lambda', 1):g}")
    return " + ".join(parts)


def kernel_name(topo: Mapping) -> str:
    """The graph kernel a results entry's topology section records (results written before the kernel was
    recorded used the cosine graph)."""
    return str(topo.get("kernel", "cosine"))


def _kernel_label(topo: Mapping) -> str:
    """The kernel and its parameters as a results entry's topology section records them (results written
    before a parameter was recorded: its default), e.g. `softmax-cosine T=0.1`."""
    from ..registry import KERNELS  # the kernels import torch; reading results.json does not need it
    from ..topology import kernel_from_settings

    name = kernel_name(topo)
    if name not in KERNELS:
        return name
    return kernel_from_settings(name, topo, topo.get("kernel_args") or {}).label()


def _option_labels(topo: Mapping) -> str:
    defaults = TopologyConfig()
    return "".join(
        f", {key}={value:g}" if isinstance(value, float) else f", {key}={value}"
        for key in _OPTION_KEYS
        if (value := topo.get(key, _UNRECORDED.get(key, getattr(defaults, key)))) != getattr(defaults, key)
    )


@dataclass
class ResultsFile:
    """A whole results.json: a run's (one entry) or a study's (one per run, and those that failed)."""

    dataset: str | None
    threat: dict
    runs: dict[str, ResultEntry]
    failed: dict[str, str] = field(default_factory=dict)
    provenance: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"dataset": self.dataset, "threat": self.threat}
        d["runs"] = {name: entry.to_dict() for name, entry in self.runs.items()}
        if self.provenance is not None:
            d["provenance"] = self.provenance
        if self.failed:
            d["failed"] = self.failed
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, doc: Any) -> ResultsFile:
        """ValueError naming the first key of the wrong type."""
        if not isinstance(doc, dict):
            raise ValueError("the top level is not a mapping")
        if not isinstance(doc.get("runs"), dict):
            raise ValueError("'runs' is missing or not a mapping")
        for key, kind in (("dataset", str), ("threat", dict), ("failed", dict)):
            if key in doc and not isinstance(doc[key], kind):
                raise ValueError(f"'{key}' is not a {kind.__name__}")
        runs = {}
        for name, entry in doc["runs"].items():
            try:
                runs[name] = ResultEntry.from_dict(entry)
            except ValueError as e:
                raise ValueError(f"run {name!r}: {e}") from None
        known = ("dataset", "threat", "runs", "failed", "provenance")
        return cls(
            dataset=doc.get("dataset"),
            threat=doc.get("threat", {}),
            runs=runs,
            failed=dict(doc.get("failed", {})),
            provenance=doc.get("provenance"),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def read_results(path: Path, run: str | None = None) -> ResultsFile:
    """A results.json checked against the contract above (types of the keys present), so a damaged or
    hand-edited file is one line naming the key rather than a traceback; with `run`, that run must be in it."""
    doc = read_json(path)
    try:
        results = ResultsFile.from_dict(doc)
    except ValueError as e:
        raise TopoatError(f"{path} is not a usable topoat results.json: {e}") from None
    if run is not None and run not in results.runs:
        raise TopoatError(f"{path} is not a usable topoat results.json: it has no run {run!r}")
    return results


def write_results(results: ResultsFile, path: Path) -> None:
    write_json_atomic(results.to_dict(), Path(path))


def results_document(
    cfg: TrainConfig, runs: dict[str, ResultEntry], failed: dict[str, str] | None = None
) -> ResultsFile:
    """The results.json of runs trained and evaluated under `cfg`'s data and threat model, on this machine."""
    return ResultsFile(
        dataset=cfg.data.display_name,
        threat={"norm": cfg.attack.norm, "eps": cfg.attack.eps},
        runs=runs,
        failed=dict(failed or {}),
        provenance=provenance(resolve_device(cfg.runtime.device)),
    )


def as_entry(entry: ResultEntry | dict) -> ResultEntry:
    """An entry, also from its dict (a results.json read by hand)."""
    return entry if isinstance(entry, ResultEntry) else ResultEntry.from_dict(entry)


def format_table(runs: Mapping[str, ResultEntry | dict]) -> str:
    """A plain-text results table: one row per run (its last checkpoint) and one per best checkpoint,
    `NAME (best@EPOCH)`; accuracies in percent. Attacks run on fewer images are footnoted."""
    entries = {name: as_entry(e) for name, e in runs.items()}
    attacks = list(dict.fromkeys(a for e in entries.values() for s in e.checkpoints.values() for a in s.robust_acc))
    header = ["run", "method", "added term", "natural"] + attacks + ["train s"]
    rows = []
    notes: dict[str, str] = {}
    for name, e in entries.items():
        for which, scores in e.checkpoints.items():
            label = name if which == "last" else f"{name} (best@{scores.epoch})"
            seconds = f"{e.train_seconds:.0f}" if which == "last" and e.train_seconds is not None else "-"
            natural = "-" if scores.natural_acc is None else f"{100 * scores.natural_acc:.2f}"
            rows.append(
                [label, e.method, added_term(e) or "-", natural]
                + [f"{100 * scores.robust_acc[a]:.2f}" if a in scores.robust_acc else "-" for a in attacks]
                + [seconds]
            )
            for a, k in scores.n_by_attack.items():
                notes.setdefault(a, f"{a}: on a fixed {k} of the {e.n_eval or '?'} test images")
    return "\n".join([text_table(header, rows)] + list(notes.values()))
