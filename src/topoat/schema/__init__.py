"""The config's schema: typed sections (sections.py), their mapping to and from YAML data (mapping.py)
and the checks across them (checks.py). `topoat.config` reads the files and re-exports these names."""

from .checks import SEED_RANGE, seed_fits
from .mapping import from_dict, to_dict
from .sections import (
    AttackConfig,
    AugmentConfig,
    AWPConfig,
    DataConfig,
    DistillationConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TopologyConfig,
    TrainConfig,
    ValidationConfig,
)

__all__ = [
    "SEED_RANGE",
    "AWPConfig",
    "AttackConfig",
    "AugmentConfig",
    "DataConfig",
    "DistillationConfig",
    "EvaluationConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RuntimeConfig",
    "TopologyConfig",
    "TrainConfig",
    "ValidationConfig",
    "from_dict",
    "seed_fits",
    "to_dict",
]
