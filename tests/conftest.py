import os
import signal

import pytest
import torch
import torch.nn.functional as F

from topoat import build_model
from topoat.config import load_config
from topoat.data import load_dataset, to_float
from topoat.objectives import Wrapper

torch.set_num_threads(2)


def tiny_config(**overrides):
    """A config that trains in about a second on CPU: synthetic 1x12x12 data, a narrow small-cnn."""
    data = {
        "name": "tiny",
        "data": {
            "dataset": "synthetic",
            "val_size": 64,
            "synthetic_shape": [1, 12, 12],
            "synthetic_train": 256,
            "synthetic_test": 64,
        },
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


def train_undefended(num_classes=10, seed=0, epochs=10, shape=(1, 12, 12), n_test=64):
    """A small CNN trained for a few seconds on easy synthetic data: accurate, and not robust."""
    torch.manual_seed(seed)
    ds = load_dataset(
        "synthetic", synthetic_shape=shape, synthetic_classes=num_classes, synthetic_train=512, synthetic_test=n_test
    )
    model = build_model("small-cnn", num_classes, shape[0], ds.mean, ds.std, width=8, feature_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = to_float(ds.x_train), ds.y_train
    for _ in range(epochs):
        for i in range(0, 512, 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), to_float(ds.x_test), ds.y_test


class SignalAfter(Wrapper):
    """Wraps an objective and sends SIGINT to this process after `n` calls, like a user's Ctrl-C."""

    def __init__(self, objective, n):
        super().__init__(objective)
        self.objective, self.n, self.calls = objective, n, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return self.objective(*args)
