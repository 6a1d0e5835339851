"""topoat: topology-preserving adversarial training (TRAIN).

The names most users need:
    TopologyLoss      the TRAIN regularizer, usable in any training loop
    load_model        an eval-mode model from a topoat checkpoint
    build_model_for   a fresh model for a dataset (build_model: by architecture name and shapes)
    load_dataset      a dataset by name, as uint8 tensors (DeviceLoader: batches in [0, 1])
    PGD, FGSM, CW     attacks with the call shape attack(x, y) -> x_adv
    evaluate          natural and robust accuracy of a model on given images
    benchmark         ... of any [0, 1] -> logits model on a dataset's fixed test subset, as `topoat eval`
"""

from .attacks import CW, FGSM, PGD
from .checkpoint import load_model
from .data import DeviceLoader, load_dataset, to_float
from .errors import TopoatError
from .evaluate import benchmark, evaluate
from .models import build_model, build_model_for
from .topology import TopologyLoss

__version__ = "0.1.0"
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
    "load_dataset",
    "load_model",
    "to_float",
]
