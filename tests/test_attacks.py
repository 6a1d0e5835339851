import pytest
from conftest import train_undefended

from topoat import CW, FGSM, PGD, evaluate
from topoat.attacks.threat import ThreatModel
from topoat.errors import TopoatError


@pytest.fixture(scope="module")
def undefended():
    return train_undefended(epochs=15, n_test=128)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.5), ("L2", 6.0)])
def test_pgd_breaks_undefended_model_and_stays_in_the_ball(undefended, norm, eps):
    model, x, y = undefended
    assert (model(x).argmax(1) == y).float().mean() > 0.9
    attack = PGD(model, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    x_adv = attack(x, y)
    assert (model(x_adv).argmax(1) == y).float().mean() < 0.05
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()


def test_attacks_leave_parameters_and_mode_alone(undefended):
    model, x, y = undefended
    model.train()
    for attack in (FGSM(model, 0.1), PGD(model, 0.1, 0.025, 3, restarts=2), CW(model, 0.1, 0.025, 3)):
        attack(x[:8], y[:8])
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_evaluate_worst_case_is_per_sample(undefended):
    model, x, y = undefended
    res = evaluate(model, x, y, ["fgsm", "pgd-5"], eps=0.05, batch_size=50, progress=False)
    assert 0 <= res.robust_acc["worst"] <= min(res.robust_acc["fgsm"], res.robust_acc["pgd-5"])
    assert res.robust_acc["pgd-5"] <= res.natural_acc
    small = evaluate(model, x, y, ["pgd-10"], eps=0.02, progress=False).robust_acc["pgd-10"]
    large = evaluate(model, x, y, ["pgd-10"], eps=0.3, progress=False).robust_acc["pgd-10"]
    assert large <= small and large < 0.05


@pytest.mark.parametrize(
    "norm,eps,message",
    [
        ("L1", 0.1, "evaluate: norm must be Linf or L2, got 'L1'"),
        ("Linf", float("nan"), "evaluate: eps must be a finite number >= 0, got nan"),
        ("L2", -1.0, "evaluate: eps must be a finite number >= 0, got -1.0"),
        ("Linf", 8, "evaluate: Linf eps must be <= 1 (images are in [0, 1]), got 8"),
    ],
)
def test_a_bad_threat_model_is_one_line_where_it_is_made(undefended, norm, eps, message):
    model, x, y = undefended
    with pytest.raises(TopoatError) as error:
        evaluate(model, x, y, ["fgsm"], norm=norm, eps=eps, progress=False)
    assert str(error.value) == message
    with pytest.raises(TopoatError, match="^threat model: "):
        ThreatModel(norm, eps)


def test_a_threat_model_is_a_value():
    threat = ThreatModel("L2", 1)
    assert threat == ThreatModel("L2", 1.0, "elsewhere") and isinstance(threat.eps, float)
    assert threat.step() == 0.25 and threat.step(0.1) == 0.1 and str(threat) == "L2 eps 1"
    assert ThreatModel("L2", 1.5).eps == 1.5  # an L2 ball may be wider than 1
    with pytest.raises(AttributeError):
        threat.eps = 2.0  # type: ignore[misc]
