"""MART (Wang et al., ICLR 2020), as the authors' code computes it.

    p = softmax(f(x)), p' = softmax(f(x'))
    BCE  = CE(f(x'), y) - log(1.0001 - max_{k != y} p'_k)                      (batch means)
    loss = BCE + beta * mean_i[ KL(p_i || p'_i) * (1.0000001 - p_i,y) ]

so misclassified natural samples (small p_y) weigh more in the KL term; the weight is not detached.
x' is PGD on cross-entropy, from a uniform start in the eps-ball when `attack.random_start`, like PGD-AT
(the authors' code starts next to x, at x + 0.001 * N(0, I); attack.random_start: false starts at x).
The constants 1.0001, 1e-12 and 1.0000001 are the reference code's guards against log(0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import AttackConfig, MethodConfig
from .base import Knob, MethodSpec, Objective, ObjectiveOutput, cross_entropy_per_sample, register_method

LOG_GUARD = 1e-12


@dataclass
class MARTConfig(MethodConfig):
    beta: float = 6.0  # weight of the KL term

    def checks(self) -> list[tuple[bool, str]]:
        return [(math.isfinite(self.beta) and self.beta >= 0, "method.beta must be >= 0 and finite")]


class MART(Objective):
    name = "mart"

    def __init__(self, attack: AttackConfig, beta: float = 6.0):
        self.attack = attack
        self.beta = beta

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda logits: cross_entropy_per_sample(logits, y)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        logits_nat, feats_nat = model(x, return_features=True)
        logits_adv, feats_adv = model(x_adv, return_features=True)
        p_adv = F.softmax(logits_adv.float(), dim=1)
        best_wrong = p_adv.scatter(1, y[:, None], float("-inf")).argmax(dim=1)
        bce = F.cross_entropy(logits_adv.float(), y) + F.nll_loss(torch.log(1.0001 - p_adv + LOG_GUARD), best_wrong)
        p_nat = F.softmax(logits_nat.float(), dim=1)
        p_true = p_nat.gather(1, y[:, None]).squeeze(1)
        kl = F.kl_div(torch.log(p_adv + LOG_GUARD), p_nat, reduction="none").sum(dim=1)
        robust = (kl * (1.0000001 - p_true)).mean()
        loss = bce + self.beta * robust
        return ObjectiveOutput(
            loss,
            logits_nat=logits_nat,
            logits_adv=logits_adv,
            features_nat=feats_nat,
            features_adv=feats_adv,
            x_adv=x_adv,
            parts={"bce_adv": bce.detach(), "kl_weighted": robust.detach()},
        )


def build_mart(settings: MARTConfig, attack: AttackConfig) -> MART:
    return MART(attack, settings.beta)


# MART's code attacks with BatchNorm in eval mode.
register_method(MethodSpec("mart", build_mart, MARTConfig, attack_eval_mode=True, knob=Knob("beta", "β")))
