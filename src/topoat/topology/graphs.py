"""Affinity graphs of a batch, p(j|i) proportional to k(z_i, z_j) over j != i, and what compares two of
them: the KL between graphs, row entropies, the class-aware neighbour masks."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .kernels import KERNELS, Kernel, Perplexity, SoftmaxCosine, kernel_parameters, make_kernel, power_of_two_scale

# forward: KL(P_teacher || P_student), mode-covering (a student can lower it by flattening its own graph);
# reverse: KL(P_student || P_teacher), mode-seeking; symmetric: their mean.
Divergence = Literal["forward", "reverse", "symmetric"]
DIVERGENCES = ("forward", "reverse", "symmetric")
# Features centred before the kernel: over the batch (removes the common direction of non-negative
# features) or within each sample (Pearson correlation for the cosine kernels).
Centering = Literal["none", "batch", "sample"]
CENTERINGS = ("none", "batch", "sample")


def as_kernel(kernel: Kernel | str, temperature: float | None = None, perplexity: float | None = None) -> Kernel:
    """A kernel object from an object or a registered name. With a name, `temperature` and `perplexity`
    (when given, each checked) go to the kernel that takes a parameter of that name, as in
    `TopologyLoss("softmax-cosine", temperature=0.5)`; a kernel without one ignores it."""
    if isinstance(kernel, Kernel):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS.names())}")
    if temperature is not None:
        SoftmaxCosine(temperature)  # checks it, as TopologyLoss always did
    if perplexity is not None:
        Perplexity(perplexity)
    given = {"temperature": temperature, "perplexity": perplexity}
    allowed = kernel_parameters(KERNELS.get(kernel))
    return make_kernel(kernel, **{k: v for k, v in given.items() if v is not None and k in allowed})


def log_kernel(
    z: Tensor,
    kernel: Kernel | str = "cosine",
    allowed: Tensor | None = None,
    stacked: bool = False,
    center: Centering = "none",
) -> Tensor:
    """Log of the kernel matrix k(z_i, z_j), shape (n, n), computed in fp32. `allowed` (the pairs a row
    may link to) matters to kernels whose rows depend on them (perplexity). `stacked`: z is (k, n, d), k
    feature sets of the same n samples, giving (k, n, n) in one batched pass (stackable kernels only).
    `center`: subtract the batch mean or each sample's own mean first."""
    k = as_kernel(kernel)
    if stacked and (z.dim() != 3 or not k.stackable):
        stackable = [cls.name for cls in KERNELS if cls.stackable]
        raise ValueError(f"stacked graphs take (k, n, d) features and a kernel of {', '.join(stackable)}")
    z = z.float() if stacked else z.float().flatten(1)
    scale = power_of_two_scale(z, (-2, -1))  # one for the whole graph: distances keep their ratios
    z = z / scale
    if center == "batch":
        z = z - z.mean(dim=-2, keepdim=True)
    elif center == "sample":
        z = z - z.mean(dim=-1, keepdim=True)
    elif center != "none":
        raise ValueError(f"unknown centering {center!r}; choose from {', '.join(CENTERINGS)}")
    if allowed is None:
        allowed = ~torch.eye(z.shape[-2], dtype=torch.bool, device=z.device)
    return k.log_kernel(z, scale, allowed)


def affinity_log_probs(
    z: Tensor,
    kernel: Kernel | str = "cosine",
    mask: Tensor | None = None,
    temperature: float | None = None,
    perplexity: float | None = None,
    stacked: bool = False,
    center: Centering = "none",
) -> Tensor:
    """Row-normalised log p(j|i) over j != i (and over `mask` if given); excluded entries are -inf.
    `kernel`: a Kernel, or a registered name with `temperature`/`perplexity` for it (see `as_kernel`).
    `stacked`: z is (k, n, d), k feature sets of the same n samples, and the result (k, n, n)."""
    n = z.shape[1 if stacked else 0]
    if n < 2:
        raise ValueError("an affinity graph needs at least 2 samples")
    allowed = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if mask is not None:
        allowed = allowed & mask
    logk = log_kernel(z, as_kernel(kernel, temperature, perplexity), allowed, stacked, center)
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
        logp = affinity_log_probs(z, SoftmaxCosine(math.exp(mid)), center=center)
        if float(row_entropy(logp).mean()) > target:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


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
