"""AutoAttack (Croce & Hein 2020) behind our `attack(x, y) -> x_adv` call.

The attacks are the authors' code from `pyautoattack`; this module only configures it: the version or
list of attacks, a fixed seed, quiet logging, and datasets with fewer than 10 classes (the authors'
targeted attacks assume 9 target classes, and their DLR losses need 3, or for targeted DLR 4, logits).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TopoatError
from .base import Attack
from .names import AttackFamily, AttackSpec, register_attack
from .threat import ThreatModel

# The attacks pyautoattack can run, by its own names, and its versions.
COMPONENTS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "rand")
AUTOATTACK_VERSIONS = {"autoattack": "standard", "autoattack-plus": "plus", "autoattack-rand": "rand"}

# pyautoattack's standard and plus versions attack 9 target classes (all of CIFAR-10's wrong ones).
DEFAULT_TARGET_CLASSES = 9


def plan_for_classes(attacks: Sequence[str], num_classes: int) -> tuple[list[str], int, list[str]]:
    """The attacks that can run on a `num_classes`-way model, their number of target classes, and notes
    saying what was changed and why. Raises TopoatError when nothing is left to run."""
    notes: list[str] = []
    planned: list[str] = []
    for a in attacks:
        if a in ("apgd-t", "apgd-dlr") and num_classes < 3:
            notes.append(f"{a} dropped: its DLR loss needs at least 3 classes (the model has {num_classes})")
            continue
        if a == "apgd-t" and num_classes == 3:
            # the targeted DLR loss reads the 4th-largest logit; untargeted DLR is the closest that runs
            if "apgd-dlr" in attacks:
                notes.append(
                    "apgd-t dropped: targeted DLR needs at least 4 classes (the model has 3); apgd-dlr runs instead"
                )
                continue
            notes.append("apgd-t replaced by apgd-dlr: targeted DLR needs at least 4 classes (the model has 3)")
            a = "apgd-dlr"
        if a not in planned:
            planned.append(a)
    targets = min(DEFAULT_TARGET_CLASSES, num_classes - 1)
    targeted = [a for a in planned if a in ("apgd-t", "fab-t")]
    if targeted and targets < DEFAULT_TARGET_CLASSES:
        noun = "target class" if targets == 1 else "target classes"
        notes.append(
            f"{', '.join(targeted)}: {targets} {noun} (all wrong classes of a "
            f"{num_classes}-class model) instead of {DEFAULT_TARGET_CLASSES}"
        )
    if not planned:
        raise TopoatError(f"AutoAttack: none of {', '.join(attacks)} can run on a {num_classes}-class model")
    return planned, targets, notes


class _Collect(logging.Handler):
    """Keeps pyautoattack's warnings (randomness, zero gradients, ...) for the result instead of stderr."""

    def __init__(self, sink: AutoAttack):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "classes" in message:  # its class-count warnings: plan_for_classes already adapted and noted
            return
        self.sink._note(f"pyautoattack: {message}")


class AutoAttack(Attack):
    """`AutoAttack(model, eps=8/255)(x, y) -> x_adv` with the authors' `pyautoattack`.

    `version`: "standard" (APGD-CE, APGD-T, FAB-T, Square: the headline number), "plus" or "rand"; or
    `attacks`, a custom list of COMPONENTS, which then run with the standard version's settings
    (1 restart for APGD and FAB, 9 target classes, 5000 Square queries), so `["apgd-ce", "apgd-t"]` is
    the first half of the standard version. `seed` fixes the attacks' random starts (pyautoattack
    otherwise seeds from the clock). The caller's random state is left untouched.

    `notes` lists what was adapted (fewer classes) and the warnings pyautoattack raised.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "Linf",
        version: str = "standard",
        attacks: Sequence[str] | None = None,
        seed: int = 0,
        eval_mode: bool = True,
    ):
        super().__init__(model, eval_mode)
        threat = ThreatModel(norm, eps, "AutoAttack")
        if attacks is not None:
            unknown = [a for a in attacks if a not in COMPONENTS]
            if unknown or not attacks:
                raise TopoatError(
                    f"AutoAttack: unknown attack {', '.join(unknown) or '(empty list)'}; use {', '.join(COMPONENTS)}"
                )
            version = "custom"
        elif version not in VERSIONS:
            raise TopoatError(f"AutoAttack: version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.eps, self.norm, self.version, self.seed = threat.eps, threat.norm, version, int(seed)
        self.attacks = None if attacks is None else list(attacks)
        self.notes: list[str] = []
        self._note_keys: set[str] = set()

    def _note(self, text: str) -> None:
        key = re.sub(r"\d+", "N", text)  # "12 points with zero gradient" and "3 points ..." are one note
        if key not in self._note_keys:
            self._note_keys.add(key)
            self.notes.append(text)

    def _build(self, num_classes: int, device: torch.device) -> Any:  # pyautoattack's AutoAttack, untyped
        from pyautoattack import AutoAttack as AuthorsAutoAttack

        adversary = AuthorsAutoAttack(
            self.model,
            attacks=self.attacks,
            device=device,
            eps=self.eps,
            norm=self.norm,
            seed=self.seed,
            version=self.version,
        )
        adversary.verbose = False
        if self.version == "custom":
            # the standard version's settings; pyautoattack's constructor defaults (5 APGD restarts) are
            # meant to be overridden for custom lists
            adversary.apgd.n_restarts = 1
            adversary.fab.n_restarts = 1
            adversary.apgd_targeted.n_restarts = 1
            adversary.square.n_queries = 5000
        planned, targets, notes = plan_for_classes(adversary.attacks_to_run, num_classes)
        adversary.attacks_to_run = planned
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_target_classes = targets
        for note in notes:
            self._note(note)
        return adversary

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[0] == 0 or self.eps == 0:
            return x.detach().clone()
        with torch.no_grad():
            num_classes = int(self.model(x[:1]).shape[1])
        logger = logging.getLogger("auto-attack")
        handler = _Collect(self)
        propagate, level = logger.propagate, logger.level
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            # pyautoattack reseeds the global generators; keep the caller's random stream as it was
            with torch.random.fork_rng(devices=devices), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                adversary = self._build(num_classes, x.device)
                x_adv, _ = adversary.run_standard_evaluation(x.detach(), y.detach(), batch_size=x.shape[0])
            for w in caught:
                self._note(f"pyautoattack: {w.message}")
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
            logger.setLevel(level)
        return x_adv


def parse_autoattack(name: str) -> AttackSpec | None:
    """A version (`autoattack`, `autoattack-plus`, ...), one component (`apgd-ce`) or a list (`aa:apgd-ce+apgd-t`)."""
    if name in AUTOATTACK_VERSIONS:
        return AttackSpec(name, "autoattack", version=AUTOATTACK_VERSIONS[name])
    listed = name.startswith("aa:")
    parts = tuple(name.removeprefix("aa:").split("+"))
    if all(p in COMPONENTS for p in parts) and (listed or len(parts) == 1):
        if len(set(parts)) != len(parts):
            raise TopoatError(f"attack {name!r} lists an AutoAttack attack twice")
        return AttackSpec(name, "autoattack", components=parts)
    if listed:
        bad = [p for p in parts if p not in COMPONENTS]
        raise TopoatError(
            f"attack {name!r}: unknown AutoAttack attack {', '.join(map(repr, bad))}; use {', '.join(COMPONENTS)}"
        )
    return None


def build_autoattack(spec: AttackSpec, model: nn.Module, norm: str, eps: float, step: float, seed: int) -> Attack:
    """AutoAttack is parameter-free (no step size) and draws its random starts from `seed`."""
    return AutoAttack(
        model, eps, norm=norm, version=spec.version or "standard", attacks=list(spec.components) or None, seed=seed
    )


register_attack(
    AttackFamily(
        "autoattack",
        parse_autoattack,
        build_autoattack,
        "AutoAttack: autoattack (standard version), autoattack-plus, autoattack-rand, one of "
        + ", ".join(COMPONENTS)
        + ", or a list such as aa:apgd-ce+apgd-t",
    )
)
