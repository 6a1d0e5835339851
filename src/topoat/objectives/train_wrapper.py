"""TRAIN: any base objective plus the topology term against a frozen standard model.

L = L_base + lambda_nat * L_topo(h_f(x), h_g(x)) + lambda_adv * L_topo(h_f(x'), h_g(x))

x' is the base method's own, unless `attack_uses_topology`: then the attack ascends
mean_i(base attack loss_i) + lambda_adv * L_topo(h_f(x'), h_g(x)), with the base method's attack loss,
start and steps (CE for PGD-AT and MART, KL(f(x) || f(x')) for TRADES, all with weight 1). For PGD-AT
that is exactly the part of the training loss that depends on x'.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..distributed import gather, gather_with_grad
from ..models import check_layer, representation
from ..topology import Kernel, TopologyLoss
from .base import Objective, ObjectiveOutput, Wrapper

# representation and check_layer live with the models (topoat.models); they stay importable from here.
__all__ = ["MemoryBank", "TopologyRegularized", "check_layer", "representation"]


class MemoryBank:
    """A FIFO of past (student, teacher, label) rows that join each batch's graph as extra nodes."""

    def __init__(self, size: int):
        self.size = size
        self.student: Optional[Tensor] = None
        self.teacher: Optional[Tensor] = None
        self.labels: Optional[Tensor] = None

    def nodes(self, student: Tensor, teacher: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch rows followed by bank rows, leaving the bank as it is."""
        if self.student is None or self.teacher is None or self.labels is None:  # empty (all three are set together)
            return student, teacher, labels
        return (
            torch.cat([student, self.student.to(student.dtype)]),
            torch.cat([teacher, self.teacher.to(teacher.dtype)]),
            torch.cat([labels, self.labels]),
        )

    def extend(self, student: Tensor, teacher: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch rows followed by bank rows; then push the batch (detached) into the bank."""
        s_all, t_all, y_all = self.nodes(student, teacher, labels)
        self.student = s_all.detach()[: self.size]
        self.teacher = t_all.detach()[: self.size]
        self.labels = y_all[: self.size]
        return s_all, t_all, y_all


class TopologyRegularized(Wrapper):
    """Wraps any base objective; its attack is used unchanged unless `attack_uses_topology`."""

    def __init__(
        self,
        base: Objective,
        teacher: nn.Module,
        lambda_nat: float = 10.0,
        lambda_adv: float = 10.0,
        kernel: Kernel = "softmax-cosine",
        layer: str = "features",
        teacher_layer: Optional[str] = None,
        class_aware: str = "off",
        memory_bank: int = 0,
        global_graph: bool = False,
        attack_uses_topology: bool = False,
        *,
        temperature: float = 0.1,
        perplexity: float = 30.0,
    ):
        super().__init__(base)
        self.attack_uses_topology = attack_uses_topology
        self.teacher = teacher.eval().requires_grad_(False)
        self.lambda_nat, self.lambda_adv = lambda_nat, lambda_adv
        self.topology = TopologyLoss(kernel, class_aware, temperature, perplexity)
        self.layer = layer
        self.teacher_layer = teacher_layer or layer
        self.name = f"{base.name}+train"
        self.banks = {k: MemoryBank(memory_bank) for k in ("nat", "adv")} if memory_bank > 0 else None
        self.global_graph = global_graph
        self._fused_terms = self.topology.terms

    def compile_parts(self, compiler: Callable) -> None:
        super().compile_parts(compiler)
        if self.teacher_layer in ("features", "logits"):  # another layer is read by a hook on the plain module
            self.teacher = compiler(self.teacher)
        self._fused_terms = compiler(self.topology.terms)

    def _student(self, model: nn.Module, x: Tensor, logits: Optional[Tensor], feats: Optional[Tensor]) -> Tensor:
        if self.layer == "features" and feats is not None:
            return feats
        if self.layer == "logits" and logits is not None:
            return logits
        return representation(model, x, self.layer)[1]

    def _term(self, key: str, student: Tensor, teacher: Tensor, y: Tensor, in_attack: bool = False) -> Tensor:
        """The topology loss of one batch; in the attack, over the local batch (plus the memory bank,
        which it leaves unchanged)."""
        if in_attack:
            if self.banks is None:
                return self.topology(student, teacher, y)
            s_all, t_all, y_all = self.banks[key].nodes(student, teacher, y)
            return self.topology.rows(s_all, t_all, y_all, n_rows=student.shape[0])
        if self.global_graph:
            # One graph over the global batch: every rank computes the same loss, the student rows
            # keep their gradient (all_gather's backward), and DDP's averaging restores the scale.
            student, teacher, y = gather_with_grad(student), gather(teacher), gather(y)
        if self.banks is None:
            return self.topology(student, teacher, y)
        s_all, t_all, y_all = self.banks[key].extend(student, teacher, y)
        return self.topology.rows(s_all, t_all, y_all, n_rows=student.shape[0])

    def _teacher_representation(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return representation(self.teacher, x, self.teacher_layer)[1]

    def state_dict(self) -> dict:
        state = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        for key, bank in (self.banks or {}).items():
            if bank.student is not None and bank.teacher is not None and bank.labels is not None:
                state.update(
                    {
                        f"bank.{key}.student": bank.student.cpu(),
                        f"bank.{key}.teacher": bank.teacher.cpu(),
                        f"bank.{key}.labels": bank.labels.cpu(),
                    }
                )
        return state

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("base.")})
        for key, bank in (self.banks or {}).items():
            if f"bank.{key}.student" in state:
                device = next(self.teacher.parameters()).device
                bank.student = state[f"bank.{key}.student"].to(device)
                bank.teacher = state[f"bank.{key}.teacher"].to(device)
                bank.labels = state[f"bank.{key}.labels"].to(device)

    def adversarial(self, model, x, y):
        if self.attack_uses_topology and self.lambda_adv > 0:
            return Objective.adversarial(self, model, x, y)  # the base's attack settings, our attack_objective
        return self.base.adversarial(model, x, y)

    def attack_objective(self, model, x, y):
        """n * (mean base attack loss + lambda_adv * L_topo(h_f(x'), h_g(x))) as a function of x'
        with `attack_uses_topology`, the base method's attack objective without."""
        if not (self.attack_uses_topology and self.lambda_adv > 0):
            return self.base.attack_objective(model, x, y)
        per_sample = self.base.attack_loss(model, x, y)
        teacher_repr = self._teacher_representation(x)
        n = x.shape[0]

        def objective(x_adv: Tensor) -> Tensor:
            logits, student = representation(model, x_adv, self.layer)
            topo = self._term("adv", student, teacher_repr, y, in_attack=True)
            return per_sample(logits).sum() + (self.lambda_adv * n) * topo

        return objective

    def loss(self, model, x, y, x_adv) -> ObjectiveOutput:
        out = self.base.loss(model, x, y, x_adv)
        teacher_repr = self._teacher_representation(x)
        students: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        if self.lambda_nat > 0:
            students["nat"] = self._student(model, x, out.logits_nat, out.features_nat)
            weights["nat"] = self.lambda_nat
        if self.lambda_adv > 0 and out.x_adv is not None:
            students["adv"] = self._student(model, out.x_adv, out.logits_adv, out.features_adv)
            weights["adv"] = self.lambda_adv
        loss = out.loss
        for key, topo in self._terms(students, teacher_repr, y).items():
            loss = loss + weights[key] * topo
            out.parts[f"topo_{key}"] = topo.detach()
        out.loss = loss
        return out

    def _terms(self, students: dict[str, Tensor], teacher: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The topology loss of each feature set. Sets that share the batch's graph (no memory bank, no
        global graph) are one batched computation, with the teacher's graph built once."""
        if len(students) > 1 and self.banks is None and not self.global_graph:
            return dict(zip(students, self._fused_terms(list(students.values()), teacher, y).unbind()))
        return {key: self._term(key, student, teacher, y) for key, student in students.items()}
