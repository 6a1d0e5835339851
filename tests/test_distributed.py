"""DDP through torchrun: two CPU processes (gloo) must train exactly like one process on the same
global batch, including the TRAIN term over the global graph."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from topoat.checkpoint import load_checkpoint
from topoat.config import dump_config
from topoat.train import Trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def torchrun(nproc, config, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "topoat",
        "train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one_on_the_global_batch(tmp_path):
    teacher_dir = tmp_path / "teacher"
    Trainer(tiny_config(**{"method.name": "standard", "validation.attack_steps": 0}), teacher_dir).run()
    overrides = {
        "optim.epochs": 1,
        "optim.batch_size": 32,
        "data.synthetic_train": 128,
        "data.val_size": 32,
        "attack.random_start": False,  # the only per-process randomness in PGD-AT
        # L2 steps move continuously with the gradient; an L-inf sign() can flip on a near-zero gradient
        # component whose last bits differ between batch shapes, and then the weights differ by far more
        # than rounding.
        "attack.norm": "L2",
        "attack.eps": 0.5,
        "attack.step_size": 0.25,
        "model.args": "{width: 4, feature_dim: 16, batchnorm: false}",  # per-process BN statistics differ
        "topology.teacher": str(teacher_dir / "last.pt"),
        "topology.lambda_nat": 0.5,
        "topology.lambda_adv": 0.5,
        "topology.global_graph": True,
        "evaluation.n": 16,
        "validation.n": 32,
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_config(tiny_config(**overrides)))

    single = torchrun(1, config, tmp_path / "one")
    assert single.returncode == 0, single.stderr[-2000:]
    double = torchrun(2, config, tmp_path / "two")
    assert double.returncode == 0, double.stderr[-2000:]

    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model_state"].items():
        gap = (value - b["model_state"][key]).abs().max().item()
        assert torch.allclose(value, b["model_state"][key], rtol=1e-4, atol=1e-6), f"{key}: max gap {gap:.3g}"
    # the step really moved the weights, so the comparison means something
    init = Trainer(tiny_config(**overrides), tmp_path / "fresh").model.state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in a["model_state"].items())
    # only rank 0 wrote files, once
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and (tmp_path / "two" / "results.json").is_file()
