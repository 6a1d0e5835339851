"""AWP (Wu et al. 2020): adversarial weight perturbation, a step around any objective.

It knows neither the base method nor the topology term; per training step:
1. x' is the wrapped objective's own, made by the unperturbed model;
2. a proxy copy of the model takes one SGD step (lr 0.01) up the base method's loss at x';
3. every weight tensor with more than one dimension moves by gamma * ||w|| * d / ||d||, where d is
   the proxy's displacement of that tensor (a layer-wise, relative size); 1-D parameters (BatchNorm,
   biases) stay put;
4. the wrapped objective's full loss (base + topology, if wrapped) is taken at the perturbed weights;
5. after optimizer.step() the perturbation is subtracted again (`ObjectiveOutput.after_step`), as the
   authors' `utils_awp.py` does: the update computed at the perturbed point is kept, the perturbation
   is not.
No perturbation while fewer than `warmup_epochs` epochs have passed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..runs.checkpoint import unwrap
from ..training.distributed import all_reduce_sum, is_active
from .base import Objective, ObjectiveOutput

PROXY_LR = 0.01
EPS = 1e-20  # the reference's guard for a zero displacement


class AdversarialWeightPerturbation(Objective):
    def __init__(self, inner: Objective, gamma: float = 5e-3, warmup_epochs: int = 0):
        self.inner = inner
        self.gamma, self.warmup_epochs = gamma, warmup_epochs
        self.name = f"awp-{inner.name}"
        self.makes_adversarial = inner.makes_adversarial
        self.attack = inner.attack
        self.epoch = 0
        self._proxy: nn.Module | None = None
        self._proxy_source: nn.Module | None = None
        self._proxy_optimizer: torch.optim.Optimizer | None = None

    @property
    def active(self) -> bool:
        return self.gamma > 0 and self.epoch >= self.warmup_epochs

    def compile_parts(self, compiler: Callable) -> None:
        self.inner.compile_parts(compiler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def set_progress(self, epoch: float) -> None:
        self.inner.set_progress(epoch)

    def parameters(self) -> list[nn.Parameter]:
        return self.inner.parameters()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        return self.inner.adversarial(model, x, y)

    def base_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> Tensor:
        return self.inner.base_loss(model, x, y, x_adv)

    def _proxy_of(self, net: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The proxy copy of `net` (in train mode, its weights reloaded from `net`) and its optimizer."""
        proxy, optimizer = self._proxy, self._proxy_optimizer
        if proxy is None or optimizer is None or self._proxy_source is not net:
            proxy = copy.deepcopy(net)
            optimizer = torch.optim.SGD(proxy.parameters(), lr=PROXY_LR)
            self._proxy, self._proxy_source, self._proxy_optimizer = proxy, net, optimizer
        proxy.load_state_dict(net.state_dict())
        return proxy.train(), optimizer

    def perturbation(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        """(weight, offset) pairs for the weights AWP moves, each offset of norm gamma * ||weight||."""
        net = unwrap(model)
        proxy, optimizer = self._proxy_of(net)
        loss = -self.inner.base_loss(proxy, x, y, x_adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_active():
            # every process must perturb the same way, or their weights drift apart
            _average_gradients(proxy)
        optimizer.step()
        offsets: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for w, w_proxy in zip(net.parameters(), proxy.parameters(), strict=True):
                if w.dim() <= 1:
                    continue
                d = w_proxy - w
                offsets.append((w, d * (self.gamma * w.norm() / (d.norm() + EPS))))
        return offsets

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        if not self.active:
            return self.inner.loss(model, x, y, x_adv)
        offsets = self.perturbation(model, x, y, x_adv)
        _shift(offsets, 1.0)
        try:
            out = self.inner.loss(model, x, y, x_adv)
        except BaseException:
            _shift(offsets, -1.0)
            raise
        inner_after_step = out.after_step

        def restore() -> None:
            _shift(offsets, -1.0)
            if inner_after_step is not None:
                inner_after_step()

        out.after_step = restore
        return out


def _shift(offsets: list[tuple[Tensor, Tensor]], sign: float) -> None:
    if offsets:
        with torch.no_grad():
            torch._foreach_add_([w for w, _ in offsets], [o for _, o in offsets], alpha=sign)


def _average_gradients(module: nn.Module) -> None:
    """Average the proxy's gradients over the processes, in one collective."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = all_reduce_sum(torch.cat([g.flatten() for g in grads]))
    flat /= torch.distributed.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
