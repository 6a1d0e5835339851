"""Every shipped config loads by its name with its protocol's key values, a few train one step on synthetic
data of their dataset's shape (a tiny model width stands in for the real one), and every study plans valid
runs."""

from pathlib import Path
from typing import Any

import pytest
import torch

from topoat.config import load_config, preset_names
from topoat.models import build_model
from topoat.runs.checkpoint import model_record, save_atomic
from topoat.runs.study import load_study, teacher_links
from topoat.schema import to_dict
from topoat.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.yaml"))

EIGHT, TWO = 8 / 255, 2 / 255
CIFAR = {  # docs/TRAIN-METHOD.md's protocol
    "data.root": None,
    "data.val_size": 1000,
    "data.download": False,
    "data.augment.crop_padding": 4,
    "data.augment.flip": True,
    "model.arch": "preact-resnet18",
    "attack.norm": "Linf",
    "attack.eps": EIGHT,
    "attack.step_size": TWO,
    "attack.steps": 10,
    "optim.batch_size": 128,
    "optim.lr": 0.1,
    "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4,
    "optim.epochs": 110,
    "optim.schedule": "multistep",
    "optim.milestones": [100, 105],
    "optim.gamma": 0.1,
    "validation.n": 1000,
    "evaluation.n": None,
    "evaluation.attacks": ["pgd-20", "autoattack"],
    "evaluation.step_size": TWO,
}
PROTOCOLS = {  # folder -> its protocol's key values
    "fashion-mnist": {
        "data.dataset": "fashion-mnist",
        "data.val_size": 1000,
        "model.arch": "small-cnn",
        "attack.eps": 0.1,
        "attack.step_size": 0.025,
        "attack.steps": 5,
        "optim.batch_size": 128,
        "optim.lr": 0.05,
        "optim.epochs": 3,
        "optim.schedule": "cosine",
        "evaluation.n": 1000,
        "evaluation.attacks": ["pgd-20"],
    },
    "cifar10": {**CIFAR, "data.dataset": "cifar10"},
    "cifar10/wrn-34-10": {**CIFAR, "data.dataset": "cifar10", "model.arch": "wrn-34-10"},
    "cifar10-jpg": {
        **CIFAR,
        "data.dataset": "image-folder",
        "data.name": "CIFAR-10 (JPEG copy)",
        "data.root": "../shared/datasets/cifar-10-jpg.tar.gz",
    },
    "cifar100": {**CIFAR, "data.dataset": "cifar100"},
    "tiny-imagenet": {**CIFAR, "data.dataset": "tiny-imagenet"},
}
# config name without -train -> the method's key values; BatchNorm during the training attack as in its authors' code
METHODS = {
    "standard": {"method.name": "standard", "method.awp": None, "validation.attack_steps": 0, "attack.eval_mode": True},
    "pgd-at": {"method.name": "pgd-at", "method.awp": None, "validation.attack_steps": 10, "attack.eval_mode": False},
    "trades": {"method.name": "trades", "method.beta": 6.0, "method.awp": None, "attack.eval_mode": True},
    "mart": {"method.name": "mart", "method.beta": 6.0, "method.awp": None, "attack.eval_mode": True},
    "awp-pgd-at": {"method.name": "pgd-at", "method.awp": {"gamma": 0.01, "warmup_epochs": 0}},
    "awp-trades": {"method.name": "trades", "method.beta": 6.0, "method.awp": {"gamma": 0.005, "warmup_epochs": 0}},
}
TRADES_CIFAR10 = {"optim.epochs": 100, "optim.weight_decay": 2e-4, "optim.milestones": [75, 90]}
OWN = {  # the schedules the methods' authors published for CIFAR-10 (docs/METHODS.md), and AWP's small-CNN gamma
    "cifar10/trades": TRADES_CIFAR10,
    "cifar10/wrn-34-10/trades": TRADES_CIFAR10,
    "cifar10-jpg/trades": TRADES_CIFAR10,
    "cifar10/mart": {
        "optim.epochs": 120,
        "optim.lr": 0.01,
        "optim.weight_decay": 3.5e-3,
        "optim.milestones": [75, 90, 100],
        "method.beta": 5.0,
    },
    "cifar10/wrn-34-10/mart": {"optim.epochs": 76, "optim.weight_decay": 2e-4, "optim.milestones": [75]},
    "fashion-mnist/awp-pgd-at": {"method.awp": {"gamma": 0.005, "warmup_epochs": 0}},
}
TRAIN = {
    "topology.teacher": None,
    "topology.lambda_nat": 10.0,
    "topology.lambda_adv": 10.0,
    "topology.kernel": "softmax-cosine",
    "topology.temperature": 0.1,
    "topology.layer": "features",
}
ADVERSARIAL = ["pgd-at", "trades", "mart", "awp-pgd-at"]
FOLDERS = {  # the configs of each folder; each method also as *-train
    "fashion-mnist": ["standard", *ADVERSARIAL, "awp-trades"],
    "cifar10": ["standard", *ADVERSARIAL],
    "cifar10/wrn-34-10": ["standard", *ADVERSARIAL],
    "cifar100": ["standard", *ADVERSARIAL],
    "tiny-imagenet": ["standard", *ADVERSARIAL],
    "cifar10-jpg": ["standard", "pgd-at", "trades"],
}


def expected_values(name: str) -> dict[str, Any]:
    folder, _, stem = name.rpartition("/")
    method = stem.removesuffix("-train")
    values = {"name": stem, **PROTOCOLS[folder], **METHODS[method], **OWN.get(f"{folder}/{method}", {})}
    return {**values, **TRAIN} if stem.endswith("-train") else {**values, "topology": None}


EXPECTED = {
    f"{folder}/{stem}": expected_values(f"{folder}/{stem}")
    for folder, methods in FOLDERS.items()
    for method in methods
    for stem in ([method] if method == "standard" else [method, f"{method}-train"])
}


def value_at(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


@pytest.mark.parametrize("name", preset_names("configs"))
def test_every_packaged_config_loads_by_name(name):
    assert load_config(name).name == name.rpartition("/")[2]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_is_shipped_with_its_protocol(name):
    assert name in preset_names("configs")  # a name users, studies and results use keeps working
    resolved = to_dict(load_config(name))
    assert {key: value_at(resolved, key) for key in EXPECTED[name]} == EXPECTED[name]


SHAPES = {  # dataset -> (C, H, W), classes
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "tiny-imagenet": ((3, 64, 64), 200),
    "fashion-mnist": ((1, 28, 28), 10),
}
TINY_ARGS = {
    "preact-resnet18": "{width: 4}",
    "wrn-34-10": "{depth: 10, widen_factor: 1}",
    "small-cnn": "{width: 4, feature_dim: 16}",
}
# every method (with TRAIN) once, and every other shape and model once: the configs differ only in values
SMOKE = [
    "fashion-mnist/standard",
    *(f"fashion-mnist/{method}-train" for method in [*ADVERSARIAL, "awp-trades"]),
    "cifar10/pgd-at-train",
    "cifar10/wrn-34-10/trades-train",
    "cifar100/mart-train",
    "tiny-imagenet/awp-pgd-at-train",
]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The runs below use one thread (models this small only lose time to thread hand-offs, a lot on a
    busy machine); give the other test modules their thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stub_teachers(tmp_path_factory):
    """A tiny untrained standard model per dataset shape: only its graph is used, never its accuracy."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for dataset, (shape, classes) in SHAPES.items():
        args = {"width": 4, "feature_dim": 16}
        model = build_model("small-cnn", classes, shape[0], [0.5] * shape[0], [0.25] * shape[0], **args)
        paths[dataset] = folder / f"{dataset}.pt"
        save_atomic(model_record(model, "small-cnn", args, classes, shape[0]), paths[dataset])
    return paths


@pytest.mark.parametrize("name", SMOKE)
def test_config_trains_one_step_on_synthetic_data_of_its_shape(name, stub_teachers, tmp_path):
    raw = load_config(name)
    shape, classes = SHAPES[raw.data.dataset]
    overrides = [
        "data.dataset=synthetic",
        f"data.args.shape={list(shape)}",
        f"data.args.classes={classes}",
        "data.args.train=8",
        "data.args.test=4",
        "data.val_size=4",
        "data.train_subset=null",
        f"model.args={TINY_ARGS[raw.model.arch]}",
        "optim.batch_size=4",
        "optim.epochs=1",
        "attack.steps=1",  # the real counts are checked in test_config_is_shipped_with_its_protocol
        f"validation.attack_steps={min(raw.validation.attack_steps, 1)}",
        "validation.n=4",
        "evaluation.n=4",
        "runtime.progress=false",
        "runtime.device=cpu",
        "runtime.threads=1",
    ]
    if raw.topology is not None:
        overrides.append(f"topology.teacher={stub_teachers[raw.data.dataset]}")
    cfg = load_config(name, overrides)
    summary = Trainer.from_config(cfg, tmp_path / "run").run()
    assert summary["epochs"] == 1
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_files_plan_valid_runs(path, tmp_path):
    spec, planned = load_study(path)
    seeds = spec.seeds or [None]
    assert len(planned) == sum(len(r.seeds or seeds) for r in spec.runs)
    for p in planned:
        teacher = [] if p.teacher is None else teacher_links(p, tmp_path / p.teacher / "last.pt")
        cfg = load_config(p.config_path, p.overrides + teacher + [f"name={p.name}"])
        assert (cfg.topology is not None or cfg.distillation is not None) == (p.teacher is not None), p.name
        if "lambda" in p.name:
            lam = float(p.name.split("lambda")[1].split("-")[0])
            assert cfg.topology.lambda_nat == cfg.topology.lambda_adv == lam
