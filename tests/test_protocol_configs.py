"""Every shipped config and study loads, states the protocol exactly, and trains one step on synthetic
data of its dataset's shape (a tiny model width stands in for the real one)."""

from pathlib import Path

import pytest
import torch

from topoat.config import load_config, to_dict
from topoat.evaluation.accuracy import parse_attack
from topoat.models import build_model
from topoat.runs.checkpoint import model_record, save_atomic
from topoat.runs.study import load_study, teacher_links
from topoat.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
STUDIES = sorted((REPO / "studies").glob("*.yaml"))
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
    "resnet18": "{width: 4}",
}
PROTOCOL_DATASETS = ("cifar10", "cifar100", "tiny-imagenet")
# (method, arch) -> lr, weight decay, epochs, x0.1 milestones, beta: the authors' own CIFAR-10 scripts
AUTHORS_CIFAR10 = {
    ("trades", "preact-resnet18"): (0.1, 2e-4, 100, [75, 90], 6.0),
    ("trades", "wrn-34-10"): (0.1, 2e-4, 100, [75, 90], 6.0),
    ("mart", "preact-resnet18"): (0.01, 3.5e-3, 120, [75, 90, 100], 5.0),
    ("mart", "wrn-34-10"): (0.1, 2e-4, 76, [75], 6.0),
}


def config_id(path: Path) -> str:
    return str(path.relative_to(REPO / "configs"))


def protocol_dataset(path: Path, cfg) -> str:
    """The dataset whose protocol and image shape a config has: cifar10-jpg/ runs CIFAR-10's on its JPEG copy."""
    return "cifar10" if "cifar10-jpg" in path.parts else cfg.data.dataset


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


def test_every_dataset_has_the_full_protocol_set():
    names = {"standard"} | {m + s for m in ("pgd-at", "trades", "mart", "awp-pgd-at") for s in ("", "-train")}
    for folder in ("cifar10", "cifar100", "tiny-imagenet", "cifar10/wrn-34-10"):
        assert {p.stem for p in (REPO / "configs" / folder).glob("*.yaml")} == names, folder
    jpg = {"standard", "pgd-at", "pgd-at-train", "trades", "trades-train"}
    assert {p.stem for p in (REPO / "configs" / "cifar10-jpg").glob("*.yaml")} == jpg


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "cifar10-jpg").glob("*.yaml")), ids=config_id)
def test_cifar10_jpg_configs_are_the_cifar10_protocol_on_the_jpeg_copy(path):
    jpg = to_dict(load_config(path))
    official = to_dict(load_config(REPO / "configs" / "cifar10" / path.name))
    assert (jpg["data"].pop("dataset"), official["data"].pop("dataset")) == ("image-folder", "cifar10")
    assert (jpg["data"].pop("name"), official["data"].pop("name")) == ("CIFAR-10 (JPEG copy)", None)
    assert jpg["data"].pop("root") == "../shared/datasets/cifar-10-jpg.tar.gz"
    official["data"].pop("root")
    assert jpg == official


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_states_the_protocol(path):
    cfg = load_config(path)
    stem = path.stem
    assert (cfg.topology is not None) == stem.endswith("-train")
    if cfg.topology is not None:
        assert cfg.topology.teacher is None and cfg.topology.layer == "features"
    dataset = protocol_dataset(path, cfg)
    if dataset not in PROTOCOL_DATASETS:
        return
    assert cfg.attack.norm == "Linf" and cfg.attack.eps == 8 / 255 and cfg.attack.step_size == 2 / 255
    assert cfg.attack.steps == 10 and cfg.data.augment.crop_padding == 4 and cfg.data.augment.flip
    o = cfg.optim
    base = stem.removesuffix("-train")
    arch = "wrn-34-10" if "wrn-34-10" in path.parts else "preact-resnet18"
    # the shared protocol, except where a method's authors published their own CIFAR-10 schedule
    lr, wd, epochs, milestones, beta = (
        AUTHORS_CIFAR10.get((base, arch), (0.1, 5e-4, 110, [100, 105], 6.0))
        if dataset == "cifar10"
        else (0.1, 5e-4, 110, [100, 105], 6.0)
    )
    assert (o.batch_size, o.lr, o.momentum, o.weight_decay, o.epochs) == (128, lr, 0.9, wd, epochs)
    assert o.schedule == "multistep" and o.milestones == milestones and o.gamma == 0.1
    # BatchNorm during the training attack as in each method's reference code
    assert cfg.attack.eval_mode == (base in ("standard", "trades", "mart"))
    assert cfg.data.val_size == 1000 and not cfg.data.download
    assert {"pgd-20", "autoattack"} <= set(cfg.evaluation.attacks)
    for attack in cfg.evaluation.attacks:
        parse_attack(attack)
    assert cfg.model.arch == arch
    expected_method = {
        "standard": "standard",
        "pgd-at": "pgd-at",
        "trades": "trades",
        "mart": "mart",
        "awp-pgd-at": "pgd-at",
    }[base]
    assert cfg.method.name == expected_method
    if base in ("trades", "mart"):
        assert cfg.method.beta == beta
    assert (getattr(cfg.method, "awp", None) is not None) == (base == "awp-pgd-at")


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_trains_one_step_on_synthetic_data_of_its_shape(path, stub_teachers, tmp_path):
    raw = load_config(path)
    dataset = protocol_dataset(path, raw)
    shape, classes = SHAPES[dataset]
    overrides = [
        "data.dataset=synthetic",
        f"data.synthetic_shape={list(shape)}",
        f"data.synthetic_classes={classes}",
        "data.synthetic_train=8",
        "data.synthetic_test=4",
        "data.val_size=4",
        "data.train_subset=null",
        f"model.args={TINY_ARGS[raw.model.arch]}",
        "optim.batch_size=4",
        "optim.epochs=1",
        # one attack step in training and validation keeps 100+ configs fast; the real counts are
        # checked in test_config_states_the_protocol
        "attack.steps=1",
        f"validation.attack_steps={min(raw.validation.attack_steps, 1)}",
        "validation.n=4",
        "evaluation.n=4",
        "runtime.progress=false",
        "runtime.device=cpu",
        "runtime.threads=1",
    ]
    if raw.topology is not None:
        overrides.append(f"topology.teacher={stub_teachers[dataset]}")
    cfg = load_config(path, overrides)
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
