"""TRAIN: any base objective plus the topology term against a frozen standard model.

L = L_base + lambda_nat * L_topo(h_f(x), h_g(x)) + lambda_adv * L_topo(h_f(x'), h_g(x))

x' is the base method's own, unless `attack_uses_topology`: then the attack ascends
mean_i(base attack loss_i) + lambda_adv * L_topo(h_f(x'), h_g(x)), with the base method's attack loss,
start and steps (CE for PGD-AT and MART, KL(f(x) || f(x')) for TRADES, all with weight 1). For PGD-AT
that is exactly the part of the training loss that depends on x'.

Options measured in docs/RESULTS.md ("Why TRAIN failed on a PreAct ResNet"): the divergence's direction
and an entropy penalty (in TopologyLoss), BatchNorm's mode in TRAIN's own clean forward, a warm-up of
the weights, weights relative to the base loss's gradient at the features, a temperature set from the
teacher's graph, and gradient-norm diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from ..models import check_layer, representation
from ..topology import Centering, Divergence, Kernel, SoftmaxCosine, TopologyLoss, temperature_for_perplexity
from ..training.distributed import gather, gather_with_grad
from .base import Objective, ObjectiveOutput, Wrapper

# representation and check_layer live with the models (topoat.models); they stay importable from here.
__all__ = ["MemoryBank", "TopologyRegularized", "batchnorm_mode", "check_layer", "representation"]

# BatchNorm in TRAIN's own clean forward (the base method's passes are never changed): "train" normalises
# with the clean batch's statistics and mixes them into the running statistics, which plain PGD-AT never
# does; "frozen" normalises with the batch's statistics but leaves the running ones alone; "eval" uses the
# running statistics.
CleanBatchNorm = Literal["train", "frozen", "eval"]


@contextmanager
def batchnorm_mode(model: nn.Module, mode: CleanBatchNorm) -> Iterator[None]:
    """The model's BatchNorm layers in `mode` for the duration, restored after."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if mode == "train" or not layers:
        yield
        return
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            if mode == "frozen":
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
            else:
                m.eval()
        yield
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
            m.train()


def _grad_norm(grads: tuple[Tensor | None, ...]) -> Tensor:
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


class MemoryBank:
    """A FIFO of past (student, teacher, label) rows that join each batch's graph as extra nodes."""

    def __init__(self, size: int):
        self.size = size
        self.student: Tensor | None = None
        self.teacher: Tensor | None = None
        self.labels: Tensor | None = None

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
        kernel: Kernel | str = "softmax-cosine",
        layer: str = "features",
        teacher_layer: str | None = None,
        class_aware: str = "off",
        memory_bank: int = 0,
        global_graph: bool = False,
        attack_uses_topology: bool = False,
        *,
        divergence: Divergence = "forward",
        entropy_weight: float = 0.0,
        center: Centering = "none",
        clean_batchnorm: CleanBatchNorm = "train",
        warmup_epochs: float = 0.0,
        balance: bool = False,
        teacher_perplexity: float | None = None,
        diagnose_every: int = 0,
        projection_head: nn.Module | None = None,
    ):
        super().__init__(base)
        self.attack_uses_topology = attack_uses_topology
        self.teacher = teacher.eval().requires_grad_(False)
        self.lambda_nat, self.lambda_adv = lambda_nat, lambda_adv
        self.topology = TopologyLoss(
            kernel,
            class_aware,
            divergence=divergence,
            entropy_weight=entropy_weight,
            center=center,
        )
        self.clean_batchnorm = clean_batchnorm
        self.warmup_epochs = warmup_epochs
        self.balance = balance  # lambda is then the ratio of each term's gradient to the base loss's, at the features
        # the softmax-cosine temperature is chosen on the first batch so that the teacher's rows have this perplexity
        self.teacher_perplexity = teacher_perplexity
        if teacher_perplexity is not None and not isinstance(self.topology.kernel, SoftmaxCosine):
            raise ValueError("teacher_perplexity sets the softmax-cosine temperature: use kernel softmax-cosine")
        self.diagnose_every = diagnose_every
        # a learnable map from the student's representation to where its graph is built (teacher's: none)
        self.head = projection_head
        self._ramp = 1.0 if warmup_epochs <= 0 else 0.0
        self._temperature_fitted = False
        self._calls = 0
        self._diagnosis: dict[str, Tensor] = {}
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

    def set_progress(self, epoch: float) -> None:
        super().set_progress(epoch)
        if self.warmup_epochs > 0:
            self._ramp = min(1.0, max(0.0, epoch / self.warmup_epochs))

    def parameters(self) -> list[nn.Parameter]:
        return self.base.parameters() + (list(self.head.parameters()) if self.head is not None else [])

    def _student(
        self, model: nn.Module, x: Tensor, logits: Tensor | None, feats: Tensor | None, clean: bool = False
    ) -> Tensor:
        if self.layer == "features" and feats is not None:
            z = feats
        elif self.layer == "logits" and logits is not None:
            z = logits
        else:
            with batchnorm_mode(model, self.clean_batchnorm if clean else "train"):
                z = representation(model, x, self.layer)[1]
        return self._projected(z)

    def _projected(self, z: Tensor) -> Tensor:
        return self.head(z.flatten(1)) if self.head is not None else z

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
        if self.teacher_perplexity is not None and self._temperature_fitted:
            state["temperature"] = torch.tensor(self._fitted_kernel.temperature, dtype=torch.float64)
        if self.head is not None:
            state.update({f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()})
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
        if "temperature" in state:
            self._fitted_kernel.temperature = float(state["temperature"])
            self._temperature_fitted = True
        if self.head is not None and any(k.startswith("head.") for k in state):
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        for key, bank in (self.banks or {}).items():
            if f"bank.{key}.student" in state:
                device = next(self.teacher.parameters()).device
                bank.student = state[f"bank.{key}.student"].to(device)
                bank.teacher = state[f"bank.{key}.teacher"].to(device)
                bank.labels = state[f"bank.{key}.labels"].to(device)

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        if self.attack_uses_topology and self.lambda_adv > 0:
            return Objective.adversarial(self, model, x, y)  # the base's attack settings, our attack_objective
        return self.base.adversarial(model, x, y)

    def attack_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        """n * (mean base attack loss + lambda_adv * L_topo(h_f(x'), h_g(x))) as a function of x'
        with `attack_uses_topology`, the base method's attack objective without."""
        if not (self.attack_uses_topology and self.lambda_adv > 0):
            return self.base.attack_objective(model, x, y)
        per_sample = self.base.attack_loss(model, x, y)
        teacher_repr = self._teacher_representation(x)
        n = x.shape[0]

        def objective(x_adv: Tensor) -> Tensor:
            logits, student = representation(model, x_adv, self.layer)
            topo = self._term("adv", self._projected(student), teacher_repr, y, in_attack=True)
            return per_sample(logits).sum() + (self.lambda_adv * n) * topo

        return objective

    @property
    def _fitted_kernel(self) -> SoftmaxCosine:
        """The kernel whose temperature `teacher_perplexity` sets (checked at construction)."""
        assert isinstance(self.topology.kernel, SoftmaxCosine)
        return self.topology.kernel

    def _fit_temperature(self, teacher_repr: Tensor) -> None:
        """Once, on the first batch: the temperature at which the teacher's rows have the target perplexity."""
        if self.teacher_perplexity is None or self._temperature_fitted:
            return
        self._fitted_kernel.temperature = temperature_for_perplexity(
            teacher_repr, self.teacher_perplexity, self.topology.center
        )
        self._temperature_fitted = True

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        out = self.base.loss(model, x, y, x_adv)
        teacher_repr = self._teacher_representation(x)
        self._fit_temperature(teacher_repr)
        students: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        if self.lambda_nat > 0:
            students["nat"] = self._student(model, x, out.logits_nat, out.features_nat, clean=True)
            weights["nat"] = self.lambda_nat * self._ramp
        if self.lambda_adv > 0 and out.x_adv is not None:
            students["adv"] = self._student(model, out.x_adv, out.logits_adv, out.features_adv)
            weights["adv"] = self.lambda_adv * self._ramp
        terms = self._terms(students, teacher_repr, y)
        scales = self._balanced_scales(out, students, terms) if self.balance and terms else {}
        topo_total: Tensor | None = None
        for key, topo in terms.items():
            weighted = weights[key] * scales.get(key, 1.0) * topo
            topo_total = weighted if topo_total is None else topo_total + weighted
            out.parts[f"topo_{key}"] = topo.detach()
            if key in scales:
                out.parts[f"weight_{key}"] = (weights[key] * scales[key]).detach()
        if self.diagnose_every > 0 and topo_total is not None:
            out.parts.update(self._diagnose(model, out.loss, topo_total))
        if self.teacher_perplexity is not None:
            out.parts["temperature"] = torch.tensor(self._fitted_kernel.temperature, device=x.device)
        if topo_total is not None:
            out.loss = out.loss + topo_total
        return out

    def _balanced_scales(self, out: ObjectiveOutput, students: dict[str, Tensor], terms: dict[str, Tensor]) -> dict:
        """Per term, |d base / d h| / |d term / d h| (detached): with `balance`, lambda is each term's gradient
        norm at its features relative to the base loss's at the features it was computed from."""
        anchor = out.features_adv if out.features_adv is not None else out.features_nat
        if anchor is None or not anchor.requires_grad:
            return {}
        (g_base,) = torch.autograd.grad(out.loss, anchor, retain_graph=True, allow_unused=True)
        if g_base is None:
            return {}
        base_norm = g_base.float().norm()
        scales = {}
        for key, topo in terms.items():
            (g,) = torch.autograd.grad(topo, students[key], retain_graph=True, allow_unused=True)
            if g is not None:
                scales[key] = (base_norm / g.float().norm().clamp_min(1e-12)).detach()
        return scales

    def _diagnose(self, model: nn.Module, base_loss: Tensor, topo_total: Tensor) -> dict[str, Tensor]:
        """Every `diagnose_every` steps, the parameter-gradient norms of the base loss and of the weighted
        topology terms and the cosine between the two gradients; the last values are held in between so
        that an epoch's mean is the mean of its measurements."""
        self._calls += 1
        if (self._calls - 1) % self.diagnose_every == 0 or not self._diagnosis:
            params = [p for p in model.parameters() if p.requires_grad]
            g_base = torch.autograd.grad(base_loss, params, retain_graph=True, allow_unused=True)
            g_topo = torch.autograd.grad(topo_total, params, retain_graph=True, allow_unused=True)
            dot = sum(
                (
                    (a.float() * b.float()).sum()
                    for a, b in zip(g_base, g_topo, strict=True)
                    if a is not None and b is not None
                ),
                torch.zeros((), device=base_loss.device),
            )
            n_base, n_topo = _grad_norm(g_base).to(dot.device), _grad_norm(g_topo).to(dot.device)
            self._diagnosis = {
                "grad_norm_base": n_base.detach(),
                "grad_norm_topo": n_topo.detach(),
                "grad_cosine": (dot / (n_base * n_topo).clamp_min(1e-30)).detach(),
            }
        return dict(self._diagnosis)

    def _terms(self, students: dict[str, Tensor], teacher: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The topology loss of each feature set. Sets that share the batch's graph (no memory bank, no
        global graph) are one batched computation, with the teacher's graph built once."""
        if len(students) > 1 and self.banks is None and not self.global_graph:
            return dict(zip(students, self._fused_terms(list(students.values()), teacher, y).unbind(), strict=True))
        return {key: self._term(key, student, teacher, y) for key, student in students.items()}
