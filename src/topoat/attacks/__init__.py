"""Attacks with one call shape, `attack(x, y) -> x_adv`, over models that take [0, 1] inputs."""

from .autoattack import AutoAttack
from .base import Attack, eval_mode
from .pgd import CW, FGSM, PGD, ascent_step, margin_loss, maximize, project, random_init

__all__ = [
    "Attack",
    "AutoAttack",
    "CW",
    "FGSM",
    "PGD",
    "ascent_step",
    "eval_mode",
    "margin_loss",
    "maximize",
    "project",
    "random_init",
]
