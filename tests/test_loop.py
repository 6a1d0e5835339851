"""The training loop's seams: a Trainer from parts, its sinks, its state, validation apart."""

import json

import torch
from conftest import tiny_config

from topoat.runs.folder import RunFolder
from topoat.training.build import build_run
from topoat.training.loop import Trainer
from topoat.training.sinks import MetricsFile, Sink
from topoat.training.validation import Validator, improves, score, topology_loss_of


class Recorder(Sink):
    def __init__(self):
        self.calls = []

    def epoch_start(self, epoch, steps, done):
        self.calls.append(("epoch_start", epoch, steps, done))

    def step(self, global_step, lr, loss, parts):
        self.calls.append(("step", global_step))

    def synced(self, mean_loss, lr):
        self.calls.append(("synced", round(float(mean_loss), 6)))

    def steps_end(self):
        self.calls.append(("steps_end",))

    def epoch_end(self, record):
        self.calls.append(("epoch_end", record))

    def close(self):
        self.calls.append(("close",))


def test_a_trainer_from_parts_reports_to_the_sinks_it_is_given(tmp_path):
    cfg = tiny_config(**{"optim.epochs": 2})
    folder = RunFolder(tmp_path / "run")
    folder.prepare(resume=False)
    parts = build_run(cfg)
    recorder = Recorder()
    summary = Trainer(parts, folder, cfg, sinks=[MetricsFile(folder), recorder]).run()
    steps = len(parts.loader)
    assert summary["epochs"] == 2 and summary["best"]["epoch"] in (1, 2)
    names = [c[0] for c in recorder.calls]
    assert names.count("step") == 2 * steps and names[-1] == "close"
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(1, 2 * steps + 1))
    assert recorder.calls[0] == ("epoch_start", 1, steps, 0)
    assert names.index("steps_end") < names.index("epoch_end")  # the bar is gone before the epoch's line
    lines = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == lines  # every sink sees the same line
    assert folder.last.is_file() and folder.best.is_file()


def test_the_same_seed_trains_the_same_with_or_without_the_default_sinks(tmp_path):
    cfg = tiny_config(**{"optim.epochs": 1})
    Trainer.from_config(cfg, tmp_path / "a").run()
    folder = RunFolder(tmp_path / "b")
    folder.prepare(resume=False)
    Trainer(build_run(cfg), folder, cfg, sinks=[MetricsFile(folder)]).run()

    def untimed(run):
        line = json.loads((run / "metrics.jsonl").read_text())
        return {k: v for k, v in line.items() if "seconds" not in k}

    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")


def test_validation_measures_the_graph_under_the_runs_own_topology_loss(tmp_path):
    teacher = tmp_path / "teacher"
    Trainer.from_config(tiny_config(**{"method.name": "standard", "optim.epochs": 1}), teacher).run()
    cfg = tiny_config(
        **{
            "topology.teacher": str(teacher / "last.pt"),
            "topology.kernel": "softmax-cosine",
            "topology.temperature": 0.5,
        }
    )
    trainer = Trainer.from_config(cfg, tmp_path / "run")
    configured = topology_loss_of(trainer.objective)
    assert configured is not None and trainer.validate is not None
    assert trainer.validate.topology is configured  # not a default kernel
    record = trainer.validate(trainer.model, trainer.device)
    assert "val_graph_kl" in record and "val_knn_overlap" in record


def test_the_best_epoch_is_chosen_by_robust_accuracy_else_natural():
    from topoat.training.state import Best

    assert score({"val_natural_acc": 0.9, "val_robust_acc": 0.4}) == 0.4
    assert score({"val_natural_acc": 0.9}) == 0.9
    assert improves({"val_natural_acc": 0.5}, Best()) and not improves({"val_natural_acc": 0.5}, Best(0.5, 1))


def test_a_validator_is_usable_alone(tmp_path):
    cfg = tiny_config(**{"validation.attack_steps": 0})
    parts = build_run(cfg)
    validator = Validator(cfg, parts.x_val, parts.y_val, None, None)
    record = validator(parts.model, parts.device)
    assert set(record) == {"val_natural_acc"} and 0 <= record["val_natural_acc"] <= 1
    assert torch.is_tensor(parts.x_val)
