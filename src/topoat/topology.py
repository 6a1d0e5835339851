"""The TRAIN regularizer: affinity graphs of a batch and the KL between two of them.

`TopologyLoss()(student, teacher)` is all a user needs in their own loop:

    topo = TopologyLoss()  # the softmax-cosine graph, temperature 0.1
    loss = base_loss + lam * topo(student_features, teacher_features.detach())

The same graph code serves the analysis metrics (`graph_kl`, `knn_overlap`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Kernel = Literal["cosine", "gaussian", "student-t", "softmax-cosine", "perplexity"]
KERNELS = ("cosine", "gaussian", "student-t", "softmax-cosine", "perplexity")
# forward: KL(P_teacher || P_student), mode-covering (a student can lower it by flattening its own graph);
# reverse: KL(P_student || P_teacher), mode-seeking; symmetric: their mean.
Divergence = Literal["forward", "reverse", "symmetric"]
DIVERGENCES = ("forward", "reverse", "symmetric")
# Features centred before the kernel: over the batch (removes the common direction of non-negative
# features) or within each sample (Pearson correlation for the cosine kernels).
Centering = Literal["none", "batch", "sample"]
CENTERINGS = ("none", "batch", "sample")
# Kernels whose graphs of several feature sets are one batched computation (TopologyLoss.terms).
STACKABLE = ("cosine", "softmax-cosine")
DEFAULT_TEMPERATURE = 0.1
DEFAULT_PERPLEXITY = 30.0
# Bisection on log(precision * scale) over [-LOG_RANGE, LOG_RANGE]: 2 * 30 / 2^BISECTION_STEPS is far
# below what fp32 resolves, so the entropy is met to fp32 precision.
_LOG_PRECISION_RANGE = 30.0
_BISECTION_STEPS = 48

# The cosine kernel (1 + cos) / 2 is exactly 0 for opposite vectors; only there is an epsilon needed.
_COSINE_EPS = 1e-8


def _power_of_two_scale(z: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """The power of two just below the largest |z| over `dims` (kept as size-1 dims), from the fp32 bits
    (the exponent without the mantissa), detached; 1 where that is 0, subnormal or not finite. Dividing by
    it is exact, so the kernels give the same bits as before for ordinary features, while features near
    fp32's limit (1e19 squared overflows in a sum of a few terms) no longer overflow to a graph of zeros."""
    amax = z.detach().abs().amax(dim=dims, keepdim=True).float()
    scale = (amax.view(torch.int32) & 0x7F800000).view(torch.float32)
    return torch.where(torch.isfinite(amax) & (scale > 0), scale, torch.ones_like(scale))


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


def log_kernel(
    z: Tensor,
    kernel: Kernel = "cosine",
    temperature: float = DEFAULT_TEMPERATURE,
    perplexity: float = DEFAULT_PERPLEXITY,
    allowed: Tensor | None = None,
    stacked: bool = False,
    center: Centering = "none",
) -> Tensor:
    """Log of the kernel matrix k(z_i, z_j), shape (n, n), computed in fp32. `allowed` (the pairs a row
    may link to) matters to the perplexity kernel only, whose per-row precision depends on them.
    `stacked`: z is (k, n, d), k feature sets of the same n samples, giving (k, n, n) in one batched pass
    (the cosine kernels only). `center`: subtract the batch mean or each sample's own mean first."""
    if stacked and (z.dim() != 3 or kernel not in STACKABLE):
        raise ValueError(f"stacked graphs take (k, n, d) features and a kernel of {', '.join(STACKABLE)}")
    z = z.float() if stacked else z.float().flatten(1)
    scale = _power_of_two_scale(z, (-2, -1))  # one for the whole graph: distances keep their ratios
    z = z / scale
    if center == "batch":
        z = z - z.mean(dim=-2, keepdim=True)
    elif center == "sample":
        z = z - z.mean(dim=-1, keepdim=True)
    elif center != "none":
        raise ValueError(f"unknown centering {center!r}; choose from {', '.join(CENTERINGS)}")
    if kernel in ("cosine", "softmax-cosine"):
        z = z / _power_of_two_scale(z, -1)  # a row far below the largest keeps its direction
        zn = F.normalize(z, dim=-1, eps=1e-12)  # all-zero rows stay zero: cos = 0
        cos = zn @ zn.transpose(-1, -2)
        if kernel == "softmax-cosine":
            return cos / temperature
        return torch.log((1.0 + cos) * 0.5 + _COSINE_EPS)
    d2 = _squared_distances(z)  # of the scaled features: the gaussian and perplexity graphs do not change
    if kernel == "gaussian":
        # Median heuristic on squared distances, detached so the bandwidth is not a shortcut.
        s2 = _median_pairwise(d2.detach()).clamp_min(1e-12)
        return -d2 / (2.0 * s2)
    if kernel == "student-t":  # not scale-free: the true distances, in float64 where they fit
        return -torch.log1p(d2.double() * scale.double().flatten() ** 2).float()
    if kernel == "perplexity":
        if allowed is None:
            allowed = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        return -perplexity_precisions(d2.detach(), perplexity, allowed)[:, None] * d2
    raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")


def perplexity_precisions(d2: Tensor, perplexity: float, allowed: Tensor) -> Tensor:
    """Per-row precision b_i such that the row p(j|i) proportional to exp(-b_i d2_ij) over the allowed j
    has entropy ln(perplexity) nats: t-SNE's affinity, found by bisection for all rows at once.

    A row whose allowed neighbours cannot reach that entropy (at most ln(count)) gets the smallest
    precision searched, i.e. a nearly uniform row; the loss checks the common case up front."""
    target = math.log(perplexity)
    # Searching b * scale keeps the bracket independent of the features' scale.
    finite = torch.where(allowed, d2, torch.zeros_like(d2))
    scale = (finite.sum(dim=1) / allowed.sum(dim=1).clamp_min(1)).clamp_min(1e-12)
    lo = torch.full_like(scale, -_LOG_PRECISION_RANGE)
    hi = torch.full_like(scale, _LOG_PRECISION_RANGE)
    scaled = d2 / scale[:, None]
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        logits = (-mid.exp()[:, None] * scaled).masked_fill(~allowed, float("-inf"))
        logp = torch.log_softmax(logits, dim=1)
        entropy = -(logp.exp() * logp.masked_fill(~allowed, 0.0)).sum(dim=1)
        too_flat = entropy > target  # entropy falls as the precision rises
        lo = torch.where(too_flat, mid, lo)
        hi = torch.where(too_flat, hi, mid)
    return (0.5 * (lo + hi)).exp() / scale


def affinity_log_probs(
    z: Tensor,
    kernel: Kernel = "cosine",
    mask: Tensor | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    perplexity: float = DEFAULT_PERPLEXITY,
    stacked: bool = False,
    center: Centering = "none",
) -> Tensor:
    """Row-normalised log p(j|i) over j != i (and over `mask` if given); excluded entries are -inf.
    `stacked`: z is (k, n, d), k feature sets of the same n samples, and the result (k, n, n)."""
    n = z.shape[1 if stacked else 0]
    if n < 2:
        raise ValueError("an affinity graph needs at least 2 samples")
    allowed = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if mask is not None:
        allowed = allowed & mask
    logk = log_kernel(z, kernel, temperature, perplexity, allowed, stacked, center)
    logk = logk.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logk, dim=-1)


def graph_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """(1/n) sum_i KL(P_T(.|i) || P_S(.|i)) from two log-probability matrices (-inf = excluded); for a
    stack of student graphs (k, n, n) against one teacher graph, the k values."""
    valid = torch.isfinite(teacher_logp) & torch.isfinite(student_logp)
    # Excluded entries become 0 before any arithmetic: -inf - -inf is NaN, and a NaN behind torch.where
    # still poisons the gradient (0 * NaN) whichever side needs it.
    zero = torch.zeros_like(student_logp)
    t, s = torch.where(valid, teacher_logp, zero), torch.where(valid, student_logp, zero)
    terms = torch.where(valid, t.exp() * (t - s), zero)
    # Rows with no allowed neighbour (possible with class masks) are left out of the mean; counting
    # them on the device avoids a host sync in the training step.
    rows = valid.any(dim=-1)
    return (terms.sum(dim=-1) * rows).sum(dim=-1) / rows.sum(dim=-1).clamp_min(1)


def graph_divergence(student_logp: Tensor, teacher_logp: Tensor, divergence: Divergence = "forward") -> Tensor:
    """`graph_kl` in the chosen direction: forward KL(P_T || P_S), reverse KL(P_S || P_T), or their mean."""
    if divergence == "forward":
        return graph_kl(student_logp, teacher_logp)
    reverse = graph_kl(teacher_logp, student_logp)  # the same formula with the roles swapped
    if divergence == "reverse":
        return reverse
    if divergence == "symmetric":
        return 0.5 * (graph_kl(student_logp, teacher_logp) + reverse)
    raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")


def row_entropy(logp: Tensor) -> Tensor:
    """Entropy in nats of every row p(.|i) of a log-probability matrix (-inf = excluded); (..., n)."""
    finite = torch.isfinite(logp)
    safe = torch.where(finite, logp, torch.zeros_like(logp))  # exp(-inf) * -inf would make the gradient NaN
    return -torch.where(finite, safe.exp() * safe, torch.zeros_like(logp)).sum(dim=-1)


def entropy_excess(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Mean over rows of max(0, H(P_S(.|i)) - H(P_T(.|i))): how much flatter the student's rows are than
    the teacher's (a student that lowers the forward KL by flattening its own graph pays for it)."""
    rows = (torch.isfinite(teacher_logp) & torch.isfinite(student_logp)).any(dim=-1)
    excess = (row_entropy(student_logp) - row_entropy(teacher_logp)).clamp_min(0.0)
    return (excess * rows).sum(dim=-1) / rows.sum(dim=-1).clamp_min(1)


def temperature_for_perplexity(teacher: Tensor, perplexity: float, center: Centering = "none") -> float:
    """The softmax-cosine temperature at which the teacher's rows have a mean entropy of ln(perplexity)
    nats (bisection on log T; the entropy rises with T)."""
    n = teacher.shape[0]
    if not 1 < perplexity < n - 1:
        raise ValueError(f"a target perplexity must lie between 1 and {n - 1} for a graph of {n} samples")
    target = math.log(perplexity)
    lo, hi = math.log(1e-4), math.log(1e4)
    z = teacher.detach().float().flatten(1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        logp = affinity_log_probs(z, "softmax-cosine", temperature=math.exp(mid), center=center)
        if float(row_entropy(logp).mean()) > target:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


def _nan_unless_finite(kl: Tensor, finite: Tensor) -> Tensor:
    # graph_kl leaves out non-finite entries (they mark excluded pairs), so NaN or inf features would score
    # 0, the perfect loss; NaN instead lets the training loop's divergence check stop the run. Decided on
    # the device: no host sync in the training step.
    return torch.where(finite, kl, torch.full_like(kl, float("nan")))


def class_mask(labels: Tensor, mode: str) -> Tensor | None:
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

    Kernels (p(j|i) is proportional to k(z_i, z_j) over j != i):
    - "cosine": (1 + cos) / 2. Post-ReLU features have cos >= 0, so k lies in [0.5, 1] and rows are
      nearly uniform: a weak, flat graph (kept as the first reading of the paper).
    - "softmax-cosine" (the default): exp(cos / temperature) (default temperature 0.1): the same
      similarity, sharp; with lambda 10 it moved both base methods' frontiers (docs/RESULTS.md).
    - "perplexity": t-SNE's affinity, exp(-b_i |z_i - z_j|^2) with b_i found by bisection so that each
      row's entropy is ln(perplexity) nats (default 30), for student and teacher separately; b_i is
      detached. Needs more than perplexity + 1 samples in the graph. Diverged in adversarial training
      (docs/TRAIN-METHOD.md): the student's own precision grows without bound as its features cluster.
    - "gaussian": exp(-|z_i - z_j|^2 / (2 s^2)), s^2 the median squared distance (detached).
    - "student-t": 1 / (1 + |z_i - z_j|^2).

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
        kernel: Kernel = "softmax-cosine",
        class_aware: str = "off",
        temperature: float = DEFAULT_TEMPERATURE,
        perplexity: float = DEFAULT_PERPLEXITY,
        *,
        divergence: Divergence = "forward",
        entropy_weight: float = 0.0,
        center: Centering = "none",
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        if not (math.isfinite(perplexity) and perplexity > 1):
            raise ValueError(f"perplexity must be a number above 1, got {perplexity}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose from {', '.join(DIVERGENCES)}")
        if not (math.isfinite(entropy_weight) and entropy_weight >= 0):
            raise ValueError(f"entropy_weight must be a number >= 0, got {entropy_weight}")
        if center not in CENTERINGS:
            raise ValueError(f"unknown centering {center!r}; choose from {', '.join(CENTERINGS)}")
        class_mask(torch.zeros(1, dtype=torch.long), class_aware)  # validate the mode early
        self.kernel = kernel
        self.class_aware = class_aware
        self.temperature = temperature
        self.perplexity = perplexity
        self.divergence = divergence
        self.entropy_weight = entropy_weight
        self.center = center

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.rows(student, teacher, labels)

    def graph(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p(j|i) of one set of features under this loss's kernel."""
        return affinity_log_probs(z, self.kernel, mask, self.temperature, self.perplexity, center=self.center)

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
            if self.kernel in STACKABLE and len({x.shape for x in flat}) == 1:
                z = torch.stack(flat)
                s = affinity_log_probs(
                    z, self.kernel, mask, self.temperature, self.perplexity, stacked=True, center=self.center
                )
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
        if self.kernel == "perplexity" and self.perplexity >= n - 1:
            raise ValueError(
                f"perplexity {self.perplexity:g} needs a graph of more than {self.perplexity + 1:g} "
                f"samples, got {n} (lower the perplexity or raise the batch size)"
            )
        if self.class_aware == "off":
            return None
        if labels is None:
            raise ValueError("class-aware topology loss needs labels")
        return class_mask(labels, self.class_aware)

    def extra_repr(self) -> str:
        extra = {
            "softmax-cosine": f", temperature={self.temperature:g}",
            "perplexity": f", perplexity={self.perplexity:g}",
        }.get(self.kernel, "")
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("divergence", self.divergence, "forward"),
                ("entropy_weight", self.entropy_weight, 0.0),
                ("center", self.center, "none"),
            )
            if value != default
        )
        return f"kernel={self.kernel!r}{extra}, class_aware={self.class_aware!r}{options}"


def knn_indices(z: Tensor, k: int) -> Tensor:
    """Indices of each row's k nearest neighbours (Euclidean, self excluded)."""
    z = z.float().flatten(1)
    d2 = _squared_distances(z / _power_of_two_scale(z, (0, 1)))  # the same neighbours, no overflow
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
