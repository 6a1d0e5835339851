"""Projected gradient descent (Madry et al. 2018) in L-inf and L2, with restarts and a choice of loss.

Gradients are taken with respect to the input only (`torch.autograd.grad`), never into parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TopoatError
from .base import Attack
from .names import AttackFamily, AttackSpec, register_attack

Norm = Literal["Linf", "L2"]


def _flat_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def random_init(x: Tensor, eps: float, norm: Norm) -> Tensor:
    if norm == "Linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    # uniform in the L2 ball: a random direction times radius eps * u^(1/d)
    direction = torch.randn_like(x)
    direction = direction / _flat_norm(direction)
    d = x[0].numel()
    radius = eps * torch.rand(x.shape[0], device=x.device).pow(1.0 / d).view(-1, *([1] * (x.dim() - 1)))
    return direction * radius


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin: best wrong logit minus the true logit, per sample."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return wrong - true


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"ce": ce_loss, "margin": margin_loss}


def ascent_step(x_adv: Tensor, grad: Tensor, x: Tensor, step_size: float, eps: float, norm: Norm) -> Tensor:
    """x_adv moved one steepest-ascent step along `grad` (its sign for L-inf, its direction for L2), then
    projected into the eps-ball around x and into [0, 1]."""
    step = step_size * grad.sign() if norm == "Linf" else step_size * grad / _flat_norm(grad)
    delta = project(x_adv + step - x, eps, norm)
    return (x + delta).clamp(0.0, 1.0)


def maximize(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "Linf",
    init: Tensor | None = None,
    step_fn: Callable[..., Tensor] = ascent_step,
) -> Tensor:
    """Run `steps` projected ascent steps on sum(loss_fn(x_adv)) inside the eps-ball around x in [0, 1].

    `init` is the starting perturbation (None: start at x). `step_fn` is `ascent_step` or a compiled copy
    of it (one fused kernel instead of about six). This is the engine behind every PGD-style attack here,
    including TRADES' KL attack.
    """
    x = x.detach()
    delta = torch.zeros_like(x) if init is None else project(init.detach(), eps, norm)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = step_fn(x_adv.detach(), grad, x, step_size, eps, norm)
    return x_adv.detach()


class PGD(Attack):
    """`PGD(model, eps=8/255, step_size=2/255, steps=10)(x, y) -> x_adv`.

    With `restarts > 1`, each sample keeps its worst case (misclassified first, then highest loss).
    `loss="margin"` gives the CW-inf attack.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        step_size: float,
        steps: int,
        norm: Norm = "Linf",
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        eval_mode: bool = True,
    ):
        super().__init__(model, eval_mode)
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be Linf or L2, got {norm!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if restarts < 1:
            raise ValueError("restarts must be >= 1")
        self.eps, self.step_size, self.steps, self.norm = eps, step_size, steps, norm
        self.random_start, self.restarts, self.loss_name = random_start, restarts, loss
        self.loss = LOSSES[loss]

    def _objective(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda x_adv: self.loss(self.model(x_adv), y)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        best = x.detach().clone()
        if self.eps == 0:
            return best
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            init = random_init(x, self.eps, self.norm) if self.random_start else None
            x_adv = maximize(self._objective(y), x, self.eps, self.step_size, self.steps, self.norm, init)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = self.model(x_adv)
                loss = self.loss(logits, y).float()
                fooled = logits.argmax(1) != y
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best[better] = x_adv[better]
            best_loss = torch.where(better, loss, best_loss)
            best_fooled |= fooled
        return best


class FGSM(PGD):
    """One signed-gradient step of size eps from the clean input (Goodfellow et al. 2015)."""

    def __init__(self, model: nn.Module, eps: float, norm: Norm = "Linf", eval_mode: bool = True):
        super().__init__(model, eps, step_size=eps, steps=1, norm=norm, random_start=False, eval_mode=eval_mode)


class CW(PGD):
    """CW-inf as used in the AT literature: PGD on the Carlini-Wagner margin loss."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        step_size: float,
        steps: int = 20,
        norm: Norm = "Linf",
        restarts: int = 1,
        eval_mode: bool = True,
    ):
        super().__init__(model, eps, step_size, steps, norm, True, restarts, "margin", eval_mode)


def _parse_fgsm(name: str) -> AttackSpec | None:
    return AttackSpec(name, "fgsm") if name == "fgsm" else None


def _parse_steps(kind: str) -> Callable[[str], AttackSpec | None]:
    """The parser of `kind-K` and `kind-K-rR` (K steps, R restarts)."""

    def parse(name: str) -> AttackSpec | None:
        m = re.fullmatch(rf"{kind}-(\d+)(?:-r(\d+))?", name)
        if m is None:
            return None
        steps, restarts = int(m.group(1)), int(m.group(2) or 1)
        if steps < 1 or restarts < 1:
            raise TopoatError(f"attack {name!r}: steps and restarts must be >= 1")
        return AttackSpec(name, kind, steps, restarts)

    return parse


# the norm is a str in the evaluation API; PGD rejects any but Linf and L2 (ValueError)
def _build_fgsm(spec: AttackSpec, model: nn.Module, norm: str, eps: float, step: float, seed: int) -> Attack:
    return FGSM(model, eps, norm=cast(Norm, norm))


def _build_pgd(spec: AttackSpec, model: nn.Module, norm: str, eps: float, step: float, seed: int) -> Attack:
    return PGD(model, eps, step, spec.steps, norm=cast(Norm, norm), restarts=spec.restarts)


def _build_cw(spec: AttackSpec, model: nn.Module, norm: str, eps: float, step: float, seed: int) -> Attack:
    return CW(model, eps, step, spec.steps, norm=cast(Norm, norm), restarts=spec.restarts)


register_attack(AttackFamily("fgsm", _parse_fgsm, _build_fgsm, "fgsm"))
register_attack(AttackFamily("pgd", _parse_steps("pgd"), _build_pgd, "pgd-K, pgd-K-rR (R restarts)"))
register_attack(AttackFamily("cw", _parse_steps("cw"), _build_cw, "cw-K, cw-K-rR"))
