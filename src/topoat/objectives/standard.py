"""Standard training: cross-entropy on natural inputs (how the TRAIN teacher is trained)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Objective, ObjectiveOutput


class Standard(Objective):
    name = "standard"
    makes_adversarial = False

    def loss(self, model, x, y, x_adv=None) -> ObjectiveOutput:
        logits, feats = model(x, return_features=True)
        loss = F.cross_entropy(logits.float(), y)
        return ObjectiveOutput(loss, logits_nat=logits, features_nat=feats, parts={"ce": loss.detach()})
