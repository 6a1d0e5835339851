"""The report's tables: results per group (mean ± std over seeds), TRAIN minus its base method per seed,
and the topology metrics. Markdown for report.md; the topology table also as text for `topoat analyze`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..runs.results import CheckpointScores
from ..table_format import markdown_table, text_table
from .collect import SEED_SUFFIX, Run, groups_of, lambda_label, robust_attacks
from .stats import PairedGroups, accuracy, format_signed_spread, format_spread, mean_std, paired_with_base

if TYPE_CHECKING:
    from .measurements import Analysis

METRIC_HEADERS = {
    "graph_kl": "graph KL (natural)",
    "graph_kl_adv": "graph KL (adversarial)",
    "knn_overlap": "kNN overlap@{k}",
    "trustworthiness": "trustworthiness@{k}",
}


def format_metric(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if name.startswith("graph_kl") else f"{value:.3f}"


def topology_rows(metrics: dict[str, dict], k: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the topology table (one row per named model)."""
    from ..evaluation.graph_metrics import TOPOLOGY_METRICS

    header = ["model"] + [METRIC_HEADERS[m].format(k=k) for m in TOPOLOGY_METRICS] + ["natural", "robust"]
    rows = [
        [name]
        + [format_metric(m, values.get(m)) for m in TOPOLOGY_METRICS]
        + [f"{100 * values['natural_acc']:.2f}", f"{100 * values['robust_acc']:.2f}"]
        for name, values in metrics.items()
    ]
    return header, rows


def format_topology_table(metrics: dict[str, dict], k: int = 10) -> str:
    """Plain-text table of `analysis.analyze_checkpoints` results (accuracies in percent)."""
    return text_table(*topology_rows(metrics, k))


def _seeds_text(members: Sequence[Run]) -> str:
    return ", ".join(str(r.seed) for r in members if r.seed is not None) or "-"


def results_section(runs: Sequence[Run], key: str = "") -> str:
    """Markdown results table: one row per group, mean ± std over its seeds (percent). `key` "best":
    the best-by-validation checkpoints' results, with their epochs instead of training time."""
    which = key or "last"
    attacks = list(dict.fromkeys(a for r in runs for a in (r.scores(which) or CheckpointScores()).robust_acc))
    with_seeds = any(r.seed is not None for r in runs)
    header = (
        ["run", "method", "TRAIN"]
        + (["seeds"] if with_seeds else [])
        + (["epoch"] if key else [])
        + ["natural"]
        + attacks
        + ([] if key else ["train s"])
    )
    rows = []
    for group, members in groups_of(runs).items():
        entries = [r.scores(which) or CheckpointScores() for r in members]
        if all(e.natural_acc is None for e in entries):
            continue
        first = members[0]
        row = [group, first.method, lambda_label(first.entry) if first.is_train else "-"]
        row += [_seeds_text(members)] if with_seeds else []
        row += [", ".join(str(e.epoch or "?") for e in entries)] if key else []
        row += [format_spread([e.natural_acc for e in entries])]
        row += [format_spread([e.robust_acc.get(a) for e in entries]) for a in attacks]
        row += [] if key else [format_spread([r.entry.train_seconds for r in members], scale=1, digits=0)]
        rows.append(row)
    return markdown_table(header, rows) if rows else ""


def fewer_images_notes(runs: Sequence[Run]) -> list[str]:
    """Attacks evaluated on a smaller fixed subset (AutoAttack is slow), as results.json records them."""
    notes: dict[str, str] = {}
    for r in runs:
        for a, k in r.entry.last.n_by_attack.items():
            notes.setdefault(a, f"`{a}` was run on a fixed {k} of the {r.entry.n_eval or '?'} test images.")
    return list(notes.values())


def skipped_pairs_notes(runs: Sequence[Run]) -> list[str]:
    """One line per TRAIN run left out of "TRAIN minus its base method", saying what differs."""
    return [
        f"`{r.name}` is not compared with `{b.name}`: they were not trained alike ({why})."
        for p in paired_with_base(runs)
        for r, b, why in p.skipped
    ]


def paired_section(runs: Sequence[Run]) -> str:
    """TRAIN minus its base method, per seed, then mean ± std over seeds: one column per accuracy that
    either run of a pair reports ('-' where the other lacks it); '' when no TRAIN run has a comparable base."""
    paired = [p for p in paired_with_base(runs) if p.pairs]
    if not paired:
        return ""
    attacks = robust_attacks(r.entry for p in paired for r, _ in p.pairs)
    rows = [row for p in paired for row in _paired_rows(p, [None, *attacks])]
    return markdown_table(["difference", "seed", "Δ natural"] + [f"Δ {a}" for a in attacks], rows)


def _paired_rows(p: PairedGroups, columns: Sequence[str | None]) -> list[list[str]]:
    diffs = {c: [accuracy(r, c) - accuracy(b, c) for r, b in p.pairs] for c in columns}
    rows = [
        [f"{p.group} − {p.base}", "- (one run each)" if r.seed is None else str(r.seed)]
        + ["-" if math.isnan(diffs[c][i]) else f"{100 * diffs[c][i]:+.2f}" for c in columns]
        for i, (r, _) in enumerate(p.pairs)
    ]
    if len(p.pairs) > 1:
        rows.append(
            [f"**{p.group} − {p.base}**", f"mean ± std ({len(p.pairs)})"]
            + ["-" if any(math.isnan(d) for d in diffs[c]) else format_signed_spread(diffs[c]) for c in columns]
        )
    return rows


def topology_section(runs: Sequence[Run], analysis: Analysis, k: int) -> str:
    """Markdown topology table: one row per analysed group, each metric mean ± std over its seeds."""
    from ..evaluation.graph_metrics import TOPOLOGY_METRICS

    groups = groups_of([r for r in runs if r.name in analysis.metrics])
    with_seeds = any(r.seed is not None for r in runs)
    header = (
        ["run", "reference"]
        + (["seeds"] if with_seeds else [])
        + [METRIC_HEADERS[m].format(k=k) for m in TOPOLOGY_METRICS]
    )
    rows = []
    for group, members in groups.items():
        values = [analysis.metrics[r.name] for r in members]
        references = sorted({SEED_SUFFIX.sub(r"\g<group>", str(v["reference"])) for v in values})
        cells = []
        for m in TOPOLOGY_METRICS:
            mean, std = mean_std([v[m] for v in values])
            cells.append(format_metric(m, mean) + ("" if std is None else f" ± {format_metric(m, std)}"))
        rows.append([group, ", ".join(references)] + ([_seeds_text(members)] if with_seeds else []) + cells)
    return markdown_table(header, rows)
