"""The report's pictures: t-SNE maps, validation curves per epoch, the natural/robust trade-off and the
TRAIN-weight ablation. Each `plot_*` writes one PNG and returns its path, or None when the runs hold
nothing to draw.

Drawn on `matplotlib.figure.Figure` directly (Agg canvas), so importing topoat never switches the
user's pyplot backend.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_figure_atomic
from .collect import Run, groups_of, lambda_ablation, lambda_label, primary_attack
from .stats import mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import ColorType as Colour
    from numpy.typing import ArrayLike


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    return write_figure_atomic(fig, path, dpi=100)


def class_colours(num_classes: int) -> list[Colour]:
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(num_classes - 1, 1)) for i in range(num_classes)]


def plot_tsne(
    panels: Sequence[dict], labels: ArrayLike, class_names: Sequence[str] | None, path: Path, attack: str, title: str
) -> Path:
    """2 rows (natural, adversarial) x one column per model; each panel dict holds `name`, `natural`
    and `adversarial` (n x 2 arrays from `analysis.tsne_map`), and `subtitle`."""
    import numpy as np
    from matplotlib.lines import Line2D

    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if labels.size else 1
    names = list(class_names) if class_names else [f"class {c}" for c in range(num_classes)]
    colours = class_colours(num_classes)
    point_colours = [colours[c] for c in labels]
    point_size = min(16.0, max(3.0, 4000.0 / max(len(labels), 1)))  # visible when few, unclumped when many
    cols = len(panels)
    fig = _figure(3.4 * cols + 1.6, 7.2)
    axes = fig.subplots(2, cols, squeeze=False)
    for j, panel in enumerate(panels):
        for i, (key, row_name) in enumerate((("natural", "natural"), ("adversarial", f"adversarial ({attack})"))):
            ax = axes[i][j]
            xy = panel[key]
            ax.scatter(xy[:, 0], xy[:, 1], c=point_colours, s=point_size, alpha=0.75, linewidths=0, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{panel['name']}: {row_name}\n{panel['subtitle'][key]}", fontsize=9)
            ax.set_xlabel("t-SNE 1", fontsize=8)
            ax.set_ylabel("t-SNE 2", fontsize=8)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[c], markersize=6, label=names[c])
        for c in range(num_classes)
    ]
    if num_classes <= 20:
        fig.legend(
            handles=handles, loc="outside right center", title="class", fontsize=8, title_fontsize=9, frameon=False
        )
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _curve(
    ax: Axes, members: Sequence[Run], key: str, colour: Colour, label: str, scale: float = 1.0, style: str = "-"
) -> bool:
    """Plot `key` per epoch for a group: the mean over seeds, and a band of ± one std if several."""
    import numpy as np

    series: dict[int, list[float]] = {}
    for r in members:
        for rec in r.epochs():
            if key in rec and rec[key] is not None:
                series.setdefault(int(rec["epoch"]), []).append(scale * float(rec[key]))
    if not series:
        return False
    epochs = sorted(series)
    mean = np.array([statistics.fmean(series[e]) for e in epochs])
    ax.plot(epochs, mean, style, color=colour, marker="o", markersize=4, label=label)
    if len(members) > 1:
        std = np.array([statistics.stdev(series[e]) if len(series[e]) > 1 else 0.0 for e in epochs])
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
    return True


def _group_colours(groups: Sequence[str]) -> dict[str, Colour]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(groups) <= 10 else colormaps["tab20"]
    return {g: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy_curves(runs: Sequence[Run], path: Path, title: str) -> Path | None:
    groups = groups_of(runs)
    colours = _group_colours(list(groups))
    fig = _figure(11, 4.2)
    ax_nat, ax_rob = fig.subplots(1, 2)
    drawn = [False, False]
    for group, members in groups.items():
        label = group + (f" ({len(members)} seeds)" if len(members) > 1 else "")
        drawn[0] |= _curve(ax_nat, members, "val_natural_acc", colours[group], label, 100)
        drawn[1] |= _curve(ax_rob, members, "val_robust_acc", colours[group], label, 100)
    if not drawn[0]:
        return None
    steps = _validation_attack(runs)
    for ax, name in ((ax_nat, "natural accuracy"), (ax_rob, f"robust accuracy ({steps})")):
        ax.set_title(f"validation {name}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        _integer_epochs(ax)
    _legend_below(fig, ax_nat)
    if not drawn[1]:
        ax_rob.text(0.5, 0.5, "no run logged a validation attack", ha="center", va="center", transform=ax_rob.transAxes)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _validation_attack(runs: Sequence[Run]) -> str:
    steps = {
        r.config.validation.attack_steps for r in runs if r.config is not None and r.config.validation.attack_steps > 0
    }
    return f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD"


def plot_topology_curves(runs: Sequence[Run], path: Path, title: str, k: int = 10) -> Path | None:
    groups = groups_of(runs)
    colours = _group_colours(list(groups))
    fig = _figure(11, 4.2)
    ax_kl, ax_knn = fig.subplots(1, 2)
    drawn = False
    for group, members in groups.items():
        label = group + (f" ({len(members)} seeds)" if len(members) > 1 else "")
        drawn |= _curve(ax_kl, members, "val_graph_kl", colours[group], label)
        _curve(ax_knn, members, "val_knn_overlap", colours[group], label)
    if not drawn:
        return None
    ax_kl.set_title("graph KL to the reference model (lower = closer)", fontsize=10)
    ax_kl.set_ylabel("graph KL (natural validation images)")
    ax_knn.set_title(f"kNN overlap with the reference model (k={k}, higher = closer)", fontsize=10)
    ax_knn.set_ylabel("mean Jaccard overlap")
    for ax in (ax_kl, ax_knn):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _integer_epochs(ax)
    _legend_below(fig, ax_kl)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _natural(run: Run) -> float:
    """The last checkpoint's natural accuracy (NaN, drawn as nothing, for an entry that lacks it)."""
    value = run.entry.last.natural_acc
    return float("nan") if value is None else value


def plot_tradeoff(runs: Sequence[Run], path: Path, title: str) -> Path | None:
    """Test natural vs robust accuracy, one point per adversarially trained run, λ written by each."""
    adversarial = [r for r in runs if r.method != "standard"]
    shared = [
        a
        for a in (adversarial[0].entry.last.robust_acc if adversarial else {})
        if all(a in r.entry.last.robust_acc for r in adversarial)
    ]
    # An attack every run reports, so runs evaluated more cheaply (e.g. an ablation) still appear.
    attack = primary_attack(runs) if not shared else ("worst" if "worst" in shared else shared[0])
    points = [r for r in runs if r.method != "standard" and attack in r.entry.last.robust_acc]
    if attack is None or len(points) < 2:  # no attack: no run has a point (JSON keys are never None)
        return None
    colours = _group_colours(list(groups_of(runs)))  # the same colour per run as in the curves
    fig = _figure(8.4, 5.0)
    ax = fig.subplots()
    for group, members in groups_of(points).items():
        nat = [100 * _natural(r) for r in members]
        rob = [100 * r.entry.last.robust_acc[attack] for r in members]
        x, y = statistics.fmean(nat), statistics.fmean(rob)
        spread = len(members) > 1
        first = members[0]
        seeds = f", {len(members)} seeds" if spread else ""
        ax.errorbar(
            [x],
            [y],
            xerr=[statistics.stdev(nat)] if spread else None,
            yerr=[statistics.stdev(rob)] if spread else None,
            fmt="D" if first.is_train else "o",
            color=colours[group],
            markersize=6,
            capsize=3,
            zorder=3,
            label=f"{group} ({first.method}{' + TRAIN' if first.is_train else ''}{seeds})",
        )
        ax.annotate(lambda_label(first.entry), (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    ax.set_xlabel("natural accuracy (%)")
    ax.set_ylabel(f"robust accuracy, {attack.upper()} (%)")
    ax.set_title(title + "; mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    _min_span(ax, 4.0)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    return _save(fig, path)


def plot_lambda_ablation(runs: Sequence[Run], path: Path, title: str) -> Path | None:
    """Natural and robust test accuracy against the TRAIN weight λ, mean ± std over seeds."""
    method, weights = lambda_ablation(runs)
    if not weights:
        return None
    members = [r for rs in weights.values() for r in rs]
    attacks = [a for a in members[0].entry.last.robust_acc if all(a in r.entry.last.robust_acc for r in members)]
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    positions = list(range(len(weights)))
    # natural accuracy, then up to two attacks (fewer when the runs share fewer)
    for key, label, colour in [(None, "natural", "tab:blue")] + [
        (a, a.upper(), c) for a, c in zip(attacks[:2], ("tab:red", "tab:orange"), strict=False)
    ]:
        means, stds = [], []
        for rs in weights.values():
            values = [100 * (_natural(r) if key is None else r.entry.last.robust_acc[key]) for r in rs]
            mean, std = mean_std(values)
            means.append(mean)
            stds.append(std or 0.0)
        ax.errorbar(positions, means, yerr=stds, color=colour, marker="o", capsize=4, label=label)
    ax.set_xticks(positions, [f"{w:g}" + (" (base)" if w == 0 else "") for w in weights])
    seeds = sorted({len(rs) for rs in weights.values()})
    ax.set_xlabel(
        f"TRAIN weight λ = λ_nat = λ_adv ({method}; "
        f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per point)"
    )
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def _legend_below(fig: Figure, ax: Axes) -> None:
    """One legend for the figure, under the axes: inside, it covered the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8)


def _min_span(ax: Axes, points: float) -> None:
    """Widen both axes to at least `points` percentage points, so a difference of a few tenths (often
    seed noise) does not fill the whole picture."""
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        low, high = get()
        if high - low < points:
            middle = (low + high) / 2
            set_(middle - points / 2, middle + points / 2)
