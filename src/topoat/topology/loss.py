"""The TRAIN regularizer: the KL between a teacher's and a student's affinity graphs of the same batch.

`TopologyLoss()(student, teacher)` is all a user needs in their own loop:

    topo = TopologyLoss()  # the softmax-cosine graph, temperature 0.1
    loss = base_loss + lam * topo(student_features, teacher_features.detach())
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .graphs import (
    CENTERINGS,
    DIVERGENCES,
    Centering,
    Divergence,
    affinity_log_probs,
    as_kernel,
    class_mask,
    entropy_excess,
    graph_divergence,
)
from .kernels import Kernel


def _nan_unless_finite(kl: Tensor, finite: Tensor) -> Tensor:
    # graph_kl leaves out non-finite entries (they mark excluded pairs), so NaN or inf features would score
    # 0, the perfect loss; NaN instead lets the training loop's divergence check stop the run. Decided on
    # the device: no host sync in the training step.
    return torch.where(finite, kl, torch.full_like(kl, float("nan")))


class TopologyLoss(torch.nn.Module):
    """KL between the teacher's and the student's neighbourhood graphs of the same n samples.

    `loss(student, teacher)` takes (n, d_s) and (n, d_t) features (d_s and d_t may differ) and returns
    the scalar (1/n) sum_i KL(P_teacher(.|i) || P_student(.|i)). The teacher is detached, so the gradient
    reaches `student` only. The loss is computed in fp32 even under autocast.

    `kernel`: a Kernel object (`SoftmaxCosine(temperature=0.1)`, `Perplexity(30)`, `Cosine()`, `Gaussian()`,
    `StudentT()`, or one registered with `register_kernel`), or its registered name, with `temperature` or
    `perplexity` for the kernel that takes it: `TopologyLoss("softmax-cosine", temperature=0.5)`.

    Options (measured in docs/RESULTS.md, "Why TRAIN failed on a PreAct ResNet"):
    - `divergence`: "forward" KL(P_T || P_S) (the paper's reading), "reverse" KL(P_S || P_T), or
      "symmetric", their mean. The forward KL is mode-covering: a student that cannot follow the
      teacher lowers it by flattening its own graph.
    - `entropy_weight`: adds weight * mean_i max(0, H(P_S(.|i)) - H(P_T(.|i))), a price on that flattening.
    - `center`: "batch" subtracts the batch's mean feature before the kernel (the common direction of
      non-negative features), "sample" each sample's own mean (Pearson correlation for the cosines).
    """

    def __init__(
        self,
        kernel: Kernel | str = "softmax-cosine",
        class_aware: str = "off",
        temperature: float | None = None,
        perplexity: float | None = None,
        *,
        divergence: Divergence = "forward",
        entropy_weight: float = 0.0,
        center: Centering = "none",
    ):
        super().__init__()
        self.kernel = as_kernel(kernel, temperature, perplexity)
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
        if not (math.isfinite(entropy_weight) and entropy_weight >= 0):
            raise ValueError(f"entropy_weight must be a number >= 0, got {entropy_weight}")
        if center not in CENTERINGS:
            raise ValueError(f"unknown centering {center!r}; choose from {', '.join(CENTERINGS)}")
        class_mask(torch.zeros(1, dtype=torch.long), class_aware)  # validate the mode early
        self.class_aware = class_aware
        self.divergence = divergence
        self.entropy_weight = entropy_weight
        self.center = center

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.rows(student, teacher, labels)

    def graph(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(j|i) of one set of features under this loss's kernel."""
        return affinity_log_probs(z, self.kernel, mask, center=self.center)

    def score(self, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
        """The loss between two graphs (or a stack of student graphs and one teacher graph)."""
        loss = graph_divergence(student_logp, teacher_logp, self.divergence)
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * entropy_excess(student_logp, teacher_logp)
        return loss

    def rows(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None, n_rows: int | None = None) -> Tensor:
        """The loss averaged over the first `n_rows` samples only, the others being extra graph nodes
        (a memory bank of earlier batches)."""
        mask = self._mask(student, teacher, labels)
        with torch.autocast(device_type=student.device.type, enabled=False):
            s = self.graph(student.float(), mask)
            t = self.graph(teacher.detach().float(), mask)
            if n_rows is not None:
                s, t = s[:n_rows], t[:n_rows]
            return _nan_unless_finite(self.score(s, t), student.isfinite().all() & teacher.isfinite().all())

    def terms(self, students: Sequence[Tensor], teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss of each of several feature sets of the same samples (TRAIN's natural and adversarial
        features) against one teacher, as a tensor of len(students) values, each equal to
        `self(student, teacher, labels)`. The teacher's graph is built once and, for the cosine kernels,
        the students' graphs in one batched pass: two terms cost about the kernel launches of one."""
        flat = [x.float().flatten(1) for x in students]
        for x in flat[1:]:
            if x.shape[0] != flat[0].shape[0]:
                raise ValueError(f"the feature sets have {flat[0].shape[0]} and {x.shape[0]} samples")
        mask = self._mask(flat[0], teacher, labels)
        with torch.autocast(device_type=teacher.device.type, enabled=False):
            t = self.graph(teacher.detach().float(), mask)
            if self.kernel.stackable and len({x.shape for x in flat}) == 1:
                z = torch.stack(flat)
                s = affinity_log_probs(z, self.kernel, mask, stacked=True, center=self.center)
                finite = z.isfinite().flatten(1).all(dim=1)
            else:
                s = torch.stack([self.graph(x, mask) for x in flat])
                finite = torch.stack([x.isfinite().all() for x in flat])
            return _nan_unless_finite(self.score(s, t), finite & teacher.isfinite().all())

    def _mask(self, student: Tensor, teacher: Tensor, labels: Tensor | None) -> Tensor | None:
        """The class-aware neighbour mask (None when off), after checking that the shapes fit."""
        n = student.shape[0]
        if n != teacher.shape[0]:
            raise ValueError(f"student has {n} samples, teacher {teacher.shape[0]}")
        problem = self.kernel.graph_size_problem(n)
        if problem is not None:
            raise ValueError(problem)
        if self.class_aware == "off":
            return None
        if labels is None:
            raise ValueError("class-aware topology loss needs labels")
        return class_mask(labels, self.class_aware)

    def extra_repr(self) -> str:
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("divergence", self.divergence, "forward"),
                ("entropy_weight", self.entropy_weight, 0.0),
                ("center", self.center, "none"),
            )
            if value != default
        )
        return f"kernel={self.kernel!r}, class_aware={self.class_aware!r}{options}"
