"""Numbers over seeds: mean ± sample standard deviation, and TRAIN runs paired with their base method's
run of the same seed (the same seed means the same initialisation and data order, so the difference
cancels most seed noise)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from .collect import Run, base_group, groups_of


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def format_spread(values: Sequence[Optional[float]], scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of the scaled values, missing values (None, NaN) left out; '-' if none remain."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return "-"
    mean, std = mean_std([scale * v for v in present])
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_signed_spread(values: Sequence[float]) -> str:
    """A difference in points of accuracy, its sign always written: '+1.25 ± 0.40'."""
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


@dataclass
class PairedGroups:
    """A TRAIN group, its base-method group, and their runs matched by seed."""

    group: str
    base: str
    pairs: list[tuple[Run, Run]]  # (TRAIN run, base run of the same seed)


def paired_with_base(runs: Sequence[Run]) -> list[PairedGroups]:
    """Every TRAIN group that has a base-method group sharing at least one seed with it."""
    groups = groups_of(runs)
    paired = []
    for group, members in groups.items():
        if not members[0].is_train:
            continue
        base = base_group(group, members, groups)
        if base is None:
            continue
        base_by_seed = {r.seed: r for r in groups[base]}
        pairs = [(r, base_by_seed[r.seed]) for r in members if r.seed in base_by_seed]
        if pairs:
            paired.append(PairedGroups(group, base, pairs))
    return paired


def accuracy(run: Run, attack: Optional[str]) -> float:
    """Natural accuracy (attack None) or robust accuracy under `attack`; NaN if the run lacks it."""
    value = run.entry.get("natural_acc") if attack is None else run.entry.get("robust_acc", {}).get(attack)
    return math.nan if value is None else float(value)
