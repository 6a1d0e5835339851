"""PGD-AT (Madry et al. 2018): cross-entropy on PGD examples made from a uniform random start.

With `natural_weight` alpha > 0 the loss mixes in the natural cross-entropy,
(1 - alpha) * CE(f(x'), y) + alpha * CE(f(x), y): PGD-AT's own natural/robust knob, the way beta is
TRADES'. alpha = 0 is Madry et al.'s objective and costs no natural forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import AttackConfig, MethodConfig
from .base import Knob, MethodSpec, Objective, ObjectiveOutput, cross_entropy_per_sample, register_method


@dataclass
class PGDATConfig(MethodConfig):
    # (1 - natural_weight) * CE(f(x'), y) + natural_weight * CE(f(x), y), PGD-AT's own natural/robust
    # knob (0 = Madry et al.)
    natural_weight: float = 0.0

    def checks(self) -> list[tuple[bool, str]]:
        return [(0 <= self.natural_weight <= 1, "method.natural_weight must be in [0, 1]")]


class PGDAT(Objective):
    name = "pgd-at"

    def __init__(self, attack: AttackConfig, natural_weight: float = 0.0):
        self.attack = attack
        self.natural_weight = natural_weight

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda logits: cross_entropy_per_sample(logits, y)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        logits, feats = model(x_adv, return_features=True)
        ce_adv = F.cross_entropy(logits.float(), y)
        out = ObjectiveOutput(
            ce_adv, logits_adv=logits, features_adv=feats, x_adv=x_adv, parts={"ce_adv": ce_adv.detach()}
        )
        if self.natural_weight > 0:
            logits_nat, feats_nat = model(x, return_features=True)
            ce_nat = F.cross_entropy(logits_nat.float(), y)
            out.loss = (1 - self.natural_weight) * ce_adv + self.natural_weight * ce_nat
            out.logits_nat, out.features_nat = logits_nat, feats_nat
            out.parts["ce_nat"] = ce_nat.detach()
        return out


def build_pgd_at(settings: PGDATConfig, attack: AttackConfig) -> PGDAT:
    return PGDAT(attack, settings.natural_weight)


# Rice et al.'s robust_overfitting code attacks with BatchNorm in train mode.
register_method(
    MethodSpec("pgd-at", build_pgd_at, PGDATConfig, attack_eval_mode=False, knob=Knob("natural_weight", "α"))
)
