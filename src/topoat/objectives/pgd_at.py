"""PGD-AT (Madry et al. 2018): cross-entropy on PGD examples made from a uniform random start."""
from __future__ import annotations

import torch.nn.functional as F

from ..config import AttackConfig
from .base import Objective, ObjectiveOutput, cross_entropy_per_sample


class PGDAT(Objective):
    name = "pgd-at"

    def __init__(self, attack: AttackConfig):
        self.attack = attack

    def attack_loss(self, model, x, y):
        return lambda logits: cross_entropy_per_sample(logits, y)

    def loss(self, model, x, y, x_adv) -> ObjectiveOutput:
        logits, feats = model(x_adv, return_features=True)
        loss = F.cross_entropy(logits.float(), y)
        return ObjectiveOutput(loss, logits_adv=logits, features_adv=feats, x_adv=x_adv,
                               parts={"ce_adv": loss.detach()})
