"""Accuracy under attack: natural accuracy, each attack's robust accuracy, and the per-sample worst case."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import CW, FGSM, PGD, Attack
from .errors import TopoatError

ATTACK_HELP = "fgsm, pgd-K, pgd-K-rR (R restarts), cw-K"


def build_attack(spec: str, model: nn.Module, norm: str, eps: float,
                 step_size: Optional[float] = None) -> Attack:
    """An attack from its short name, e.g. `pgd-20`, `pgd-50-r5`, `cw-30`, `fgsm`."""
    s = spec.strip().lower()
    step = step_size if step_size is not None else eps / 4
    if s == "fgsm":
        return FGSM(model, eps, norm=norm)
    m = re.fullmatch(r"pgd-(\d+)(?:-r(\d+))?", s)
    if m:
        return PGD(model, eps, step, int(m.group(1)), norm=norm, restarts=int(m.group(2) or 1))
    m = re.fullmatch(r"cw-(\d+)(?:-r(\d+))?", s)
    if m:
        return CW(model, eps, step, int(m.group(1)), norm=norm, restarts=int(m.group(2) or 1))
    raise TopoatError(f"unknown attack {spec!r}; use {ATTACK_HELP}")


def fixed_subset(n_total: int, n: Optional[int], seed: int = 0) -> Tensor:
    """The same n test indices for every model and every call with this seed (sorted)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@dataclass
class EvalResult:
    n: int
    natural_acc: float
    robust_acc: dict[str, float] = field(default_factory=dict)
    correct: dict[str, Tensor] = field(default_factory=dict)  # per-sample, for worst-case unions

    def as_dict(self) -> dict:
        return {"n": self.n, "natural_acc": self.natural_acc, "robust_acc": dict(self.robust_acc)}


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: Sequence[str] = ("pgd-20",), *,
             norm: str = "Linf", eps: float = 8 / 255, step_size: Optional[float] = None,
             batch_size: int = 500, progress: bool = True,
             custom: Optional[dict[str, Callable[[Tensor, Tensor], Tensor]]] = None) -> EvalResult:
    """Evaluate `model` (in eval mode) on (x, y) already on the model's device.

    A sample counts as robust to an attack only if it is also classified correctly without attack;
    with several attacks, "worst" is the per-sample worst case (robust to all), never an average.
    """
    was_training = model.training
    model.eval()
    try:
        named: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
            a: build_attack(a, model, norm, eps, step_size) for a in attacks}
        named.update(custom or {})
        n = x.shape[0]
        natural = torch.zeros(n, dtype=torch.bool, device=x.device)
        correct = {k: torch.zeros(n, dtype=torch.bool, device=x.device) for k in named}
        steps = range(0, n, batch_size)
        bar = tqdm(steps, desc="evaluate", leave=False, disable=not progress)
        for start in bar:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            natural[start:start + batch_size] = predict(model, xb) == yb
            for name, attack in named.items():
                x_adv = attack(xb, yb)
                correct[name][start:start + batch_size] = (predict(model, x_adv) == yb) & natural[start:start + batch_size]
        result = EvalResult(n, float(natural.float().mean()), correct=correct)
        for name, c in correct.items():
            result.robust_acc[name] = float(c.float().mean())
        if len(correct) > 1:
            worst = torch.stack(list(correct.values())).all(dim=0)
            result.robust_acc["worst"] = float(worst.float().mean())
        return result
    finally:
        model.train(was_training)
