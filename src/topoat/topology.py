"""The TRAIN regularizer: affinity graphs of a batch and the KL between two of them.

`TopologyLoss()(student, teacher)` is all a user needs in their own loop:

    topo = TopologyLoss(kernel="cosine")
    loss = base_loss + lam * topo(student_features, teacher_features.detach())

The same graph code serves the analysis metrics (`graph_kl`, `knn_overlap`).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Kernel = Literal["cosine", "gaussian", "student-t"]
KERNELS = ("cosine", "gaussian", "student-t")

# The cosine kernel (1 + cos) / 2 is exactly 0 for opposite vectors; only there is an epsilon needed.
_COSINE_EPS = 1e-8


def _squared_distances(z: Tensor) -> Tensor:
    # The expanded form keeps gradients finite for duplicate rows (cdist's sqrt would not).
    sq = (z * z).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * (z @ z.t())).clamp_min(0.0)


def _median_pairwise(d2: Tensor) -> Tensor:
    """Median over the distinct pairs i < j (the midpoint of the two middle values when even)."""
    i, j = torch.triu_indices(d2.shape[0], d2.shape[0], offset=1, device=d2.device)
    values = d2[i, j].sort().values
    k = values.numel()
    return 0.5 * (values[(k - 1) // 2] + values[k // 2])


def log_kernel(z: Tensor, kernel: Kernel = "cosine") -> Tensor:
    """Log of the kernel matrix k(z_i, z_j), shape (n, n), computed in fp32."""
    z = z.float().flatten(1)
    if kernel == "cosine":
        zn = F.normalize(z, dim=1, eps=1e-12)  # all-zero rows stay zero: cos = 0, k = 1/2
        return torch.log((1.0 + zn @ zn.t()) * 0.5 + _COSINE_EPS)
    d2 = _squared_distances(z)
    if kernel == "gaussian":
        # Median heuristic on squared distances, detached so the bandwidth is not a shortcut.
        s2 = _median_pairwise(d2.detach()).clamp_min(1e-12)
        return -d2 / (2.0 * s2)
    if kernel == "student-t":
        return -torch.log1p(d2)
    raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")


def affinity_log_probs(z: Tensor, kernel: Kernel = "cosine", mask: Optional[Tensor] = None) -> Tensor:
    """Row-normalised log p(j|i) over j != i (and over `mask` if given); excluded entries are -inf."""
    n = z.shape[0]
    if n < 2:
        raise ValueError("an affinity graph needs at least 2 samples")
    logk = log_kernel(z, kernel)
    allowed = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if mask is not None:
        allowed = allowed & mask
    logk = logk.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logk, dim=1)


def graph_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """(1/n) sum_i KL(P_T(.|i) || P_S(.|i)) from two log-probability matrices (-inf = excluded)."""
    valid = torch.isfinite(teacher_logp) & torch.isfinite(student_logp)
    p_t = teacher_logp.exp()
    terms = torch.where(valid, p_t * (teacher_logp - student_logp), torch.zeros_like(p_t))
    # Rows with no allowed neighbour (possible with class masks) are left out of the mean; counting
    # them on the device avoids a host sync in the training step.
    rows = valid.any(dim=1)
    return (terms.sum(dim=1) * rows).sum() / rows.sum().clamp_min(1)


def class_mask(labels: Tensor, mode: str) -> Optional[Tensor]:
    """Neighbour mask for class-aware graphs: 'within' same-class pairs, 'across' different-class."""
    if mode == "off":
        return None
    same = labels[:, None] == labels[None, :]
    if mode == "within":
        return same
    if mode == "across":
        return ~same
    raise ValueError(f"unknown class_aware mode {mode!r}; choose from off, within, across")


class TopologyLoss(torch.nn.Module):
    """KL between the teacher's and the student's neighbourhood graphs of the same n samples.

    `loss(student, teacher)` takes (n, d_s) and (n, d_t) features (d_s and d_t may differ) and returns
    the scalar (1/n) sum_i KL(P_teacher(.|i) || P_student(.|i)). The teacher is detached, so the gradient
    reaches `student` only. The loss is computed in fp32 even under autocast.
    """

    def __init__(self, kernel: Kernel = "cosine", class_aware: str = "off"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        class_mask(torch.zeros(1, dtype=torch.long), class_aware)  # validate the mode early
        self.kernel = kernel
        self.class_aware = class_aware

    def forward(self, student: Tensor, teacher: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.rows(student, teacher, labels)

    def rows(self, student: Tensor, teacher: Tensor, labels: Optional[Tensor] = None,
             n_rows: Optional[int] = None) -> Tensor:
        """The loss averaged over the first `n_rows` samples only, the others being extra graph nodes
        (a memory bank of earlier batches)."""
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"student has {student.shape[0]} samples, teacher {teacher.shape[0]}")
        mask = None
        if self.class_aware != "off":
            if labels is None:
                raise ValueError("class-aware topology loss needs labels")
            mask = class_mask(labels, self.class_aware)
        with torch.autocast(device_type=student.device.type, enabled=False):
            s = affinity_log_probs(student.float(), self.kernel, mask)
            t = affinity_log_probs(teacher.detach().float(), self.kernel, mask)
            if n_rows is not None:
                s, t = s[:n_rows], t[:n_rows]
            return graph_kl(s, t)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, class_aware={self.class_aware!r}"


def knn_indices(z: Tensor, k: int) -> Tensor:
    """Indices of each row's k nearest neighbours (Euclidean, self excluded)."""
    d2 = _squared_distances(z.float().flatten(1))
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
