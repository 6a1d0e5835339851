"""results.json: its contract, reading it checked against that contract, and merging new scores in.

The contract:
{"dataset": str, "threat": {"norm": "Linf"|"L2", "eps": float},
 "runs": {NAME: {"method": str, "topology": null | {...}, "checkpoint": path relative to results.json,
                 "natural_acc": float, "robust_acc": {ATTACK: float}, "train_seconds": float,
                 "best": null | {"checkpoint": str, "epoch": int, "natural_acc": float,
                                 "robust_acc": {ATTACK: float}}}}}
The top-level scores are the last checkpoint's; `best` is best.pt (best validation robust accuracy) on
the same test images. Optional extras: "n_eval" (test images), "n_by_attack" (attacks run on fewer
images, e.g. AutoAttack), "autoattack_subset" (every score on those images), "eval_seconds"; at the top
level "provenance" (versions, git commit, device, command line: what produced the file).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import TopoatError
from ..evaluation.accuracy import EvalResult
from ..runtime import provenance, resolve_device
from ..table_format import text_table
from .folder import read_json, write_json_atomic


def read_results(path: Path, run: str | None = None) -> dict:
    """A results.json checked against the contract above (types of the keys present), so a damaged or
    hand-edited file is one line naming the key rather than a traceback; with `run`, that run must be in it."""
    doc = read_json(path)
    problem = _results_problem(doc)
    if problem is None and run is not None and run not in doc["runs"]:
        problem = f"it has no run {run!r}"
    if problem is not None:
        raise TopoatError(f"{path} is not a usable topoat results.json: {problem}")
    return doc


def _results_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "the top level is not a mapping"
    if not isinstance(doc.get("runs"), dict):
        return "'runs' is missing or not a mapping"
    for key, kind in (("dataset", str), ("threat", dict), ("failed", dict)):
        if key in doc and not isinstance(doc[key], kind):
            return f"'{key}' is not a {kind.__name__}"
    for name, entry in doc["runs"].items():
        problem = _entry_problem(entry)
        if problem is None and entry.get("best") is not None:
            problem = _entry_problem(entry["best"], "best.")
        if problem is not None:
            return f"run {name!r}: {problem}"
    return None


def _entry_problem(entry: Any, prefix: str = "") -> str | None:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(entry, dict):
        return f"'{prefix[:-1]}' must be a mapping" if prefix else "the entry is not a mapping"
    checks = [
        ("checkpoint", lambda v: isinstance(v, str), "a path"),
        ("method", lambda v: isinstance(v, str), "a string"),
        ("natural_acc", number, "a number"),
        (
            "robust_acc",
            lambda v: isinstance(v, dict) and all(number(a) for a in v.values()),
            "a mapping of attacks to numbers",
        ),
        ("n_by_attack", lambda v: isinstance(v, dict), "a mapping"),
        ("topology", lambda v: v is None or isinstance(v, dict), "a mapping or null"),
        ("best", lambda v: v is None or isinstance(v, dict), "a mapping or null"),
    ]
    for key, ok, what in checks:
        if key in entry and not ok(entry[key]):
            return f"'{prefix}{key}' must be {what}"
    return None


def results_document(cfg: TrainConfig, runs: dict[str, dict]) -> dict:
    return {
        "dataset": cfg.data.display_name,
        "threat": {"norm": cfg.attack.norm, "eps": cfg.attack.eps},
        "runs": runs,
        "provenance": provenance(resolve_device(cfg.runtime.device)),
    }


def rebase_checkpoints(entry: dict, prefix: str) -> dict:
    """The entry with its checkpoint paths (last and best) made relative to the folder above the run's."""
    entry = dict(entry, checkpoint=f"{prefix}/{entry['checkpoint']}")
    if isinstance(entry.get("best"), dict):
        entry["best"] = dict(entry["best"], checkpoint=f"{prefix}/{entry['best']['checkpoint']}")
    return entry


def find_run_slot(
    results: Path, run: str, checkpoint: Path, *, norm: str, eps: float, dataset: str
) -> tuple[dict, dict, str]:
    """The results.json document, and the part of run `run` that `checkpoint` belongs to (the run itself for
    its last checkpoint, its `best` entry for best.pt) with that part's label. One-line errors when the
    file, the run, the threat model or the dataset do not match."""
    doc = read_results(results)
    runs = doc["runs"]
    if run not in runs:
        raise TopoatError(f"{results} has no run {run!r} (it has: {', '.join(runs) or 'none'})")
    if doc.get("dataset") != dataset:
        raise TopoatError(f"{results} is for dataset {doc.get('dataset')}, but this evaluation uses {dataset}")
    threat = doc.get("threat") or {}
    if (
        threat.get("norm") != norm
        or not isinstance(threat.get("eps"), (int, float))
        or not math.isclose(float(threat["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12)
    ):
        raise TopoatError(
            f"{results} is for {threat.get('norm')} eps {threat.get('eps')}, but this evaluation "
            f"uses {norm} eps {eps:.6g}"
        )
    entry = runs[run]
    slots = {"last": entry}
    if isinstance(entry.get("best"), dict):
        slots["best"] = entry["best"]
    target = Path(checkpoint).resolve()
    for label, slot in slots.items():
        if (Path(results).parent / slot.get("checkpoint", "")).resolve() == target:
            return doc, slot, label
    listed = " or ".join(str(s.get("checkpoint")) for s in slots.values())
    raise TopoatError(
        f"{checkpoint} is not a checkpoint of run {run!r} in {results} (that is {listed}, "
        f"relative to {Path(results).parent})"
    )


def merge_evaluation(
    results: Path, run: str, checkpoint: Path, res: EvalResult, *, norm: str, eps: float, dataset: str, sanity=None
) -> str:
    """Write `res`'s robust accuracies into run `run` of results.json, atomically; returns "last" or "best".

    A stored per-sample "worst" that this evaluation cannot recompute (it lacks some of the stored attacks
    or ran on other images) is removed rather than left stale."""
    doc, slot, label = find_run_slot(results, run, checkpoint, norm=norm, eps=eps, dataset=dataset)
    n_eval = doc["runs"][run].get("n_eval", res.n)
    robust = slot.setdefault("robust_acc", {})
    new = {k: v for k, v in res.robust_acc.items() if k != "worst"}
    covered = (set(robust) - {"worst"}) <= set(new) and res.n == n_eval
    robust.update(new)
    if covered and "worst" in res.robust_acc:
        robust["worst"] = res.robust_acc["worst"]
    elif not covered:
        robust.pop("worst", None)
    fewer = slot.get("n_by_attack", {})
    for k in new:
        if res.n_of(k) != n_eval:
            fewer[k] = res.n_of(k)
        else:
            fewer.pop(k, None)
    if fewer:
        slot["n_by_attack"] = fewer
    else:
        slot.pop("n_by_attack", None)
    if res.subset is not None:
        slot["autoattack_subset"] = res.subset
    slot.setdefault("eval_seconds", {}).update({k: round(v, 2) for k, v in res.seconds.items()})
    if sanity is not None:
        slot["sanity"] = {"passed": sanity.passed, "failed": [c.name for c in sanity.failed]}
    write_json_atomic(doc, Path(results))
    return label


def format_table(runs: dict[str, dict]) -> str:
    """A plain-text results table: one row per run (its last checkpoint) and one per best checkpoint,
    `NAME (best@EPOCH)`; accuracies in percent. Attacks run on fewer images are footnoted."""
    attacks: list[str] = []
    for r in runs.values():
        for scores in (r, r.get("best") or {}):
            attacks += [a for a in scores.get("robust_acc", {}) if a not in attacks]
    header = ["run", "method", "added term", "natural"] + attacks + ["train s"]
    rows = []
    notes: dict[str, str] = {}
    for name, r in runs.items():
        topo = r.get("topology")
        topo_text = (
            "-"
            if not topo
            else (
                f"{topo.get('kernel', 'cosine')} {topo['layer']} nat={topo['lambda_nat']:g} adv={topo['lambda_adv']:g}"
            )
        )
        kd = r.get("distillation")
        if kd:
            topo_text = (
                "" if topo_text == "-" else topo_text + " + "
            ) + f"distillation λ={kd['lambda']:g} T={kd['temperature']:g}"
        parts = [(name, r, f"{r['train_seconds']:.0f}")]
        if isinstance(r.get("best"), dict):
            parts.append((f"{name} (best@{r['best'].get('epoch')})", r["best"], "-"))
        for label, scores, seconds in parts:
            robust = scores.get("robust_acc", {})
            rows.append(
                [label, r["method"], topo_text, f"{100 * scores['natural_acc']:.2f}"]
                + [f"{100 * robust[a]:.2f}" if a in robust else "-" for a in attacks]
                + [seconds]
            )
            for a, k in scores.get("n_by_attack", {}).items():
                notes.setdefault(a, f"{a}: on a fixed {k} of the {r.get('n_eval', '?')} test images")
    return "\n".join([text_table(header, rows)] + list(notes.values()))
