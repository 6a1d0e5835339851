"""A finished run folder: evaluate its checkpoint on the test split and write results.json.

results.json is a fixed contract:
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

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .checkpoint import load_checkpoint, load_model, model_from_record
from .config import TrainConfig, to_dict
from .data import ImageDataset, dataset_from_config, to_float
from .distributed import SINGLE, DistContext
from .errors import TopoatError
from .evaluate import EvalResult, evaluate, fixed_subset
from .files import write_text_atomic
from .runtime import provenance, resolve_device, use_channels_last


def write_json_atomic(obj: Any, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TopoatError(f"file not found: {path}") from None
    except json.JSONDecodeError:
        raise TopoatError(f"{path} is not valid JSON") from None


def read_results(path: Path, run: Optional[str] = None) -> dict:
    """A results.json checked against the contract above (types of the keys present), so a damaged or
    hand-edited file is one line naming the key rather than a traceback; with `run`, that run must be in it."""
    doc = read_json(path)
    problem = _results_problem(doc)
    if problem is None and run is not None and run not in doc["runs"]:
        problem = f"it has no run {run!r}"
    if problem is not None:
        raise TopoatError(f"{path} is not a usable topoat results.json: {problem}")
    return doc


def _results_problem(doc: Any) -> Optional[str]:
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


def _entry_problem(entry: Any, prefix: str = "") -> Optional[str]:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(entry, dict):
        return f"'{prefix[:-1]}' must be a mapping" if prefix else "the entry is not a mapping"
    checks = [("checkpoint", lambda v: isinstance(v, str), "a path"),
              ("method", lambda v: isinstance(v, str), "a string"),
              ("natural_acc", number, "a number"),
              ("robust_acc", lambda v: isinstance(v, dict) and all(number(a) for a in v.values()),
               "a mapping of attacks to numbers"),
              ("n_by_attack", lambda v: isinstance(v, dict), "a mapping"),
              ("topology", lambda v: v is None or isinstance(v, dict), "a mapping or null"),
              ("best", lambda v: v is None or isinstance(v, dict), "a mapping or null")]
    for key, ok, what in checks:
        if key in entry and not ok(entry[key]):
            return f"'{prefix}{key}' must be {what}"
    return None


def method_name(cfg: TrainConfig) -> str:
    return cfg.method.name if cfg.method.awp is None else f"awp-{cfg.method.name}"


def train_and_evaluate(cfg: TrainConfig, run_dir: Path, *, resume: bool, stage_name: str, resume_hint: str,
                       dist: DistContext = SINGLE, echo: Optional[Callable[[str], None]] = None) -> Optional[dict]:
    """One run from start to results: train `cfg` into `run_dir` (or resume it), evaluate it and write its
    results.json. Returns its entry; None on the processes other than rank 0, which only train. The CLI
    and a study both run a run through here."""
    from .signals import stage
    from .train import Trainer

    summary = Trainer(cfg, run_dir, resume=resume, dist=dist).run()
    if not dist.is_main:
        return None
    if echo is not None:
        aa_n, ev = cfg.evaluation.autoattack_n, cfg.evaluation
        echo(f"[{cfg.name}] evaluating {', '.join(ev.attacks)} on {ev.n or 'all'} test images"
             f"{'' if aa_n is None else f' (AutoAttack on a fixed {aa_n} of them)'}, "
             f"{' and '.join(ev.checkpoints) or 'no'} checkpoint(s)")
    with stage(stage_name, resume_hint):
        entry = evaluate_run(cfg, run_dir, cfg.name, summary["train_seconds"], relative_to=run_dir,
                             progress=cfg.runtime.progress)
        write_json_atomic(results_document(cfg, {cfg.name: entry}), run_dir / "results.json")
    return entry


def evaluate_run(cfg: TrainConfig, run_dir: Path, name: str, train_seconds: float,
                 relative_to: Path, dataset: Optional[ImageDataset] = None, progress: bool = True) -> dict:
    """The results.json entry of one run: its last checkpoint evaluated on the fixed test subset, and
    under `best` its best-by-validation checkpoint on the same images (robust overfitting is real)."""
    device = resolve_device(cfg.runtime.device)
    ds = dataset if dataset is not None else dataset_from_config(cfg.data)
    idx = fixed_subset(ds.x_test.shape[0], cfg.evaluation.n, cfg.evaluation.seed)
    x, y = to_float(ds.x_test[idx].to(device)), ds.y_test[idx].to(device)
    checkpoint = run_dir / "last.pt"
    model = load_model(checkpoint, device)
    res = _evaluate_model(cfg, model, x, y, progress, attacks_for(cfg, "last"))
    entry = {
        "method": method_name(cfg),
        "topology": None if cfg.topology is None else to_dict(cfg.topology),
        "method_config": {k: v for k, v in to_dict(cfg.method).items() if k != "name"},
        "distillation": None if cfg.distillation is None else to_dict(cfg.distillation),
        "checkpoint": os.path.relpath(checkpoint, relative_to),
        "natural_acc": res.natural_acc,
        "robust_acc": res.robust_acc,
        "train_seconds": round(train_seconds, 3),
        "n_eval": res.n,
    }
    entry.update(_extras(res))
    entry["best"] = _evaluate_best(cfg, run_dir / "best.pt", model, res, x, y, relative_to, progress)
    return entry


def evaluate_missing(cfg: TrainConfig, run_dir: Path, name: str, attacks: list[str], progress: bool = True) -> dict:
    """A finished run's entry (its results.json) with `attacks` evaluated on the same images and merged
    in, for the last checkpoint and, unless it holds the same weights, the best one."""
    results = run_dir / "results.json"
    entry = read_results(results, name)["runs"][name]
    device = resolve_device(cfg.runtime.device)
    ds = dataset_from_config(cfg.data)
    # the images the run was scored on, even if the study now asks for more: scores of one entry share images
    n = entry.get("n_eval", cfg.evaluation.n)
    idx = fixed_subset(ds.x_test.shape[0], n, cfg.evaluation.seed)
    x, y = to_float(ds.x_test[idx].to(device)), ds.y_test[idx].to(device)
    slots = [("last", entry["checkpoint"])]
    best = entry.get("best")
    if isinstance(best, dict) and (not best.get("same_as_last") or "last" not in cfg.evaluation.checkpoints):
        slots.append(("best", best["checkpoint"]))
    for kind, checkpoint in slots:
        wanted = [a for a in attacks if a in attacks_for(cfg, kind)]
        if not wanted:
            continue
        path = (run_dir / checkpoint).resolve()
        res = _evaluate_model(cfg, load_model(path, device), x, y, progress, wanted)
        merge_evaluation(results, name, path, res, norm=cfg.attack.norm, eps=cfg.attack.eps,
                         dataset=cfg.data.dataset)
    entry = read_json(results)["runs"][name]
    if isinstance(entry.get("best"), dict) and entry["best"].get("same_as_last") and \
            "last" in cfg.evaluation.checkpoints:
        for key in ("robust_acc", "n_by_attack", "autoattack_subset", "eval_seconds"):
            if key in entry:
                entry["best"][key] = entry[key]
        doc = read_json(results)
        doc["runs"][name] = entry
        write_json_atomic(doc, results)
    return entry


def images_to_add(cfg: TrainConfig, entry: dict, n_test: int) -> int:
    """How many test images a finished run lacks for `cfg.evaluation.n` (all of them when None): 0 when
    it was scored on at least as many (a study that asks for fewer keeps the larger sample)."""
    wanted = n_test if cfg.evaluation.n is None else min(cfg.evaluation.n, n_test)
    return max(wanted - int(entry.get("n_eval", wanted)), 0)


def evaluate_more_images(cfg: TrainConfig, run_dir: Path, name: str, progress: bool = True,
                         echo: Callable[[str], None] = lambda line: None) -> dict:
    """A finished run's entry grown to `cfg.evaluation.n` test images: the images it lacks are scored
    with every attack it already holds, and each score becomes the count-weighted mean of both parts.

    The chosen subsets are nested (`fixed_subset`), so the old images are among the new ones and the
    result is a score on exactly the images a fresh evaluation on `cfg.evaluation.n` would use. The
    random starts on the added images differ from a fresh run's (they are other batches); each image
    still gets the same attack. A run whose AutoAttack ran on a fixed fraction (`autoattack_n`) is
    evaluated again from scratch instead: its subsets do not nest."""
    results = run_dir / "results.json"
    entry = read_results(results, name)["runs"][name]
    device = resolve_device(cfg.runtime.device)
    ds = dataset_from_config(cfg.data)
    n_test = ds.x_test.shape[0]
    if not images_to_add(cfg, entry, n_test):
        return entry
    n_old = int(entry["n_eval"])
    slots = [("last", entry)] + ([("best", entry["best"])] if isinstance(entry.get("best"), dict) else [])
    if cfg.evaluation.autoattack_n is not None or any("n_by_attack" in s or "autoattack_subset" in s
                                                      for _, s in slots):
        echo(f"[{name}] done on {n_old} test images; evaluating it again on {cfg.evaluation.n or 'all'} "
             "(its AutoAttack ran on a fraction of them, which does not grow)")
        entry = evaluate_run(cfg, run_dir, name, float(entry.get("train_seconds", 0.0)), relative_to=run_dir,
                             dataset=ds, progress=progress)
        write_json_atomic(results_document(cfg, {name: entry}), results)
        return entry
    echo(f"[{name}] done on {n_old} test images; scoring the {images_to_add(cfg, entry, n_test)} more that "
         f"evaluation.n={cfg.evaluation.n} asks for")
    new_idx = fixed_subset(n_test, cfg.evaluation.n, cfg.evaluation.seed)
    added = new_idx[~torch.isin(new_idx, fixed_subset(n_test, n_old, cfg.evaluation.seed))]
    x, y = to_float(ds.x_test[added].to(device)), ds.y_test[added].to(device)
    scored: dict[str, tuple[EvalResult, list[str]]] = {}
    for kind, slot in slots:
        attacks = [a for a in slot.get("robust_acc", {}) if a != "worst"]
        reuse = kind == "best" and slot.get("same_as_last") and attacks == scored["last"][1]
        if reuse:
            scored[kind] = scored["last"]
            continue
        model = load_model((run_dir / slot["checkpoint"]).resolve(), device)
        scored[kind] = (_evaluate_model(cfg, model, x, y, progress, attacks), attacks)
    n_new = n_old + len(added)
    for kind, slot in slots:
        res, _ = scored[kind]
        mean = lambda old, new: (round(old * n_old) + round(new * res.n)) / n_new
        slot["natural_acc"] = mean(slot["natural_acc"], res.natural_acc)
        robust = slot.get("robust_acc", {})
        for a in list(robust):
            if a in res.robust_acc:
                robust[a] = mean(robust[a], res.robust_acc[a])
            else:
                del robust[a]  # a per-sample worst case over attacks that were not all rerun
        seconds = slot.setdefault("eval_seconds", {})
        for a, s in res.seconds.items():
            seconds[a] = round(seconds.get(a, 0.0) + s, 2)
    entry["n_eval"] = n_new
    doc = read_json(results)
    doc["runs"][name] = entry
    write_json_atomic(doc, results)
    return entry


def attacks_for(cfg: TrainConfig, checkpoint: str) -> list[str]:
    """The attacks a checkpoint ("last" or "best") is evaluated with: all of evaluation.attacks if
    evaluation.checkpoints lists it, else none (natural accuracy only, which costs next to nothing)."""
    return list(cfg.evaluation.attacks) if checkpoint in cfg.evaluation.checkpoints else []


def _evaluate_model(cfg: TrainConfig, model, x, y, progress: bool,
                    attacks: Optional[list[str]] = None) -> EvalResult:
    ev = cfg.evaluation
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)  # a resumed study evaluates without building a Trainer
    if use_channels_last(x.device, cfg.runtime.channels_last):
        # the run's own memory format: on a CPU small-cnn, channels-last halves the cost of AutoAttack
        model = model.to(memory_format=torch.channels_last)
    return evaluate(model, x, y, ev.attacks if attacks is None else attacks, norm=cfg.attack.norm,
                    eps=cfg.attack.eps, step_size=ev.step_size, batch_size=ev.batch_size, progress=progress,
                    autoattack_n=ev.autoattack_n, seed=ev.seed)


def _extras(res: EvalResult) -> dict:
    """The optional fields of an entry: where attacks ran on fewer images, and what the evaluation cost."""
    out: dict[str, Any] = {}
    fewer = {k: res.n_of(k) for k in res.robust_acc if k != "worst" and res.n_of(k) != res.n}
    if fewer:
        out["n_by_attack"] = fewer
    if res.subset is not None:
        out["autoattack_subset"] = res.subset
    out["eval_seconds"] = {k: round(v, 2) for k, v in res.seconds.items()}
    return out


def _evaluate_best(cfg: TrainConfig, path: Path, last_model, last: EvalResult, x, y, relative_to: Path,
                   progress: bool) -> Optional[dict]:
    """best.pt on the same images; when it holds the last checkpoint's weights its scores are the same."""
    if not path.is_file():
        return None  # no validation split: nothing chose a best checkpoint
    ckpt = load_checkpoint(path)
    model = model_from_record(ckpt, x.device).eval()
    last_state = last_model.state_dict()
    same = all(torch.equal(v, last_state[k]) for k, v in model.state_dict().items())
    attacks = attacks_for(cfg, "best")
    reuse = same and attacks == attacks_for(cfg, "last")
    res = last if reuse else _evaluate_model(cfg, model, x, y, progress, attacks)
    best = {"checkpoint": os.path.relpath(path, relative_to), "epoch": ckpt.get("epoch"),
            "natural_acc": res.natural_acc, "robust_acc": res.robust_acc}
    best.update(_extras(res))
    if same:
        best["same_as_last"] = True
    return best


def rebase_checkpoints(entry: dict, prefix: str) -> dict:
    """The entry with its checkpoint paths (last and best) made relative to the folder above the run's."""
    entry = dict(entry, checkpoint=f"{prefix}/{entry['checkpoint']}")
    if isinstance(entry.get("best"), dict):
        entry["best"] = dict(entry["best"], checkpoint=f"{prefix}/{entry['best']['checkpoint']}")
    return entry


def find_run_slot(results: Path, run: str, checkpoint: Path, *, norm: str, eps: float,
                  dataset: str) -> tuple[dict, dict, str]:
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
    if threat.get("norm") != norm or not isinstance(threat.get("eps"), (int, float)) or not math.isclose(
            float(threat["eps"]), eps, rel_tol=1e-9, abs_tol=1e-12):
        raise TopoatError(f"{results} is for {threat.get('norm')} eps {threat.get('eps')}, but this evaluation "
                          f"uses {norm} eps {eps:.6g}")
    entry = runs[run]
    slots = {"last": entry}
    if isinstance(entry.get("best"), dict):
        slots["best"] = entry["best"]
    target = Path(checkpoint).resolve()
    for label, slot in slots.items():
        if (Path(results).parent / slot.get("checkpoint", "")).resolve() == target:
            return doc, slot, label
    listed = " or ".join(str(s.get("checkpoint")) for s in slots.values())
    raise TopoatError(f"{checkpoint} is not a checkpoint of run {run!r} in {results} (that is {listed}, "
                      f"relative to {Path(results).parent})")


def merge_evaluation(results: Path, run: str, checkpoint: Path, res: EvalResult, *, norm: str, eps: float,
                     dataset: str, sanity=None) -> str:
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


def results_document(cfg: TrainConfig, runs: dict[str, dict]) -> dict:
    return {"dataset": cfg.data.dataset, "threat": {"norm": cfg.attack.norm, "eps": cfg.attack.eps}, "runs": runs,
            "provenance": provenance(resolve_device(cfg.runtime.device))}


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
        topo_text = "-" if not topo else (f"{topo.get('kernel', 'cosine')} {topo['layer']} "
                                          f"nat={topo['lambda_nat']:g} adv={topo['lambda_adv']:g}")
        kd = r.get("distillation")
        if kd:
            topo_text = ("" if topo_text == "-" else topo_text + " + ") + \
                f"distillation λ={kd['lambda']:g} T={kd['temperature']:g}"
        parts = [(name, r, f"{r['train_seconds']:.0f}")]
        if isinstance(r.get("best"), dict):
            parts.append((f"{name} (best@{r['best'].get('epoch')})", r["best"], "-"))
        for label, scores, seconds in parts:
            robust = scores.get("robust_acc", {})
            rows.append([label, r["method"], topo_text, f"{100 * scores['natural_acc']:.2f}"]
                        + [f"{100 * robust[a]:.2f}" if a in robust else "-" for a in attacks] + [seconds])
            for a, k in scores.get("n_by_attack", {}).items():
                notes.setdefault(a, f"{a}: on a fixed {k} of the {r.get('n_eval', '?')} test images")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows] + list(notes.values()))
