import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import SignalAfter, tiny_config

from topoat import build_model, load_model
from topoat.attacks import ascent_step
from topoat.cli import main
from topoat.errors import TopoatError
from topoat.runs.checkpoint import load_checkpoint, model_record, save_atomic
from topoat.training.loop import Trainer, TrainingInterrupted, lr_factor


def weights(path):
    return load_checkpoint(path)["model_state"]


def train_teacher(tmp_path):
    out = tmp_path / "teacher"
    Trainer.from_config(tiny_config(**{"method.name": "standard", "validation.attack_steps": 0}), out).run()
    return out / "last.pt"


def test_standard_and_pgd_at_write_a_run_folder(tmp_path):
    out = tmp_path / "run"
    summary = Trainer.from_config(tiny_config(), out).run()
    assert summary["epochs"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"loss", "val_natural_acc", "val_robust_acc", "seconds", "lr"} <= set(lines[0])
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == "pgd-at"
    assert (out / "best.pt").is_file()
    assert not load_model(out / "last.pt").training
    assert load_checkpoint(out / "last.pt")["image_size"] == [12, 12]  # so other data can be refused
    with pytest.raises(TopoatError, match="already exists"):
        Trainer.from_config(tiny_config(), out)


def test_train_adds_topology_logs_and_accepts_another_teacher_architecture(tmp_path):
    teacher = train_teacher(tmp_path)
    cfg = tiny_config(
        **{
            "topology.teacher": str(teacher),
            "topology.lambda_nat": 5,
            "topology.lambda_adv": 5,
            "model.arch": "preact-resnet18",
            "model.args": "{width: 4}",
            "optim.epochs": 1,
        }
    )
    Trainer.from_config(cfg, tmp_path / "train").run()
    record = json.loads((tmp_path / "train" / "metrics.jsonl").read_text())
    assert record["topo_nat"] > 0 and record["topo_adv"] > 0
    assert 0 <= record["val_knn_overlap"] <= 1 and record["val_graph_kl"] >= 0


def foreign_checkpoint(path, num_classes=10, channels=1, size=(12, 12)):
    """An untrained small-cnn checkpoint made for other data (no training needed to be refused)."""
    model = build_model(
        "small-cnn", num_classes, channels, [0.5] * channels, [0.25] * channels, width=4, feature_dim=16
    )
    save_atomic(model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, num_classes, channels, size), path)
    return str(path)


@pytest.mark.parametrize("key", ["topology.teacher", "distillation.teacher", "validation.reference"])
@pytest.mark.parametrize(
    "made_for,message",
    [
        ({"num_classes": 5}, "was made for 5 classes, but synthetic has 10 classes"),
        ({"channels": 3}, "was made for 3 input channels, but synthetic has 1 input channels"),
        ({"size": (16, 16)}, "was made for 16x16 image size, but synthetic has 12x12 image size"),
    ],
)
def test_a_teacher_or_reference_from_other_data_is_refused(tmp_path, key, made_for, message):
    # each of these used to train with exit 0: a 3-channel model runs on 1-channel images (its normalisation
    # broadcasts them) and adaptive pooling takes any size
    path = foreign_checkpoint(tmp_path / "other.pt", **made_for)
    with pytest.raises(TopoatError, match=f"{key} {path} {message}"):
        Trainer.from_config(tiny_config(**{key: path}), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()
    Trainer.from_config(
        tiny_config(**{key: foreign_checkpoint(tmp_path / "same.pt")}), tmp_path / "ok"
    )  # the data's own: fine


def test_a_teacher_or_reference_trained_on_another_data_set_of_the_same_shape_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    ckpt = load_checkpoint(foreign_checkpoint(path))
    save_atomic(dict(ckpt, dataset="fashion-mnist"), path)  # 10 classes of 1x12x12 images, but other images
    for key in ("topology.teacher", "validation.reference"):
        with pytest.raises(
            TopoatError, match=f"{key} {path} was trained on fashion-mnist, but this run trains on synthetic"
        ):
            Trainer.from_config(tiny_config(**{key: str(path)}), tmp_path / "run")
    save_atomic(dict(ckpt, dataset="synthetic"), path)
    Trainer.from_config(tiny_config(**{"topology.teacher": str(path)}), tmp_path / "ok")


def test_a_training_set_of_one_class_is_refused(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "one.npz"
    x = np.zeros((64, 12, 12), dtype=np.uint8)
    np.savez(data, x_train=x, y_train=np.full(64, 3), x_test=x[:8], y_test=np.full(8, 3), num_classes=np.array(4))
    with pytest.raises(TopoatError, match="only one class .every label is 3.; a classifier needs at least 2"):
        npz = {"data.dataset": "npz", "data.args": "{}", "data.root": str(data), "data.val_size": 0}
        Trainer.from_config(tiny_config(**npz), tmp_path / "run")


def write_study_with_a_diverging_run(tmp_path):
    """A study of two one-epoch runs on the tiny config: `diverges` (its loss passes max_loss) and `fine`."""
    write_config(tmp_path, **{"optim.epochs": 1, "validation.attack_steps": 0, "evaluation.attacks": "[]"})
    spec = tmp_path / "study.yaml"
    runs = [
        {"name": "diverges", "config": "cfg.yaml", "set": ["optim.max_loss=0.001"]},
        {"name": "fine", "config": "cfg.yaml", "set": ["method.name=standard"]},
    ]
    spec.write_text(yaml.safe_dump({"runs": runs}))
    return spec


def test_a_study_with_a_diverged_run_finishes_the_others_and_exits_1(tmp_path, capsys):
    spec = write_study_with_a_diverging_run(tmp_path)
    assert main(["study", str(spec), "--out", str(tmp_path / "s"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"topoat: study: run(s) failed: diverges (see {tmp_path / 's' / 'results.json'})"]
    assert list(json.loads((tmp_path / "s" / "results.json").read_text())["runs"]) == ["fine"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.args": "{width: 0}"}, "model.args.width must be an integer >= 1 for small-cnn, got 0"),
        ({"model.args": "{width: -3}"}, "model.args.width must be an integer >= 1"),
        ({"model.args": "{feature_dim: 2.5}"}, "model.args.feature_dim must be an integer >= 1"),
        ({"data.args.shape": "[1, 1, 1]"}, r"model small-cnn cannot take synthetic images of shape \[1, 1, 1\]"),
        ({"topology.layer": "nope"}, "topology.layer: the model has no layer 'nope'; use features, logits or a module"),
        ({"topology.teacher_layer": "body.99"}, "topology.teacher_layer: the model has no layer 'body.99'"),
    ],
)
def test_bad_model_and_layer_settings_fail_before_training(tmp_path, overrides, message):
    if any(k.startswith("topology") for k in overrides):
        overrides = dict(overrides, **{"topology.teacher": foreign_checkpoint(tmp_path / "teacher.pt")})
    with pytest.raises(TopoatError, match=message):
        Trainer.from_config(tiny_config(**overrides), tmp_path / "run")


# 7 steps per epoch: mid-epoch, an epoch boundary, and mid-epoch with TRAIN's memory bank (saved with the
# checkpoint, so the resumed graphs see the same past rows)
@pytest.mark.parametrize("stop_after,memory_bank", [(5, 0), (7, 0), (5, 24)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, stop_after, memory_bank):
    teacher = train_teacher(tmp_path)
    overrides = {
        "topology.teacher": str(teacher),
        "topology.lambda_nat": 5,
        "data.augment.crop_padding": 2,
        "data.augment.flip": True,
        "topology.memory_bank": memory_bank,
    }
    Trainer.from_config(tiny_config(**overrides), tmp_path / "straight").run()

    trainer = Trainer.from_config(tiny_config(**overrides), tmp_path / "stopped")
    trainer.objective = SignalAfter(trainer.objective, stop_after)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    Trainer.from_config(tiny_config(**overrides), tmp_path / "stopped", resume=True).run()

    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "stopped" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_resume_refuses_a_changed_config(tmp_path):
    Trainer.from_config(tiny_config(**{"optim.epochs": 1}), tmp_path / "r").run()
    with pytest.raises(TopoatError, match="differs"):
        Trainer.from_config(tiny_config(**{"optim.epochs": 2}), tmp_path / "r", resume=True)
    with pytest.raises(TopoatError, match="nothing to resume"):
        Trainer.from_config(tiny_config(), tmp_path / "empty", resume=True)


def test_divergence_stops_with_a_clear_error(tmp_path):
    teacher = train_teacher(tmp_path)
    cfg = tiny_config(**{"topology.teacher": str(teacher), "optim.max_loss": 1e-3})
    with pytest.raises(TopoatError, match="diverged"):
        Trainer.from_config(cfg, tmp_path / "boom").run()


def test_schedules():
    cfg = tiny_config(**{"optim.epochs": 10, "optim.schedule": "multistep", "optim.milestones": "[5, 8]"})
    assert [lr_factor(cfg, t) for t in (0, 4.9, 5, 8.5)] == pytest.approx([1, 1, 0.1, 0.01])
    cfg.optim.schedule = "cosine"
    assert lr_factor(cfg, 5) == pytest.approx(0.5)
    cfg.optim.schedule = "onecycle"
    assert lr_factor(cfg, 0) == 0 and lr_factor(cfg, 4) == pytest.approx(1) and lr_factor(cfg, 10) == 0


def write_config(tmp_path, **overrides):
    cfg = tiny_config(**overrides)
    from topoat.config import dump_config

    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    return path


def test_cli_train_writes_results_contract(tmp_path, capsys):
    cfg = write_config(tmp_path, **{"optim.epochs": 1})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert doc["dataset"] == "synthetic" and doc["threat"] == {"norm": "Linf", "eps": 0.1}
    run = doc["runs"]["tiny"]
    assert run["method"] == "pgd-at" and run["topology"] is None and run["checkpoint"] == "last.pt"
    assert 0 <= run["natural_acc"] <= 1 and set(run["robust_acc"]) == {"pgd-3"} and run["train_seconds"] > 0
    assert (
        main(
            [
                "eval",
                str(tmp_path / "run" / "last.pt"),
                "--attacks",
                "fgsm,pgd-3",
                "--n",
                "32",
                "--no-progress",
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 32


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--out", "x"], "--config is required"),
        (["train", "--config", "/nonexistent.yaml", "--out", "x"], "config file not found"),
        (["eval", "/nonexistent.pt"], "checkpoint not found"),
        (["frobnicate"], "invalid choice"),
        ([], "give a command"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_config_key(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--set", "optim.momentun=0.5"]) == 2
    assert "unknown key 'optim.momentun'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_study_runs_teacher_then_students_and_resumes(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec = tmp_path / "study.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-study",
                "runs": [
                    {
                        "name": "standard",
                        "config": "cfg.yaml",
                        "set": ["method.name=standard", "validation.attack_steps=0"],
                    },
                    {"name": "pgd-at", "config": "cfg.yaml"},
                    {
                        "name": "pgd-at-train",
                        "config": "cfg.yaml",
                        "teacher": "standard",
                        "set": ["topology.lambda_nat=5"],
                    },
                ],
            }
        )
    )
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["runs"]) == ["standard", "pgd-at", "pgd-at-train"]
    assert doc["runs"]["pgd-at-train"]["topology"]["lambda_nat"] == 5
    assert (out / doc["runs"]["pgd-at"]["checkpoint"]).is_file()
    assert main(["study", str(spec), "--out", str(out), "--resume", "--no-progress", "--report"]) == 0
    assert capsys.readouterr().out.count("already done") == 3
    assert "pgd-at-train − pgd-at" in (out / "report.md").read_text()


GOOD_ENTRY = {
    "method": "pgd-at",
    "topology": None,
    "checkpoint": "last.pt",
    "natural_acc": 0.5,
    "robust_acc": {"pgd-3": 0.25},
    "best": None,
}


@pytest.mark.parametrize(
    "document,message",
    [
        ([1, 2], "the top level is not a mapping"),
        ({"runs": []}, "'runs' is missing or not a mapping"),
        ({"runs": {}}, "it has no run 'only'"),
        ({"runs": {"only": "done"}}, "run 'only': the entry is not a mapping"),
        (
            {"runs": {"only": dict(GOOD_ENTRY, robust_acc=[0.25])}},
            "'robust_acc' must be a mapping of attacks to numbers",
        ),
        ({"runs": {"only": dict(GOOD_ENTRY, checkpoint=3)}}, "run 'only': 'checkpoint' must be a path"),
        ({"runs": {"only": dict(GOOD_ENTRY, best={"robust_acc": "x"})}}, "'best.robust_acc' must be a mapping"),
        ({"runs": {"only": dict(GOOD_ENTRY, best=[])}}, "'best' must be a mapping or null"),
    ],
)
def test_study_resume_with_a_damaged_results_json_is_one_line(tmp_path, capsys, document, message):
    # no training: the run counts as done because its results.json exists, and that file is read first
    write_config(tmp_path)
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "only", "config": "cfg.yaml"}]}))
    (tmp_path / "study" / "only").mkdir(parents=True)
    (tmp_path / "study" / "only" / "results.json").write_text(json.dumps(document))
    assert main(["study", str(spec), "--out", str(tmp_path / "study"), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not a usable topoat results.json" in err and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cfg = write_config(tmp_path, **{"optim.epochs": 200, "data.args.train": 2048})
    proc = subprocess.Popen(
        [sys.executable, "-m", "topoat", "train", "--config", str(cfg), "--out", str(tmp_path / "run")],
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300  # generous: the CPU may be shared with other work
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), "the training never finished its first epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "--resume" in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] >= 1


def test_study_runs_limited_to_some_seeds_come_after_the_grid(tmp_path):
    from topoat.errors import TopoatError
    from topoat.runs.study import load_study

    write_config(tmp_path)
    runs = [
        {"name": "standard", "config": "cfg.yaml"},
        {"name": "pgd-at-train", "config": "cfg.yaml", "teacher": "standard"},
        {"name": "ablation", "config": "cfg.yaml", "teacher": "standard", "seeds": [0]},
    ]
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0, 1], "runs": runs}))
    _, planned = load_study(spec)
    assert [p.name for p in planned] == [
        "standard-s0",
        "pgd-at-train-s0",
        "standard-s1",
        "pgd-at-train-s1",
        "ablation-s0",
    ]
    assert planned[-1].teacher == "standard-s0" and "seed=0" in planned[-1].overrides
    for bad, message in [
        ({"seeds": [0, 1], "runs": [runs[0], dict(runs[2], seeds=[2])]}, "not among"),
        ({"runs": [runs[0], runs[2]]}, "not among"),
        ({"seeds": [0], "runs": [dict(runs[0], seeds=[0]), runs[1]]}, "is a teacher"),
    ]:
        spec.write_text(yaml.safe_dump(bad))
        with pytest.raises(TopoatError, match=message):
            load_study(spec)


def test_study_shares_a_folder_between_run_filters_and_evaluates_attacks_added_later(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec = tmp_path / "study.yaml"
    runs = [
        {"name": "standard", "config": "cfg.yaml", "set": ["method.name=standard", "validation.attack_steps=0"]},
        {
            "name": "pgd-at-kd",
            "config": "cfg.yaml",
            "teacher": "standard",
            "set": ["distillation.lambda=0.5", "evaluation.attacks=[pgd-2]"],
        },
    ]
    spec.write_text(yaml.safe_dump({"runs": runs}))
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--runs", "standard"]) == 0
    assert not (out / "pgd-at-kd").exists()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--runs", "*-kd"]) == 0
    # the second process's results.json holds the whole study, the first process's run too
    assert list(json.loads((out / "results.json").read_text())["runs"]) == ["standard", "pgd-at-kd"]
    entry = json.loads((out / "pgd-at-kd" / "results.json").read_text())["runs"]["pgd-at-kd"]
    assert entry["topology"] is None and entry["distillation"]["lambda"] == 0.5
    assert set(entry["robust_acc"]) == {"pgd-2"}
    # the study grows its evaluation: the finished run gets just the new attack, on the same images
    runs[1]["set"][1] = "evaluation.attacks=[pgd-2, fgsm]"
    spec.write_text(yaml.safe_dump({"runs": runs}))
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "evaluating the attacks it lacks: fgsm" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    robust = doc["runs"]["pgd-at-kd"]["robust_acc"]
    assert robust["pgd-2"] == entry["robust_acc"]["pgd-2"] and "fgsm" in robust
    assert "fgsm" in (doc["runs"]["pgd-at-kd"]["best"] or {"robust_acc": {"fgsm": 0}})["robust_acc"]
    assert "evaluation.attacks=[pgd-2, fgsm]" in (out / "study.yaml").read_text()
    # a study asking for another number of images still scores the new attack on the run's own images
    runs[1]["set"][1] = "evaluation.attacks=[pgd-2, fgsm, pgd-3]"
    spec.write_text(yaml.safe_dump({"runs": runs}))
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--set", "evaluation.n=32"]) == 0
    entry = json.loads((out / "pgd-at-kd" / "results.json").read_text())["runs"]["pgd-at-kd"]
    assert "pgd-3" in entry["robust_acc"] and "pgd-3" not in entry.get("n_by_attack", {})
    assert main(["study", str(spec), "--out", str(out), "--resume", "--runs", "nothing*"]) == 2


def test_processes_sharing_a_study_folder_keep_each_others_failures(tmp_path):
    spec = write_study_with_a_diverging_run(tmp_path)
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--runs", "diverges"]) == 1
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--runs", "fine"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["runs"]) == ["fine"] and "diverged" in doc["failed"]["diverges"]


@pytest.mark.parametrize("checkpoints", ["[last, best]", "[best]"])
def test_study_grows_a_finished_run_to_more_images_as_a_fresh_evaluation_would(tmp_path, capsys, checkpoints):
    from topoat.config import load_config
    from topoat.runs.scoring import evaluate_run

    # fgsm has no random start, so scoring the added images alone must give a fresh run's counts exactly
    write_config(
        tmp_path, **{"optim.epochs": 1, "evaluation.attacks": "[fgsm, pgd-2]", "evaluation.checkpoints": checkpoints}
    )
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "at", "config": "cfg.yaml"}]}))
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--set", "evaluation.n=24"]) == 0
    small = json.loads((out / "at" / "results.json").read_text())["runs"]["at"]
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--set", "evaluation.n=null"]) == 0
    assert "done on 24 test images; scoring the 40 more" in capsys.readouterr().out
    grown = json.loads((out / "results.json").read_text())["runs"]["at"]
    cfg = load_config(tmp_path / "cfg.yaml", ["evaluation.n=null"])
    fresh = evaluate_run(cfg, out / "at", "at", 0.0, relative_to=out / "at", progress=False).to_dict()
    assert grown["n_eval"] == fresh["n_eval"] == 64
    for part in ([grown, fresh], [grown["best"], fresh["best"]]):
        assert part[0]["natural_acc"] == pytest.approx(part[1]["natural_acc"], abs=1e-12)
        assert set(part[0]["robust_acc"]) <= set(part[1]["robust_acc"])
        if "fgsm" in part[1]["robust_acc"]:
            assert part[0]["robust_acc"]["fgsm"] == pytest.approx(part[1]["robust_acc"]["fgsm"], abs=1e-12)
            assert part[0]["robust_acc"]["worst"] * 64 == pytest.approx(round(part[0]["robust_acc"]["worst"] * 64))
    assert small["n_eval"] == 24 and set(grown["best"]["robust_acc"]) == set(small["best"]["robust_acc"])
    # asking for fewer images than a run has keeps its larger sample
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--set", "evaluation.n=16"]) == 0
    assert json.loads((out / "results.json").read_text())["runs"]["at"]["n_eval"] == 64


def test_evaluation_can_attack_only_the_best_checkpoint(tmp_path):
    from topoat.runs.scoring import evaluate_run
    from topoat.training.loop import Trainer

    cfg = tiny_config(**{"evaluation.checkpoints": "[best]", "evaluation.attacks": "[pgd-2]"})
    summary = Trainer.from_config(cfg, tmp_path / "run").run()
    entry = evaluate_run(
        cfg, tmp_path / "run", "run", summary["train_seconds"], relative_to=tmp_path / "run", progress=False
    )
    assert entry.last.robust_acc == {} and 0 <= (entry.last.natural_acc or -1) <= 1  # the last: natural only
    assert entry.best is not None and set(entry.best.robust_acc) == {"pgd-2"}
    with pytest.raises(TopoatError, match="evaluation.checkpoints"):
        tiny_config(**{"evaluation.checkpoints": "[final]"})


def test_evaluation_follows_the_runtime_layout_and_threads(tmp_path):
    from topoat.runs.checkpoint import load_model
    from topoat.runs.scoring import _evaluate_model

    Trainer.from_config(tiny_config(**{"optim.epochs": 1}), tmp_path / "run").run()
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(48) % 10
    scores = {}
    threads = torch.get_num_threads()
    try:
        for layout in ("off", "on"):
            cfg = tiny_config(
                **{"runtime.channels_last": layout, "evaluation.attacks": "[pgd-3]", "runtime.threads": 1}
            )
            res = _evaluate_model(cfg, load_model(tmp_path / "run" / "last.pt"), x, y, progress=False)
            scores[layout] = (res.natural_acc, res.robust_acc["pgd-3"])
            assert torch.get_num_threads() == 1  # runtime.threads holds for an evaluation-only pass too
    finally:
        torch.set_num_threads(threads)
    assert scores["on"][0] == scores["off"][0]
    assert abs(scores["on"][1] - scores["off"][1]) <= 2 / 48  # float rounding may flip a borderline image


def test_version_and_the_resolved_config_print_without_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("topoat ")
    write_config(tmp_path)
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--set", "optim.lr=0.02", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 0.02 and "runtime" in printed and not list(tmp_path.glob("*/config.yaml"))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_each_epoch_prints_one_plain_line(tmp_path, capsys):
    from topoat.runtime import bar_disabled
    from topoat.training.sinks import epoch_line

    Trainer.from_config(tiny_config(**{"optim.epochs": 2}), tmp_path / "run").run()
    lines = [line for line in capsys.readouterr().out.splitlines() if "] epoch " in line]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"]
    assert "val natural" in lines[0] and "val robust" in lines[0] and "\r" not in lines[0]
    line = epoch_line(
        "r", {"epoch": 3, "loss": 0.5, "val_natural_acc": 0.8, "val_knn_overlap": 0.25, "seconds": 2.0}, 5
    )
    assert line == "[r] epoch 3/5  loss 0.5000  val natural 80.0%  knn_overlap 0.25  2.0 s"
    assert bar_disabled(False) is True and bar_disabled(True) is None  # None: a bar on a terminal only


def test_runs_and_results_record_what_produced_them(tmp_path):
    from topoat.runs.results import results_document
    from topoat.runs.scoring import evaluate_run

    cfg = tiny_config(**{"optim.epochs": 1})
    summary = Trainer.from_config(cfg, tmp_path / "run").run()
    starts = json.loads((tmp_path / "run" / "provenance.json").read_text())["starts"]
    assert len(starts) == 1 and starts[0]["torch"] == torch.__version__ and starts[0]["resumed_at_epoch"] is None
    Trainer.from_config(cfg, tmp_path / "run", resume=True).run()  # a resume adds its own entry
    starts = json.loads((tmp_path / "run" / "provenance.json").read_text())["starts"]
    assert [s["resumed_at_epoch"] for s in starts] == [None, 1]
    entry = evaluate_run(cfg, tmp_path / "run", "run", summary["train_seconds"], relative_to=tmp_path, progress=False)
    doc = results_document(cfg, {"run": entry})
    for key in ("topoat", "torch", "python", "git_commit", "device", "threads", "command", "time"):
        assert key in (doc.provenance or {})


class _FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (the tensorboard package is an optional extra)."""

    calls: list = []

    def __init__(self, log_dir):
        self.calls.append(("open", log_dir))

    def add_text(self, tag, text):
        self.calls.append(("text", tag, text))

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.calls.append(("close",))


def test_tensorboard_gets_each_epochs_metrics_and_the_config(tmp_path, monkeypatch):
    import types

    _FakeWriter.calls = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    Trainer.from_config(tiny_config(**{"optim.epochs": 2, "runtime.tensorboard": True}), tmp_path / "run").run()
    calls = _FakeWriter.calls
    assert calls[0] == ("open", str(tmp_path / "run" / "tensorboard")) and calls[-1] == ("close",)
    assert calls[1][:2] == ("text", "config") and "tensorboard: true" in calls[1][2]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        assert ("scalar", "val_natural_acc", record["val_natural_acc"], record["epoch"]) in calls
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(TopoatError, match="needs the tensorboard package"):
        Trainer.from_config(tiny_config(**{"runtime.tensorboard": True}), tmp_path / "run2").run()


def test_the_compiled_training_model_gives_the_eager_outputs_and_gradients(tmp_path):
    # torch.compile (inductor, on CPU here) of the training model, in train mode (the training step,
    # PGD-AT's attack) and in eval mode (TRADES' and MART's attack: a second graph)
    trainer = Trainer.from_config(tiny_config(**{"runtime.compile": "on"}), tmp_path / "run")
    model, graph = trainer.model, trainer.train_model
    assert graph is not model
    x, y = next(trainer.loader.batches())
    for training in (True, False):
        results = []
        for net in (model, graph):
            net.train(training)
            xg = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(net(xg), y)
            grads = torch.autograd.grad(loss, [xg, *model.parameters()])
            results.append((loss.detach(), grads))
        (eager_loss, eager_grads), (graph_loss, graph_grads) = results
        torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-5, atol=1e-6)
        for g, e in zip(graph_grads, eager_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["pgd-at", "trades", "pgd-at+train"])
def test_a_compiled_training_step_matches_the_eager_one(tmp_path, method):
    # the whole step (attack, loss, update) compiled: the eager loss and weights up to what float32
    # rounding does to a sign-gradient attack (a near-zero gradient component may flip one pixel's step);
    # with TRAIN, the teacher and the fused topology terms are compiled too
    overrides = {"method.name": method.removesuffix("+train")}
    if method.endswith("+train"):
        overrides["topology.teacher"] = str(train_teacher(tmp_path))
    trainers = {
        mode: Trainer.from_config(tiny_config(**overrides, **{"runtime.compile": mode}), tmp_path / mode)
        for mode in ("off", "on")
    }
    assert trainers["on"].objective.attack_step is not ascent_step  # the attack's update is compiled too
    if method.endswith("+train"):
        assert trainers["on"].objective.teacher is not trainers["on"].parts.teacher  # the objective's is compiled
    x, y = next(trainers["off"].loader.batches())
    losses = {}
    for mode, trainer in trainers.items():
        torch.manual_seed(0)
        losses[mode] = float(trainer.train_step(x, y).loss.detach())
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-2)
    eager, graph = trainers["off"].model.state_dict(), trainers["on"].model.state_dict()
    for name, value in eager.items():
        torch.testing.assert_close(graph[name], value, rtol=1e-2, atol=1e-3, msg=name)


def test_study_paths_and_names_with_a_hash_are_kept_whole(tmp_path):
    write_config(tmp_path, **{"optim.epochs": 1, "validation.attack_steps": 0, "evaluation.attacks": "[]"})
    spec = tmp_path / "study.yaml"
    runs = [
        {"name": "t #1", "config": "cfg.yaml", "set": ["method.name=standard"]},
        {"name": "x #c", "config": "cfg.yaml", "teacher": "t #1", "set": ["topology.lambda_nat=1"]},
    ]
    spec.write_text(yaml.safe_dump({"runs": runs, "reference": "t #1"}))
    out = tmp_path / "a #b: c" / "study"
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "x #c" / "config.yaml").read_text())
    assert saved["name"] == "x #c"  # read as a YAML comment, it was "x"
    assert saved["topology"]["teacher"] == str(out / "t #1" / "last.pt")  # it was cut at the '#'
    assert saved["validation"]["reference"] == str(out / "t #1" / "last.pt")
