"""TRAIN: any base objective plus the topology term against a frozen standard model.

L = L_base + lambda_nat * L_topo(h_f(x), h_g(x)) + lambda_adv * L_topo(h_f(x'), h_g(x))
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..distributed import gather, gather_with_grad
from ..topology import TopologyLoss
from .base import Objective, ObjectiveOutput


def representation(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """(logits, representation) of `x`: "features" is the penultimate layer, "logits" the output,
    any other name a module of the model (read with a forward hook, flattened)."""
    if layer == "features":
        return model(x, return_features=True)
    if layer == "logits":
        logits = model(x)
        return logits, logits
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"model has no layer named {layer!r}")
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, captured[-1].flatten(1)


class MemoryBank:
    """A FIFO of past (student, teacher, label) rows that join each batch's graph as extra nodes."""

    def __init__(self, size: int):
        self.size = size
        self.student: Optional[Tensor] = None
        self.teacher: Optional[Tensor] = None
        self.labels: Optional[Tensor] = None

    def extend(self, student: Tensor, teacher: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch rows followed by bank rows; then push the batch (detached) into the bank."""
        if self.student is None:
            s_all, t_all, y_all = student, teacher, labels
        else:
            s_all = torch.cat([student, self.student.to(student.dtype)])
            t_all = torch.cat([teacher, self.teacher.to(teacher.dtype)])
            y_all = torch.cat([labels, self.labels])
        self.student = s_all.detach()[: self.size]
        self.teacher = t_all.detach()[: self.size]
        self.labels = y_all[: self.size]
        return s_all, t_all, y_all


class TopologyRegularized(Objective):
    """Wraps a base objective; the base's attack is used unchanged."""

    def __init__(self, base: Objective, teacher: nn.Module, lambda_nat: float = 30.0,
                 lambda_adv: float = 30.0, kernel: str = "cosine", layer: str = "features",
                 teacher_layer: Optional[str] = None, class_aware: str = "off", memory_bank: int = 0,
                 global_graph: bool = False):
        self.base = base
        self.teacher = teacher.eval().requires_grad_(False)
        self.lambda_nat, self.lambda_adv = lambda_nat, lambda_adv
        self.topology = TopologyLoss(kernel, class_aware)
        self.layer = layer
        self.teacher_layer = teacher_layer or layer
        self.name = f"{base.name}+train"
        self.makes_adversarial = base.makes_adversarial
        self.banks = {k: MemoryBank(memory_bank) for k in ("nat", "adv")} if memory_bank > 0 else None
        self.global_graph = global_graph

    def _student(self, model: nn.Module, x: Tensor, logits: Optional[Tensor], feats: Optional[Tensor]) -> Tensor:
        if self.layer == "features" and feats is not None:
            return feats
        if self.layer == "logits" and logits is not None:
            return logits
        return representation(model, x, self.layer)[1]

    def _term(self, key: str, student: Tensor, teacher: Tensor, y: Tensor) -> Tensor:
        if self.global_graph:
            # One graph over the global batch: every rank computes the same loss, the student rows
            # keep their gradient (all_gather's backward), and DDP's averaging restores the scale.
            student, teacher, y = gather_with_grad(student), gather(teacher), gather(y)
        if self.banks is None:
            return self.topology(student, teacher, y)
        s_all, t_all, y_all = self.banks[key].extend(student, teacher, y)
        return self.topology.rows(s_all, t_all, y_all, n_rows=student.shape[0])

    def __call__(self, model, x, y) -> ObjectiveOutput:
        out = self.base(model, x, y)
        with torch.no_grad():
            teacher_repr = representation(self.teacher, x, self.teacher_layer)[1]
        loss = out.loss
        if self.lambda_nat > 0:
            s_nat = self._student(model, x, out.logits_nat, out.features_nat)
            topo_nat = self._term("nat", s_nat, teacher_repr, y)
            loss = loss + self.lambda_nat * topo_nat
            out.parts["topo_nat"] = topo_nat.detach()
        if self.lambda_adv > 0 and out.x_adv is not None:
            s_adv = self._student(model, out.x_adv, out.logits_adv, out.features_adv)
            topo_adv = self._term("adv", s_adv, teacher_repr, y)
            loss = loss + self.lambda_adv * topo_adv
            out.parts["topo_adv"] = topo_adv.detach()
        out.loss = loss
        return out
