"""The TRAIN options measured in the PreAct diagnosis: the divergence's direction, the entropy penalty,
centred features, a temperature from the teacher's perplexity, BatchNorm in the clean forward, the
lambda warm-up, gradient balancing, the gradient diagnostics, pooled layers and gradient clipping.

Formulas are checked against float64 numpy references with absolute tolerances sized for fp32 on any CPU.
"""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config
from scipy.special import logsumexp
from torch import nn

from topoat import TopologyLoss, build_model
from topoat.errors import TopoatError
from topoat.evaluation.graph_metrics import graph_shape
from topoat.models import representation
from topoat.objectives import PGDAT, TopologyRegularized
from topoat.objectives.train_wrapper import batchnorm_mode
from topoat.topology import affinity_log_probs, row_entropy, temperature_for_perplexity
from topoat.training.loop import Trainer

KL_ABS = 2e-5  # fp32 graphs of a few samples: a few 1e-7 per entry, whatever the value's size


def np_log_graph(z, temperature=0.1, center="none"):
    """log p(j|i) of the softmax-cosine graph, float64, diagonal excluded (-inf)."""
    z = np.asarray(z, dtype=np.float64)
    if center == "batch":
        z = z - z.mean(0, keepdims=True)
    elif center == "sample":
        z = z - z.mean(1, keepdims=True)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ zn.T / temperature
    np.fill_diagonal(logits, -np.inf)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def np_kl(logp, logq):
    """(1/n) sum_i KL(P(.|i) || Q(.|i)) over the off-diagonal entries."""
    off = ~np.eye(len(logp), dtype=bool)
    return float((np.exp(logp[off]) * (logp[off] - logq[off])).sum() / len(logp))


def np_entropy(logp):
    off = ~np.eye(len(logp), dtype=bool)
    return -np.where(off, np.exp(logp) * np.where(off, logp, 0), 0).sum(1)


@pytest.fixture
def features():
    rng = np.random.default_rng(3)
    return np.abs(rng.normal(size=(9, 6))), np.abs(rng.normal(size=(9, 5)))  # non-negative, as after a ReLU


def f32(a):
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "symmetric"])
def test_divergences_match_the_definitions(features, divergence):
    s, t = features
    ls, lt = np_log_graph(s), np_log_graph(t)
    expected = {
        "forward": np_kl(lt, ls),
        "reverse": np_kl(ls, lt),
        "symmetric": 0.5 * (np_kl(lt, ls) + np_kl(ls, lt)),
    }[divergence]
    got = TopologyLoss(divergence=divergence)(f32(s), f32(t)).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=KL_ABS)


def test_entropy_penalty_adds_the_students_excess_row_entropy(features):
    s, t = features
    ls, lt = np_log_graph(s), np_log_graph(t)
    excess = np.maximum(np_entropy(ls) - np_entropy(lt), 0).mean()
    got = TopologyLoss(entropy_weight=2.0)(f32(s), f32(t)).item()
    assert got == pytest.approx(np_kl(lt, ls) + 2.0 * excess, rel=1e-4, abs=KL_ABS)
    # a student flatter than its teacher pays; the same graph pays nothing
    assert TopologyLoss(entropy_weight=1.0)(f32(t), f32(t)).item() == pytest.approx(0.0, abs=KL_ABS)


@pytest.mark.parametrize("center", ["batch", "sample"])
def test_centred_graphs(features, center):
    s, t = features
    expected = np_kl(np_log_graph(t, center=center), np_log_graph(s, center=center))
    got = TopologyLoss(center=center)(f32(s), f32(t)).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=KL_ABS)
    # both centrings remove an offset shared by every entry, which the plain cosine graph does not ignore
    shifted = s + 5.0
    assert TopologyLoss(center=center)(f32(shifted), f32(t)).item() == pytest.approx(got, rel=1e-3, abs=KL_ABS)
    assert TopologyLoss()(f32(shifted), f32(t)).item() != pytest.approx(got, rel=1e-2)


def test_fused_terms_use_the_options(features):
    s, t = features
    loss = TopologyLoss(divergence="symmetric", entropy_weight=0.5, center="batch")
    fused = loss.terms([f32(s), f32(s[::-1].copy())], f32(t))
    torch.testing.assert_close(fused[0], loss(f32(s), f32(t)), rtol=1e-4, atol=KL_ABS)


@pytest.mark.parametrize("divergence", ["reverse", "symmetric"])
def test_gradients_stay_finite_with_excluded_entries(features, divergence):
    s, t = features
    z = f32(s).requires_grad_(True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    TopologyLoss(divergence=divergence, entropy_weight=1.0, class_aware="within")(z, f32(t), y).backward()
    assert torch.isfinite(z.grad).all()


def test_temperature_for_perplexity_gives_the_teachers_rows_that_entropy(features):
    _, t = features
    for perplexity in (2.0, 5.0):
        temperature = temperature_for_perplexity(f32(t), perplexity)
        entropy = np_entropy(np_log_graph(t, temperature)).mean()
        assert entropy == pytest.approx(math.log(perplexity), abs=1e-4)
    with pytest.raises(ValueError, match="perplexity"):
        temperature_for_perplexity(f32(t), 8.5)


def bn_model():
    torch.manual_seed(0)
    return build_model("small-cnn", 3, 1, [0.5], [0.5], width=2, feature_dim=8).train()


def running_stats(model):
    return [b.running_mean.clone() for b in model.modules() if isinstance(b, nn.BatchNorm2d)]


def test_batchnorm_modes_of_the_clean_forward():
    x = torch.rand(8, 1, 12, 12)
    model = bn_model()
    before = running_stats(model)
    with batchnorm_mode(model, "frozen"):
        frozen = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, running_stats(model), strict=True))  # untouched
    with batchnorm_mode(model, "eval"):
        evaluated = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, running_stats(model), strict=True))
    norms = [b for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    assert model.training and all(b.training and b.momentum == 0.1 for b in norms)  # restored
    torch.testing.assert_close(evaluated, model.eval()(x))
    model.train()
    torch.testing.assert_close(frozen, model(x))  # batch statistics, as in train mode
    assert not all(
        torch.equal(a, b) for a, b in zip(before, running_stats(model), strict=True)
    )  # train mode updates them


@pytest.mark.parametrize("mode,updates", [("train", True), ("frozen", False), ("eval", False)])
def test_train_clean_forward_leaves_running_statistics_to_the_base_method(mode, updates):
    attack = tiny_config().attack
    teacher = bn_model().eval()
    model = bn_model()
    x, y = torch.rand(8, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x_adv = (x + 0.05).clamp(0, 1)
    objective = TopologyRegularized(PGDAT(attack), teacher, 1.0, 1.0, clean_batchnorm=mode)
    with torch.no_grad():
        model(x_adv)  # what the base method's own forward does to the statistics
    after_base = running_stats(model)
    model = bn_model()
    objective.loss(model, x, y, x_adv)
    same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(after_base, running_stats(model), strict=True))
    assert same != updates


def test_warmup_ramps_the_weights_with_training_progress():
    attack = tiny_config().attack
    model, teacher = bn_model(), bn_model().eval()
    x, y = torch.rand(8, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x_adv = (x + 0.05).clamp(0, 1)
    objective = TopologyRegularized(PGDAT(attack), teacher, 4.0, 4.0, warmup_epochs=2.0, clean_batchnorm="eval")
    values = []
    for progress in (0.0, 1.0, 3.0):
        objective.set_progress(progress)
        out = objective.loss(model, x, y, x_adv)
        topo = out.parts["topo_nat"] + out.parts["topo_adv"]
        values.append((out.loss - out.parts["ce_adv"]).item() / (4.0 * topo.item()))
    assert values == pytest.approx([0.0, 0.5, 1.0], abs=1e-5)


def test_balance_sets_each_terms_gradient_relative_to_the_base_loss():
    attack = tiny_config().attack
    model, teacher = bn_model(), bn_model().eval()
    x, y = torch.rand(8, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x_adv = (x + 0.05).clamp(0, 1)
    objective = TopologyRegularized(PGDAT(attack), teacher, 0.0, 0.5, balance=True)
    out = objective.loss(model, x, y, x_adv)
    weight = out.parts["weight_adv"].item()
    # recompute both gradients at the adversarial features by hand
    logits, feats = model(x_adv, return_features=True)
    ce = nn.functional.cross_entropy(logits, y)
    (g_base,) = torch.autograd.grad(ce, feats, retain_graph=True)
    topo = objective.topology(feats, representation(teacher, x, "features")[1])
    (g_topo,) = torch.autograd.grad(topo, feats)
    assert weight * g_topo.norm().item() == pytest.approx(0.5 * g_base.norm().item(), rel=1e-3)


def test_diagnostics_are_the_parameter_gradient_norms_of_both_parts():
    attack = tiny_config().attack
    model, teacher = bn_model(), bn_model().eval()
    x, y = torch.rand(8, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x_adv = (x + 0.05).clamp(0, 1)
    objective = TopologyRegularized(PGDAT(attack), teacher, 0.0, 3.0, diagnose_every=5)
    out = objective.loss(model, x, y, x_adv)
    params = list(model.parameters())
    model_copy = bn_model()
    logits = model_copy(x_adv)
    ce = nn.functional.cross_entropy(logits, y)
    g_base = torch.autograd.grad(ce, list(model_copy.parameters()))
    norm_base = torch.sqrt(sum((g.double() ** 2).sum() for g in g_base)).item()
    assert out.parts["grad_norm_base"].item() == pytest.approx(norm_base, rel=1e-3)
    assert out.parts["grad_norm_topo"].item() > 0 and -1 <= out.parts["grad_cosine"].item() <= 1
    assert len(params) > 0
    held = objective.loss(model, x, y, x_adv).parts["grad_norm_base"]  # measured again only 5 calls later
    assert held.item() == out.parts["grad_norm_base"].item()


def test_teacher_perplexity_sets_the_temperature_once_and_is_saved():
    attack = tiny_config().attack
    model, teacher = bn_model(), bn_model().eval()
    x, y = torch.rand(16, 1, 12, 12), torch.arange(16) % 3
    objective = TopologyRegularized(PGDAT(attack), teacher, 1.0, 1.0, teacher_perplexity=4.0)
    out = objective.loss(model, x, y, (x + 0.05).clamp(0, 1))
    temperature = objective.topology.kernel.temperature
    g = representation(teacher, x, "features")[1]
    assert row_entropy(affinity_log_probs(g, "softmax-cosine", temperature=temperature)).mean().item() == (
        pytest.approx(math.log(4.0), abs=1e-3)
    )
    assert out.parts["temperature"].item() == pytest.approx(temperature)
    objective.loss(model, x.flip(0), y, x)
    assert objective.topology.kernel.temperature == temperature  # fixed after the first batch
    restored = TopologyRegularized(PGDAT(attack), teacher, 1.0, 1.0, teacher_perplexity=4.0)
    restored.load_state_dict(objective.state_dict())
    assert restored.topology.kernel.temperature == pytest.approx(temperature)


def test_pooled_layer_is_the_spatial_mean():
    model = bn_model().eval()
    x = torch.rand(4, 1, 12, 12)
    _, flat = representation(model, x, "body.6")
    _, pooled = representation(model, x, "body.6:pool")
    channels = pooled.shape[1]
    torch.testing.assert_close(pooled, flat.view(4, channels, -1).mean(-1))


def test_graph_shape_of_collapsed_and_spread_features():
    spread = torch.eye(8).repeat(4, 1)  # 32 samples on 8 orthogonal directions
    collapsed = torch.ones(32, 8) + 0.01 * torch.rand(32, 8)
    a, b = graph_shape(spread, 32), graph_shape(collapsed, 32)
    assert a["mean_cosine"] == pytest.approx(3 / 31, abs=1e-5) and b["mean_cosine"] > 0.99
    assert b["graph_entropy"] == pytest.approx(math.log(31), abs=1e-3)
    assert b["graph_entropy"] > a["graph_entropy"]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("topology.divergence", "sideways", "divergence"),
        ("topology.entropy_weight", "-1", "entropy_weight"),
        ("topology.teacher_perplexity", "500", "teacher_perplexity"),
        ("optim.grad_clip", "0", "grad_clip"),
        ("topology.warmup_epochs", "-1", "warmup_epochs"),
    ],
)
def test_bad_option_values_are_one_line_errors(key, value, message):
    with pytest.raises(TopoatError, match=message):
        tiny_config(**{"topology.teacher": "t.pt", key: value})


def test_a_run_logs_the_diagnostics_and_the_validation_graph_uses_the_configured_loss(tmp_path):
    teacher_dir = tmp_path / "teacher"
    Trainer.from_config(tiny_config(**{"method.name": "standard", "optim.epochs": 1}), teacher_dir).run()
    cfg = tiny_config(
        **{
            "topology.teacher": str(teacher_dir / "last.pt"),
            "topology.temperature": 0.5,
            "topology.diagnose_every": 3,
            "topology.clean_batchnorm": "frozen",
            "optim.grad_clip": 1.0,
            "optim.epochs": 1,
        }
    )
    Trainer.from_config(cfg, tmp_path / "student").run()
    record = json.loads((tmp_path / "student" / "metrics.jsonl").read_text())
    for key in ("grad_norm_base", "grad_norm_topo", "grad_cosine", "val_graph_entropy", "val_mean_cosine"):
        assert math.isfinite(record[key]), key
    assert record["val_reference_graph_entropy"] > 0
    # the logged graph KL is the configured loss (temperature 0.5), not the default's (0.1)
    from topoat.evaluation.graph_metrics import extract
    from topoat.runs.checkpoint import load_model

    student, reference = load_model(tmp_path / "student" / "last.pt"), load_model(teacher_dir / "last.pt")
    from topoat.data import dataset_from_config, to_float

    ds = dataset_from_config(cfg.data)
    x_val = to_float(ds.x_val[: cfg.validation.n])
    s, t = extract(student, x_val), extract(reference, x_val)
    kl = lambda loss: float(torch.stack([loss(s[i : i + 32], t[i : i + 32]) for i in (0, 32)]).mean())  # noqa: E731
    assert record["val_graph_kl"] == pytest.approx(kl(TopologyLoss(temperature=0.5)), rel=1e-3, abs=1e-5)
    assert record["val_graph_kl"] != pytest.approx(kl(TopologyLoss(temperature=0.1)), rel=1e-2)


def test_projection_head_is_trained_with_the_model_and_saved(tmp_path):
    from topoat.training.build import build_run

    teacher_dir = tmp_path / "teacher"
    Trainer.from_config(tiny_config(**{"method.name": "standard", "optim.epochs": 1}), teacher_dir).run()
    cfg = tiny_config(**{"topology.teacher": str(teacher_dir / "last.pt"), "topology.projection": 8})
    parts = build_run(cfg)
    head = parts.objective.head
    assert head is not None and head[-1].out_features == 8 and head[0].in_features == 16  # feature_dim 16
    optimised = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in head.parameters()} <= optimised
    before = [p.detach().clone() for p in head.parameters()]
    x, y = parts.x_train[:32].float() / 255, parts.y_train[:32]
    out = parts.objective(parts.model, x, y)
    parts.optimizer.zero_grad()
    out.loss.backward()
    parts.optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))
    state = parts.objective.state_dict()
    again = build_run(cfg).objective
    again.load_state_dict(state)
    for a, b in zip(head.parameters(), again.head.parameters(), strict=True):
        torch.testing.assert_close(a, b)
