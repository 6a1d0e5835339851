"""Topology metrics of saved models against a reference (standard) model, from their files to the
numbers: what `topoat analyze` does."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..attacks.threat import ThreatModel
from ..errors import TopoatError
from ..files import check_output_folder, write_text_atomic
from .accuracy import held_out_subset


def analyze_against_reference(
    checkpoints: Sequence[str | Path],
    reference: str | Path,
    *,
    dataset: str | None = None,
    root: str | None = None,
    n: int = 1000,
    seed: int = 0,
    k: int = 10,
    norm: str | None = None,
    eps: float | None = None,
    attack_steps: int = 20,
    step_size: float | None = None,
    layer: str = "features",
    device: str = "auto",
    json_path: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Topology metrics of each checkpoint against `reference` on `n` held-out test images (chosen by
    `seed`), natural and under a PGD attack of `attack_steps` steps against each model, as `topoat analyze`
    prints them. The data and threat model default to the reference's. Returns the document that
    `json_path` receives: the settings, and the metrics per checkpoint under "models"."""
    from ..report import format_topology_table
    from .graph_metrics import analyze_checkpoints

    if n <= 2 * k:
        raise TopoatError(f"analyze: --n must be more than twice --k (got n={n}, k={k})")
    check_output_folder("--json", json_path)
    x, y, threat = _checked_inputs(checkpoints, reference, dataset, root, n, seed, norm, eps, step_size, layer, device)
    attack = f"pgd-{attack_steps}"
    metrics = analyze_checkpoints(
        checkpoints,
        reference,
        x,
        y,
        norm=threat.norm,
        eps=threat.eps,
        attack=attack,
        step_size=step_size,
        k=k,
        layer=layer,
        seed=seed,
    )
    say = echo or (lambda line: None)
    say(
        f"topology against {reference}: {x.shape[0]} test images, {threat.norm} eps={threat.eps:.4g}, "
        f"adversarial = {attack} against each model, k={k}"
    )
    say(format_topology_table(metrics, k))
    document = {
        "reference": str(reference),
        "n": int(x.shape[0]),
        "k": k,
        "attack": attack,
        "norm": threat.norm,
        "eps": threat.eps,
        "layer": layer,
        "seed": seed,
        "models": metrics,
    }
    if json_path:
        write_text_atomic(Path(json_path), json.dumps(document, indent=2) + "\n")
        say(f"wrote {json_path}")
    return document


def _checked_inputs(
    checkpoints: Sequence[str | Path],
    reference: str | Path,
    dataset: str | None,
    root: str | None,
    n: int,
    seed: int,
    norm: str | None,
    eps: float | None,
    step_size: float | None,
    layer: str,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor, ThreatModel]:
    """The test images and the threat model, after every file has been read and every model checked to fit
    them: a bad path or a model for other data fails before any attack runs."""
    from ..models import check_layer
    from ..runs.checkpoint import load_checkpoint, model_from_record
    from ..runtime import resolve_device
    from .target import check_fits, recorded_dataset, recorded_threat

    reference_record = load_checkpoint(reference)
    records = {path: load_checkpoint(path) for path in checkpoints}
    threat = recorded_threat(reference_record, norm, eps, step_size, command="analyze")
    on = resolve_device(device)
    data = recorded_dataset(reference_record, dataset, root, command="analyze")
    for path, record in [(reference, reference_record), *records.items()]:
        model = model_from_record(record, on).eval()
        check_fits(model, record, data, path, on, role="--reference" if path == reference else "checkpoint")
        check_layer(model, layer, "analyze: --layer")
    x, y = held_out_subset(data, n, seed, on)
    return x, y, threat


def common_folder(paths: Sequence[str | Path]) -> Path:
    """The deepest folder holding all `paths`: a run's folder for one checkpoint, the study's for several runs."""
    return Path(os.path.commonpath([Path(p).resolve().parent for p in paths]))
