"""What every attack shares: the `attack(x, y) -> x_adv` call over a model taking [0, 1] inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn


def attack_view(model: nn.Module) -> nn.Module:
    """The module attack passes go through: under DDP the wrapped one, since an attack needs no gradient
    sync and a DDP forward without a parameter backward would leave its reducer waiting."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """BatchNorm and dropout in eval mode for the attack, restored to the caller's mode after."""
    was_training = model.training
    if enabled and was_training:
        model.eval()
    try:
        yield
    finally:
        if enabled and was_training:
            model.train()


class Attack:
    """Subclasses implement `perturb(x, y)`; calling the attack runs it in eval mode without
    touching parameter gradients and returns a detached x_adv inside the threat model."""

    def __init__(self, model: nn.Module, eval_mode: bool = True):
        self.model = attack_view(model)
        self.use_eval_mode = eval_mode

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        with eval_mode(self.model, self.use_eval_mode):
            return self.perturb(x, y).detach()
