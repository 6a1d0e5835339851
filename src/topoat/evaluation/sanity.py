"""Checks that expose gradient masking (Athalye et al. 2018; Carlini et al. 2019, "On evaluating
adversarial robustness"). When one fails, the model's robust accuracies are not to be trusted: the
attacks are being fooled (vanishing or shattered gradients), not the model made robust.

1. Robust accuracy does not rise as eps grows.
2. It nears 0 at a large eps (8 x eps; L-inf capped at 1, where every image is reachable).
3. More PGD steps, or more restarts, never raise it.
4. A transfer attack (PGD on a standard model, replayed on this one) is weaker than white-box PGD.
5. AutoAttack is not above PGD.

Attacks draw random starts, so "does not rise" allows a fixed tolerance: TOLERANCE_FRACTION of the
images, and at least TOLERANCE_IMAGES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import cast

from torch import Tensor, nn

from ..attacks import PGD
from ..attacks.names import parse_attack
from ..attacks.pgd import Norm
from ..attacks.threat import ThreatModel
from ..errors import TopoatError
from .accuracy import EvalResult, evaluate

TOLERANCE_FRACTION = 0.005
TOLERANCE_IMAGES = 1
LARGE_EPS_FACTOR = 8.0
LARGE_EPS_MAX_ACC = 0.05  # "nears 0": at most 5 % robust accuracy at the large eps
MORE_STEPS_FACTOR = 5
MORE_RESTARTS = 5
DEFAULT_AUTOATTACK = "apgd-ce"  # the cheapest AutoAttack component, when the evaluation ran none


def tolerance(n: int) -> float:
    return max(TOLERANCE_IMAGES / max(n, 1), TOLERANCE_FRACTION)


def large_eps(norm: str, eps: float) -> float:
    return min(1.0, LARGE_EPS_FACTOR * eps) if norm == "Linf" else LARGE_EPS_FACTOR * eps


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str


@dataclass
class SanityReport:
    n: int
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "FAIL"]

    def format(self) -> str:
        tol = tolerance(self.n)
        images = round(tol * self.n)
        lines = [
            f"sanity checks against gradient masking ({self.n} images; tolerance "
            f"{100 * tol:.2f} % = {images} image{'' if images == 1 else 's'}):"
        ]
        width = max(len(c.name) for c in self.checks)
        lines += [f"  {c.status}  {c.name.ljust(width)}  {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "n": self.n,
            "tolerance": tolerance(self.n),
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
        }


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _merge(known: EvalResult | None, new: EvalResult) -> EvalResult:
    """One result holding the per-sample outcomes of both (same images, same model)."""
    if known is None or known.natural is None:
        return new
    merged = EvalResult(
        new.n,
        new.natural_acc,
        dict(new.robust_acc),
        new.natural,
        dict(new.correct),
        dict(new.evaluated),
        dict(new.seconds),
        list(new.notes),
    )
    for name in known.correct:
        merged.correct.setdefault(name, known.correct[name])
        merged.evaluated.setdefault(name, known.evaluated[name])
        merged.robust_acc.setdefault(name, known.robust_acc[name])
    return merged


def sanity_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    step_size: float | None = None,
    steps: int = 20,
    reference: nn.Module | None = None,
    autoattack: str | None = None,
    autoattack_n: int | None = None,
    known: EvalResult | None = None,
    batch_size: int = 500,
    progress: bool = True,
    seed: int = 0,
) -> SanityReport:
    """Run the five checks on (x, y) (on the model's device). `known` is an evaluation of the same
    images whose attacks are reused rather than run again; `reference` is a standard model for the
    transfer attack (skipped without one); `autoattack` names the AutoAttack spec to compare with PGD
    (default: the one in `known`, else apgd-ce)."""
    threat = ThreatModel(norm, eps, "sanity checks")
    if threat.eps == 0:
        raise TopoatError("sanity checks need eps > 0")
    if steps < 1:
        raise TopoatError("sanity checks need steps >= 1")
    n = x.shape[0]
    tol = tolerance(n)
    ratio = threat.step(step_size) / eps
    base = f"pgd-{steps}"
    more_steps, restarts = f"pgd-{MORE_STEPS_FACTOR * steps}", f"pgd-{steps}-r{MORE_RESTARTS}"
    if autoattack is None:
        ran = [a for a in (known.correct if known is not None else {}) if _is_autoattack(a)]
        autoattack = ran[0] if ran else DEFAULT_AUTOATTACK
    parse_attack(autoattack)

    todo = [a for a in (base, more_steps, restarts, autoattack) if known is None or a not in known.correct]
    custom: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
    if reference is not None:
        # cast: the norm is a str in this public API; PGD rejects any but Linf and L2 (ValueError)
        transfer = PGD(reference, eps, ratio * eps, steps, norm=cast(Norm, norm))
        custom["transfer"] = transfer

    def attacked(
        attacks: list[str],
        e: float,
        custom: dict[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
        autoattack_n: int | None = None,
    ) -> EvalResult:
        """(x, y) evaluated under `attacks` at radius `e`, the step size scaled with it."""
        return evaluate(
            model,
            x,
            y,
            attacks,
            eps=e,
            step_size=ratio * e,
            norm=norm,
            batch_size=batch_size,
            progress=progress,
            seed=seed,
            custom=custom,
            autoattack_n=autoattack_n,
        )

    at_eps = _merge(known, attacked(todo, eps, custom=custom, autoattack_n=autoattack_n))
    report = SanityReport(n)

    # 1 and 2: accuracy against eps
    big = large_eps(norm, eps)
    grid = sorted({eps / 4, eps / 2, 2 * eps, big} - {eps})
    curve = {0.0: at_eps.natural_acc, eps: at_eps.robust_acc[base]}
    for e in grid:
        curve[e] = attacked([base], e).robust_acc[base]
    points = sorted(curve.items())
    rises = [(a, b) for (a, va), (b, vb) in pairwise(points) if vb > va + tol]
    text = f"{base}: " + ", ".join(f"eps {e:g} {_pct(v)}" for e, v in points)
    if rises:
        text += "; rises from eps " + ", ".join(f"{a:g} to {b:g}" for a, b in rises)
    report.checks.append(Check("accuracy falls as eps grows", "FAIL" if rises else "PASS", text))
    report.checks.append(
        Check(
            "accuracy nears 0 at a large eps",
            "PASS" if curve[big] <= LARGE_EPS_MAX_ACC else "FAIL",
            f"{base} at eps {big:g}: {_pct(curve[big])} (must be <= {_pct(LARGE_EPS_MAX_ACC)})",
        )
    )

    # 3: more steps and restarts
    acc = at_eps.robust_acc
    worse = [a for a in (more_steps, restarts) if acc[a] > acc[base] + tol]
    report.checks.append(
        Check(
            "more steps and restarts never help",
            "FAIL" if worse else "PASS",
            f"{base} {_pct(acc[base])}; {more_steps} {_pct(acc[more_steps])}, {restarts} {_pct(acc[restarts])} "
            f"(must be <= {_pct(acc[base] + tol)})",
        )
    )

    # 4: transfer from a standard model
    if reference is None:
        report.checks.append(Check("transfer is weaker than white-box", "SKIP", "no reference (standard) model given"))
    else:
        t = acc["transfer"]
        report.checks.append(
            Check(
                "transfer is weaker than white-box",
                "PASS" if t >= acc[base] - tol else "FAIL",
                f"{base} transferred from the reference {_pct(t)} (must be >= white-box {base} "
                f"{_pct(acc[base])} - {_pct(tol)})",
            )
        )

    # 5: AutoAttack against PGD, on the images AutoAttack ran on
    mask = at_eps.evaluated[autoattack]
    on = at_eps.accuracy_on(mask)
    m = int(mask.sum())
    tol_m = tolerance(m)
    where = "" if m == n else f" (on the {m} images AutoAttack ran on)"
    report.checks.append(
        Check(
            "AutoAttack is not above PGD",
            "PASS" if on[autoattack] <= on[base] + tol_m else "FAIL",
            f"{autoattack} {_pct(on[autoattack])} (must be <= {base} {_pct(on[base])} + {_pct(tol_m)}){where}",
        )
    )
    return report


def _is_autoattack(name: str) -> bool:
    try:
        return parse_attack(name).is_autoattack
    except TopoatError:  # a custom attack's name
        return False
