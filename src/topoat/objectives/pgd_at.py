"""PGD-AT (Madry et al. 2018): cross-entropy on PGD examples made from a uniform random start."""
from __future__ import annotations

import torch.nn.functional as F

from ..config import AttackConfig
from .base import Objective, ObjectiveOutput, pgd_from_config


class PGDAT(Objective):
    name = "pgd-at"

    def __init__(self, attack: AttackConfig):
        self.attack = attack

    def __call__(self, model, x, y) -> ObjectiveOutput:
        x_adv = pgd_from_config(model, self.attack)(x, y)
        logits, feats = model(x_adv, return_features=True)
        loss = F.cross_entropy(logits.float(), y)
        return ObjectiveOutput(loss, logits_adv=logits, features_adv=feats, x_adv=x_adv,
                               parts={"ce_adv": loss.detach()})
