"""Attacks with one call shape, `attack(x, y) -> x_adv`, over models that take [0, 1] inputs.

Each attack family registers its names (`register_attack`, names.py), so `build_attack("pgd-20", ...)`
and an evaluation's attack list find it."""

from __future__ import annotations

from .autoattack import AutoAttack
from .base import Attack, eval_mode
from .names import AttackFamily, AttackSpec, build_attack, parse_attack, register_attack
from .pgd import CW, FGSM, PGD, ascent_step, margin_loss, maximize, project, random_init

__all__ = [
    "Attack",
    "AttackFamily",
    "AttackSpec",
    "AutoAttack",
    "CW",
    "FGSM",
    "PGD",
    "ascent_step",
    "build_attack",
    "eval_mode",
    "margin_loss",
    "maximize",
    "project",
    "parse_attack",
    "random_init",
    "register_attack",
]
