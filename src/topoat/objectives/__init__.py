"""Objectives by name: one module per base method, and the TRAIN wrapper that fits them all."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..config import TrainConfig
from ..errors import TopoatError
from .base import Objective, ObjectiveOutput, pgd_from_config
from .pgd_at import PGDAT
from .standard import Standard
from .train_wrapper import MemoryBank, TopologyRegularized, representation

METHODS = ("standard", "pgd-at")


def build_base_objective(cfg: TrainConfig) -> Objective:
    name = cfg.method.name
    if name == "standard":
        return Standard()
    if name == "pgd-at":
        return PGDAT(cfg.attack)
    raise TopoatError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def build_objective(cfg: TrainConfig, teacher: Optional[nn.Module] = None) -> Objective:
    base = build_base_objective(cfg)
    t = cfg.topology
    if t is None:
        return base
    if teacher is None:
        raise TopoatError("topology: a teacher model is required (topology.teacher)")
    return TopologyRegularized(base, teacher, t.lambda_nat, t.lambda_adv, t.kernel, t.layer, t.teacher_layer,
                               t.class_aware, t.memory_bank, t.global_graph)


__all__ = ["METHODS", "MemoryBank", "Objective", "ObjectiveOutput", "PGDAT", "Standard", "TopologyRegularized",
           "build_base_objective", "build_objective", "pgd_from_config", "representation"]
