"""Every base method's loss, TRAIN and AWP against values worked out independently (numpy, by hand, on
a 2-layer network with fixed inputs), and every method x {base, + TRAIN} training on synthetic data."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch import nn

from topoat.config import load_config
from topoat.errors import TopoatError
from topoat.models import build_model
from topoat.objectives import MART, PGDAT, TRADES, AdversarialWeightPerturbation, TopologyRegularized, build_objective

# ---------------------------------------------------------------------------------------------------
# A 2-layer network and its numpy twin


class TwoLayer(nn.Module):
    """(n, 1, 2, 2) images -> 4 inputs -> ReLU hidden layer (the features) -> logits."""

    def __init__(self, w1, b1, w2, b2):
        super().__init__()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0])
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0])
        with torch.no_grad():
            for p, v in zip(
                [self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias], [w1, b1, w2, b2], strict=True
            ):
                p.copy_(torch.tensor(v, dtype=torch.float32))

    def forward(self, x, return_features=False):
        h = torch.relu(self.fc1(x.flatten(1)))
        logits = self.fc2(h)
        return (logits, h) if return_features else logits


STUDENT = dict(
    w1=np.array([[0.5, -0.3, 0.8, 0.1], [-0.2, 0.7, 0.4, -0.6], [0.9, 0.2, -0.5, 0.3]]),
    b1=np.array([0.6, 0.5, 0.4]),  # large enough that every hidden unit is active on the inputs below
    w2=np.array([[1.0, -0.5, 0.3], [-0.7, 0.8, 0.2], [0.1, 0.4, -0.9]]),
    b2=np.array([0.05, -0.1, 0.02]),
)
TEACHER = dict(  # another width: only graphs are compared, never features
    w1=np.array(
        [
            [0.3, 0.1, -0.2, 0.6],
            [0.4, -0.5, 0.2, 0.1],
            [-0.3, 0.2, 0.7, 0.5],
            [0.6, 0.6, -0.1, -0.4],
            [0.2, -0.3, -0.3, 0.8],
        ]
    ),
    b1=np.array([0.7, 0.6, 0.5, 0.8, 0.6]),
    w2=np.array([[0.5, -0.2, 0.3, 0.1, -0.4], [0.2, 0.3, -0.5, 0.4, 0.1], [-0.3, 0.1, 0.2, -0.2, 0.5]]),
    b2=np.array([0.0, 0.1, -0.1]),
)
X = np.array(
    [[0.1, 0.9, 0.4, 0.6], [0.8, 0.2, 0.5, 0.3], [0.3, 0.3, 0.9, 0.1], [0.6, 0.7, 0.2, 0.8], [0.2, 0.5, 0.7, 0.4]]
)
DELTA = 0.1 * np.array([[1, -1, 1, 1], [-1, -1, 1, -1], [1, 1, -1, 1], [-1, 1, 1, -1], [1, -1, -1, -1]])
X_ADV = np.clip(X + DELTA, 0, 1)
Y = np.array([0, 1, 2, 1, 0])


def np_forward(p, x):
    a = x @ p["w1"].T + p["b1"]
    h = np.maximum(a, 0)
    return h @ p["w2"].T + p["b2"], h, a


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ce(z, y):
    return float(np.mean(-np.log(np_softmax(z)[np.arange(len(y)), y])))


def np_kl_rows(p, q):
    return (p * (np.log(p) - np.log(q))).sum(1)


def np_graph_kl(student, teacher, labels=None, mode="off", n_rows=None):
    """(1/n) sum_i KL(P_T(.|i) || P_S(.|i)) with the cosine kernel, from the definition, loops and all."""

    def probs(z):
        n = len(z)
        k = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                allowed = i != j and (mode == "off" or (labels[i] == labels[j]) == (mode == "within"))
                if allowed:
                    k[i, j] = (1 + z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))) / 2
        return k

    ks, kt = probs(student), probs(teacher)
    rows = range(len(student) if n_rows is None else n_rows)
    terms = []
    for i in rows:
        if kt[i].sum() == 0:
            continue  # no allowed neighbour: the row is left out
        ps, pt = ks[i] / ks[i].sum(), kt[i] / kt[i].sum()
        terms.append(sum(pt[j] * math.log(pt[j] / ps[j]) for j in range(len(pt)) if pt[j] > 0))
    return sum(terms) / len(terms)


def t(a):
    return torch.tensor(a, dtype=torch.float32).view(-1, 1, 2, 2)


def student():
    return TwoLayer(**STUDENT)


def teacher():
    return TwoLayer(**TEACHER).eval()


def attack_config(**overrides):
    return load_config(data={"attack": {"eps": 0.1, "step_size": 0.05, "steps": 0, **overrides}}).attack


x, x_adv, y = t(X), t(X_ADV), torch.tensor(Y)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, which costs 100x on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Base losses


def test_pgd_at_loss_is_cross_entropy_at_x_adv():
    out = PGDAT(attack_config()).loss(student(), x, y, x_adv)
    z_adv = np_forward(STUDENT, X_ADV)[0]
    assert out.loss.item() == pytest.approx(np_ce(z_adv, Y), rel=1e-5)
    assert out.features_adv.shape == (5, 3) and out.features_nat is None


def test_pgd_at_attack_ascends_the_cross_entropy_from_x():
    model = student()
    got = PGDAT(attack_config(steps=1, random_start=False, eval_mode=False)).adversarial(model, x, y)
    z, h, a = np_forward(STUDENT, X)  # one signed step up the CE gradient, worked out by hand
    dz = np_softmax(z) - np.eye(3)[Y]
    dx = ((dz @ STUDENT["w2"]) * (a > 0)) @ STUDENT["w1"]
    assert torch.allclose(got, t(np.clip(X + 0.05 * np.sign(dx), 0, 1)))


def test_trades_loss_and_attack_objective():
    beta = 6.0
    obj = TRADES(attack_config(), beta)
    out = obj.loss(student(), x, y, x_adv)
    z, z_adv = np_forward(STUDENT, X)[0], np_forward(STUDENT, X_ADV)[0]
    kl = np_kl_rows(np_softmax(z), np_softmax(z_adv))
    assert out.loss.item() == pytest.approx(np_ce(z, Y) + beta * kl.mean(), rel=1e-5)
    assert out.parts["kl"].item() == pytest.approx(kl.mean(), rel=1e-4, abs=KL_ABS)  # a small KL (0.008)
    assert out.features_nat is not None and out.features_adv is not None  # TRAIN reuses them
    # the attack ascends the summed KL(f(x) || f(x')) (beta does not enter it)
    assert obj.attack_objective(student(), x, y)(x_adv).sum().item() == pytest.approx(kl.sum(), rel=1e-4, abs=KL_ABS)


def test_trades_starts_from_a_small_gaussian():
    xs = torch.full((2000, 1, 2, 2), 0.5)
    obj = TRADES(attack_config(steps=0, eps=0.1))
    delta = obj.adversarial(student(), xs, torch.zeros(2000, dtype=torch.long)) - xs
    assert delta.std().item() == pytest.approx(0.001, rel=0.05) and delta.abs().max() < 0.01


def test_mart_loss():
    beta = 6.0
    out = MART(attack_config(), beta).loss(student(), x, y, x_adv)
    z, z_adv = np_forward(STUDENT, X)[0], np_forward(STUDENT, X_ADV)[0]
    p, p_adv = np_softmax(z), np_softmax(z_adv)
    wrong = p_adv.copy()
    wrong[np.arange(5), Y] = -1
    bce = np_ce(z_adv, Y) + np.mean(-np.log(1.0001 - wrong.max(1) + 1e-12))
    kl = (p * (np.log(p) - np.log(p_adv + 1e-12))).sum(1)
    robust = np.mean(kl * (1.0000001 - p[np.arange(5), Y]))
    assert out.loss.item() == pytest.approx(bce + beta * robust, rel=1e-5)
    assert out.parts["kl_weighted"].item() == pytest.approx(robust, rel=1e-4, abs=KL_ABS)  # a small KL (0.005)


# ---------------------------------------------------------------------------------------------------
# TRAIN

# A graph KL is a sum of p * (log p_T - log p_S) terms; in fp32 each log carries an absolute rounding error
# of a few 1e-7 whatever the KL's size, and how it rounds depends on the CPU's kernels (AVX2, AVX-512,
# AMX). A small KL (1e-4) therefore needs an absolute tolerance, not only a relative one.
KL_ABS = 2e-6


@pytest.mark.parametrize("base_cls", [PGDAT, TRADES, MART])
def test_train_total_is_base_plus_both_topology_terms(base_cls):
    base = base_cls(attack_config())
    obj = TopologyRegularized(base, teacher(), lambda_nat=3.0, lambda_adv=7.0, kernel="cosine")
    out = obj.loss(student(), x, y, x_adv)
    h, h_adv, g = np_forward(STUDENT, X)[1], np_forward(STUDENT, X_ADV)[1], np_forward(TEACHER, X)[1]
    base_value = base.loss(student(), x, y, x_adv).loss.item()
    expected = base_value + 3.0 * np_graph_kl(h, g) + 7.0 * np_graph_kl(h_adv, g)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.parts["topo_nat"].item() == pytest.approx(np_graph_kl(h, g), rel=1e-4, abs=KL_ABS)


def test_train_class_aware_and_memory_bank():
    obj = TopologyRegularized(PGDAT(attack_config()), teacher(), 1.0, 0.0, class_aware="within", kernel="cosine")
    h, g = np_forward(STUDENT, X)[1], np_forward(TEACHER, X)[1]
    got = obj.loss(student(), x, y, x_adv).parts["topo_nat"].item()
    assert got == pytest.approx(np_graph_kl(h, g, Y, "within"), rel=1e-4, abs=KL_ABS)

    obj = TopologyRegularized(PGDAT(attack_config()), teacher(), 1.0, 0.0, memory_bank=16, kernel="cosine")
    first, second = slice(0, 3), slice(3, 5)
    obj.loss(student(), x[first], y[first], x_adv[first])
    got = obj.loss(student(), x[second], y[second], x_adv[second]).parts["topo_nat"].item()
    order = [3, 4, 0, 1, 2]  # this batch's rows, then the bank's; the loss averages this batch's rows
    assert got == pytest.approx(np_graph_kl(h[order], g[order], n_rows=2), rel=1e-4, abs=KL_ABS)


def test_train_named_layer_uses_a_forward_hook():
    obj = TopologyRegularized(PGDAT(attack_config()), teacher(), 1.0, 1.0, layer="fc1", kernel="cosine")
    out = obj.loss(student(), x, y, x_adv)
    a, g = np_forward(STUDENT, X)[2], np_forward(TEACHER, X)[2]  # fc1's output, before the ReLU
    assert out.parts["topo_nat"].item() == pytest.approx(np_graph_kl(a, g), rel=1e-4, abs=KL_ABS)


def test_attack_uses_topology_ascends_base_plus_lambda_adv_topology():
    obj = TopologyRegularized(PGDAT(attack_config()), teacher(), 1.0, 7.0, attack_uses_topology=True, kernel="cosine")
    value = obj.attack_objective(student(), x, y)(x_adv).sum().item()
    z_adv, h_adv = np_forward(STUDENT, X_ADV)[:2]
    g = np_forward(TEACHER, X)[1]
    assert value == pytest.approx(5 * (np_ce(z_adv, Y) + 7.0 * np_graph_kl(h_adv, g)), rel=1e-5)
    plain = TopologyRegularized(PGDAT(attack_config()), teacher(), 1.0, 7.0, kernel="cosine")
    assert plain.attack_objective(student(), x, y)(x_adv).sum().item() == pytest.approx(5 * np_ce(z_adv, Y), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# AWP


def np_ce_gradients(p, x, y):
    """d mean CE / d (w1, b1, w2, b2) of the 2-layer network, by hand."""
    z, h, a = np_forward(p, x)
    dz = (np_softmax(z) - np.eye(z.shape[1])[y]) / len(y)
    da = (dz @ p["w2"]) * (a > 0)
    return {"w1": da.T @ x, "b1": da.sum(0), "w2": dz.T @ h, "b2": dz.sum(0)}


def params_of(model):
    return {"w1": model.fc1.weight, "b1": model.fc1.bias, "w2": model.fc2.weight, "b2": model.fc2.bias}


def test_awp_perturbs_each_weight_by_gamma_times_its_norm_up_the_loss_gradient():
    gamma = 0.01
    model = student()
    awp = AdversarialWeightPerturbation(PGDAT(attack_config()), gamma=gamma)
    offsets = {id(w): o for w, o in awp.perturbation(model, x, y, x_adv)}
    grads = np_ce_gradients(STUDENT, X_ADV, Y)
    for name, p in params_of(model).items():
        if name.startswith("b"):
            assert id(p) not in offsets  # 1-D parameters are left alone
            continue
        expected = gamma * np.linalg.norm(STUDENT[name]) * grads[name] / np.linalg.norm(grads[name])
        assert np.allclose(offsets[id(p)].numpy(), expected, rtol=1e-3, atol=1e-7)
        assert offsets[id(p)].norm().item() == pytest.approx(gamma * np.linalg.norm(STUDENT[name]), rel=1e-5)
    assert all(torch.equal(p, torch.tensor(STUDENT[k], dtype=torch.float32)) for k, p in params_of(model).items())


def test_awp_step_is_the_gradient_at_the_perturbed_weights_applied_to_the_original_ones():
    gamma, lr = 0.05, 0.1
    model = student()
    awp = AdversarialWeightPerturbation(PGDAT(attack_config()), gamma=gamma)
    offsets = {id(w): o.numpy().copy() for w, o in awp.perturbation(model, x, y, x_adv)}
    perturbed = {k: STUDENT[k] + offsets.get(id(p), 0.0) for k, p in params_of(model).items()}
    assert np.array_equal(perturbed["b1"], STUDENT["b1"])

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    out = awp.loss(model, x, y, x_adv)
    assert out.loss.item() == pytest.approx(np_ce(np_forward(perturbed, X_ADV)[0], Y), rel=1e-5)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    out.after_step()
    grads = np_ce_gradients(perturbed, X_ADV, Y)
    for k, p in params_of(model).items():
        assert np.allclose(p.detach().numpy(), STUDENT[k] - lr * grads[k], atol=1e-6), k


def test_awp_restores_the_weights_and_waits_for_its_warmup():
    model = student()
    awp = AdversarialWeightPerturbation(TRADES(attack_config()), gamma=0.01, warmup_epochs=1)
    awp.set_epoch(0)
    out = awp(model, x, y)
    assert out.after_step is None and not awp.active
    awp.set_epoch(1)
    before = [p.detach().clone() for p in model.parameters()]
    out = awp.loss(model, x, y, x_adv)
    assert not torch.equal(model.fc1.weight, before[0])  # perturbed while the loss is taken
    out.after_step()  # no optimizer step: the original weights come back
    assert all(torch.allclose(p, b, rtol=0, atol=1e-7) for p, b in zip(model.parameters(), before, strict=True))


# ---------------------------------------------------------------------------------------------------
# Config and every method x {base, + TRAIN} training


def test_awp_config():
    cfg = tiny_config(**{"method.name": "trades", "method.awp.gamma": 0.01})
    assert cfg.method.awp.gamma == 0.01 and cfg.method.awp.warmup_epochs == 0
    with pytest.raises(TopoatError, match="method.awp needs an adversarial method"):
        tiny_config(**{"method.name": "standard", "method.awp": "{}"})
    with pytest.raises(TopoatError, match="method.name must be one of"):
        tiny_config(**{"method.name": "fgsm-at"})


COMBINATIONS = [
    ("standard", None),
    ("pgd-at", None),
    ("trades", None),
    ("mart", None),
    ("pgd-at", 0.01),
    ("trades", 0.01),
    ("mart", 0.01),
]


def small_cnn(width):
    return build_model("small-cnn", 4, 1, [0.5], [0.5], width=width, feature_dim=4 * width)


def synthetic_batch(n=32, seed=0):
    """Four classes, each a noisy bright quadrant: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.3 * torch.rand(n, 1, 12, 12, generator=g)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, 6 * r : 6 * r + 6, 6 * q : 6 * q + 6] += 0.6
    return x.clamp(0, 1), y


def train_steps(objective, lr: float, steps: int):
    """A width-4 small CNN trained for `steps` SGD steps on one synthetic batch: the losses (all finite)
    and the last step's output."""
    model = small_cnn(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = synthetic_batch()
    losses = []
    for _ in range(steps):
        out = objective(model, x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if out.after_step is not None:
            out.after_step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    return losses, out


@pytest.mark.parametrize("with_train", [False, True], ids=["base", "train"])
@pytest.mark.parametrize("method,awp", COMBINATIONS, ids=[m + ("+awp" if a else "") for m, a in COMBINATIONS])
def test_every_method_trains_and_lowers_its_loss(method, awp, with_train):
    torch.manual_seed(0)
    overrides = {"method.name": method, "attack.steps": 2, "attack.step_size": 0.05}
    if awp:
        overrides["method.awp.gamma"] = awp
    if with_train:
        # the cosine graph: its loss is small, so lr 0.05 suits every method; the sharp default's term is
        # about 100x larger and is covered at a smaller weight below
        overrides.update({"topology.lambda_nat": 1.0, "topology.lambda_adv": 1.0, "topology.kernel": "cosine"})
    cfg = tiny_config(**overrides)
    objective = build_objective(cfg, small_cnn(2).eval() if with_train else None)
    losses, out = train_steps(objective, lr=0.05, steps=8)
    assert ("topo_nat" in out.parts) == with_train
    assert ("topo_adv" in out.parts) == (with_train and method != "standard")
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses


@pytest.mark.parametrize("method", ["standard", "pgd-at", "trades", "mart"])
def test_train_options_work_with_every_method(method):
    """Class-aware graphs, a memory bank, a named layer and the topology-aware attack, all at once."""
    torch.manual_seed(0)
    cfg = tiny_config(
        **{
            "method.name": method,
            "attack.steps": 1,
            "topology.class_aware": "within",
            "topology.memory_bank": 48,
            "topology.layer": "body.4",
            "topology.teacher_layer": "body.4",
            "topology.attack_uses_topology": True,
            "topology.lambda_nat": 1.0,
        }
    )
    model = small_cnn(4)
    objective = build_objective(cfg, small_cnn(2).eval())
    for seed in range(2):  # the second step's graphs include the first step's bank rows
        x, y = synthetic_batch(16, seed)
        out = objective(model, x, y)
        out.loss.backward()
        assert math.isfinite(out.loss.item()) and out.parts["topo_nat"].item() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert objective.banks["nat"].student.shape[0] == 32


def test_trainer_runs_awp_trades_with_train_and_logs_both_parts(tmp_path):
    from topoat.training.loop import Trainer

    teacher_dir = tmp_path / "teacher"
    Trainer.from_config(
        tiny_config(**{"method.name": "standard", "validation.attack_steps": 0, "optim.epochs": 1}), teacher_dir
    ).run()
    cfg = tiny_config(
        **{
            "method.name": "trades",
            "method.awp.warmup_epochs": 1,
            "topology.teacher": str(teacher_dir / "last.pt"),
            "topology.lambda_nat": 5,
            "topology.lambda_adv": 5,
            "topology.kernel": "cosine",
        }
    )
    trainer = Trainer.from_config(cfg, tmp_path / "run")
    calls = []
    perturbation = trainer.objective.perturbation
    trainer.objective.perturbation = lambda *a: calls.append(trainer.objective.epoch) or perturbation(*a)
    trainer.run()
    assert calls and set(calls) == {1}  # no AWP in the warm-up epoch
    import json

    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce_nat", "kl", "topo_nat", "topo_adv"} <= set(record)


# ---------------------------------------------------------------------------------------------------
# PGD-AT's natural-loss mix, the distillation control, the authors' BatchNorm modes


def test_pgd_at_natural_weight_mixes_natural_cross_entropy():
    out = PGDAT(attack_config(), natural_weight=0.25).loss(student(), x, y, x_adv)
    z, z_adv = np_forward(STUDENT, X)[0], np_forward(STUDENT, X_ADV)[0]
    assert out.loss.item() == pytest.approx(0.75 * np_ce(z_adv, Y) + 0.25 * np_ce(z, Y), rel=1e-5)
    assert out.features_nat is not None  # TRAIN reuses the natural pass
    for bad in ("1.5", "-0.1"):
        with pytest.raises(TopoatError, match="natural_weight"):
            tiny_config(**{"method.natural_weight": bad})
    with pytest.raises(TopoatError, match="pgd-at only"):
        tiny_config(**{"method.name": "trades", "method.natural_weight": 0.5})


def np_distillation(student_logits, teacher_logits, temperature):
    p_t, p_s = np_softmax(teacher_logits / temperature), np_softmax(student_logits / temperature)
    return temperature**2 * float(np.mean(np_kl_rows(p_t, p_s)))


@pytest.mark.parametrize("base_cls", [PGDAT, TRADES])
def test_distillation_adds_the_tempered_kl_to_the_teacher(base_cls):
    from topoat.objectives import Distilled, distillation_loss

    base = base_cls(attack_config())
    obj = Distilled(base, teacher(), weight=0.5, temperature=4.0)
    out = obj.loss(student(), x, y, x_adv)
    z, g = np_forward(STUDENT, X)[0], np_forward(TEACHER, X)[0]
    kd = np_distillation(z, g, 4.0)
    assert out.parts["distillation"].item() == pytest.approx(kd, rel=1e-4, abs=KL_ABS)
    assert out.loss.item() == pytest.approx(
        base.loss(student(), x, y, x_adv).loss.item() + 0.5 * kd, rel=1e-5, abs=KL_ABS
    )
    assert obj.adversarial(student(), x, y) is not None  # the base method's attack, unchanged
    s = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    distillation_loss(s, torch.tensor(g, dtype=torch.float32), 2.0).backward()
    assert s.grad is not None and distillation_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_config_uses_the_lambda_key_and_a_study_teacher(tmp_path):
    from topoat.config import dump_config
    from topoat.objectives import Distilled

    cfg = tiny_config(**{"distillation.lambda": 2.0, "distillation.temperature": 3.0})
    assert cfg.distillation.lambda_ == 2.0 and "lambda: 2.0" in dump_config(cfg)
    assert load_config(data=__import__("yaml").safe_load(dump_config(cfg))).distillation.lambda_ == 2.0
    with pytest.raises(TopoatError, match="distillation.lambda must be >= 0"):
        tiny_config(**{"distillation.lambda": -1})
    with pytest.raises(TopoatError, match="distillation: a teacher model is required"):
        build_objective(cfg)
    assert isinstance(build_objective(cfg, distillation_teacher=small_cnn(2).eval()), Distilled)


def test_training_attack_batchnorm_mode_defaults_to_the_authors_choice():
    # Rice et al.'s PGD-AT and the AT-AWP code attack in train mode; TRADES and MART switch to eval mode.
    assert tiny_config(**{"method.name": "pgd-at"}).attack.eval_mode is False
    assert tiny_config(**{"method.name": "pgd-at", "method.awp.gamma": 0.005}).attack.eval_mode is False
    assert tiny_config(**{"method.name": "trades"}).attack.eval_mode is True
    assert tiny_config(**{"method.name": "mart"}).attack.eval_mode is True
    assert tiny_config(**{"method.name": "pgd-at", "attack.eval_mode": True}).attack.eval_mode is True


@pytest.mark.parametrize("method", ["pgd-at", "trades", "mart"])
def test_default_train_term_lowers_the_loss_with_every_method(method):
    torch.manual_seed(0)
    cfg = tiny_config(
        **{
            "method.name": method,
            "attack.steps": 2,
            "attack.step_size": 0.05,
            "topology.lambda_nat": 0.1,
            "topology.lambda_adv": 0.1,
        }
    )
    assert cfg.topology.kernel == "softmax-cosine" and cfg.topology.temperature == 0.1
    losses, _ = train_steps(build_objective(cfg, small_cnn(2).eval()), lr=0.02, steps=10)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
