"""Objectives by name: one module per base method, wrapped by TRAIN (a topology term) and AWP (a weight
perturbation), each written once for every method.

A base method's module registers it (`register_method(MethodSpec(...))`): its name, its config keys, its
authors' BatchNorm mode for the training attack, its trade-off knob and how to build it. Importing this
package imports the built-in ones."""

from __future__ import annotations

from torch import nn

from ..errors import TopoatError
from ..models import representation
from ..registry import METHODS
from ..schema import TrainConfig
from .awp import AdversarialWeightPerturbation
from .base import Knob, MethodSpec, Objective, ObjectiveOutput, Wrapper, register_method
from .distillation import Distilled, distillation_loss
from .mart import MART
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES
from .train_wrapper import MemoryBank, TopologyRegularized


def build_base_objective(cfg: TrainConfig) -> Objective:
    """The registered method `cfg.method.name`, built from its section of a validated config."""
    return METHODS.get(cfg.method.name).build(cfg.method, cfg.attack)


def projection_head(in_features: int, width: int) -> nn.Module:
    """TRAIN's optional learnable head: the student's graph is built on its output."""
    return nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(), nn.Linear(in_features, width))


def build_objective(
    cfg: TrainConfig,
    teacher: nn.Module | None = None,
    distillation_teacher: nn.Module | None = None,
    student_width: int | None = None,
) -> Objective:
    """The base method, + TRAIN if the config has a topology section, + logit distillation if it has a
    distillation section, + AWP (outermost) if method.awp. `student_width`: the width of the student's
    representation at topology.layer, needed for a projection head."""
    objective = build_base_objective(cfg)
    t = cfg.topology
    if t is not None:
        if teacher is None:
            raise TopoatError("topology: a teacher model is required (topology.teacher)")
        head = None
        if t.projection > 0:
            if student_width is None:
                raise TopoatError("topology.projection: the student's representation width is needed for the head")
            head = projection_head(student_width, t.projection)
        objective = TopologyRegularized(
            objective,
            teacher,
            lambda_nat=t.lambda_nat,
            lambda_adv=t.lambda_adv,
            kernel=t.build_kernel(),
            layer=t.layer,
            teacher_layer=t.teacher_layer,
            class_aware=t.class_aware,
            memory_bank=t.memory_bank,
            global_graph=t.global_graph,
            attack_uses_topology=t.attack_uses_topology,
            divergence=t.divergence,
            entropy_weight=t.entropy_weight,
            center=t.center,
            clean_batchnorm=t.clean_batchnorm,
            warmup_epochs=t.warmup_epochs,
            balance=t.balance,
            teacher_perplexity=t.teacher_perplexity,
            diagnose_every=t.diagnose_every,
            projection_head=head,
        )
    d = cfg.distillation
    if d is not None:
        if distillation_teacher is None:
            raise TopoatError("distillation: a teacher model is required (distillation.teacher)")
        objective = Distilled(objective, distillation_teacher, d.lambda_, d.temperature)
    awp = cfg.method.awp
    if awp is not None:
        objective = AdversarialWeightPerturbation(objective, awp.gamma, awp.warmup_epochs)
    return objective


__all__ = [
    "MART",
    "METHODS",
    "Knob",
    "MethodSpec",
    "TRADES",
    "AdversarialWeightPerturbation",
    "Distilled",
    "MemoryBank",
    "Objective",
    "ObjectiveOutput",
    "PGDAT",
    "Standard",
    "TopologyRegularized",
    "Wrapper",
    "build_base_objective",
    "build_objective",
    "distillation_loss",
    "projection_head",
    "register_method",
    "representation",
]
