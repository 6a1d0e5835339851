"""Attacks by name (`pgd-20`, `cw-30-r5`, `autoattack`, `aa:apgd-ce+apgd-t`, ...): each attack family
registers how its names parse and how a parsed name builds the attack (`register_attack`).

Config validation checks attack names with `parse_attack` without building an attack; `build_attack`
turns a name into an attack for an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import TopoatError
from ..registry import ATTACKS

if TYPE_CHECKING:
    from torch import nn

    from .base import Attack


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name. `kind` is its family's name (fgsm, pgd, cw, autoattack, ...); PGD-style
    attacks have `steps` and `restarts`, AutoAttack a `version` or a custom list of `components`."""

    name: str
    kind: str
    steps: int = 1
    restarts: int = 1
    version: str | None = None
    components: tuple[str, ...] = ()

    @property
    def is_autoattack(self) -> bool:
        return self.kind == "autoattack"


@dataclass(frozen=True)
class AttackFamily:
    """What an attack family's names stand for.

    `parse(name)` gets the lower-cased name and returns its AttackSpec (kind = the family's name), None
    for a name not of this family, or raises TopoatError for one of this family's names that is wrong.
    `build(spec, model, norm, eps, step_size, seed)` makes the attack: `step_size` is the evaluation's
    PGD-style step (eps / 4 unless set), `seed` the evaluation's seed for random starts. `help` describes
    the names for error messages."""

    name: str
    parse: Callable[[str], AttackSpec | None]
    build: Callable[[AttackSpec, nn.Module, str, float, float, int], Attack]
    help: str


def register_attack(family: AttackFamily) -> AttackFamily:
    """Make a family's names usable in `evaluation.attacks` and `topoat eval --attacks`: call it once, in
    the module that defines the attack."""
    return ATTACKS.register(family.name, family)


def attack_help() -> str:
    """Every registered family's names, for messages."""
    return "; ".join(family.help for family in ATTACKS)


def parse_attack(spec: str) -> AttackSpec:
    """Check an attack name without building anything; unknown names are a one-line TopoatError."""
    s = str(spec).strip().lower()
    for family in ATTACKS:
        parsed = family.parse(s)
        if parsed is not None:
            return parsed
    raise TopoatError(f"unknown attack {spec!r}; use {attack_help()}")


def build_attack(
    spec: str, model: nn.Module, norm: str, eps: float, step_size: float | None = None, seed: int = 0
) -> Attack:
    """An attack from its name, e.g. `pgd-20`, `pgd-50-r5`, `cw-30`, `fgsm`, `autoattack`,
    `aa:apgd-ce+apgd-t`. PGD-style attacks step `step_size` (default eps / 4); `seed` fixes random starts."""
    parsed = parse_attack(spec)
    step = step_size if step_size is not None else eps / 4
    return ATTACKS.get(parsed.kind).build(parsed, model, norm, eps, step, seed)
