"""topoat: topology-preserving adversarial training (TRAIN).

The names most users need:
    TopologyLoss      the TRAIN regularizer, usable in any training loop
    load_model        an eval-mode model from a topoat checkpoint
    build_model_for   a fresh model for a dataset (build_model: by architecture name and shapes)
    load_dataset      a dataset by name, as uint8 tensors (DeviceLoader: batches in [0, 1])
    PGD, FGSM, CW     attacks with the call shape attack(x, y) -> x_adv
    evaluate          natural and robust accuracy of a model on given images
    benchmark         ... of any [0, 1] -> logits model on a dataset's fixed test subset, as `topoat eval`
    evaluate_checkpoint  `topoat eval` itself: a saved model's accuracies (and sanity checks), printed or not
"""

# The names are imported on first use, not with the package: `topoat` on the command line must install its
# signal handlers before torch loads (seconds), and importing topoat.cli imports this package first.

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "CW": ".attacks",
    "DeviceLoader": ".data",
    "FGSM": ".attacks",
    "PGD": ".attacks",
    "TopoatError": ".errors",
    "TopologyLoss": ".topology",
    "benchmark": ".evaluation.accuracy",
    "build_model": ".models",
    "build_model_for": ".models",
    "evaluate": ".evaluation.accuracy",
    "evaluate_checkpoint": ".evaluation.checkpoint_accuracy",
    "load_dataset": ".data",
    "load_model": ".runs.checkpoint",
    "to_float": ".data",
}
__all__ = [
    "CW",
    "DeviceLoader",
    "FGSM",
    "PGD",
    "TopoatError",
    "TopologyLoss",
    "benchmark",
    "build_model",
    "build_model_for",
    "evaluate",
    "evaluate_checkpoint",
    "load_dataset",
    "load_model",
    "to_float",
]

if TYPE_CHECKING:
    from .attacks import CW, FGSM, PGD
    from .data import DeviceLoader, load_dataset, to_float
    from .errors import TopoatError
    from .evaluation.accuracy import benchmark, evaluate
    from .evaluation.checkpoint_accuracy import evaluate_checkpoint
    from .models import build_model, build_model_for
    from .runs.checkpoint import load_model
    from .topology import TopologyLoss


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
