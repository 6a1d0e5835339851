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
            "args": {"shape": [1, 12, 12], "train": 256, "test": 64},
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
    ds = load_dataset("synthetic", shape=shape, classes=num_classes, train=512, test=n_test)
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


def fp32_neighbour_slack(spaces, k=10, rel=1e-5):
    """How far below 1 `knn_overlap` and `trustworthiness` may fall, on any CPU, between fp32 copies of
    one geometry (the same points scaled, shifted, rotated, padded or with permuted dimensions).

    In exact arithmetic such copies have the same k nearest neighbours. In fp32 the library computes
    squared distances as |a|^2 + |b|^2 - 2ab, whose rounding is a few 1e-7 of those terms (at most about
    1e-6 with 16 dimensions) and differs between CPUs (summation order, FMA, vector width). Two neighbours
    whose distances from a sample straddle the k-th place within `rel` of the terms (10 times that bound)
    may therefore swap on some CPU. From float64 distances, count for each sample m, the swaps its
    near-ties allow; each costs its Jaccard overlap (k - m) / (k + m) instead of 1, and its
    trustworthiness term at most m * m ranks. Data without such near-ties get no slack at all."""
    worst = None
    for z in spaces:
        z = torch.as_tensor(z).double().flatten(1)
        sq = (z * z).sum(1)
        d2 = (z[:, None, :] - z[None, :, :]).square().sum(-1)
        d2.fill_diagonal_(float("inf"))
        d2, order = d2.sort(dim=1)
        edge = 0.5 * (d2[:, k - 1] + d2[:, k])
        near = (d2 - edge[:, None]).abs() <= rel * (sq[:, None] + sq[order])
        swaps = torch.minimum(near[:, :k].sum(1), near[:, k:].sum(1))
        worst = swaps if worst is None else torch.maximum(worst, swaps)
    n = worst.numel()
    overlap = float((1.0 - (k - worst) / (k + worst)).mean())
    trust = float(2.0 / (n * k * (2 * n - 3 * k - 1)) * (worst * worst).sum())
    return overlap, trust


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
