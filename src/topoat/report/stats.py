"""Numbers over seeds: mean ± sample standard deviation, and TRAIN runs paired with their base method's
run of the same seed (the same seed means the same initialisation and data order, so the difference
cancels most seed noise)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .collect import Run, base_group, groups_of


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    if len(values) == 1:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values)


def format_spread(values: Sequence[float | None], scale: float = 100.0, digits: int = 2) -> str:
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
    skipped: list[tuple[Run, Run, str]] = field(default_factory=list)  # same seed, trained differently: why


# What must match for "TRAIN minus its base method" to measure the added term alone: the data (and its
# subset), the model, the base method, the training attack, the schedule, the seed and the test images.
COMPARED_SECTIONS = ("seed", "data", "model", "method", "attack", "optim")


def paired_with_base(runs: Sequence[Run]) -> list[PairedGroups]:
    """Every TRAIN group that has a base-method group sharing at least one seed with it; a pair of the same
    seed that was trained differently (other data, epochs, model, attack...) is skipped, with the reason."""
    groups = groups_of(runs)
    paired = []
    for group, members in groups.items():
        if not members[0].is_train:
            continue
        base = base_group(group, members, groups)
        if base is None:
            continue
        base_by_seed = {r.seed: r for r in groups[base]}
        pairs, skipped = [], []
        for r in members:
            if r.seed not in base_by_seed:
                continue
            why = incomparable(r, base_by_seed[r.seed])
            if why is None:
                pairs.append((r, base_by_seed[r.seed]))
            else:
                skipped.append((r, base_by_seed[r.seed], why))
        if pairs or skipped:
            paired.append(PairedGroups(group, base, pairs, skipped))
    return paired


def incomparable(run: Run, base: Run) -> str | None:
    """Why `run` minus `base` would not measure `run`'s added term alone (None: it would): the settings
    they differ in, read from their configs and results. Runs without a readable config are taken as
    comparable on what their results say."""
    differences = _differences(run.threat, base.threat, "threat")
    differences += _differences(run.entry.n_eval, base.entry.n_eval, "test images")
    if run.config is not None and base.config is not None:
        from ..schema import to_dict

        mine, theirs = to_dict(run.config), to_dict(base.config)
        differences += _differences(
            {k: mine.get(k) for k in COMPARED_SECTIONS}, {k: theirs.get(k) for k in COMPARED_SECTIONS}, ""
        )
        differences += _differences(run.config.evaluation.seed, base.config.evaluation.seed, "evaluation.seed")
    if not differences:
        return None
    shown = differences[:4] + ([f"{len(differences) - 4} more"] if len(differences) > 4 else [])
    return ", ".join(shown)


def _differences(a: object, b: object, key: str) -> list[str]:
    """'key: a vs b' for every leaf where two config-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for k in dict.fromkeys([*a, *b]):
            found += _differences(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        return found
    return [] if a == b else [f"{key} {a!r} vs {b!r}"]


def accuracy(run: Run, attack: str | None) -> float:
    """Natural accuracy (attack None) or robust accuracy under `attack`; NaN if the run lacks it."""
    last = run.entry.last
    value = last.natural_acc if attack is None else last.robust_acc.get(attack)
    return math.nan if value is None else float(value)
