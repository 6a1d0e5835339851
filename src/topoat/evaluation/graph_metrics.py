"""Topology metrics of a model's representation against a reference (standard) model's, and t-SNE maps.

"Topology preserved" is measured on a fixed held-out set of natural test images, model against the
reference model:
  graph_kl          the TRAIN loss itself (cosine graphs of `graph_size` samples) between the two
                    representations of the natural images
  graph_kl_adv      the same for the model's representations of PGD examples made against the model,
                    against the reference's *natural* graph (what the adversarial TRAIN term pulls)
  knn_overlap       mean Jaccard overlap of each sample's k nearest neighbours in both spaces
  trustworthiness   scikit-learn's, with the reference space as the original and the model's as the
                    embedding: 1 when no sample gains neighbours that the reference does not have
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import TopoatError
from ..models import representation
from ..topology import Kernel, SoftmaxCosine, TopologyLoss, affinity_log_probs, knn_overlap, row_entropy
from .accuracy import build_attack, predicted_class

TOPOLOGY_METRICS = ("graph_kl", "graph_kl_adv", "knn_overlap", "trustworthiness")


@torch.no_grad()
def extract(model: nn.Module, x: Tensor, layer: str = "features", batch_size: int = 500) -> Tensor:
    """Representations of x at `layer`, in eval mode, as one fp32 tensor."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [representation(model, x[i : i + batch_size], layer)[1].float() for i in range(0, x.shape[0], batch_size)]
        )
    finally:
        model.train(was_training)


def batched_graph_kl(
    student: Tensor, teacher: Tensor, graph_size: int = 128, kernel: Kernel | str | TopologyLoss = "cosine"
) -> float:
    """Mean graph KL over consecutive graphs of `graph_size` samples (the training loss's scale), under a
    kernel's default settings or a configured TopologyLoss.

    A graph's KL depends on its size, so a remainder smaller than `graph_size` is left out rather than
    averaged in as a smaller graph."""
    loss = kernel if isinstance(kernel, TopologyLoss) else TopologyLoss(kernel)
    values = [
        loss(student[i : i + graph_size], teacher[i : i + graph_size])
        for i in range(0, student.shape[0] - graph_size + 1, graph_size)
    ]
    if not values:
        values = [loss(student, teacher)]
    return float(torch.stack(values).mean())


def graph_shape(z: Tensor, graph_size: int = 128, temperature: float = 0.1) -> dict[str, float]:
    """How sharp a representation's graphs are, over consecutive graphs of `graph_size` samples: the mean
    row entropy of the softmax-cosine graph at `temperature` (nats; ln(graph_size - 1) is uniform) and the
    mean pairwise cosine (features drifting toward one direction raise it)."""
    entropies, cosines = [], []
    for i in range(0, max(z.shape[0] - graph_size, 0) + 1, graph_size):
        zb = z[i : i + graph_size].float().flatten(1)
        n = zb.shape[0]
        entropies.append(row_entropy(affinity_log_probs(zb, SoftmaxCosine(temperature))).mean())
        zn = torch.nn.functional.normalize(zb, dim=1)
        cosines.append(((zn @ zn.t()).sum() - n) / (n * (n - 1)))
    return {"graph_entropy": float(torch.stack(entropies).mean()), "mean_cosine": float(torch.stack(cosines).mean())}


def trustworthiness(embedded: Tensor, original: Tensor, k: int = 10) -> float:
    """scikit-learn's trustworthiness of `embedded` with respect to `original` (same samples, any widths)."""
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    n = original.shape[0]
    if k >= n / 2:
        raise TopoatError(f"trustworthiness at k={k} needs more than {2 * k} samples, got {n}")
    return float(sk_trustworthiness(original.double().cpu().numpy(), embedded.double().cpu().numpy(), n_neighbors=k))


def topology_metrics(
    student: Tensor,
    teacher: Tensor,
    k: int = 10,
    graph_size: int = 128,
    kernel: Kernel | str | TopologyLoss = "cosine",
    student_adv: Tensor | None = None,
    with_trustworthiness: bool = False,
) -> dict[str, float]:
    """Metrics of `student` features against `teacher` features of the same natural samples.

    Graph KL and kNN overlap are cheap (per-epoch logging uses them); trustworthiness ranks all pairs
    and is left to the full analysis."""
    out = {
        "graph_kl": batched_graph_kl(student, teacher, graph_size, kernel),
        "knn_overlap": knn_overlap(student, teacher, k),
    }
    if student_adv is not None:
        out["graph_kl_adv"] = batched_graph_kl(student_adv, teacher, graph_size, kernel)
    if with_trustworthiness:
        out["trustworthiness"] = trustworthiness(student, teacher, k)
    return out


@dataclass
class Representations:
    """One model's representations of a fixed set of natural images and of PGD examples made against it."""

    natural: Tensor  # (n, d), fp32, on the CPU
    adversarial: Tensor  # (n, d): x' from `attack` against this model, same order as `natural`
    labels: Tensor  # (n,)
    natural_acc: float
    robust_acc: float
    attack: str


def representations(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    attack: str = "pgd-20",
    step_size: float | None = None,
    layer: str = "features",
    batch_size: int = 500,
    seed: int = 0,
    label: str = "the model",
) -> Representations:
    """Representations of (x, y) (on the model's device) and of the model's own adversarial examples.

    The attack's random start is drawn from `seed` without touching the caller's RNG state, so the same
    call gives the same metrics. Non-finite representations (a model with NaN weights) are a TopoatError
    naming `label`: no topology metric means anything on them."""
    was_training = model.training
    model.eval()
    attacker = build_attack(attack, model, norm, eps, step_size)
    nat, adv, correct_nat, correct_adv = [], [], [], []
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for i in range(0, x.shape[0], batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                x_adv = attacker(xb, yb)
                with torch.no_grad():
                    logits, z = representation(model, xb, layer)
                    logits_adv, z_adv = representation(model, x_adv, layer)
                nat.append(z.float().cpu())
                adv.append(z_adv.float().cpu())
                correct_nat.append((predicted_class(logits) == yb).cpu())
                correct_adv.append((predicted_class(logits_adv) == yb).cpu())
    finally:
        model.train(was_training)
    natural_ok, adv_ok = torch.cat(correct_nat), torch.cat(correct_adv)
    natural, adversarial = torch.cat(nat), torch.cat(adv)
    broken = int((~(natural.isfinite().all(1) & adversarial.isfinite().all(1))).sum())
    if broken:
        raise TopoatError(
            f"{label} gives non-finite (NaN or infinite) {layer} for {broken} of {x.shape[0]} images or their "
            "adversarial examples (are its weights NaN?); topology metrics need finite representations"
        )
    return Representations(
        natural,
        adversarial,
        y.cpu(),
        float(natural_ok.float().mean()),
        float((natural_ok & adv_ok).float().mean()),
        attack,
    )


def compare(
    model: Representations,
    reference: Representations,
    k: int = 10,
    graph_size: int = 128,
    kernel: Kernel | str = "cosine",
) -> dict[str, float]:
    """The four topology metrics of `model` against `reference`, plus the model's accuracies on the set."""
    n = reference.natural.shape[0]
    if model.natural.shape[0] != n:
        raise ValueError("model and reference representations must be of the same samples")
    if k < 1 or n <= 2 * k:
        raise TopoatError(f"topology metrics at k={k} need more than {2 * k} samples, got {n}")
    metrics = topology_metrics(
        model.natural,
        reference.natural,
        k,
        graph_size,
        kernel,
        student_adv=model.adversarial,
        with_trustworthiness=True,
    )
    metrics = {name: metrics[name] for name in TOPOLOGY_METRICS}
    metrics.update({"natural_acc": model.natural_acc, "robust_acc": model.robust_acc})
    return metrics


def analyze_checkpoints(
    checkpoints: Sequence[str | Path],
    reference: str | Path,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    attack: str = "pgd-20",
    step_size: float | None = None,
    k: int = 10,
    layer: str = "features",
    graph_size: int = 128,
    kernel: Kernel | str = "cosine",
    seed: int = 0,
) -> dict[str, dict]:
    """Topology metrics of each checkpoint against the `reference` checkpoint on (x, y), keyed by path.

    The reference itself is included (as a checkpoint among the others or first): its natural metrics
    are trivially 0 / 1 / 1, but its graph_kl_adv shows how far an attack moves a standard model."""
    from ..runs.checkpoint import load_model

    device = x.device

    def representations_of(checkpoint: str | Path) -> Representations:
        return representations(
            load_model(checkpoint, device),
            x,
            y,
            norm=norm,
            eps=eps,
            attack=attack,
            step_size=step_size,
            layer=layer,
            seed=seed,
            label=f"checkpoint {checkpoint}",
        )

    ref = representations_of(reference)
    results = {str(reference): compare(ref, ref, k, graph_size, kernel)}
    for path in checkpoints:
        if str(path) in results:
            continue
        reps = representations_of(path)
        results[str(path)] = compare(reps, ref, k, graph_size, kernel)
    return results


def tsne_map(
    natural: Tensor, adversarial: Tensor, seed: int = 0, perplexity: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """One joint 2-D t-SNE of a model's natural and adversarial representations.

    Joint rather than one map each, so the two share coordinates: an adversarial point drawn inside
    another class's cluster is one the attack moved there."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    both = torch.cat([natural, adversarial]).double().numpy()
    perplexity = min(perplexity, (both.shape[0] - 1) / 3)  # scikit-learn needs perplexity < n
    # One thread: the Barnes-Hut gradient's OpenMP threads spin-wait, which made a 2,000-point map 4x
    # slower (and burn 4x the CPU) on a shared 2-core machine; alone, one thread maps it in seconds.
    with threadpool_limits(limits=1):
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
        ).fit_transform(both)
    return xy[: natural.shape[0]], xy[natural.shape[0] :]
