"""A finished run folder: evaluate its checkpoint on the test split and write results.json.

results.json is a fixed contract:
{"dataset": str, "threat": {"norm": "Linf"|"L2", "eps": float},
 "runs": {NAME: {"method": str, "topology": null | {...}, "checkpoint": path relative to results.json,
                 "natural_acc": float, "robust_acc": {ATTACK: float}, "train_seconds": float}}}
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .checkpoint import load_model
from .config import TrainConfig, to_dict
from .data import ImageDataset, dataset_from_config, to_float
from .errors import TopoatError
from .evaluate import evaluate, fixed_subset
from .runtime import resolve_device


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TopoatError(f"file not found: {path}") from None
    except json.JSONDecodeError:
        raise TopoatError(f"{path} is not valid JSON") from None


def method_name(cfg: TrainConfig) -> str:
    return cfg.method.name


def evaluate_run(cfg: TrainConfig, run_dir: Path, name: str, train_seconds: float,
                 relative_to: Path, dataset: Optional[ImageDataset] = None, progress: bool = True) -> dict:
    """The results.json entry of one run: its last checkpoint evaluated on the fixed test subset."""
    device = resolve_device(cfg.runtime.device)
    ds = dataset if dataset is not None else dataset_from_config(cfg.data)
    idx = fixed_subset(ds.x_test.shape[0], cfg.evaluation.n, cfg.evaluation.seed)
    x, y = to_float(ds.x_test[idx].to(device)), ds.y_test[idx].to(device)
    checkpoint = run_dir / "last.pt"
    model = load_model(checkpoint, device)
    ev = cfg.evaluation
    res = evaluate(model, x, y, ev.attacks, norm=cfg.attack.norm, eps=cfg.attack.eps, step_size=ev.step_size,
                   batch_size=ev.batch_size, progress=progress)
    return {
        "method": method_name(cfg),
        "topology": None if cfg.topology is None else to_dict(cfg.topology),
        "checkpoint": os.path.relpath(checkpoint, relative_to),
        "natural_acc": res.natural_acc,
        "robust_acc": res.robust_acc,
        "train_seconds": round(train_seconds, 3),
        "n_eval": res.n,
    }


def results_document(cfg: TrainConfig, runs: dict[str, dict]) -> dict:
    return {"dataset": cfg.data.dataset, "threat": {"norm": cfg.attack.norm, "eps": cfg.attack.eps}, "runs": runs}


def format_table(runs: dict[str, dict]) -> str:
    """A plain-text results table: one row per run, accuracies in percent."""
    attacks: list[str] = []
    for r in runs.values():
        attacks += [a for a in r.get("robust_acc", {}) if a not in attacks]
    header = ["run", "method", "topology", "natural"] + attacks + ["train s"]
    rows = []
    for name, r in runs.items():
        topo = r.get("topology")
        topo_text = "-" if not topo else f"{topo['layer']} nat={topo['lambda_nat']:g} adv={topo['lambda_adv']:g}"
        rows.append([name, r["method"], topo_text, f"{100 * r['natural_acc']:.2f}"]
                    + [f"{100 * r['robust_acc'][a]:.2f}" if a in r.get("robust_acc", {}) else "-" for a in attacks]
                    + [f"{r['train_seconds']:.0f}"])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
