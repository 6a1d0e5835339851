"""The attack-name grammar (`pgd-20`, `cw-30-r5`, `autoattack`, `aa:apgd-ce+apgd-t`, ...), torch-free.

Config validation checks attack names with `parse_attack` without building an attack, so this module
imports nothing heavy; evaluate.build_attack turns a parsed name into an attack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TopoatError

# The attacks pyautoattack can run, by its own names, and its versions.
COMPONENTS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand")

AUTOATTACK_VERSIONS = {"autoattack": "standard", "autoattack-plus": "plus", "autoattack-rand": "rand"}
ATTACK_HELP = (
    "fgsm, pgd-K, pgd-K-rR (R restarts), cw-K, cw-K-rR; AutoAttack: autoattack (standard version), "
    "autoattack-plus, autoattack-rand, one of " + ", ".join(COMPONENTS) + ", or a list such as aa:apgd-ce+apgd-t"
)


@dataclass(frozen=True)
class AttackSpec:
    """A parsed attack name. `kind` is fgsm, pgd, cw or autoattack; AutoAttack has a `version` or a
    custom list of `components`."""

    name: str
    kind: str
    steps: int = 1
    restarts: int = 1
    version: str | None = None
    components: tuple[str, ...] = ()

    @property
    def is_autoattack(self) -> bool:
        return self.kind == "autoattack"


def parse_attack(spec: str) -> AttackSpec:
    """Check an attack name without building anything; unknown names are a one-line TopoatError."""
    s = str(spec).strip().lower()
    if s == "fgsm":
        return AttackSpec(s, "fgsm")
    m = re.fullmatch(r"(pgd|cw)-(\d+)(?:-r(\d+))?", s)
    if m:
        steps, restarts = int(m.group(2)), int(m.group(3) or 1)
        if steps < 1 or restarts < 1:
            raise TopoatError(f"attack {spec!r}: steps and restarts must be >= 1")
        return AttackSpec(s, m.group(1), steps, restarts)
    if s in AUTOATTACK_VERSIONS:
        return AttackSpec(s, "autoattack", version=AUTOATTACK_VERSIONS[s])
    body = s[len("aa:") :] if s.startswith("aa:") else s
    parts = tuple(body.split("+"))
    if all(p in COMPONENTS for p in parts) and (s.startswith("aa:") or len(parts) == 1):
        if len(set(parts)) != len(parts):
            raise TopoatError(f"attack {spec!r} lists an AutoAttack attack twice")
        return AttackSpec(s, "autoattack", components=parts)
    if s.startswith("aa:"):
        bad = [p for p in parts if p not in COMPONENTS]
        raise TopoatError(
            f"attack {spec!r}: unknown AutoAttack attack {', '.join(map(repr, bad))}; use {', '.join(COMPONENTS)}"
        )
    raise TopoatError(f"unknown attack {spec!r}; use {ATTACK_HELP}")
