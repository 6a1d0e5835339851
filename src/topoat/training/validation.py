"""Per-epoch validation: accuracy (natural and under a short PGD) on the validation split, the topology
metrics against the reference model, and which epoch's model is the best so far."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..evaluation.accuracy import evaluate
from ..evaluation.graph_metrics import extract, graph_shape, topology_metrics
from ..objectives import Objective, TopologyRegularized
from ..schema import TrainConfig
from ..topology import TopologyLoss
from .distributed import SINGLE, DistContext, all_reduce_sum
from .state import Best


def due(cfg: TrainConfig, epochs_done: int) -> bool:
    """Every `validation.every` epochs, and after the last one."""
    return epochs_done % cfg.validation.every == 0 or epochs_done == cfg.optim.epochs


def score(record: dict[str, float]) -> float:
    """What "best" means: validation robust accuracy, or natural accuracy without a validation attack."""
    return record.get("val_robust_acc", record["val_natural_acc"])


def improves(record: dict[str, float], best: Best) -> bool:
    return score(record) > best.metric


class Validator:
    """Validates a model each epoch on a fixed split. The reference model's features do not change, so
    they are computed once."""

    def __init__(
        self,
        cfg: TrainConfig,
        x_val: Tensor,
        y_val: Tensor,
        reference: nn.Module | None,
        topology: TopologyLoss | None,
        dist: DistContext = SINGLE,
    ):
        self.cfg, self.x_val, self.y_val, self.reference, self.dist = cfg, x_val, y_val, reference, dist
        self.topology = topology or TopologyLoss()  # runs without TRAIN: the default kernel, for comparison
        self.reference_features: Tensor | None = None
        self.reference_shape: dict[str, float] = {}

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        attacks = [f"pgd-{cfg.validation.attack_steps}"] if cfg.validation.attack_steps > 0 else []
        # Each process validates its strided share; the counts are summed, so every rank agrees on "best".
        x_val, y_val = self.x_val[rank::world], self.y_val[rank::world]
        res = evaluate(
            model,
            x_val,
            y_val,
            attacks,
            norm=cfg.attack.norm,
            eps=cfg.attack.eps,
            batch_size=cfg.evaluation.batch_size,
            progress=False,
        )
        local = torch.tensor(
            [res.natural_acc * res.n] + [res.robust_acc[a] * res.n for a in attacks] + [res.n],
            device=device,
            dtype=torch.float64,
        )
        counts = all_reduce_sum(local).tolist()
        record: dict[str, float] = {"val_natural_acc": counts[0] / counts[-1]}
        if attacks:
            record["val_robust_acc"] = counts[1] / counts[-1]
        if rank == 0 and self.reference is not None and cfg.validation.topology and self.x_val.shape[0] > 10:
            record.update(self.topology_metrics(model, self.reference))
        return record

    def topology_metrics(self, model: nn.Module, reference: nn.Module) -> dict[str, float]:
        """Graph KL (under the run's own topology loss) and kNN overlap against the reference at the run's
        layer, and the shape of the penultimate features' graphs (entropy, mean cosine) of the model and,
        once, of the reference, comparable across all runs."""
        topo, x_val, graph_size = self.cfg.topology, self.x_val, self.cfg.optim.batch_size
        layer = topo.layer if topo is not None else "features"
        if self.reference_features is None:
            reference_layer = (topo.teacher_layer or layer) if topo is not None else "features"
            self.reference_features = extract(reference, x_val, reference_layer)
            penultimate = self.reference_features if reference_layer == "features" else extract(reference, x_val)
            self.reference_shape = graph_shape(penultimate, graph_size)
        s = extract(model, x_val, layer)
        m = topology_metrics(s, self.reference_features, graph_size=graph_size, kernel=self.topology)
        m.update(graph_shape(s if layer == "features" else extract(model, x_val), graph_size))
        m["reference_graph_entropy"] = self.reference_shape["graph_entropy"]
        return {f"val_{k}": v for k, v in m.items()}


def topology_loss_of(objective: Objective) -> TopologyLoss | None:
    """The topology loss of the TRAIN wrapper inside an objective (under AWP or distillation), or None."""
    inner: Objective | None = objective
    while inner is not None and not isinstance(inner, TopologyRegularized):
        inner = getattr(inner, "base", None) or getattr(inner, "inner", None)
    return inner.topology if inner is not None else None
