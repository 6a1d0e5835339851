"""Logit distillation from a frozen standard model, added to any base objective: the control for TRAIN.

L = L_base + lambda * T^2 * KL(softmax(g(x) / T) || softmax(f(x) / T))     (batch mean, natural x)

TRAIN pulls the trained model's neighbourhood graph towards the standard model's; this pulls its
outputs there instead. If TRAIN's gain is no larger than this one's, the topology is not what helps.
The T^2 keeps the gradient's scale independent of T (Hinton et al. 2015).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Objective, ObjectiveOutput, Wrapper


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch, in fp32."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return (t * t) * F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


class Distilled(Wrapper):
    """Wraps any base objective; its attack is the base method's, unchanged."""

    def __init__(self, base: Objective, teacher: nn.Module, weight: float = 1.0, temperature: float = 4.0):
        super().__init__(base)
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature
        self.name = f"{base.name}+distillation"

    def compile_parts(self, compiler: Callable) -> None:
        super().compile_parts(compiler)
        self.teacher = compiler(self.teacher)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        out = self.base.loss(model, x, y, x_adv)
        if self.weight > 0:
            if out.logits_nat is None:
                out.logits_nat, out.features_nat = model(x, return_features=True)
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            kd = distillation_loss(out.logits_nat, teacher_logits, self.temperature)
            out.loss = out.loss + self.weight * kd
            out.parts["distillation"] = kd.detach()
        return out
