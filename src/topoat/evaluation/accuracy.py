"""Accuracy under attack: natural accuracy, each attack's robust accuracy, and the per-sample worst case.

Everything here works on any `nn.Module` that maps images in [0, 1] to logits (the RobustBench
convention), not only on topoat models.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

# Attacks by name live at the attacks layer; these names stay importable from here.
from ..attacks.names import AttackSpec as AttackSpec
from ..attacks.names import build_attack as build_attack
from ..attacks.names import parse_attack
from ..attacks.threat import ThreatModel
from ..data import ImageDataset, load_dataset, to_float
from ..errors import TopoatError
from ..runtime import bar_disabled


def fixed_subset(n_total: int, n: int | None, seed: int = 0) -> Tensor:
    """The same n test indices for every model and every call with this seed (sorted). Subsets are
    nested: the n chosen for a smaller n are among those chosen for a larger one."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def held_out_subset(
    dataset: ImageDataset, n: int | None, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """The fixed held-out set: the same `n` test images (chosen by `seed`) for every model and call, as
    floats in [0, 1] on `device`."""
    idx = fixed_subset(dataset.x_test.shape[0], n, seed)
    return to_float(dataset.x_test[idx].to(device)), dataset.y_test[idx].to(device)


def benchmark(
    model: nn.Module,
    dataset: str | ImageDataset = "fashion-mnist",
    *,
    threat_model: str = "Linf",
    eps: float | None = None,
    attacks: Sequence[str] = ("pgd-20",),
    n: int | None = 1000,
    seed: int = 0,
    root: str | None = None,
    step_size: float | None = None,
    batch_size: int = 500,
    autoattack_n: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> EvalResult:
    """Natural and robust accuracy of any `model` (images in [0, 1] -> logits) on a dataset's fixed test
    subset: the same `n` images, attacks and random starts as `topoat eval --n N --seed SEED`, so the numbers
    are the ones the command prints. `dataset` is a name (read from `root`, else its default place) or a
    loaded ImageDataset; `eps` defaults to the radius of the dataset's packaged configs (0.1 for
    Fashion-MNIST, 8/255 for CIFAR and Tiny ImageNet); `device` to the model's."""
    data = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, root)
    if eps is None:
        eps = _packaged_radius(dataset if isinstance(dataset, str) else data.name, threat_model)
    if device is None:
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    x, y = held_out_subset(data, n, seed, device)
    return evaluate(
        model.eval(),
        x,
        y,
        list(attacks),
        norm=threat_model,
        eps=eps,
        step_size=step_size,
        batch_size=batch_size,
        progress=progress,
        autoattack_n=autoattack_n,
        seed=seed,
    )


def _packaged_radius(dataset: str, norm: str) -> float:
    """The eps topoat's packaged configs train and evaluate `dataset` under, for that norm."""
    from ..config import PRESETS, load_config

    standard = PRESETS / "configs" / dataset / "standard.yaml"
    attack = load_config(standard).attack if standard.is_file() else None
    if attack is None or attack.norm != norm:
        raise TopoatError(f"benchmark: give eps (no packaged {norm} threat model for {dataset!r})")
    return attack.eps


@dataclass
class EvalResult:
    """Accuracies as fractions in [0, 1].

    `robust_acc[name]` is measured on the images the attack ran on: all n, except AutoAttack when
    `autoattack_n` chose fewer; then `subset` holds every accuracy again on just those images (the
    like-for-like comparison), and the per-sample `worst` case lives there. `correct` and `evaluated`
    are per-sample masks over the n images.
    """

    n: int
    natural_acc: float
    robust_acc: dict[str, float] = field(default_factory=dict)
    natural: Tensor | None = None
    correct: dict[str, Tensor] = field(default_factory=dict)
    evaluated: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    subset: dict | None = None

    def n_of(self, name: str) -> int:
        return int(self.evaluated[name].sum()) if name in self.evaluated else self.n

    def accuracy_on(self, mask: Tensor) -> dict[str, float]:
        """Natural and robust accuracy of every attack that ran on all of `mask`'s images."""
        if self.natural is None:  # the TypeError that `None & mask` raised, saying what is missing
            raise TypeError("accuracy_on needs the per-sample masks of an evaluation (natural is None)")
        k = max(int(mask.sum()), 1)
        out = {"natural": float((self.natural & mask).sum()) / k}
        for name, c in self.correct.items():
            if bool((self.evaluated[name] | ~mask).all()):
                out[name] = float((c & mask).sum()) / k
        return out

    def as_dict(self) -> dict:
        d = {
            "n": self.n,
            "natural_acc": self.natural_acc,
            "robust_acc": dict(self.robust_acc),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }
        if self.subset is not None:
            d["autoattack_subset"] = self.subset
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def predicted_class(logits: Tensor) -> Tensor:
    """argmax per row, but -1 (never a label) where a row is not finite: NaN logits argmax to some class,
    which counted as "correct" for that class's images, and an attack on NaN gradients changes nothing,
    so a NaN-weight model reported robust accuracy equal to its natural accuracy."""
    return logits.argmax(1).masked_fill(~torch.isfinite(logits).all(1), -1)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    return predicted_class(model(x))


def _stream_seed(seed: int, name: str, start: int) -> int:
    """A seed per (attack, batch): an attack's random starts do not depend on which others ran before it."""
    return zlib.crc32(f"{seed}:{name}:{start}".encode())


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[str] = ("pgd-20",),
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    step_size: float | None = None,
    batch_size: int = 500,
    progress: bool = True,
    custom: dict[str, Callable[[Tensor, Tensor], Tensor]] | None = None,
    autoattack_n: int | None = None,
    seed: int = 0,
) -> EvalResult:
    """Evaluate `model` (in eval mode; any nn.Module taking [0, 1] images) on (x, y) on its device.

    A sample counts as robust to an attack only if it is also classified correctly without attack
    (only those are attacked); with several attacks, "worst" is the per-sample worst case (robust to
    all), never an average. Non-finite logits count as a wrong prediction (and add a note). `custom` adds
    attacks given as callables `attack(x, y) -> x_adv`.
    AutoAttack runs on a fixed `autoattack_n` of the images when given (it is costly). Random starts
    come from `seed`; the caller's random state is left as it was.
    """
    _check_arguments(x, y, batch_size, autoattack_n)
    threat = ThreatModel(norm, eps, "evaluate")
    specs = [parse_attack(a) for a in attacks]
    names = [s.name for s in specs] + list(custom or {})
    if len(set(names)) != len(names):
        raise TopoatError(f"evaluate: an attack is listed twice in {', '.join(names)}")
    was_training = model.training
    model.eval()
    n = x.shape[0]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        named: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
            s.name: build_attack(s.name, model, threat.norm, threat.eps, step_size, seed=seed) for s in specs
        }
        named.update(custom or {})
        evaluated = _coverage(named, specs, n, autoattack_n, seed, x.device)
        natural = torch.zeros(n, dtype=torch.bool, device=x.device)
        non_finite = torch.zeros((), dtype=torch.long, device=x.device)
        correct = {k: torch.zeros(n, dtype=torch.bool, device=x.device) for k in named}
        seconds = {k: 0.0 for k in named}
        starts = range(0, n, batch_size)
        bar = tqdm(total=len(starts) * len(named), desc="evaluate", leave=False, disable=bar_disabled(progress))
        for start in starts:
            end = min(start + batch_size, n)
            xb, yb = x[start:end], y[start:end]
            predicted = predict(model, xb)
            natural[start:end] = predicted == yb
            non_finite += (predicted < 0).sum()
            for name, attack in named.items():
                bar.set_description(f"evaluate {name}")
                # only images that are classified correctly and that this attack covers are attacked
                todo = (natural[start:end] & evaluated[name][start:end]).nonzero().squeeze(1)
                if todo.numel():
                    t0 = time.perf_counter()
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(_stream_seed(seed, name, start))
                        x_adv = attack(xb[todo], yb[todo])
                    correct[name][start + todo] = predict(model, x_adv) == yb[todo]
                    if x.is_cuda:
                        torch.cuda.synchronize(x.device)
                    seconds[name] += time.perf_counter() - t0
                bar.update(1)
        bar.close()
        result = EvalResult(
            n, float(natural.float().mean()), natural=natural, correct=correct, evaluated=evaluated, seconds=seconds
        )
        _add_summaries(result, named, int(non_finite), x.device)
        return result
    finally:
        model.train(was_training)


def _check_arguments(x: Tensor, y: Tensor, batch_size: int, autoattack_n: int | None) -> None:
    if x.shape[0] != y.shape[0]:
        raise TopoatError(f"evaluate: {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:  # an accuracy over no images is 0/0, not a result
        raise TopoatError("evaluate: no images to evaluate")
    if batch_size < 1:
        raise TopoatError("evaluate: batch_size must be >= 1")
    if autoattack_n is not None and autoattack_n < 1:
        raise TopoatError("evaluate: autoattack_n must be >= 1")


def _coverage(
    named: dict[str, Callable[[Tensor, Tensor], Tensor]],
    specs: list[AttackSpec],
    n: int,
    autoattack_n: int | None,
    seed: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Per attack, the images it is run on: all of them, but AutoAttack's fixed `autoattack_n` if given."""
    everywhere = torch.ones(n, dtype=torch.bool, device=device)
    evaluated = {name: everywhere for name in named}
    if autoattack_n is not None and autoattack_n < n:
        aa_mask = torch.zeros(n, dtype=torch.bool, device=device)
        aa_mask[fixed_subset(n, autoattack_n, seed).to(device)] = True
        for s in specs:
            if s.is_autoattack:
                evaluated[s.name] = aa_mask
    return evaluated


def _add_summaries(
    result: EvalResult, named: dict[str, Callable[[Tensor, Tensor], Tensor]], non_finite: int, device: torch.device
) -> None:
    """Each attack's robust accuracy, the notes, and the worst case: over every image when all attacks
    covered all of them, else on the images every attack covered (`result.subset`)."""
    n, correct, evaluated = result.n, result.correct, result.evaluated
    for name, c in correct.items():
        result.robust_acc[name] = float(c.sum()) / max(int(evaluated[name].sum()), 1)
    if non_finite:
        result.notes.append(
            f"{non_finite} of {n} images gave non-finite logits (NaN or inf weights or "
            "activations?); they count as wrong"
        )
    for name, attack in named.items():
        result.notes += [f"{name}: {note}" for note in getattr(attack, "notes", [])]
    everywhere = torch.ones(n, dtype=torch.bool, device=device)
    common = torch.stack(list(evaluated.values())).all(dim=0) if named else everywhere
    if len(correct) > 1 and bool(common.all()):
        result.robust_acc["worst"] = float(torch.stack(list(correct.values())).all(dim=0).float().mean())
    elif not bool(common.all()):
        on_subset = result.accuracy_on(common)
        robust = {k: v for k, v in on_subset.items() if k != "natural"}
        robust["worst"] = float((torch.stack(list(correct.values())).all(dim=0) & common).sum()) / int(common.sum())
        result.subset = {"n": int(common.sum()), "natural_acc": on_subset["natural"], "robust_acc": robust}


def format_result(result: EvalResult) -> str:
    """A plain-text table of an evaluation: one row per attack, accuracy in percent."""
    rows: list[tuple[str, int, float, float | None]] = [("natural", result.n, result.natural_acc, None)]
    rows += [
        (name, result.n_of(name) if name != "worst" else result.n, acc, result.seconds.get(name))
        for name, acc in result.robust_acc.items()
    ]
    lines = _table(rows)
    if result.subset is not None:
        s = result.subset
        lines.append("")
        lines.append(f"on the {s['n']} images AutoAttack ran on (the like-for-like comparison):")
        lines += _table(
            [("natural", s["n"], s["natural_acc"], None)]
            + [(name, s["n"], acc, None) for name, acc in s["robust_acc"].items()]
        )
    return "\n".join(lines)


def _table(rows: list) -> list[str]:
    from ..table_format import text_table

    timed = any(sec is not None for *_, sec in rows)
    header = ("attack", "images", "accuracy %") + (("seconds",) if timed else ())
    cells = [
        (name, n, f"{100 * acc:.2f}") + (("" if sec is None else f"{sec:.1f}",) if timed else ())
        for name, n, acc, sec in rows
    ]
    return text_table(header, cells, align="l" + "r" * (len(header) - 1), rule=False).splitlines()
