"""The objective interface: a base AT method is one module that maps (model, x, y) to its loss.

It returns, besides the loss, what the topology term needs (the student's natural and adversarial
representations, when its own forward passes already produced them), so TRAIN can wrap any method
without a second copy of the method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from ..attacks import PGD
from ..config import AttackConfig


@dataclass
class ObjectiveOutput:
    loss: Tensor
    logits_nat: Optional[Tensor] = None
    logits_adv: Optional[Tensor] = None
    features_nat: Optional[Tensor] = None
    features_adv: Optional[Tensor] = None
    x_adv: Optional[Tensor] = None
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached loss components for logging


class Objective:
    """`objective(model, x, y) -> ObjectiveOutput`; the model is in train mode when called."""

    name = "objective"
    makes_adversarial = True

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError


def pgd_from_config(model: nn.Module, attack: AttackConfig) -> PGD:
    return PGD(model, eps=attack.eps, step_size=attack.step_size, steps=attack.steps, norm=attack.norm,
               random_start=attack.random_start, eval_mode=attack.eval_mode)
