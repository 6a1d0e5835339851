"""The threat model: the ball, in a norm and of a radius, that an attack may move each image in.

Made once from what the user gave (a config's `attack.norm` and `attack.eps`, the command line, a
checkpoint's record) and passed on whole: it is checked when made, so nothing downstream checks again."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass
from typing import Any

from ..errors import TopoatError

NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class ThreatModel:
    """Radius `eps` in the `norm` ("Linf" or "L2") around images in [0, 1]. A bad norm or radius is a
    one-line TopoatError when the object is made, starting with `where` (the config section or the
    command the values came from)."""

    norm: str = "Linf"
    eps: float = 8 / 255
    where: InitVar[str] = "threat model"

    def __post_init__(self, where: str) -> None:
        problem = _problem(self.norm, self.eps)
        if problem is not None:
            raise TopoatError(f"{where}: {problem}")
        object.__setattr__(self, "eps", float(self.eps))

    def step(self, step_size: float | None = None) -> float:
        """An iterative attack's step: `step_size` when given, else the customary eps / 4."""
        return step_size if step_size is not None else self.eps / 4

    def __str__(self) -> str:
        return f"{self.norm} eps {self.eps:.6g}"


def _problem(norm: Any, eps: Any) -> str | None:
    if norm not in NORMS:
        return f"norm must be Linf or L2, got {norm!r}"
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        return f"eps must be a finite number >= 0, got {eps!r}"
    if norm == "Linf" and eps > 1:  # images are in [0, 1]: such a ball holds every image (8 meant for 8/255?)
        return f"Linf eps must be <= 1 (images are in [0, 1]), got {eps:g}"
    return None
