"""Affinity kernels: k(z_i, z_j) over a batch of features, as objects that carry their own parameters.

A kernel registers itself by name (`register_kernel`), so that a config's `topology.kernel` and
`TopologyLoss("name")` find it; a config's `topology.temperature`, `topology.perplexity` and
`topology.kernel_args` fill in the parameters its constructor takes (`kernel_from_settings`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TopoatError
from ..registry import KERNELS

DEFAULT_TEMPERATURE = 0.1
DEFAULT_PERPLEXITY = 30.0
# Bisection on log(precision * scale) over [-LOG_RANGE, LOG_RANGE]: 2 * 30 / 2^BISECTION_STEPS is far
# below what fp32 resolves, so the entropy is met to fp32 precision.
_LOG_PRECISION_RANGE = 30.0
_BISECTION_STEPS = 48
# The cosine kernel (1 + cos) / 2 is exactly 0 for opposite vectors; only there is an epsilon needed.
_COSINE_EPS = 1e-8


class Kernel:
    """log k(z_i, z_j) for a batch. Subclasses are dataclasses of their parameters, registered by name.

    `log_kernel(z, scale, allowed)` gets the features already divided by `scale` (a power of two, so the
    graph is the same bits for ordinary features and nothing overflows near fp32's limit) and centred as
    asked; `allowed` marks the pairs a row may link to. A `stackable` kernel also takes (k, n, d) features,
    k feature sets of the same n samples, and returns (k, n, n) in one batched pass."""

    name: ClassVar[str] = ""
    stackable: ClassVar[bool] = False

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        raise NotImplementedError

    def graph_size_problem(self, n: int) -> str | None:
        """Why a graph of `n` samples is too small for this kernel (None: it is not)."""
        return None

    def settings(self) -> dict[str, Any]:
        """The kernel's parameters by name (what `make_kernel` takes back)."""
        return (
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}
        )

    def label(self) -> str:
        """The name and parameters, e.g. `softmax-cosine T=0.1`, for reports."""
        return " ".join([self.name, *(f"{key}={value:g}" for key, value in self.settings().items())])


K = TypeVar("K", bound=type[Kernel])


def register_kernel(name: str) -> Callable[[K], K]:
    """Class decorator: `@register_kernel("laplace")` above a Kernel subclass makes the name usable."""

    def add(cls: K) -> K:
        cls.name = name
        KERNELS.register(name, cls)
        return cls

    return add


def kernel_parameters(cls: type[Kernel]) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p != "self"]


def make_kernel(name: str, **params: Any) -> Kernel:
    """The kernel registered as `name` with these parameters; unknown ones are a TopoatError."""
    cls = KERNELS.get(name)
    allowed = kernel_parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TopoatError(
            f"kernel {name}: unknown parameter(s) {', '.join(unknown)} (allowed: {', '.join(allowed) or 'none'})"
        )
    return cls(**params)


def kernel_from_settings(name: str, shared: Mapping[str, Any], args: Mapping[str, Any]) -> Kernel:
    """The kernel a config describes: the `shared` settings it has a parameter of (the topology section's
    temperature and perplexity) and its own `args` (topology.kernel_args)."""
    allowed = kernel_parameters(KERNELS.get(name))
    params = {key: value for key, value in shared.items() if key in allowed}
    return make_kernel(name, **{**params, **args})


def power_of_two_scale(z: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """The power of two just below the largest |z| over `dims` (kept as size-1 dims), from the fp32 bits
    (the exponent without the mantissa), detached; 1 where that is 0, subnormal or not finite. Dividing by
    it is exact, so the kernels give the same bits as before for ordinary features, while features near
    fp32's limit (1e19 squared overflows in a sum of a few terms) no longer overflow to a graph of zeros."""
    amax = z.detach().abs().amax(dim=dims, keepdim=True).float()
    scale = (amax.view(torch.int32) & 0x7F800000).view(torch.float32)
    return torch.where(torch.isfinite(amax) & (scale > 0), scale, torch.ones_like(scale))


def squared_distances(z: Tensor) -> Tensor:
    # The expanded form keeps gradients finite for duplicate rows (cdist's sqrt would not).
    sq = (z * z).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * (z @ z.t())).clamp_min(0.0)


def _median_pairwise(d2: Tensor) -> Tensor:
    """Median over the distinct pairs i < j (the midpoint of the two middle values when even)."""
    i, j = torch.triu_indices(d2.shape[0], d2.shape[0], offset=1, device=d2.device)
    values = d2[i, j].sort().values
    k = values.numel()
    return 0.5 * (values[(k - 1) // 2] + values[k // 2])


def _cosines(z: Tensor) -> Tensor:
    z = z / power_of_two_scale(z, -1)  # a row far below the largest keeps its direction
    zn = F.normalize(z, dim=-1, eps=1e-12)  # all-zero rows stay zero: cos = 0
    return zn @ zn.transpose(-1, -2)


@register_kernel("cosine")
@dataclass
class Cosine(Kernel):
    """(1 + cos) / 2. Post-ReLU features have cos >= 0, so k lies in [0.5, 1] and rows are nearly uniform:
    a weak, flat graph (kept as the first reading of the paper)."""

    stackable: ClassVar[bool] = True

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        return torch.log((1.0 + _cosines(z)) * 0.5 + _COSINE_EPS)


@register_kernel("softmax-cosine")
@dataclass
class SoftmaxCosine(Kernel):
    """exp(cos / temperature): the cosine similarity, sharp. The default kernel: with lambda 10 it moved
    both base methods' frontiers (docs/RESULTS.md)."""

    temperature: float = DEFAULT_TEMPERATURE
    stackable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        return _cosines(z) / self.temperature

    def label(self) -> str:
        return f"{self.name} T={self.temperature:g}"


@register_kernel("gaussian")
@dataclass
class Gaussian(Kernel):
    """exp(-|z_i - z_j|^2 / (2 s^2)), s^2 the median squared distance (detached, so the bandwidth is not
    a shortcut)."""

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        d2 = squared_distances(z)  # of the scaled features: the graph does not change
        return -d2 / (2.0 * _median_pairwise(d2.detach()).clamp_min(1e-12))


@register_kernel("student-t")
@dataclass
class StudentT(Kernel):
    """1 / (1 + |z_i - z_j|^2)."""

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        # not scale-free: the true distances, in float64 where they fit
        return -torch.log1p(squared_distances(z).double() * scale.double().flatten() ** 2).float()


@register_kernel("perplexity")
@dataclass
class Perplexity(Kernel):
    """t-SNE's affinity, exp(-b_i |z_i - z_j|^2) with b_i found by bisection so that each row's entropy is
    ln(perplexity) nats, for student and teacher separately; b_i is detached. Needs more than perplexity + 1
    samples in the graph. Diverged in adversarial training (docs/TRAIN-METHOD.md): the student's own
    precision grows without bound as its features cluster."""

    perplexity: float = DEFAULT_PERPLEXITY

    def __post_init__(self) -> None:
        if not (math.isfinite(self.perplexity) and self.perplexity > 1):
            raise ValueError(f"perplexity must be a number above 1, got {self.perplexity}")

    def log_kernel(self, z: Tensor, scale: Tensor, allowed: Tensor) -> Tensor:
        d2 = squared_distances(z)
        return -perplexity_precisions(d2.detach(), self.perplexity, allowed)[:, None] * d2

    def graph_size_problem(self, n: int) -> str | None:
        if self.perplexity < n - 1:
            return None
        return (
            f"perplexity {self.perplexity:g} needs a graph of more than {self.perplexity + 1:g} samples, got {n}: "
            "lower the perplexity or raise the batch size"
        )


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
