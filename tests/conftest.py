import pytest
import torch

from topoat.config import load_config

torch.set_num_threads(2)


def tiny_config(**overrides):
    """A config that trains in about a second on CPU: synthetic 1x12x12 data, a narrow small-cnn."""
    data = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "val_size": 64, "synthetic_shape": [1, 12, 12],
                 "synthetic_train": 256, "synthetic_test": 64},
        "model": {"arch": "small-cnn", "args": {"width": 4, "feature_dim": 16}},
        "method": {"name": "pgd-at"},
        "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
        "optim": {"epochs": 2, "batch_size": 32, "lr": 0.05, "schedule": "cosine"},
        "validation": {"n": 64, "attack_steps": 2},
        "evaluation": {"n": 64, "attacks": ["pgd-3"], "batch_size": 64},
        "runtime": {"progress": False, "deterministic": True},
    }
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(data=data, overrides=sets)


@pytest.fixture
def tiny():
    return tiny_config
