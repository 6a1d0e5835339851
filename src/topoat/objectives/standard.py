"""Standard training: cross-entropy on natural inputs (how the TRAIN teacher is trained)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import AttackConfig, MethodConfig
from .base import MethodSpec, Objective, ObjectiveOutput, register_method


class Standard(Objective):
    name = "standard"
    makes_adversarial = False

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None = None) -> ObjectiveOutput:
        logits, feats = model(x, return_features=True)
        loss = F.cross_entropy(logits.float(), y)
        return ObjectiveOutput(loss, logits_nat=logits, features_nat=feats, parts={"ce": loss.detach()})


def build_standard(settings: MethodConfig, attack: AttackConfig) -> Standard:
    return Standard()


register_method(MethodSpec("standard", build_standard, adversarial=False))
