"""The report of finished runs: results and topology tables, matplotlib pictures, report.md.

`write_report([study_or_run_folder, ...], out)` reads each folder's results.json (a study's, holding
several runs, or a single run's), analyses every run's last checkpoint against its reference (standard)
model on a fixed held-out test set (see `topoat.analysis`) and writes into `out`:
  report.md                    results (mean ± std over seeds), paired TRAIN - base differences per
                               seed, topology metrics, the pictures
  analysis.json                the topology metrics, per run
  figures/tsne.png             natural and adversarial t-SNE maps, one column per model
  figures/accuracy.png         validation natural and robust accuracy per epoch
  figures/topology.png         validation graph KL and kNN overlap to the reference per epoch
  figures/tradeoff.png         test natural vs robust accuracy, one point per run (several AT runs only)

Pictures are drawn on `matplotlib.figure.Figure` directly (Agg canvas), so importing topoat never
switches the user's pyplot backend.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import TopoatError

SEED_SUFFIX = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
MAX_TSNE_COLUMNS = 6  # wider than this, the maps get too small to read
METRIC_HEADERS = {
    "graph_kl": "graph KL (natural)",
    "graph_kl_adv": "graph KL (adversarial)",
    "knn_overlap": "kNN overlap@{k}",
    "trustworthiness": "trustworthiness@{k}",
}


# -- runs ------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run of a results.json: its entry, its folder (config.yaml, metrics.jsonl) and checkpoint."""
    name: str
    entry: dict
    folder: Path
    checkpoint: Path
    threat: dict
    config: object = None  # TrainConfig, or None when the folder has no readable config.yaml
    reference: Optional[Path] = None  # checkpoint of the model its topology is compared with
    reference_name: Optional[str] = None

    @property
    def group(self) -> str:
        m = SEED_SUFFIX.match(self.name)
        return m.group("group") if m else self.name

    @property
    def seed(self) -> Optional[int]:
        m = SEED_SUFFIX.match(self.name)
        return int(m.group("seed")) if m else None

    @property
    def is_train(self) -> bool:
        return bool(self.entry.get("topology"))

    @property
    def method(self) -> str:
        return self.entry.get("method", "?")

    def epochs(self) -> list[dict]:
        path = self.folder / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash; the others are still worth plotting
        return lines


def lambda_label(entry: dict) -> str:
    topo = entry.get("topology")
    if not topo:
        return "λ=0"
    nat, adv = topo.get("lambda_nat", 0), topo.get("lambda_adv", 0)
    return f"λ={nat:g}" if nat == adv else f"λnat={nat:g}, λadv={adv:g}"


def primary_attack(runs: Sequence[Run]) -> Optional[str]:
    """The robust accuracy a single-number view uses: the per-sample worst case if there is one,
    else the first attack evaluated."""
    names: list[str] = []
    for r in runs:
        names += [a for a in r.entry.get("robust_acc", {}) if a not in names]
    if "worst" in names:
        return "worst"
    return names[0] if names else None


def collect_runs(run_dirs: Sequence[str | Path]) -> tuple[list[Run], dict]:
    """All runs of the given study or run folders, in order; plus the document-level facts."""
    from .config import load_config
    from .runs import read_results

    runs: list[Run] = []
    info: dict = {"datasets": [], "failed": {}, "sources": []}
    for folder in map(Path, run_dirs):
        if not folder.is_dir():
            raise TopoatError(f"report: {folder} is not a folder")
        results = folder / "results.json"
        if not results.is_file():
            raise TopoatError(f"report: {folder} has no results.json (train or study into it first)")
        doc = read_results(results)
        info["sources"].append(str(folder))
        if doc.get("dataset") not in info["datasets"]:
            info["datasets"].append(doc.get("dataset"))
        info["failed"].update(doc.get("failed", {}))
        for name, entry in doc["runs"].items():
            checkpoint = (folder / entry.get("checkpoint", "last.pt")).resolve()
            run_folder = checkpoint.parent
            cfg = None
            if (run_folder / "config.yaml").is_file():
                try:
                    cfg = load_config(run_folder / "config.yaml")
                except TopoatError:
                    cfg = None  # written by another topoat version: tables still work, analysis defaults
            if any(r.name == name for r in runs):
                name = f"{folder.name}/{name}"
                if any(r.name == name for r in runs):
                    raise TopoatError(f"report: run {name!r} given twice")
            runs.append(Run(name, entry, run_folder, checkpoint, doc.get("threat", {}), cfg))
    if len(info["datasets"]) > 1:
        raise TopoatError(f"report: the runs use different datasets ({', '.join(map(str, info['datasets']))})")
    return runs, info


def _configured_reference(run: Run) -> Optional[Path]:
    cfg = run.config
    if cfg is None:
        return None
    path = cfg.validation.reference or (cfg.topology.teacher if cfg.topology is not None else None)
    return Path(path) if path else None


def assign_references(runs: list[Run], reference: Optional[str | Path] = None) -> None:
    """Each run's reference model: `reference` if given; else the one its config names
    (validation.reference, or a TRAIN run's teacher), matched to a run of the report where possible;
    else a standard run of the report, of the same seed if there is one."""
    by_checkpoint = {r.checkpoint: r for r in runs}
    by_folder = {r.folder.name: r for r in runs}
    standard = [r for r in runs if r.method == "standard" and not r.is_train]
    for run in runs:
        target: Optional[Run] = None
        path: Optional[Path] = None
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


# -- numbers ---------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def format_spread(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_metric(name: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if name.startswith("graph_kl") else f"{value:.3f}"


def groups_of(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    return groups


def base_group(group: str, members: Sequence[Run], groups: dict[str, list[Run]]) -> Optional[str]:
    """The base-method group a TRAIN group is compared with: same method, no topology term; the one
    whose name prefixes the TRAIN group's if several."""
    method = members[0].method
    candidates = [g for g, rs in groups.items() if g != group and rs[0].method == method and not rs[0].is_train]
    prefixed = [g for g in candidates if group.startswith(g + "-")]
    if prefixed:
        return max(prefixed, key=len)
    return candidates[0] if len(candidates) == 1 else None


# -- text tables -----------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def topology_rows(metrics: dict[str, dict], k: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the topology table (one row per named model)."""
    from .analysis import TOPOLOGY_METRICS

    header = ["model"] + [METRIC_HEADERS[m].format(k=k) for m in TOPOLOGY_METRICS] + ["natural", "robust"]
    rows = [[name] + [format_metric(m, values.get(m)) for m in TOPOLOGY_METRICS]
            + [f"{100 * values['natural_acc']:.2f}", f"{100 * values['robust_acc']:.2f}"]
            for name, values in metrics.items()]
    return header, rows


def format_topology_table(metrics: dict[str, dict], k: int = 10) -> str:
    """Plain-text table of `analysis.analyze_checkpoints` results (accuracies in percent)."""
    return text_table(*topology_rows(metrics, k))


def results_section(runs: Sequence[Run], key: str = "") -> str:
    """Markdown results table: one row per group, mean ± std over its seeds (percent)."""
    groups = groups_of(runs)
    attacks: list[str] = []
    for r in runs:
        attacks += [a for a in _entry(r, key).get("robust_acc", {}) if a not in attacks]
    with_seeds = any(r.seed is not None for r in runs)
    header = (["run", "method", "TRAIN"] + (["seeds"] if with_seeds else []) + (["epoch"] if key else [])
              + ["natural"] + attacks + ([] if key else ["train s"]))
    rows = []
    for group, members in groups.items():
        entries = [_entry(r, key) for r in members]
        if not any("natural_acc" in e for e in entries):
            continue
        seeds = ", ".join(str(r.seed) for r in members if r.seed is not None) or "-"
        epochs = [", ".join(str(e.get("epoch", "?")) for e in entries)] if key else []
        rows.append([group, members[0].method, lambda_label(members[0].entry) if members[0].is_train else "-"]
                    + ([seeds] if with_seeds else []) + epochs
                    + [format_spread([e.get("natural_acc") for e in entries])]
                    + [format_spread([e.get("robust_acc", {}).get(a) for e in entries]) for a in attacks]
                    + ([] if key else [format_spread([r.entry.get("train_seconds") for r in members], scale=1,
                                                     digits=0)]))
    return markdown_table(header, rows) if rows else ""


def fewer_images_notes(runs: Sequence[Run]) -> list[str]:
    """Attacks evaluated on a smaller fixed subset (AutoAttack is slow), as results.json records them."""
    notes: dict[str, str] = {}
    for r in runs:
        for a, k in r.entry.get("n_by_attack", {}).items():
            notes.setdefault(a, f"`{a}` was run on a fixed {k} of the {r.entry.get('n_eval', '?')} test images.")
    return list(notes.values())


def _entry(run: Run, key: str) -> dict:
    """The run's results entry, or a sub-entry of it (e.g. the best-by-validation checkpoint's)."""
    if not key:
        return run.entry
    sub = run.entry.get(key)
    return sub if isinstance(sub, dict) else {}


def paired_section(runs: Sequence[Run]) -> str:
    """TRAIN minus its base method, per seed (the same seed means the same data order and init): one
    column per accuracy that both runs of a pair report."""
    groups = groups_of(runs)
    pairs: list[tuple[str, str, list[tuple[Run, Run]]]] = []
    for group, members in groups.items():
        if not members[0].is_train:
            continue
        base = base_group(group, members, groups)
        if base is None:
            continue
        base_by_seed = {r.seed: r for r in groups[base]}
        matched = [(r, base_by_seed[r.seed]) for r in members if r.seed in base_by_seed]
        if matched:
            pairs.append((group, base, matched))
    if not pairs:
        return ""
    attacks: list[str] = []
    for _, _, matched in pairs:
        for r, _ in matched:
            attacks += [a for a in r.entry.get("robust_acc", {}) if a not in attacks]

    def accuracy(run: Run, column: Optional[str]) -> float:
        value = run.entry.get("natural_acc") if column is None else run.entry.get("robust_acc", {}).get(column)
        return math.nan if value is None else float(value)

    columns: list[Optional[str]] = [None] + attacks
    rows = []
    for group, base, matched in pairs:
        diffs: dict[Optional[str], list[float]] = {c: [] for c in columns}
        for r, b in matched:
            cells = []
            for c in columns:
                d = accuracy(r, c) - accuracy(b, c)
                diffs[c].append(d)
                cells.append("-" if math.isnan(d) else f"{100 * d:+.2f}")
            rows.append([f"{group} − {base}", "- (one run each)" if r.seed is None else str(r.seed)] + cells)
        if len(matched) > 1:
            rows.append([f"**{group} − {base}**", f"mean ± std ({len(matched)})"]
                        + ["-" if any(math.isnan(d) for d in diffs[c]) else _signed_spread(diffs[c])
                           for c in columns])
    return markdown_table(["difference", "seed", "Δ natural"] + [f"Δ {a}" for a in attacks], rows)


def _signed_spread(values: Sequence[float]) -> str:
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


# -- pictures --------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def class_colours(num_classes: int):
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(num_classes - 1, 1)) for i in range(num_classes)]


def plot_tsne(panels: Sequence[dict], labels, class_names: Optional[Sequence[str]], path: Path,
              attack: str, title: str) -> Path:
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
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], markersize=6, label=names[c])
               for c in range(num_classes)]
    if num_classes <= 20:
        fig.legend(handles=handles, loc="outside right center", title="class", fontsize=8, title_fontsize=9,
                   frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _curve(ax, members: Sequence[Run], key: str, colour, label: str, scale: float = 1.0, style: str = "-") -> bool:
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


def _group_colours(groups: Sequence[str]) -> dict[str, object]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(groups) <= 10 else colormaps["tab20"]
    return {g: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy_curves(runs: Sequence[Run], path: Path, title: str) -> Optional[Path]:
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
        ax_rob.text(0.5, 0.5, "no run logged a validation attack", ha="center", va="center",
                    transform=ax_rob.transAxes)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _validation_attack(runs: Sequence[Run]) -> str:
    steps = {r.config.validation.attack_steps for r in runs if r.config is not None
             and r.config.validation.attack_steps > 0}
    return f"PGD-{steps.pop()}" if len(steps) == 1 else "PGD"


def plot_topology_curves(runs: Sequence[Run], path: Path, title: str, k: int = 10) -> Optional[Path]:
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


def plot_tradeoff(runs: Sequence[Run], path: Path, title: str) -> Optional[Path]:
    """Test natural vs robust accuracy, one point per adversarially trained run, λ written by each."""
    adversarial = [r for r in runs if r.method != "standard"]
    shared = [a for a in (adversarial[0].entry.get("robust_acc", {}) if adversarial else {})
              if all(a in r.entry.get("robust_acc", {}) for r in adversarial)]
    # An attack every run reports, so runs evaluated more cheaply (e.g. an ablation) still appear.
    attack = primary_attack(runs) if not shared else ("worst" if "worst" in shared else shared[0])
    points = [r for r in runs if r.method != "standard" and attack in r.entry.get("robust_acc", {})]
    if len(points) < 2:
        return None
    colours = _group_colours(list(groups_of(runs)))  # the same colour per run as in the curves
    fig = _figure(8.4, 5.0)
    ax = fig.subplots()
    for group, members in groups_of(points).items():
        nat = [100 * r.entry["natural_acc"] for r in members]
        rob = [100 * r.entry["robust_acc"][attack] for r in members]
        x, y = statistics.fmean(nat), statistics.fmean(rob)
        spread = len(members) > 1
        first = members[0]
        seeds = f", {len(members)} seeds" if spread else ""
        ax.errorbar([x], [y], xerr=[statistics.stdev(nat)] if spread else None,
                    yerr=[statistics.stdev(rob)] if spread else None, fmt="D" if first.is_train else "o",
                    color=colours[group], markersize=6, capsize=3, zorder=3,
                    label=f"{group} ({first.method}{' + TRAIN' if first.is_train else ''}{seeds})")
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


def lambda_ablation(runs: Sequence[Run]) -> tuple[str, dict[float, list[Run]]]:
    """The method whose runs cover the most TRAIN weights (λ_nat = λ_adv; its base method is λ = 0),
    with its runs by λ; empty when no method has three or more."""
    by_method: dict[str, dict[float, list[Run]]] = {}
    for r in runs:
        if r.method == "standard":
            continue
        topo = r.entry.get("topology") or {}
        nat, adv = topo.get("lambda_nat", 0.0), topo.get("lambda_adv", 0.0)
        if nat != adv:
            continue
        by_method.setdefault(r.method, {}).setdefault(float(nat), []).append(r)
    if not by_method:
        return "", {}
    method = max(by_method, key=lambda m: len(by_method[m]))
    weights = by_method[method]
    return (method, dict(sorted(weights.items()))) if len(weights) >= 3 else ("", {})


def plot_lambda_ablation(runs: Sequence[Run], path: Path, title: str) -> Optional[Path]:
    """Natural and robust test accuracy against the TRAIN weight λ, mean ± std over seeds."""
    method, weights = lambda_ablation(runs)
    if not weights:
        return None
    members = [r for rs in weights.values() for r in rs]
    attacks = [a for a in members[0].entry.get("robust_acc", {}) if all(a in r.entry.get("robust_acc", {})
                                                                         for r in members)]
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    positions = list(range(len(weights)))
    for key, label, colour in [(None, "natural", "tab:blue")] + [(a, a.upper(), c) for a, c in
                                                                 zip(attacks[:2], ("tab:red", "tab:orange"))]:
        means, stds = [], []
        for rs in weights.values():
            values = [100 * (r.entry["natural_acc"] if key is None else r.entry["robust_acc"][key]) for r in rs]
            mean, std = mean_std(values)
            means.append(mean)
            stds.append(std or 0.0)
        ax.errorbar(positions, means, yerr=stds, color=colour, marker="o", capsize=4, label=label)
    ax.set_xticks(positions, [f"{w:g}" + (" (base)" if w == 0 else "") for w in weights])
    seeds = sorted({len(rs) for rs in weights.values()})
    ax.set_xlabel(f"TRAIN weight λ = λ_nat = λ_adv ({method}; "
                  f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per point)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def _legend_below(fig, ax) -> None:
    """One legend for the figure, under the axes: inside, it covered the curves."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8)


def _min_span(ax, points: float) -> None:
    """Widen both axes to at least `points` percentage points, so a difference of a few tenths (often
    seed noise) does not fill the whole picture."""
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        low, high = get()
        if high - low < points:
            middle = (low + high) / 2
            set_(middle - points / 2, middle + points / 2)


# -- the report ------------------------------------------------------------------------------------
@dataclass
class ReportSettings:
    n: int = 1000  # held-out test images the topology metrics and t-SNE use
    k: int = 10
    attack_steps: int = 20
    tsne_points: int = 1000
    tsne_models: Optional[list[str]] = None  # group or run names; default: see tsne_selection
    graph_size: int = 128
    seed: int = 0
    device: str = "auto"


@dataclass
class Analysis:
    metrics: dict[str, dict] = field(default_factory=dict)  # run name -> topology metrics
    tsne: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    attack: str = ""
    n: int = 0  # held-out images actually used (the test split may be smaller than asked)
    labels: object = None
    class_names: Optional[list[str]] = None


def analyse_runs(runs: Sequence[Run], settings: ReportSettings, echo: Callable[[str], None]) -> Analysis:
    """Topology metrics of every run against its reference, and the t-SNE maps of the first seed."""
    from .analysis import compare, held_out_subset, representations, tsne_map
    from .checkpoint import check_fits_data, load_checkpoint, model_from_record
    from .data import dataset_from_config
    from .runtime import resolve_device

    result = Analysis(attack=f"pgd-{settings.attack_steps}")
    analysable = [r for r in runs if r.checkpoint.is_file() and r.reference is not None and r.config is not None]
    for r in runs:
        if r not in analysable:
            why = ("no checkpoint" if not r.checkpoint.is_file() else
                   "no reference model" if r.reference is None else "no readable config.yaml")
            result.notes.append(f"{r.name}: no topology metrics ({why})")
    if not analysable:
        return result
    device = resolve_device(settings.device)
    first = analysable[0].config
    dataset = dataset_from_config(first.data)
    result.class_names = dataset.class_names
    x, y = held_out_subset(dataset, settings.n, settings.seed, device)
    result.n = int(x.shape[0])
    result.labels = y.cpu().numpy()
    cache = {}

    def reps_of(checkpoint: Path, run: Run):
        if checkpoint not in cache:
            eps = float(run.threat.get("eps", run.config.attack.eps))
            norm = run.threat.get("norm", run.config.attack.norm)
            ckpt = load_checkpoint(checkpoint)  # a --reference made for other data is refused, not compared
            check_fits_data(ckpt, checkpoint, "report: model", dataset.num_classes, dataset.in_channels,
                            dataset.image_size, dataset.name)
            model = model_from_record(ckpt, device).eval()
            cache[checkpoint] = representations(model, x, y, norm=norm, eps=eps,
                                                attack=result.attack, step_size=run.config.evaluation.step_size,
                                                seed=settings.seed)
        return cache[checkpoint]

    for r in analysable:
        echo(f"[report] {r.name}: representations of {x.shape[0]} test images and their {result.attack} examples")
        metrics = compare(reps_of(r.checkpoint, r), reps_of(r.reference, r), settings.k, settings.graph_size)
        result.metrics[r.name] = dict(metrics, reference=r.reference_name)
    # t-SNE: one column per group, its first seed; the reference model first
    seeds = [r.seed for r in analysable]
    first_seed = min((s for s in seeds if s is not None), default=None)
    chosen, left_out = tsne_selection([r for r in analysable if r.seed == first_seed], settings.tsne_models)
    if left_out:
        result.notes.append(f"t-SNE leaves out {', '.join(left_out)} (choose with --tsne-models)")
    m = min(settings.tsne_points, x.shape[0])
    for r in chosen:
        echo(f"[report] {r.name}: t-SNE of {m} natural + {m} adversarial representations")
        reps = reps_of(r.checkpoint, r)
        nat, adv = tsne_map(reps.natural[:m], reps.adversarial[:m], seed=settings.seed)
        mt = result.metrics[r.name]
        is_ref = r.checkpoint == r.reference
        topo_text = ("reference model" if is_ref else
                     f"kNN overlap {mt['knn_overlap']:.2f}, graph KL {mt['graph_kl']:.2g}")
        adv_text = (f"robust acc {100 * reps.robust_acc:.1f}%, "
                    f"graph KL to ref. natural {mt['graph_kl_adv']:.2g}")
        result.tsne.append({"name": r.group if r.seed is not None else r.name, "natural": nat,
                            "adversarial": adv,
                            "subtitle": {"natural": f"acc {100 * reps.natural_acc:.1f}%, {topo_text}",
                                         "adversarial": adv_text}})
    result.labels = result.labels[:m]
    return result


def tsne_selection(runs: Sequence[Run], wanted: Optional[Sequence[str]] = None) -> tuple[list[Run], list[str]]:
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


def topology_section(runs: Sequence[Run], analysis: Analysis, k: int) -> str:
    from .analysis import TOPOLOGY_METRICS

    groups = groups_of([r for r in runs if r.name in analysis.metrics])
    with_seeds = any(r.seed is not None for r in runs)
    header = (["run", "reference"] + (["seeds"] if with_seeds else [])
              + [METRIC_HEADERS[m].format(k=k) for m in TOPOLOGY_METRICS])
    rows = []
    for group, members in groups.items():
        values = [analysis.metrics[r.name] for r in members]
        refs = sorted({SEED_SUFFIX.sub(r"\g<group>", str(v["reference"])) for v in values})
        cells = []
        for m in TOPOLOGY_METRICS:
            vs = [v[m] for v in values]
            mean, std = mean_std(vs)
            cells.append(format_metric(m, mean) + ("" if std is None else f" ± {format_metric(m, std)}"))
        seeds = ", ".join(str(r.seed) for r in members if r.seed is not None) or "-"
        rows.append([group, ", ".join(refs)] + ([seeds] if with_seeds else []) + cells)
    return markdown_table(header, rows)


def write_report(run_dirs: Sequence[str | Path], out: Optional[str | Path] = None, *,
                 reference: Optional[str | Path] = None, settings: Optional[ReportSettings] = None,
                 echo: Callable[[str], None] = print) -> Path:
    """Write report.md, analysis.json and figures/*.png for the runs in `run_dirs` into `out`
    (default: the only run folder given). Returns the path of report.md."""
    from .runs import write_json_atomic

    settings = settings or ReportSettings()
    if not run_dirs:
        raise TopoatError("report: give at least one study or run folder")
    if out is None:
        if len(run_dirs) > 1:
            raise TopoatError("report: several folders given; choose where the report goes with --out")
        out = run_dirs[0]
    out = Path(out)
    if settings.n <= 2 * settings.k or settings.k < 1:
        raise TopoatError(f"report: --n must be more than twice --k (got n={settings.n}, k={settings.k})")
    if settings.attack_steps < 1 or settings.tsne_points < 10:
        raise TopoatError("report: --attack-steps must be >= 1 and --tsne-points >= 10")
    if reference is not None and not Path(reference).is_file():
        raise TopoatError(f"report: reference checkpoint not found: {reference}")
    runs, info = collect_runs(run_dirs)
    if not runs:
        raise TopoatError("report: no runs in " + ", ".join(map(str, run_dirs)))
    assign_references(runs, reference)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TopoatError(f"report: cannot create {out}: {e.strerror}") from None

    analysis = analyse_runs(runs, settings, echo)
    dataset = info["datasets"][0]
    threat = runs[0].threat
    threat_text = f"{threat.get('norm', '?')} eps={threat.get('eps', 0):.4g}"
    figures = out / "figures"
    pictures: list[tuple[str, Path, str]] = []
    if analysis.tsne:
        path = plot_tsne(analysis.tsne, analysis.labels, analysis.class_names, figures / "tsne.png",
                         analysis.attack.upper(),
                         f"t-SNE of penultimate features, {dataset} test images (top) and their "
                         f"{analysis.attack.upper()} examples against each model (bottom), coloured by true class")
        pictures.append(("Representations: natural and adversarial test images", path,
                         "Each column is one model; natural (top) and adversarial (bottom) points share one "
                         "map per model, so an adversarial point inside another class's cluster is one the "
                         "attack moved there. The accuracies in the titles are on the plotted images, from the "
                         "report's own attack (its random start differs from the evaluation's)."))
    title = f"{dataset}, {threat_text}"
    curves = [
        ("Accuracy per epoch", "accuracy.png",
         lambda p: plot_accuracy_curves(runs, p, f"Validation accuracy per epoch ({title})"),
         "Mean over seeds, band ± one std where there are several."),
        ("Topology per epoch", "topology.png",
         lambda p: plot_topology_curves(runs, p, "Topology to the reference (standard) model per epoch, "
                                                 "validation images", settings.k),
         "Logged by runs that know a reference model (a TRAIN run's teacher, or validation.reference)."),
        ("Natural vs robust accuracy", "tradeoff.png",
         lambda p: plot_tradeoff(runs, p, f"Trade-off on the test set ({title})"),
         "One point per adversarially trained run; λ is the TRAIN weight (0 = the base method)."),
        ("TRAIN weight ablation", "lambda.png",
         lambda p: plot_lambda_ablation(runs, p, f"Accuracy against the TRAIN weight ({title})"),
         "Mean ± one std over seeds at each λ; λ = 0 is the base method without TRAIN."),
    ]
    for heading, filename, plot, caption in curves:
        path = plot(figures / filename)
        if path is not None:
            pictures.append((heading, path, caption))
    frontiers = frontier_sections(runs, figures, title)

    document = {"dataset": dataset, "threat": threat, "n": analysis.n, "k": settings.k,
                "attack": analysis.attack, "graph_size": settings.graph_size, "seed": settings.seed,
                "runs": analysis.metrics}
    write_json_atomic(document, out / "analysis.json")
    text = _markdown(runs, info, analysis, pictures, settings, out, dataset, threat_text, frontiers)
    report = out / "report.md"
    report.write_text(text)
    echo(f"report: {report}")
    return report


def frontier_sections(runs: Sequence[Run], figures: Path, title: str) -> list[tuple[str, str, Path]]:
    """(heading, text, picture) of the natural/robust frontier under each attack the base curves ran,
    AutoAttack's APGD-CE + APGD-T first."""
    from .frontier import HEADLINE_ATTACK, frontier, frontier_section, plot_frontier

    scored = [part for r in runs for part in (r.entry, r.entry.get("best") or {})]
    attacks = [HEADLINE_ATTACK] + [a for a in dict.fromkeys(
        a for part in scored for a in part.get("robust_acc", {})) if a not in (HEADLINE_ATTACK, "worst")]
    sections = []
    for attack in attacks:
        f = frontier(runs, attack)
        if f is None or not f.points:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", attack.lower()).strip("-")
        path = plot_frontier(f, figures / f"frontier-{slug}.png", f"Natural/robust frontier under {attack} ({title})")
        sections.append((f"Frontier under {attack}", frontier_section(f, markdown_table), path))
    return sections


def _markdown(runs, info, analysis: Analysis, pictures, settings: ReportSettings, out: Path,
              dataset: str, threat_text: str, frontiers=()) -> str:
    parts = [f"# topoat report: {dataset}, {threat_text}", "",
             "Runs from " + ", ".join(f"`{s}`" for s in info["sources"]) + ". Accuracies in percent on the "
             "fixed test subset each run was evaluated on (last checkpoint); mean ± sample std over seeds "
             "(runs named `NAME-sK`).", "", "## Results", "", results_section(runs)]
    parts += [line for note in fewer_images_notes(runs) for line in ("", note)]
    if any(isinstance(r.entry.get("best"), dict) and "natural_acc" in r.entry["best"] for r in runs):
        parts += ["", "Best checkpoint by validation robust accuracy:", "", results_section(runs, "best")]
    paired = paired_section(runs)
    if paired:
        parts += ["", "### TRAIN minus its base method, per seed", "",
                  "Paired by seed (same initialisation and data order); points of accuracy; `-` where one of "
                  "the pair did not run that attack.",
                  "", paired]
    for name, why in info["failed"].items():
        parts += ["", f"- **{name} failed**: {why}"]
    for heading, text, path in frontiers:
        rel = Path(os.path.relpath(path, out)).as_posix()
        parts += ["", f"## {heading}", "", text, "", f"![{heading}]({rel})"]
    if analysis.metrics:
        parts += ["", "## Topology against the standard model", "",
                  f"On {analysis.n} held-out test images (seed {settings.seed}), penultimate features, each model "
                  f"against its reference (standard) model. Graph KL: the TRAIN loss between cosine affinity graphs "
                  f"of {min(settings.graph_size, analysis.n)} images (0 = identical neighbourhoods; lower is closer); "
                  "adversarial: "
                  f"the model's features of {analysis.attack.upper()} examples made against itself, against the "
                  f"reference's natural graph. kNN overlap: mean Jaccard overlap of the {settings.k} nearest "
                  f"neighbours (1 = identical). Trustworthiness (scikit-learn, k={settings.k}): the reference as "
                  f"the original space, the model as the embedding (1 = no false neighbours; about 0.5 = "
                  f"unrelated). The reference's own row is the sanity check (0, 1, 1).", "",
                  topology_section(runs, analysis, settings.k)]
    for note in analysis.notes:
        parts += ["", f"- {note}"]
    if pictures:
        parts += ["", "## Pictures"]
        for heading, path, caption in pictures:
            rel = Path(os.path.relpath(path, out)).as_posix()
            parts += ["", f"### {heading}", "", f"![{heading}]({rel})", "", caption]
    return "\n".join(parts) + "\n"
