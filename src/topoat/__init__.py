"""topoat: topology-preserving adversarial training (TRAIN).

The names most users need:
    TopologyLoss      the TRAIN regularizer, usable in any training loop
    load_model        an eval-mode model from a topoat checkpoint
    build_model       a fresh model by architecture name
    PGD, FGSM, CW     attacks with the call shape attack(x, y) -> x_adv
    evaluate          natural and robust accuracy of a model
"""
from .attacks import CW, FGSM, PGD
from .checkpoint import load_model
from .errors import TopoatError
from .evaluate import evaluate
from .models import build_model
from .topology import TopologyLoss

__version__ = "0.1.0"
__all__ = ["CW", "FGSM", "PGD", "TopoatError", "TopologyLoss", "build_model", "evaluate", "load_model"]
