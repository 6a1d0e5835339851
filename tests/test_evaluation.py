"""Robustness evaluation: every attack, AutoAttack through pyautoattack, `topoat eval`, sanity checks."""

import json

import pytest
import torch
from conftest import tiny_config, train_undefended
from torch import nn

from topoat.attacks import AutoAttack
from topoat.attacks.autoattack import plan_for_classes
from topoat.attacks.threat import ThreatModel
from topoat.cli import main
from topoat.errors import TopoatError
from topoat.evaluation.accuracy import evaluate, fixed_subset, parse_attack
from topoat.evaluation.checkpoint_accuracy import evaluate_checkpoint
from topoat.evaluation.sanity import Check, SanityReport, sanity_checks
from topoat.runs.checkpoint import model_record, save_atomic
from topoat.runs.results import format_table
from topoat.schema import to_dict

SHAPE = [1, 12, 12]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation (ruinous on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def undefended():
    return train_undefended()


@pytest.fixture(scope="module")
def three_classes():
    return train_undefended(num_classes=3, epochs=5)


class RoundedInputs(nn.Module):
    """Rounds inputs to 8 grey levels before the model: the gradient is zero almost everywhere, so
    gradient attacks stall although the model is no more robust (gradient masking by construction)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 8) / 8)


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(
    "attack",
    ["fgsm", "pgd-10", "pgd-5-r2", "cw-10", "apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square", "autoattack"],
)
def test_each_attack_breaks_an_undefended_model_at_a_large_eps(undefended, attack):
    model, x, y = undefended
    x, y = x[:32], y[:32]
    assert accuracy(model, x, y) > 0.9
    res = evaluate(model, x, y, [attack], eps=0.5, progress=False)
    assert res.robust_acc[attack] <= 0.05


def test_autoattack_stays_in_the_ball_and_is_at_or_below_pgd(undefended):
    model, x, y = undefended
    x, y = x[:32], y[:32]
    attack = AutoAttack(model, eps=0.05, attacks=["apgd-ce", "apgd-t"])
    x_adv = attack(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 0.05 + 1e-6
    res = evaluate(model, x, y, ["pgd-20", "aa:apgd-ce+apgd-t"], eps=0.05, progress=False)
    assert 0 < res.robust_acc["pgd-20"] < 1  # a moderate eps: the comparison means something
    assert res.robust_acc["aa:apgd-ce+apgd-t"] <= res.robust_acc["pgd-20"] + 1 / 32
    assert res.robust_acc["worst"] <= res.robust_acc["aa:apgd-ce+apgd-t"]


def test_evaluation_is_deterministic_and_leaves_the_callers_random_state(undefended):
    model, x, y = undefended
    state = torch.get_rng_state()
    a = evaluate(model, x[:32], y[:32], ["pgd-5", "apgd-ce"], eps=0.05, progress=False, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate(model, x[:32], y[:32], ["apgd-ce"], eps=0.05, progress=False, seed=3)
    assert torch.equal(a.correct["apgd-ce"], b.correct["apgd-ce"])  # independent of the other attacks
    assert torch.equal(fixed_subset(100, 10, 4), fixed_subset(100, 10, 4))
    assert set(fixed_subset(100, 10, 4).tolist()) <= set(fixed_subset(100, 40, 4).tolist())  # nested


def test_autoattack_on_a_fixed_subset_reports_like_for_like(undefended):
    model, x, y = undefended
    res = evaluate(model, x, y, ["pgd-5", "apgd-ce"], eps=0.05, autoattack_n=16, progress=False)
    assert res.n_of("pgd-5") == 64 and res.n_of("apgd-ce") == 16
    assert "worst" not in res.robust_acc  # the attacks ran on different images
    assert res.subset["n"] == 16 and set(res.subset["robust_acc"]) == {"pgd-5", "apgd-ce", "worst"}
    assert res.subset["robust_acc"]["worst"] <= res.subset["robust_acc"]["apgd-ce"]


def test_a_nan_weight_model_scores_zero_not_its_natural_accuracy(undefended):
    # NaN logits argmax to class 0: its images counted as correct, and the attack (NaN gradients) changed
    # nothing, so robust accuracy equalled natural accuracy
    import copy

    model, x, y = undefended
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    res = evaluate(broken, x[:32], y[:32], ["fgsm", "pgd-3"], eps=0.1, progress=False)
    assert res.natural_acc == 0 and res.robust_acc == {"fgsm": 0, "pgd-3": 0, "worst": 0}
    assert any("32 of 32 images gave non-finite logits" in note for note in res.notes)
    assert not evaluate(model, x[:32], y[:32], ["fgsm"], eps=0.1, progress=False).notes


def test_zero_images_are_refused(undefended):
    model, x, y = undefended
    with pytest.raises(TopoatError, match="no images to evaluate"):
        evaluate(model, x[:0], y[:0], ["fgsm"], progress=False)


def test_plan_for_fewer_than_ten_classes():
    assert plan_for_classes(["apgd-ce", "apgd-t", "fab-t", "square"], 10) == (
        ["apgd-ce", "apgd-t", "fab-t", "square"],
        9,
        [],
    )
    planned, targets, notes = plan_for_classes(["apgd-ce", "apgd-t"], 5)
    assert planned == ["apgd-ce", "apgd-t"] and targets == 4 and "4 target classes" in notes[0]
    planned, targets, notes = plan_for_classes(["apgd-ce", "apgd-t", "fab-t"], 3)
    assert planned == ["apgd-ce", "apgd-dlr", "fab-t"] and targets == 2 and "replaced by apgd-dlr" in notes[0]
    planned, _, notes = plan_for_classes(["apgd-ce", "apgd-t", "apgd-dlr"], 2)
    assert planned == ["apgd-ce"] and len(notes) == 2
    with pytest.raises(TopoatError, match="2-class"):
        plan_for_classes(["apgd-t"], 2)


def test_autoattack_runs_on_a_three_class_model_and_says_what_it_changed(three_classes):
    model, x, y = three_classes
    res = evaluate(model, x[:32], y[:32], ["autoattack"], eps=0.5, progress=False)
    assert res.robust_acc["autoattack"] <= 0.05
    assert any("replaced by apgd-dlr" in note for note in res.notes)
    assert any("2 target classes" in note for note in res.notes)


def test_attack_names():
    assert parse_attack("aa:apgd-ce+apgd-t").components == ("apgd-ce", "apgd-t")
    assert parse_attack("autoattack").version == "standard" and parse_attack("square").is_autoattack
    assert (parse_attack("pgd-50-r5").steps, parse_attack("pgd-50-r5").restarts) == (50, 5)
    for bad in ["pgd", "pgd-0", "aa:apgd-ce+bogus", "aa:apgd-ce+apgd-ce", "apgd-ce+apgd-t", "autoattack-fast"]:
        with pytest.raises(TopoatError):
            parse_attack(bad)
    with pytest.raises(TopoatError, match="evaluation.attacks"):
        tiny_config(**{"evaluation.attacks": "[pgd-20, pgd20]"})


def test_sanity_checks_pass_on_a_sane_model(undefended):
    model, x, y = undefended
    reference, _, _ = train_undefended(seed=1)
    report = sanity_checks(model, x, y, eps=0.05, steps=10, reference=reference, progress=False)
    assert report.passed, report.format()
    assert [c.status for c in report.checks] == ["PASS"] * 5


def test_sanity_checks_fail_on_a_gradient_masked_model(undefended):
    model, x, y = undefended
    masked = RoundedInputs(model)
    assert accuracy(masked, x, y) > 0.9
    # the standard model the masked one was made from is the natural transfer source
    report = sanity_checks(masked, x, y, eps=0.05, steps=10, reference=model, progress=False)
    status = {c.name: c.status for c in report.checks}
    assert not report.passed
    assert status["accuracy nears 0 at a large eps"] == "FAIL"
    assert status["transfer is weaker than white-box"] == "FAIL"
    assert "FAIL" in report.format()


# -- the command line ---------------------------------------------------------------------------------


def save_as_checkpoint(model, path, num_classes=10):
    """A topoat checkpoint of a model trained outside topoat, naming the synthetic data it was trained on."""
    record = model_record(model, "small-cnn", {"width": 8, "feature_dim": 32}, num_classes, 1)
    cfg = tiny_config(**{"data.args.shape": str(SHAPE), "data.args.test": 64, "data.args.classes": num_classes})
    record.update({"dataset": "synthetic", "config": to_dict(cfg)})
    save_atomic(record, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(undefended, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    reference, _, _ = train_undefended(seed=1)
    return save_as_checkpoint(undefended[0], folder / "model.pt"), save_as_checkpoint(reference, folder / "ref.pt")


def test_cli_eval_prints_a_table_and_writes_json(checkpoints, tmp_path, capsys):
    model, _ = checkpoints
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(model),
                "--attacks",
                "fgsm,pgd-5,apgd-ce",
                "--eps",
                "8/255",
                "--n",
                "32",
                "--autoattack-n",
                "16",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "pgd-5" in printed and "apgd-ce" in printed and "like-for-like" in printed
    doc = json.loads(out.read_text())
    assert doc["n"] == 32 and doc["eps"] == pytest.approx(8 / 255) and doc["dataset"] == "synthetic"
    assert set(doc["robust_acc"]) == {"fgsm", "pgd-5", "apgd-ce"} and doc["autoattack_subset"]["n"] == 16


def test_evaluate_checkpoint_is_the_command_without_its_printing(checkpoints, tmp_path, capsys):
    model, _ = checkpoints
    argv = ["eval", str(model), "--attacks", "fgsm,pgd-3", "--n", "32", "--no-progress"]
    assert main([*argv, "--json", str(tmp_path / "cli.json")]) == 0
    printed = capsys.readouterr().out
    outcome = evaluate_checkpoint(model, ["fgsm", "pgd-3"], n=32, json_path=tmp_path / "library.json")
    assert capsys.readouterr().out == ""  # silent unless given an echo
    assert outcome.threat == ThreatModel("Linf", 0.1) and outcome.passed and outcome.sanity is None
    cli, library = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("cli", "library"))
    assert library.pop("seconds").keys() == cli.pop("seconds").keys() and library == cli
    lines: list[str] = []
    evaluate_checkpoint(model, ["fgsm", "pgd-3"], n=32, echo=lines.append)
    table = "\n".join(lines).splitlines()
    assert len(table) == len(printed.splitlines()) and table[0] == printed.splitlines()[0]  # all but the seconds


def test_cli_sanity_passes_on_a_sane_model(checkpoints, capsys):
    model, reference = checkpoints
    assert (
        main(
            [
                "eval",
                str(model),
                "--attacks",
                "pgd-10",
                "--eps",
                "0.05",
                "--n",
                "48",
                "--sanity",
                "--sanity-steps",
                "10",
                "--reference",
                str(reference),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("  PASS  ") == 5 and "FAIL" not in out


def test_cli_sanity_failure_is_loud_and_exits_1(checkpoints, capsys, monkeypatch):
    import topoat.evaluation.sanity

    failing = SanityReport(32, [Check("transfer is weaker than white-box", "FAIL", "transfer 10.00 < pgd 90.00")])
    monkeypatch.setattr(topoat.evaluation.sanity, "sanity_checks", lambda *args, **kwargs: failing)
    model, _ = checkpoints
    assert main(["eval", str(model), "--attacks", "fgsm", "--n", "32", "--sanity", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "sanity check(s) FAILED" in captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--attacks", "pgd20"], "unknown attack 'pgd20'"),
        (["--attacks", "aa:apgd-ce+bogus"], "unknown AutoAttack attack 'bogus'"),
        (["--attacks", ","], "lists no attack"),
        (["--n", "0"], "argument --n: must be >= 1, got 0"),
        (["--eps", "-0.1"], "argument --eps: must be >= 0, got -0.1"),
        (["--eps", "8/0"], "bad eps"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
        (["--autoattack-n", "0"], "argument --autoattack-n: must be >= 1"),
        (["--step-size", "0"], "argument --step-size: must be > 0, got 0"),
        (["--results", "r.json"], "--results and --run go together"),
        (["--reference", "x.pt"], "--reference is used by --sanity only"),
        (["--sanity", "--reference", "missing.pt"], "checkpoint not found: missing.pt"),
        (["--dataset", "npz", "--data-root", "missing.npz"], "missing.npz"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--eps", "nan"], "bad eps 'nan': not a finite number"),
        (["--eps", "inf"], "bad eps 'inf': not a finite number"),
        (["--attacks", "fgsm", "--eps", "nan"], "bad eps 'nan': not a finite number"),
        (["--step-size", "nan"], "argument --step-size: bad eps 'nan': not a finite number"),
        (["--eps", "8"], "eval: Linf eps must be <= 1 (images are in [0, 1]), got 8"),
        (["--json", "missing/eval.json"], "--json missing/eval.json: folder missing does not exist"),
    ],
)
def test_cli_eval_bad_arguments_are_one_line_errors(checkpoints, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, _ = checkpoints
    assert main(["eval", str(model), "--no-progress"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_eval_refuses_a_dataset_the_model_does_not_fit(checkpoints, tmp_path, capsys):
    import numpy as np

    data = tmp_path / "five.npz"
    rng = np.random.default_rng(0)
    np.savez(
        data,
        x_train=rng.integers(0, 255, (20, 12, 12), dtype=np.uint8),
        y_train=np.arange(20) % 5,
        x_test=rng.integers(0, 255, (10, 12, 12), dtype=np.uint8),
        y_test=np.arange(10) % 5,
    )
    model, _ = checkpoints
    assert main(["eval", str(model), "--dataset", "npz", "--data-root", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "10 classes" in err and "5 classes" in err and err.count("\n") == 1
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_eval_merges_into_results_json_last_and_best(tmp_path, capsys):
    from topoat.config import dump_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_config(tiny_config(**{"optim.epochs": 2})))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    results = run / "results.json"
    entry = json.loads(results.read_text())["runs"]["tiny"]
    assert entry["best"]["checkpoint"] == "best.pt" and entry["best"]["epoch"] in (1, 2)
    assert set(entry["best"]["robust_acc"]) == {"pgd-3"}
    assert "(best@" in format_table({"tiny": entry})

    assert (
        main(
            [
                "eval",
                str(run / "last.pt"),
                "--attacks",
                "fgsm,apgd-ce",
                "--n",
                "64",
                "--autoattack-n",
                "32",
                "--results",
                str(results),
                "--run",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "eval",
                str(run / "best.pt"),
                "--attacks",
                "fgsm",
                "--n",
                "32",
                "--results",
                str(results),
                "--run",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    entry = json.loads(results.read_text())["runs"]["tiny"]
    assert set(entry["robust_acc"]) == {"pgd-3", "fgsm", "apgd-ce"}  # the stale per-sample worst is gone
    assert entry["n_by_attack"] == {"apgd-ce": 32} and entry["autoattack_subset"]["n"] == 32
    assert set(entry["best"]["robust_acc"]) == {"pgd-3", "fgsm"} and entry["best"]["n_by_attack"] == {"fgsm": 32}
    table = format_table({"tiny": entry})
    assert "apgd-ce: on a fixed 32 of the 64 test images" in table

    capsys.readouterr()
    for argv, message in [
        (["--run", "nope"], "has no run 'nope'"),
        (["--run", "tiny", "--eps", "0.2"], "Linf eps 0.1, but this evaluation uses Linf eps 0.2"),
    ]:
        assert (
            main(["eval", str(run / "last.pt"), "--attacks", "fgsm", "--results", str(results), "--no-progress"] + argv)
            == 2
        )
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
