"""The natural/robust frontier: is a TRAIN (or distillation) point above the trade-off its base method
already offers with its own knob?

Each base method's curve is drawn from its runs without a topology or distillation term, one point per
setting of its knob (TRADES and MART: beta; PGD-AT: natural_weight). Its *frontier* is the upper-right
envelope of those points (the settings no other setting beats in both natural and robust accuracy),
joined by straight lines. A point's *natural gain* is its natural accuracy minus the frontier's at the
point's robust accuracy; its *robust gain* is its robust accuracy minus the frontier's at its natural
accuracy. Above 0, the point lies beyond what the base method reaches by trading one for the other.

Beyond the frontier's range the frontier is extended flat (the most robust setting's natural accuracy
for a more robust point, the most natural setting's for a less robust one), never extrapolated: a point
must beat the base method's nearest end, and the row says it lies outside. Taking the envelope of noisy
points favours the base method, so the gains err against TRAIN. Gains are taken per seed (the point
against the envelope of the same seed's base runs, which share its teacher and data order), then
averaged. A point is placed only against base runs scored on as many test images as itself (the
fixed subsets are nested, so the count names the images): a point scored on the first 500 images is
left out of a curve scored on 1,000, and the section says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import write_figure_atomic
from ..objectives import Knob
from ..registry import KERNELS, METHODS
from ..runs.results import added_term, as_entry, kernel_name
from ..table_format import markdown_table

if TYPE_CHECKING:
    from .collect import Run

HEADLINE_ATTACK = "aa:apgd-ce+apgd-t"


def method_knob(method: str) -> Knob | None:
    """A registered base method's own trade-off knob (None for an unknown method or one without a knob)."""
    return METHODS.get(method).knob if method in METHODS else None


def knob_value(run: Run) -> float | None:
    """The base method's own trade-off setting of a run (None for methods without one)."""
    knob = method_knob(run.method)
    if knob is None:
        return None
    config = as_entry(run.entry).method_config or {}
    if knob.key in config:
        return float(config[knob.key])
    # results written before the knob was recorded: the method's default
    return float(getattr(METHODS.get(run.method).config(), knob.key))


def is_regularized(run: Run) -> bool:
    return as_entry(run.entry).is_regularized


def scores(run: Run, attack: str, checkpoint: str = "best") -> tuple[float, float] | None:
    """(robust, natural) accuracy of one run in [0, 1]: its best-by-validation checkpoint (else the
    last), under `attack`; None if that attack was not run."""
    part = as_entry(run.entry).scores_or_last(checkpoint)
    robust = part.robust_acc.get(attack)
    if robust is None or part.natural_acc is None:
        return None
    return float(robust), float(part.natural_acc)


def scored_on(run: Run, attack: str, checkpoint: str = "best") -> tuple[int | None, int | None]:
    """How many test images a run's natural and `attack` accuracies were taken on (None: not recorded)."""
    entry = as_entry(run.entry)
    return entry.n_eval, entry.scores_or_last(checkpoint).n_of(attack, entry.n_eval)


def envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (robust, natural) points no other point beats in both, by robust accuracy ascending (natural
    accuracy then descends)."""
    kept: list[tuple[float, float]] = []
    for rob, nat in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not kept or nat > kept[-1][1]:
            kept.append((rob, nat))
    return kept[::-1]


def frontier_at(curve: Sequence[tuple[float, float]], value: float, axis: str = "robust") -> tuple[float, bool]:
    """The frontier of `curve`'s (robust, natural) points at `value`: its natural accuracy at that robust
    accuracy (axis "robust") or its robust accuracy at that natural accuracy (axis "natural"); and whether
    `value` lies outside the frontier's range (then the nearest end's value, flat)."""
    env = envelope(curve)
    if axis == "robust":
        xs, ys = [p[0] for p in env], [p[1] for p in env]
    else:
        xs, ys = [p[1] for p in env][::-1], [p[0] for p in env][::-1]
    outside = value < xs[0] or value > xs[-1]
    return float(np.interp(value, xs, ys)), outside  # np.interp holds the end values outside the range


@dataclass
class FrontierPoint:
    method: str
    group: str
    label: str
    natural: list[float] = field(default_factory=list)  # per seed, in points
    robust: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)  # natural gain per seed
    robust_gains: list[float] = field(default_factory=list)
    outside: bool = False
    seeds: list[int] = field(default_factory=list)
    kernel: str | None = None  # the graph kernel of a TRAIN point (None: distillation only)


@dataclass
class BaseCurve:
    method: str
    knob: str
    settings: list[tuple[float, str]]  # (knob value, group), in knob order
    by_seed: dict[int | None, list[tuple[float, float]]]  # seed -> (robust, natural) points, in points
    mean_points: list[tuple[float, float, float, float, float, int]]  # knob, robust and natural mean/std, seeds


@dataclass
class Frontier:
    attack: str
    checkpoint: str
    curves: dict[str, BaseCurve]
    points: list[FrontierPoint]
    # runs left out because their scores are on other test images than their base curve's
    left_out: list[str] = field(default_factory=list)


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def frontier(runs: Sequence, attack: str = HEADLINE_ATTACK, checkpoint: str = "best") -> Frontier | None:
    """The base curves of every method with at least two knob settings under `attack`, and every
    regularized group of those methods placed against them. None when no method has a curve."""
    curves: dict[str, BaseCurve] = {}
    points: dict[str, FrontierPoint] = {}
    images_by_seed: dict[str, dict[int | None, set]] = {}  # method -> seed -> the curve's image counts
    left_out: list[str] = []
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    for method, symbol in ((spec.name, spec.knob.symbol) for spec in METHODS if spec.knob is not None):
        images: dict[int | None, set] = {}
        curve = _base_curve(method, symbol, groups, attack, checkpoint, images)
        if curve is not None:
            curves[method], images_by_seed[method] = curve, images
    for g, rs in groups.items():
        method = rs[0].method
        if method not in curves or not is_regularized(rs[0]):
            continue
        point = _place(g, rs, curves[method], images_by_seed[method], attack, checkpoint, left_out)
        if point.gains:
            points[g] = point
    if not curves:
        return None
    return Frontier(attack, checkpoint, curves, list(points.values()), left_out)


def _base_curve(
    method: str, symbol: str, groups: dict[str, list], attack: str, checkpoint: str, images: dict[int | None, set]
) -> BaseCurve | None:
    """`method`'s curve over its knob settings, None with fewer than two; `images` gathers, per seed, the
    test image counts its points were scored on."""
    base = {
        g: rs
        for g, rs in groups.items()
        if rs[0].method == method and not is_regularized(rs[0]) and any(scores(r, attack, checkpoint) for r in rs)
    }
    settings = sorted(
        {(value, g) for g, rs in base.items() if (value := knob_value(rs[0])) is not None}
    )  # never None: `method` has a knob
    if len({v for v, _ in settings}) < 2:
        return None
    by_seed: dict[int | None, list[tuple[float, float]]] = {}
    mean_points: list[tuple[float, float, float, float, float, int]] = []
    for value, g in settings:
        scored = {r.seed: scores(r, attack, checkpoint) for r in base[g]}
        per_seed = {s: v for s, v in scored.items() if v is not None}
        for s, (rob, nat) in per_seed.items():
            by_seed.setdefault(s, []).append((100 * rob, 100 * nat))
        for r in base[g]:
            if r.seed in per_seed:
                images.setdefault(r.seed, set()).add(scored_on(r, attack, checkpoint))
        robs = [100 * v[0] for v in per_seed.values()]
        nats = [100 * v[1] for v in per_seed.values()]
        mean_points.append((value, statistics.fmean(robs), _std(robs), statistics.fmean(nats), _std(nats), len(robs)))
    return BaseCurve(method, symbol, settings, by_seed, mean_points)


def _place(
    group: str,
    rs: list,
    base: BaseCurve,
    images: dict[int | None, set],
    attack: str,
    checkpoint: str,
    left_out: list[str],
) -> FrontierPoint:
    """A regularized group's seeds placed against their seed's base curve; a seed scored on other test
    images than its curve goes to `left_out` instead."""
    entry = as_entry(rs[0].entry)
    kernel = kernel_name(entry.topology) if entry.topology else None
    point = FrontierPoint(base.method, group, added_term(entry), kernel=kernel)
    for r in sorted(rs, key=lambda r: (r.seed is None, r.seed)):
        s = scores(r, attack, checkpoint)
        curve = base.by_seed.get(r.seed)
        if s is None or curve is None or len(curve) < 2:
            continue
        counts = {c for c in images[r.seed] if None not in c}  # unrecorded counts match any
        n_nat, n_attack = scored_on(r, attack, checkpoint)
        if None not in (n_nat, n_attack) and counts and counts != {(n_nat, n_attack)}:
            curve_counts = " or ".join(f"{a}/{b}" for a, b in sorted(counts))
            left_out.append(
                f"{r.name}: natural/{attack} on {n_nat}/{n_attack} test images, its base curve on {curve_counts}"
            )
            continue
        rob, nat = 100 * s[0], 100 * s[1]
        natural_there, outside_r = frontier_at(curve, rob, "robust")
        robust_there, outside_n = frontier_at(curve, nat, "natural")
        point.natural.append(nat)
        point.robust.append(rob)
        point.gains.append(nat - natural_there)
        point.robust_gains.append(rob - robust_there)
        point.seeds.append(r.seed)
        point.outside |= outside_r
    return point


def _fmt(values: Sequence[float], signed: bool = False) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.2f}"


def gain_rows(f: Frontier) -> tuple[list[str], list[list[str]]]:
    header = ["method", "run", "added term", "seeds", "natural", "robust", "natural gain", "robust gain"]
    rows = []
    for method, curve in f.curves.items():
        for value, robm, robs, natm, nats, seeds in curve.mean_points:
            spread = lambda m, s: f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"
            rows.append(
                [
                    method,
                    f"base {curve.knob}={value:g}",
                    "-",
                    str(seeds),
                    spread(natm, nats),
                    spread(robm, robs),
                    "-",
                    "-",
                ]
            )
        for p in sorted((p for p in f.points if p.method == method), key=lambda p: -statistics.fmean(p.gains)):
            gain = _fmt(p.gains, signed=True) + (" (outside)" if p.outside else "")
            rows.append(
                [
                    method,
                    p.group,
                    p.label,
                    str(len(p.seeds)),
                    _fmt(p.natural),
                    _fmt(p.robust),
                    gain,
                    _fmt(p.robust_gains, signed=True),
                ]
            )
    return header, rows


def plot_frontier(f: Frontier, path: Path, title: str) -> Path:
    """Natural (y) against robust (x) accuracy: each base curve as a line through its seed means, each
    regularized group as a labelled point, mean ± one std over seeds in both directions."""
    # A bare Figure (saved through the Agg canvas), not pyplot: drawing never switches the user's backend.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    methods = list(f.curves)
    fig = Figure(figsize=(7.0 * len(methods), 5.6))
    axes = fig.subplots(1, len(methods), squeeze=False)
    kernels = KERNELS.names()  # a kernel's marker follows its place in the registry, so a new one has its own
    for ax, method in zip(axes[0], methods, strict=True):
        curve = f.curves[method]
        pts = curve.mean_points  # in knob order: the path the knob traces
        ax.errorbar(
            [p[1] for p in pts],
            [p[3] for p in pts],
            xerr=[0 if math.isnan(p[2]) else p[2] for p in pts],
            yerr=[0 if math.isnan(p[4]) else p[4] for p in pts],
            color="black",
            marker="o",
            capsize=3,
            label=f"{method}, its own {curve.knob}",
        )
        for value, rob, _, nat, _, _ in curve.mean_points:
            ax.annotate(
                f"{curve.knob}={value:g}",
                (rob, nat),
                textcoords="offset points",
                xytext=(5, -12),
                fontsize=8,
                color="black",
            )
        for i, p in enumerate(pt for pt in f.points if pt.method == method):
            marker = _marker(p.kernel, kernels)
            rob, nat = statistics.fmean(p.robust), statistics.fmean(p.natural)
            ax.errorbar(
                [rob],
                [nat],
                xerr=[_std(p.robust) if len(p.robust) > 1 else 0],
                yerr=[_std(p.natural) if len(p.natural) > 1 else 0],
                marker=marker,
                linestyle="none",
                capsize=3,
                markersize=8,
                color=colormaps["tab10"](i % 10),
                label=f"{p.label} ({len(p.seeds)} seed{'s' if len(p.seeds) > 1 else ''}): "
                f"gain {statistics.fmean(p.gains):+.2f}",
            )
        ax.set_xlabel(f"robust accuracy, {f.attack} (%)")
        ax.set_ylabel("natural accuracy (%)")
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=1, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return write_figure_atomic(fig, path, dpi=130, bbox_inches="tight")


KERNEL_MARKERS = "s^DvP<>hp*"


def _marker(kernel: str | None, kernels: list[str]) -> str:
    """A TRAIN point's marker by its kernel; "X" for distillation alone."""
    if kernel is None:
        return "X"
    place = kernels.index(kernel) if kernel in kernels else len(kernels)
    return KERNEL_MARKERS[place % len(KERNEL_MARKERS)]


def frontier_section(f: Frontier) -> str:
    """The markdown text under a report's frontier heading: what the gains mean, then the gain table."""
    header, rows = gain_rows(f)
    which = "best-by-validation" if f.checkpoint == "best" else "last"
    return "\n".join(
        [
            f"Natural against robust accuracy ({f.attack}), {which} checkpoints, in percent, mean ± sample std over "
            "seeds. The base method's frontier is the upper-right envelope of its own settings (that seed's runs), "
            "joined by straight lines. Natural gain: a run's natural accuracy minus the frontier's at the run's "
            "robust accuracy; robust gain: its robust accuracy minus the frontier's at its natural accuracy; per "
            "seed, then mean ± std. Above 0 the run lies beyond the trade-off the base method already offers. "
            "*(outside)*: the run is more (or less) robust than every base setting, and is compared with the "
            "nearest end of the frontier, held flat.",
            "",
            markdown_table(header, rows),
        ]
        + (
            ["", "Left out, scored on other test images than their base curve (no like-for-like gain):"]
            + [f"- {line}" for line in f.left_out]
            if f.left_out
            else []
        )
    )
