"""Neighbourhoods compared directly: the overlap of two feature spaces' k nearest neighbours."""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import power_of_two_scale, squared_distances


def knn_indices(z: Tensor, k: int) -> Tensor:
    """Indices of each row's k nearest neighbours (Euclidean, self excluded)."""
    z = z.float().flatten(1)
    d2 = squared_distances(z / power_of_two_scale(z, (0, 1)))  # the same neighbours, no overflow
    d2.fill_diagonal_(float("inf"))
    return d2.topk(k, dim=1, largest=False).indices


def knn_overlap(a: Tensor, b: Tensor, k: int = 10) -> float:
    """Mean Jaccard overlap of every sample's k nearest neighbours in space `a` and in space `b`."""
    n = a.shape[0]
    if n < k + 1:
        raise ValueError(f"kNN overlap at k={k} needs more than {k} samples, got {n}")
    ia, ib = knn_indices(a, k), knn_indices(b, k)
    hits_a = torch.zeros(n, n, dtype=torch.bool, device=a.device).scatter_(1, ia, True)
    hits_b = torch.zeros(n, n, dtype=torch.bool, device=a.device).scatter_(1, ib.to(a.device), True)
    inter = (hits_a & hits_b).sum(1).float()
    union = (hits_a | hits_b).sum(1).float()
    return float((inter / union).mean())
