"""A base method, a kernel, an attack and a data set added from outside the package, each in one place
(here, this module) with no edit to topoat: a config names them, validates, trains and evaluates."""

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from topoat.attacks import Attack, AttackFamily, AttackSpec, register_attack
from topoat.cli import main
from topoat.config import dump_config
from topoat.data import ImageDataset, load_dataset, register_dataset
from topoat.data.synthetic import make_synthetic
from topoat.errors import TopoatError
from topoat.evaluation.accuracy import evaluate
from topoat.evaluation.graph_metrics import extract, topology_metrics
from topoat.objectives import Knob, MethodSpec, Objective, ObjectiveOutput, build_objective, register_method
from topoat.objectives.base import cross_entropy_per_sample
from topoat.registry import ATTACKS, DATASETS, KERNELS, METHODS
from topoat.schema import MethodConfig
from topoat.topology import Kernel, SoftmaxCosine, TopologyLoss, register_kernel
from topoat.training.loop import Trainer


# -- a data set: synthetic images whose size is the loader's own argument ---------------------------------
def load_squares(root=None, *, seed=0, side=8):
    return make_synthetic((1, side, side), 3, 96, 32, seed)


# -- a base method: PGD-AT whose loss also weighs in the natural cross-entropy by its own knob ------------
@dataclass
class MixedATConfig(MethodConfig):
    mix: float = 0.5

    def checks(self):
        return [(0 <= self.mix <= 1, "method.mix must be in [0, 1]")]


class MixedAT(Objective):
    name = "mixed-at"

    def __init__(self, attack, mix):
        self.attack, self.mix = attack, mix

    def attack_loss(self, model, x, y):
        return lambda logits: cross_entropy_per_sample(logits, y)

    def loss(self, model, x, y, x_adv):
        logits_adv, features_adv = model(x_adv, return_features=True)
        logits_nat = model(x)
        loss = (1 - self.mix) * F.cross_entropy(logits_adv, y) + self.mix * F.cross_entropy(logits_nat, y)
        return ObjectiveOutput(loss, logits_adv=logits_adv, features_adv=features_adv, x_adv=x_adv)


def build_mixed_at(settings, attack):
    return MixedAT(attack, settings.mix)


# -- a kernel with a parameter of its own (topology.kernel_args) --------------------------------------------
@dataclass
class FixedGaussian(Kernel):
    bandwidth: float = 1.0

    def log_kernel(self, z, scale, allowed):
        d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1) * scale.flatten() ** 2
        return -d2 / (2 * self.bandwidth**2)


# -- an attack family: `noise-K`, K random sign steps of the whole radius, the worst one kept ----------------
class SignNoise(Attack):
    def __init__(self, model, eps, tries):
        super().__init__(model)
        self.eps, self.tries = eps, tries

    def perturb(self, x, y):
        best = x
        for _ in range(self.tries):
            x_adv = (x + self.eps * torch.randn_like(x).sign()).clamp(0, 1)
            wrong = self.model(x_adv).argmax(1) != y
            best = torch.where(wrong[:, None, None, None], x_adv, best)
        return best


def parse_noise(name):
    if not name.startswith("noise-"):
        return None
    tries = name.removeprefix("noise-")
    if not tries.isdigit() or int(tries) < 1:
        raise TopoatError(f"attack {name!r}: noise-K needs K >= 1")
    return AttackSpec(name, "noise", steps=int(tries))


def build_noise(spec, model, norm, eps, step_size, seed):
    return SignNoise(model, eps, spec.steps)


@pytest.fixture(scope="module", autouse=True)
def toys():
    """Each registered once, as its own module would at import; taken back after, for the other tests."""
    register_dataset("squares", load_squares)
    register_method(
        MethodSpec("mixed-at", build_mixed_at, MixedATConfig, attack_eval_mode=False, knob=Knob("mix", "m"))
    )
    register_kernel("fixed-gaussian")(FixedGaussian)
    register_attack(AttackFamily("noise", parse_noise, build_noise, "noise-K"))
    yield
    DATASETS.unregister("squares")
    METHODS.unregister("mixed-at")
    KERNELS.unregister("fixed-gaussian")
    ATTACKS.unregister("noise")


def toy_config(**overrides):
    base = {
        "data.dataset": "squares",
        "data.args": "{side: 10}",
        "data.val_size": 32,
        "optim.epochs": 1,
        "validation.n": 32,
        "evaluation.n": 32,
        "evaluation.attacks": "[noise-2, pgd-2]",
    }
    return tiny_config(**{**base, **overrides})


def test_each_toy_is_known_by_name_and_checked_like_a_built_in():
    assert load_dataset("squares", side=6).x_train.shape[1:] == (1, 6, 6)
    cfg = toy_config(**{"method.name": "mixed-at", "method.mix": 0.25})
    assert isinstance(cfg.method, MixedATConfig) and cfg.method.mix == 0.25
    assert cfg.attack.eval_mode is False  # the method's authors' BatchNorm mode
    assert "mix: 0.25" in dump_config(cfg)
    for overrides, message in [
        ({"data.args": "{size: 3}"}, r"data.args: unknown argument\(s\) size for squares \(allowed: side\)"),
        ({"method.name": "mixed-at", "method.mix": 2}, r"method.mix must be in \[0, 1\]"),
        ({"method.name": "trades", "method.mix": 0.1}, "method.mix applies to mixed-at only, not trades"),
        ({"topology.kernel": "fixed-gaussian", "topology.kernel_args": "{width: 1}"}, "unknown parameter"),
        ({"evaluation.attacks": "[noise-0]"}, "noise-K needs K >= 1"),
        ({"method.name": "nope"}, "method.name must be one of .*'mixed-at'"),
    ]:
        with pytest.raises(TopoatError, match=message):
            toy_config(**overrides)


def test_a_run_of_the_toy_method_and_kernel_on_the_toy_data_trains_and_is_evaluated_by_the_toy_attack(tmp_path):
    teacher = tmp_path / "teacher"
    Trainer.from_config(toy_config(**{"method.name": "standard", "validation.attack_steps": 0}), teacher).run()
    cfg = toy_config(
        **{
            "method.name": "mixed-at",
            "topology.teacher": str(teacher / "last.pt"),
            "topology.kernel": "fixed-gaussian",
            "topology.kernel_args": "{bandwidth: 2.0}",
        }
    )
    objective = build_objective(cfg, teacher=torch.nn.Identity())
    assert objective.topology.kernel == FixedGaussian(bandwidth=2.0)
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "results.json").read_text())["runs"]["tiny"]
    assert run["method"] == "mixed-at" and run["method_config"]["mix"] == 0.5
    assert {"noise-2", "pgd-2"} <= set(run["robust_acc"])
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["topo_adv"] > 0 and record["val_graph_kl"] >= 0
    # and by name on any model, as `topoat eval --attacks noise-3` and the library's evaluate do
    json_path = tmp_path / "eval.json"
    argv = ["eval", str(tmp_path / "run" / "last.pt"), "--attacks", "noise-3", "--n", "16", "--no-progress"]
    assert main([*argv, "--json", str(json_path)]) == 0
    assert "noise-3" in json.loads(json_path.read_text())["robust_acc"]
    data: ImageDataset = load_dataset("squares", side=10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 3))
    result = evaluate(model, data.x_test[:8].float() / 255, data.y_test[:8], ["noise-2"], eps=0.1, progress=False)
    assert result.robust_acc["noise-2"] <= result.natural_acc


def test_the_validation_graph_uses_the_configured_kernel(tmp_path):
    """val_graph_kl is the run's own topology loss (here softmax-cosine at temperature 0.5), not the default."""
    teacher = tmp_path / "teacher"
    Trainer.from_config(
        tiny_config(**{"method.name": "standard", "validation.attack_steps": 0, "optim.epochs": 1}), teacher
    ).run()
    cfg = tiny_config(**{"topology.teacher": str(teacher / "last.pt"), "topology.temperature": 0.5, "optim.epochs": 1})
    trainer = Trainer.from_config(cfg, tmp_path / "run")
    trainer.run()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["val_graph_kl"]
    parts = trainer.parts
    assert parts.reference is not None and parts.x_val is not None
    student = extract(parts.model, parts.x_val)
    reference = extract(parts.reference, parts.x_val)

    def graph_kl(loss):
        return topology_metrics(student, reference, graph_size=cfg.optim.batch_size, kernel=loss)["graph_kl"]

    assert logged == pytest.approx(graph_kl(TopologyLoss(SoftmaxCosine(temperature=0.5))), rel=1e-5)
    assert logged != pytest.approx(graph_kl(TopologyLoss()), rel=1e-3)
