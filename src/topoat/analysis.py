"""Topology metrics of a model's representation against a reference (standard) model's."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .objectives.train_wrapper import representation
from .topology import TopologyLoss, knn_overlap


@torch.no_grad()
def extract(model: nn.Module, x: Tensor, layer: str = "features", batch_size: int = 500) -> Tensor:
    """Representations of x at `layer`, in eval mode, as one fp32 tensor."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([representation(model, x[i:i + batch_size], layer)[1].float()
                          for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def batched_graph_kl(student: Tensor, teacher: Tensor, graph_size: int = 128, kernel: str = "cosine") -> float:
    """Mean graph KL over consecutive graphs of `graph_size` samples (the training loss's scale)."""
    loss = TopologyLoss(kernel)
    values = [loss(student[i:i + graph_size], teacher[i:i + graph_size])
              for i in range(0, student.shape[0] - graph_size + 1, graph_size)]
    if not values:
        values = [loss(student, teacher)]
    return float(torch.stack(values).mean())


def topology_metrics(student: Tensor, teacher: Tensor, k: int = 10, graph_size: int = 128,
                     kernel: str = "cosine", student_adv: Optional[Tensor] = None) -> dict[str, float]:
    out = {"graph_kl": batched_graph_kl(student, teacher, graph_size, kernel),
           "knn_overlap": knn_overlap(student, teacher, k)}
    if student_adv is not None:
        out["graph_kl_adv"] = batched_graph_kl(student_adv, teacher, graph_size, kernel)
    return out
