"""Scores from a later evaluation (`topoat eval --results`) merged into a run's results.json: checked to be
for the same run, data and threat model, then written into the scores of the checkpoint evaluated."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import TopoatError
from ..evaluation.accuracy import EvalResult
from ..evaluation.sanity import SanityReport
from .results import CheckpointScores, ResultsFile, read_results, write_results


def find_run_slot(
    results: Path, run: str, checkpoint: Path, *, norm: str, eps: float, dataset: str
) -> tuple[ResultsFile, CheckpointScores, str]:
    """The results.json, and the scores of run `run` that `checkpoint` has (its last or its best) with their
    label, "last" or "best". One-line errors when the file, the run, the threat model or the dataset do not
    match."""
    doc = read_results(results)
    if run not in doc.runs:
        raise TopoatError(f"{results} has no run {run!r} (it has: {', '.join(doc.runs) or 'none'})")
    if doc.dataset != dataset:
        raise TopoatError(f"{results} is for dataset {doc.dataset}, but this evaluation uses {dataset}")
    threat = doc.threat
    if (
        threat.get("norm") != norm
        or not isinstance(threat.get("eps"), int | float)
        or not math.isclose(float(threat["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12)
    ):
        raise TopoatError(
            f"{results} is for {threat.get('norm')} eps {threat.get('eps')}, but this evaluation "
            f"uses {norm} eps {eps:.6g}"
        )
    slots = doc.runs[run].checkpoints
    target = Path(checkpoint).resolve()
    for label, slot in slots.items():
        if (Path(results).parent / (slot.checkpoint or "")).resolve() == target:
            return doc, slot, label
    listed = " or ".join(str(s.checkpoint) for s in slots.values())
    raise TopoatError(
        f"{checkpoint} is not a checkpoint of run {run!r} in {results} (that is {listed}, "
        f"relative to {Path(results).parent})"
    )


def merge_evaluation(
    results: Path,
    run: str,
    checkpoint: Path,
    res: EvalResult,
    *,
    norm: str,
    eps: float,
    dataset: str,
    sanity: SanityReport | None = None,
) -> str:
    """Write `res`'s robust accuracies into run `run` of results.json, atomically; returns "last" or "best".

    A stored per-sample "worst" that this evaluation cannot recompute (it lacks some of the stored attacks
    or ran on other images) is removed rather than left stale."""
    doc, slot, label = find_run_slot(results, run, checkpoint, norm=norm, eps=eps, dataset=dataset)
    entry = doc.runs[run]
    n_eval = entry.n_eval if entry.n_eval is not None else res.n
    robust = slot.robust_acc
    new = {k: v for k, v in res.robust_acc.items() if k != "worst"}
    covered = (set(robust) - {"worst"}) <= set(new) and res.n == n_eval
    robust.update(new)
    if covered and "worst" in res.robust_acc:
        robust["worst"] = res.robust_acc["worst"]
    elif not covered:
        robust.pop("worst", None)
    for k in new:
        if res.n_of(k) != n_eval:
            slot.n_by_attack[k] = res.n_of(k)
        else:
            slot.n_by_attack.pop(k, None)
    if res.subset is not None:
        slot.autoattack_subset = res.subset
    slot.eval_seconds = (slot.eval_seconds or {}) | {k: round(v, 2) for k, v in res.seconds.items()}
    if sanity is not None:
        slot.sanity = {"passed": sanity.passed, "failed": [c.name for c in sanity.failed]}
    write_results(doc, Path(results))
    return label
