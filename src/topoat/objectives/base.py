"""The objective interface: a base AT method is one module that makes its adversarial examples and
turns (model, x, y, x') into its loss.

The two halves are separate methods so that wrappers fit every method without a copy of any:
TRAIN adds its term to `loss` (and, if asked, to the attack), AWP perturbs the weights between
`adversarial` (made by the unperturbed model) and `loss`. Besides the loss, the output carries what the
topology term needs: the student's natural and adversarial logits and features, when the method's own
forward passes produced them, so TRAIN needs no extra pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import ascent_step, eval_mode, maximize, random_init
from ..attacks.base import attack_view
from ..registry import METHODS
from ..schema import AttackConfig, MethodConfig


@dataclass
class ObjectiveOutput:
    loss: Tensor
    logits_nat: Tensor | None = None
    logits_adv: Tensor | None = None
    features_nat: Tensor | None = None
    features_adv: Tensor | None = None
    x_adv: Tensor | None = None
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached loss components for logging
    # The training loop calls this right after optimizer.step() (AWP takes its weight perturbation back
    # there); a loop of your own must do the same.
    after_step: Callable[[], None] | None = None


def cross_entropy_per_sample(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


class Objective:
    """`objective(model, x, y) -> ObjectiveOutput` is `loss(model, x, y, adversarial(model, x, y))`;
    the model is in train mode when called.

    A base method with an attack sets `attack` and defines `attack_loss` (what its attack ascends) and
    `loss`; `attack_start` defaults to a uniform start in the eps-ball when `attack.random_start`.
    """

    name = "objective"
    makes_adversarial = True
    attack: AttackConfig | None = None
    # the attack's projected ascent step; `compile_parts` puts a compiled copy here
    attack_step: Callable[..., Tensor] = staticmethod(ascent_step)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        return self.loss(model, x, y, self.adversarial(model, x, y))

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        """x' for this batch (detached), made in the attack's BatchNorm mode; None without an attack."""
        if not self.makes_adversarial:
            return None
        a = self.attack
        assert a is not None, f"{self.name} makes adversarial examples but has no attack settings"
        if a.eps == 0:
            return x.detach().clone()
        net = attack_view(model)
        # eval_mode None (a config not yet validated, which fills in the authors' mode) leaves the mode alone
        with eval_mode(net, bool(a.eval_mode)):
            objective = self.attack_objective(net, x, y)
            return maximize(
                objective, x, a.eps, a.step_size, a.steps, a.norm, self.attack_start(x), step_fn=self.attack_step
            )

    def attack_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        """x' -> what the attack ascends (`maximize` sums it over the batch)."""
        per_sample = self.attack_loss(model, x, y)
        return lambda x_adv: per_sample(model(x_adv))

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        """logits at x' -> the per-sample loss the attack ascends. Called in the attack's BatchNorm mode,
        so anything it precomputes from x (TRADES' target p(x)) is taken in that mode too."""
        raise NotImplementedError

    def attack_start(self, x: Tensor) -> Tensor | None:
        """The starting perturbation; None starts at x."""
        a = self.attack
        assert a is not None, f"{self.name} has an attack start but no attack settings"
        return random_init(x, a.eps, a.norm) if a.random_start else None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> ObjectiveOutput:
        raise NotImplementedError

    def base_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> Tensor:
        """The base method's loss alone, without any wrapper's term (what AWP's weight perturbation ascends)."""
        return self.loss(model, x, y, x_adv).loss

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (0-based), resumed ones included."""

    def set_progress(self, epoch: float) -> None:
        """Called by the training loop before every step with the epochs done so far (fractional)."""

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the objective's own (a projection head), optimised with the model's."""
        return []

    def compile_parts(self, compiler: Callable) -> None:
        """Pass what the objective runs besides the trained model (the attack's ascent step, a frozen
        teacher, an extra loss term) through `compiler` (torch.compile, where runtime.compile says), so
        that it too runs as fused kernels and, under CUDA graphs, inside the step's graphs. Subclasses
        with parts of their own call this first."""
        self.attack_step = compiler(ascent_step)

    def state_dict(self) -> dict:
        """Tensors the objective carries from step to step (saved in resumable checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


class Wrapper(Objective):
    """An objective that adds to a base objective's loss (TRAIN, distillation) and otherwise defers to it:
    the base method's attack, its state and its epoch hook."""

    def __init__(self, base: Objective):
        self.base = base
        self.attack = base.attack
        self.makes_adversarial = base.makes_adversarial

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        return self.base.adversarial(model, x, y)

    def attack_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        return self.base.attack_objective(model, x, y)

    def attack_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        return self.base.attack_loss(model, x, y)

    def attack_start(self, x: Tensor) -> Tensor | None:
        return self.base.attack_start(x)

    def base_loss(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor | None) -> Tensor:
        return self.base.base_loss(model, x, y, x_adv)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def set_progress(self, epoch: float) -> None:
        self.base.set_progress(epoch)

    def parameters(self) -> list[nn.Parameter]:
        return self.base.parameters()

    def compile_parts(self, compiler: Callable) -> None:
        self.base.compile_parts(compiler)
        self.attack_step = self.base.attack_step  # for a wrapper that runs the attack itself (TRAIN's attack term)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


@dataclass(frozen=True)
class Knob:
    """A base method's own natural/robust trade-off setting: its key in the method's config and its symbol
    (the frontier draws the method's curve along it)."""

    key: str
    symbol: str


@dataclass(frozen=True)
class MethodSpec:
    """What a config's `method.name` stands for.

    `build(settings, attack)` makes the objective from the method's section of the config (an instance of
    `config`, a MethodConfig subclass holding the method's own keys, e.g. TRADES' `beta`) and the training
    attack's settings. `attack_eval_mode`: the BatchNorm mode of the training attack in the method's
    authors' code (what `attack.eval_mode: null` means). `adversarial`: whether it makes adversarial
    examples (AWP needs one that does)."""

    name: str
    build: Callable[[Any, AttackConfig], Objective]
    config: type[MethodConfig] = MethodConfig
    attack_eval_mode: bool = True
    adversarial: bool = True
    knob: Knob | None = None


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make `spec.name` usable as `method.name`: call it once, in the module that defines the method."""
    if not (isinstance(spec.config, type) and issubclass(spec.config, MethodConfig)):
        raise TypeError(f"method {spec.name}: its config must be a MethodConfig dataclass")
    return METHODS.register(spec.name, spec)
