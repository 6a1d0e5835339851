"""What the throughput benchmark compares against: the analytic FLOP count of a model, the cost of each
kind of pass (counted, or timed on the model), the machine's dense matmul peak, and the cost of the
topology loss by graph size."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from topoat.models import build_model
from topoat.runtime import as_channels_last, autocast, use_channels_last
from topoat.topology import TopologyLoss

MODELS = {"small-cnn": (1, 28, 28), "preact-resnet18": (3, 32, 32)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model: nn.Module, shape) -> float:
    """Analytic forward FLOPs per image: 2 x MACs of every Conv2d and Linear."""
    total = 0.0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += 2.0 * out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += 2.0 * m.in_features * m.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.rand(1, *shape))
    for h in handles:
        h.remove()
    return total


# Forward-equivalents of each kind of pass: an input-only backward costs 1 forward, a parameter
# backward 2; a frozen teacher runs one no-grad forward.
COUNTED_PASSES = {"attack_step": 2.0, "training_pass": 3.0, "teacher_forward": 1.0}


def forward_equivalents(mode: str, k: int) -> float:
    return pass_cost(mode, k, COUNTED_PASSES)


def pass_seconds(arch: str, args, reps: int) -> dict[str, float]:
    """Seconds per batch of each kind of pass the modes are made of, timed on the model itself in the
    modes' layout and precision: a forward with an input-only backward (one attack step), a forward with
    a parameter backward (a training pass), and a no-grad forward in eval mode (a frozen teacher).
    Each is the fastest of `reps` rounds, every round timing all three in turn. The passes run eager,
    also under --compile: the prediction is what the uncompiled network costs."""
    device = torch.device(args.device)
    c, h, w = MODELS[arch]
    model = build_model(arch, 10, c, [0.5] * c, [0.25] * c).to(device)
    x = torch.rand(args.batch_size, c, h, w, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if use_channels_last(args.channels_last):
        model, x = as_channels_last(model), x.contiguous(memory_format=torch.channels_last)

    def attack_step():
        xg = x.clone().requires_grad_(True)
        with autocast(device, args.amp):
            loss = F.cross_entropy(model.train()(xg).float(), y)
        torch.autograd.grad(loss, xg)

    def training_pass():
        with autocast(device, args.amp):
            loss = F.cross_entropy(model.train()(x).float(), y)
        loss.backward()

    def teacher_forward():
        with torch.no_grad(), autocast(device, args.amp):
            model.eval()(x)

    passes = {"attack_step": attack_step, "training_pass": training_pass, "teacher_forward": teacher_forward}
    best = {name: float("inf") for name in passes}
    for round_ in range(reps + 1):
        for name, run in passes.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if round_ > 0:  # round 0 warms up
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def pass_cost(mode: str, k: int, s: dict[str, float]) -> float:
    """A mode's cost from the cost of each kind of pass: its seconds per batch from `pass_seconds` (what
    the step would cost if nothing but the network's passes took time), or its forward-equivalents from
    `COUNTED_PASSES`."""
    base = {
        "standard": s["training_pass"],
        "pgd-at": k * s["attack_step"] + s["training_pass"],
        # the clean target p(x), K attack steps, the natural and adversarial training passes
        "trades": s["teacher_forward"] + k * s["attack_step"] + 2 * s["training_pass"],
    }[mode.split("+")[0]]
    if mode.endswith("+train"):
        base += s["teacher_forward"] + (s["training_pass"] if mode.startswith("pgd-at") else 0.0)
    return base


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int, layout: str, seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a, b = {"nn": (a, b), "nt": (a, b.t()), "tn": (a.t(), b)}[layout]
    torch.mm(a, b)
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
        sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes, seconds: float = 1.0) -> dict:
    """The best dense matmul rate over several sizes and operand layouts: a peak is the most the machine
    does, and one size or layout alone can lose to tuned convolution kernels (measured: a single
    2048 x 2048 fp32 mm on a 2-core AMD EPYC, beaten by the training modes)."""
    rates = {
        f"{n}-{layout}": _matmul_rate(device, dtype, n, layout, seconds) for n in sizes for layout in ("nn", "nt", "tn")
    }
    best = max(rates, key=rates.get)
    return {"flops_per_s": rates[best], "best": best, "rates": rates}


def share_of_peak(achieved: float, peak: float) -> float | None:
    """The achieved share of the peak; None where a mode beat the peak, which says the peak was not the
    machine's best (a failed measurement), not that the mode ran above 100 %."""
    return achieved / peak if achieved <= peak else None


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def aten_ops(run) -> int:
    """How many aten operations `run` dispatches to kernels, its backward included: on a GPU, about
    the kernel launches, whose fixed cost dominates small tensors."""
    with _OpCounter() as counter:
        run()
    return counter.count


def topology_cost(device: torch.device, sizes, dim: int, reps: int = 5) -> list[dict]:
    """Forward + backward of one topology term, and of TRAIN's two terms (natural and adversarial
    features against one teacher) computed apart and fused (`TopologyLoss.terms`), with the number of
    aten operations each runs: on a GPU a small graph's cost is these launches, not its arithmetic."""
    loss = TopologyLoss()
    rows = []
    for n in sizes:
        nat, adv = (torch.randn(n, dim, device=device, requires_grad=True) for _ in range(2))
        row: dict = {"n": n}
        for key, run in _topology_variants(loss, nat, adv, torch.randn(n, dim, device=device)).items():
            run()
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                run()
            sync(device)
            row[key] = 1000 * (time.perf_counter() - start) / reps
            row["aten_ops" + key[len("ms") :]] = aten_ops(run)
        rows.append(row)
    return rows


def _topology_variants(
    loss: TopologyLoss, nat: torch.Tensor, adv: torch.Tensor, t: torch.Tensor
) -> dict[str, Callable[[], None]]:
    return {
        "ms": lambda: loss(nat, t).backward(),
        "ms_two_terms_apart": lambda: (loss(nat, t) + loss(adv, t)).backward(),
        "ms_two_terms_fused": lambda: loss.terms([nat, adv], t).sum().backward(),
    }
