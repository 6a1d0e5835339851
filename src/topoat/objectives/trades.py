"""TRADES (Zhang et al. 2019), as the authors' code computes it.

    loss = CE(f(x), y) + beta * KL(f(x) || f(x'))       (KL averaged over the batch)

x' ascends KL(f(x) || f(x')) for `attack.steps` steps of `attack.step_size` from x + 0.001 * N(0, I):
the KL's gradient is exactly zero at x' = x, so the attack cannot start at x, and `attack.random_start`
does not apply. The target f(x) of the attack is taken in the attack's BatchNorm mode (eval, as the
reference code does, unless `attack.eval_mode` is false); the target inside the loss is not detached,
as in the reference, so the KL also pulls f(x) towards f(x').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import AttackConfig, MethodConfig
from .base import Knob, MethodSpec, Objective, ObjectiveOutput, register_method

START_STD = 0.001


@dataclass
class TRADESConfig(MethodConfig):
    beta: float = 6.0  # weight of the KL term

    def checks(self) -> list[tuple[bool, str]]:
        return [(math.isfinite(self.beta) and self.beta >= 0, "method.beta must be >= 0 and finite")]


class TRADES(Objective):
    name = "trades"

    def __init__(self, attack: AttackConfig, beta: float = 6.0):
        self.attack = attack
        self.beta = beta

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        with torch.no_grad():
            p_nat = F.softmax(model(x).float(), dim=1)
        return lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), p_nat, reduction="none").sum(dim=1)

    def attack_start(self, x: Tensor) -> Tensor | None:
        return START_STD * torch.randn_like(x)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        logits_nat, feats_nat = model(x, return_features=True)
        logits_adv, feats_adv = model(x_adv, return_features=True)
        ce = F.cross_entropy(logits_nat.float(), y)
        kl = F.kl_div(
            F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_nat.float(), dim=1), reduction="batchmean"
        )
        loss = ce + self.beta * kl
        return ObjectiveOutput(
            loss,
            logits_nat=logits_nat,
            logits_adv=logits_adv,
            features_nat=feats_nat,
            features_adv=feats_adv,
            x_adv=x_adv,
            parts={"ce_nat": ce.detach(), "kl": kl.detach()},
        )


def build_trades(settings: TRADESConfig, attack: AttackConfig) -> TRADES:
    return TRADES(attack, settings.beta)


# TRADES' code attacks with BatchNorm in eval mode.
register_method(MethodSpec("trades", build_trades, TRADESConfig, attack_eval_mode=True, knob=Knob("beta", "β")))
