"""Models topoat did not train: a plain state_dict (`topoat export` writes one) and an importable factory."""

import json

import pytest
import torch

from topoat.cli import main
from topoat.data import load_dataset
from topoat.models import build_model_for
from topoat.runs.checkpoint import model_record, save_atomic

EVAL = ["--dataset", "synthetic", "--eps", "0.1", "--n", "64", "--attacks", "fgsm", "--no-progress"]


@pytest.fixture
def checkpoint(tmp_path):
    data = load_dataset("synthetic")  # 1x28x28, what `--dataset synthetic` reads
    torch.manual_seed(0)
    model = build_model_for(data, "small-cnn", width=4, feature_dim=16)
    record = dict(model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, 10, 1), dataset="synthetic")
    path = tmp_path / "model.pt"
    save_atomic(record, path)
    return path


def _scores(capsys) -> list[str]:
    return [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith(("natural", "fgsm"))]


def test_export_then_eval_as_a_plain_state_dict_scores_the_same(checkpoint, tmp_path, capsys):
    out = tmp_path / "export" / "weights.pt"
    assert main(["export", str(checkpoint), str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["arch"] == "small-cnn" and meta["arch_args"] == {"width": 4, "feature_dim": 16}
    assert set(torch.load(out, weights_only=True)) >= {"mean", "std"}
    capsys.readouterr()
    assert main(["eval", str(checkpoint), *EVAL]) == 0
    native = _scores(capsys)
    assert (
        main(
            [
                "eval",
                str(out),
                "--arch",
                "small-cnn",
                "--num-classes",
                "10",
                "--arch-args",
                "{width: 4, feature_dim: 16}",
                *EVAL,
            ]
        )
        == 0
    )
    assert _scores(capsys) == native and len(native) == 2


def test_eval_of_an_importable_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "elsewhere_models.py").write_text(
        "from torch import nn\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["eval", "--model", "elsewhere_models:build", *EVAL]) == 0
    assert len(_scores(capsys)) == 2
    weights = tmp_path / "w.pt"
    torch.save({"1.weight": torch.zeros(10, 784), "1.bias": torch.zeros(10)}, weights)
    assert main(["eval", str(weights), "--model", "elsewhere_models:build", *EVAL]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "small-cnn", *EVAL], "--arch needs the state_dict file and --num-classes"),
        (["--model", "nowhere_at_all:build", *EVAL], "cannot import nowhere_at_all"),
        (["--model", "torch:nn", *EVAL], "has no callable nn"),
        (["--model", "no-colon", *EVAL], "MODULE:FACTORY"),
        ([*EVAL], "give a checkpoint"),
    ],
)
def test_bad_foreign_models_are_one_line(args, message, capsys):
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_state_dict_of_another_architecture_is_one_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "w.pt"
    assert main(["export", str(checkpoint), str(out)]) == 0
    assert main(["eval", str(out), "--arch", "small-cnn", "--num-classes", "10", *EVAL]) == 2  # width 32 expected
    assert "does not hold small-cnn weights" in capsys.readouterr().err
