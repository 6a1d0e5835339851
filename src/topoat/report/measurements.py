"""The report's own measurements of the checkpoints: each run's topology against its reference model,
and the t-SNE maps, on one fixed held-out subset of the test set (see `topoat.evaluation.graph_metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import TopoatError
from .collect import Run, base_group, groups_of

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

    from ..data import ImageDataset
    from ..evaluation.graph_metrics import Representations
    from ..schema import TrainConfig

MAX_TSNE_COLUMNS = 6  # wider than this, the maps get too small to read


@dataclass
class ReportSettings:
    n: int = 1000  # held-out test images the topology metrics and t-SNE use
    k: int = 10
    attack_steps: int = 20
    tsne_points: int = 1000
    tsne_models: list[str] | None = None  # group or run names; default: see tsne_selection
    graph_size: int = 128
    seed: int = 0
    device: str = "auto"


@dataclass
class Analysis:
    metrics: dict[str, dict] = field(default_factory=dict)  # run name -> topology metrics
    tsne: list[dict] = field(default_factory=list)  # one panel per column, as `figures.plot_tsne` takes them
    notes: list[str] = field(default_factory=list)
    attack: str = ""
    n: int = 0  # held-out images actually used (the test split may be smaller than asked)
    labels: np.ndarray | None = None  # true classes of the held-out images (of the t-SNE points, once drawn)
    class_names: list[str] | None = None


def _why_not_analysable(run: Run) -> str | None:
    if not run.checkpoint.is_file():
        return "no checkpoint"
    if run.reference is None:
        return "no reference model"
    if run.config is None:
        return "no readable config.yaml"
    return None


class _Representations:
    """Penultimate features of the held-out images and their adversarial examples, per checkpoint:
    a reference shared by many runs is attacked once."""

    def __init__(
        self, dataset: ImageDataset, x: Tensor, y: Tensor, device: torch.device, attack: str, seed: int
    ) -> None:
        self.dataset, self.x, self.y, self.device, self.attack, self.seed = dataset, x, y, device, attack, seed
        self.cache: dict[Path, Representations] = {}

    def of(self, checkpoint: Path, run: Run) -> Representations:
        """`checkpoint`'s representations under `run`'s threat model and step size."""
        from ..evaluation.graph_metrics import representations
        from ..runs.checkpoint import check_fits_data, load_checkpoint, model_from_record

        if checkpoint not in self.cache:
            config = cast("TrainConfig", run.config)  # only analysable runs get here: their config was read
            eps = float(run.threat.get("eps", config.attack.eps))
            norm = run.threat.get("norm", config.attack.norm)
            ckpt = load_checkpoint(checkpoint)  # a --reference made for other data is refused, not compared
            ds = self.dataset
            check_fits_data(ckpt, checkpoint, "report: model", ds.num_classes, ds.in_channels, ds.image_size, ds.name)
            model = model_from_record(ckpt, self.device).eval()
            self.cache[checkpoint] = representations(
                model,
                self.x,
                self.y,
                norm=norm,
                eps=eps,
                attack=self.attack,
                step_size=config.evaluation.step_size,
                seed=self.seed,
                label=f"report: model {checkpoint}",
            )
        return self.cache[checkpoint]


def analyse_runs(runs: Sequence[Run], settings: ReportSettings, echo: Callable[[str], None]) -> Analysis:
    """Topology metrics of every run against its reference, and the t-SNE maps of the first seed."""
    from ..data import dataset_from_config
    from ..evaluation.accuracy import held_out_subset
    from ..evaluation.graph_metrics import compare
    from ..runtime import resolve_device

    result = Analysis(attack=f"pgd-{settings.attack_steps}")
    analysable = []
    for r in runs:
        why = _why_not_analysable(r)
        if why is None:
            analysable.append(r)
        else:
            result.notes.append(f"{r.name}: no topology metrics ({why})")
    if not analysable:
        return result
    device = resolve_device(settings.device)
    dataset = dataset_from_config(cast("TrainConfig", analysable[0].config).data)  # analysable: config read
    result.class_names = dataset.class_names
    x, y = held_out_subset(dataset, settings.n, settings.seed, device)
    result.n = int(x.shape[0])
    result.labels = y.cpu().numpy()
    reps = _Representations(dataset, x, y, device, result.attack, settings.seed)
    for r in analysable:
        echo(f"[report] {r.name}: representations of {x.shape[0]} test images and their {result.attack} examples")
        reference = cast(Path, r.reference)  # analysable: it has a reference model
        metrics = compare(reps.of(r.checkpoint, r), reps.of(reference, r), settings.k, settings.graph_size)
        result.metrics[r.name] = dict(metrics, reference=r.reference_name)
    _add_tsne_maps(result, analysable, reps, settings, echo)
    return result


def _add_tsne_maps(
    result: Analysis,
    analysable: Sequence[Run],
    reps: _Representations,
    settings: ReportSettings,
    echo: Callable[[str], None],
) -> None:
    """One column per group, drawn from its first seed (the reference model first)."""
    from ..evaluation.graph_metrics import tsne_map

    first_seed = min((r.seed for r in analysable if r.seed is not None), default=None)
    chosen, left_out = tsne_selection([r for r in analysable if r.seed == first_seed], settings.tsne_models)
    if left_out:
        result.notes.append(f"t-SNE leaves out {', '.join(left_out)} (choose with --tsne-models)")
    m = min(settings.tsne_points, result.n)
    for r in chosen:
        echo(f"[report] {r.name}: t-SNE of {m} natural + {m} adversarial representations")
        features = reps.of(r.checkpoint, r)
        natural, adversarial = tsne_map(features.natural[:m], features.adversarial[:m], seed=settings.seed)
        result.tsne.append(_tsne_panel(r, features, natural, adversarial, result.metrics[r.name]))
    if result.labels is not None:  # set by analyse_runs before the maps are drawn
        result.labels = result.labels[:m]


def _tsne_panel(
    run: Run, features: Representations, natural: np.ndarray, adversarial: np.ndarray, metrics: dict
) -> dict:
    if run.checkpoint == run.reference:
        topology = "reference model"
    else:
        topology = f"kNN overlap {metrics['knn_overlap']:.2f}, graph KL {metrics['graph_kl']:.2g}"
    return {
        "name": run.group if run.seed is not None else run.name,
        "natural": natural,
        "adversarial": adversarial,
        "subtitle": {
            "natural": f"acc {100 * features.natural_acc:.1f}%, {topology}",
            "adversarial": f"robust acc {100 * features.robust_acc:.1f}%, "
            f"graph KL to ref. natural {metrics['graph_kl_adv']:.2g}",
        },
    }


def tsne_selection(runs: Sequence[Run], wanted: Sequence[str] | None = None) -> tuple[list[Run], list[str]]:
    """The runs drawn as t-SNE columns and the names of those left out. `wanted`: group or run names, in
    order. By default the reference model, then each TRAIN run beside its base method, then the rest, up to
    MAX_TSNE_COLUMNS."""

    def name(r: Run) -> str:
        return r.group if r.seed is not None else r.name

    by_name = {name(r): r for r in runs}
    if wanted:
        unknown = [w for w in wanted if w not in by_name and not any(w == r.name for r in runs)]
        if unknown:
            raise TopoatError(f"report: --tsne-models: no run {', '.join(unknown)} (have {', '.join(by_name)})")
        picked = [by_name.get(w) or next(r for r in runs if r.name == w) for w in wanted]
    else:
        groups = groups_of(runs)
        picked = [r for r in runs if r.checkpoint == r.reference]
        for r in runs:
            if r.is_train:
                base = base_group(r.group, groups[r.group], groups)
                picked += [q for q in ([by_name.get(base)] if base else []) + [r] if q is not None]
        picked += list(runs)
        unique: list[Run] = []
        for r in picked:  # runs are unhashable dataclasses: keep the first of each, by identity
            if not any(r is q for q in unique):
                unique.append(r)
        picked = unique[:MAX_TSNE_COLUMNS]
    return picked, [name(r) for r in runs if not any(r is q for q in picked)]
