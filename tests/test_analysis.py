"""Topology metrics on constructed cases with known answers, and the report / analyze commands."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fp32_neighbour_slack, tiny_config

from topoat.cli import main
from topoat.config import dump_config
from topoat.errors import TopoatError
from topoat.evaluation.graph_metrics import (
    analyze_checkpoints,
    compare,
    representations,
    topology_metrics,
    trustworthiness,
)
from topoat.report import ReportSettings, format_spread, markdown_table, write_report
from topoat.runs.checkpoint import load_model
from topoat.runs.study import load_study
from topoat.topology import knn_overlap


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread gains nothing and, when the cores are shared, its
    wake-ups made each small op tens of milliseconds slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered_features(n=300, d=16, seed=0):
    """Points around 10 well-separated centres, with distinct neighbourhoods inside each cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(10, d, generator=g)
    return centres[torch.arange(n) % 10] + torch.randn(n, d, generator=g)


def all_metrics(student, teacher):
    return topology_metrics(student, teacher, k=10, graph_size=100, with_trustworthiness=True)


def test_identical_spaces_give_zero_kl_full_overlap_full_trust():
    z = clustered_features()
    m = all_metrics(z, z.clone())
    assert m["graph_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["knn_overlap"] == 1.0
    assert m["trustworthiness"] == pytest.approx(1.0)


def test_shuffled_samples_give_low_overlap_and_chance_trustworthiness():
    # The features of a random other sample: the neighbourhood structure is destroyed.
    z = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    shuffled = z[torch.randperm(400, generator=torch.Generator().manual_seed(2))]
    m = all_metrics(shuffled, z)
    assert m["knn_overlap"] < 0.05  # chance: about k / n
    assert 0.4 < m["trustworthiness"] < 0.6  # chance level is 0.5
    assert m["graph_kl"] > 1e-3


def test_scaled_rotated_or_reordered_dimensions_keep_the_topology():
    z = clustered_features()
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))
    for name, other in {
        "scaled and rotated": 7.5 * z @ rotation,
        "dimensions permuted": z[:, torch.randperm(16, generator=torch.Generator().manual_seed(4))],
    }.items():
        m = all_metrics(other, z)
        # the same neighbours, but for near-ties that fp32's distances may order either way on some CPU
        knn_slack, trust_slack = fp32_neighbour_slack([z, other], k=10)
        assert m["knn_overlap"] == pytest.approx(1.0, abs=knn_slack + 1e-6), name
        assert m["trustworthiness"] == pytest.approx(1.0, abs=trust_slack + 1e-9), name
        assert m["graph_kl"] == pytest.approx(0.0, abs=1e-5), name  # cosine graph: scale/rotation invariant


def test_partial_corruption_sits_between_the_extremes():
    z = clustered_features()
    noisy = z + 1.0 * torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    m = all_metrics(noisy, z)
    assert 0.05 < m["knn_overlap"] < 1.0 and 0.6 < m["trustworthiness"] < 1.0 and m["graph_kl"] > 0


def test_widths_may_differ_and_small_sets_are_refused():
    z = clustered_features(d=16)
    wider = torch.cat([z, torch.zeros(z.shape[0], 8)], dim=1)  # same distances in a wider space
    knn_slack, trust_slack = fp32_neighbour_slack([z], k=10)  # but other sums, rounded otherwise
    assert knn_overlap(wider, z) == pytest.approx(1.0, abs=knn_slack + 1e-6)
    assert trustworthiness(wider, z) == pytest.approx(1.0, abs=trust_slack + 1e-9)
    with pytest.raises(TopoatError, match="more than 20 samples"):
        trustworthiness(z[:20], z[:20], k=10)


# -- on trained models: a tiny study with two seeds, reused by the tests below ----------------------
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    small = {"optim.epochs": 2, "data.args.train": 160, "data.val_size": 32, "validation.n": 32}
    (root / "cfg.yaml").write_text(dump_config(tiny_config(**small)))
    spec = root / "study.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-study",
                "seeds": [0, 1],
                "reference": "standard",
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
                        "set": ["topology.lambda_nat=5", "topology.lambda_adv=5"],
                    },
                ],
            }
        )
    )
    out = root / "out"
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 0
    return out


def epochs(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_study_reference_gives_every_later_run_topology_curves(tiny_study):
    for name in ("pgd-at-s0", "pgd-at-train-s1"):
        record = epochs(tiny_study / name)[-1]
        assert 0 <= record["val_knn_overlap"] <= 1 and record["val_graph_kl"] >= 0
    assert "val_graph_kl" not in epochs(tiny_study / "standard-s0")[-1]  # the reference itself
    cfg = yaml.safe_load((tiny_study / "pgd-at-s1" / "config.yaml").read_text())
    assert cfg["validation"]["reference"].endswith("standard-s1/last.pt")


def test_study_reference_must_be_a_run(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"reference": "teacher", "runs": [{"name": "a", "config": "c.yaml"}]}))
    with pytest.raises(TopoatError, match="reference 'teacher' is not one of its runs"):
        load_study(spec)


def test_reference_against_itself_and_a_trained_model(tiny_study):
    x = torch.rand(48, 1, 12, 12)
    y = torch.arange(48) % 10
    reference = load_model(tiny_study / "standard-s0" / "last.pt")
    kwargs = dict(norm="Linf", eps=0.1, attack="pgd-3")
    ref = representations(reference, x, y, **kwargs)
    again = representations(reference, x, y, **kwargs)
    assert torch.equal(ref.adversarial, again.adversarial)  # the attack's random start is seeded
    m = compare(ref, ref)
    assert m["graph_kl"] == pytest.approx(0, abs=1e-6) and m["knn_overlap"] == 1 and m["trustworthiness"] == 1
    assert m["graph_kl_adv"] > 0
    pgd = compare(representations(load_model(tiny_study / "pgd-at-s0" / "last.pt"), x, y, **kwargs), ref)
    assert pgd["graph_kl"] > 0 and pgd["knn_overlap"] < 1
    paths = [tiny_study / "pgd-at-s0" / "last.pt"]
    out = analyze_checkpoints(paths, tiny_study / "standard-s0" / "last.pt", x, y, eps=0.1, attack="pgd-3")
    assert list(out) == [str(tiny_study / "standard-s0" / "last.pt"), str(paths[0])]
    assert out[str(paths[0])]["knn_overlap"] == pytest.approx(pgd["knn_overlap"])


def test_report_of_a_study_writes_markdown_and_pictures(tiny_study, tmp_path):
    settings = ReportSettings(attack_steps=3)  # the defaults' PGD-20 is for real models, not this test
    report = write_report([tiny_study], tmp_path / "rep", settings=settings, echo=lambda _: None)
    text = report.read_text()
    for png in ("tsne", "accuracy", "topology", "tradeoff"):
        path = tmp_path / "rep" / "figures" / f"{png}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"](figures/{png}.png)" in text
    assert "| pgd-at-train | pgd-at | λ=5 | 0, 1 |" in text  # one row per run over its seeds
    assert " ± " in text  # two seeds: mean ± std
    assert "pgd-at-train − pgd-at" in text  # paired differences per seed
    assert "## Topology against the standard model" in text
    page = (tmp_path / "rep" / "report.html").read_text()  # the same report for a browser, pictures inline
    assert page.count('<img src="data:image/png;base64,') == text.count("](figures/") >= 4
    assert "pgd-at-train − pgd-at" in page and "figures/" not in page
    analysis = json.loads((tmp_path / "rep" / "analysis.json").read_text())
    assert set(analysis["runs"]) == {f"{r}-s{s}" for r in ("standard", "pgd-at", "pgd-at-train") for s in (0, 1)}
    assert analysis["runs"]["standard-s1"]["knn_overlap"] == 1.0
    assert analysis["runs"]["pgd-at-s1"]["reference"] == "standard-s1"


def test_cli_report_of_single_run_folders_and_analyze_json(tiny_study, tmp_path, capsys):
    runs = [str(tiny_study / name) for name in ("standard-s0", "pgd-at-s0")]
    # single run folders hold their own results.json, written by the study
    assert main(["report", *runs, "--out", str(tmp_path / "r"), "--tsne-points", "32", "--attack-steps", "3"]) == 0
    assert "standard-s0" in (tmp_path / "r" / "report.md").read_text()
    assert (
        main(
            [
                "analyze",
                str(tiny_study / "pgd-at-s0" / "last.pt"),
                "--reference",
                str(tiny_study / "standard-s0" / "last.pt"),
                "--n",
                "64",
                "--attack-steps",
                "3",
                "--json",  # no FILE: topology.json beside the checkpoint, never in the current folder
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "kNN overlap@10" in printed and "trustworthiness@10" in printed
    written = tiny_study / "pgd-at-s0" / "topology.json"
    assert f"wrote {written}" in printed
    doc = json.loads(written.read_text())
    assert doc["eps"] == 0.1 and doc["n"] == 64 and len(doc["models"]) == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["analyze", "x.pt"], "--reference"),
        (["analyze", "/nonexistent.pt", "--reference", "/nonexistent-teacher.pt"], "checkpoint not found"),
        (["analyze", "a.pt", "--reference", "b.pt", "--n", "15"], "more than twice --k"),
        (["analyze", "a.pt", "--reference", "b.pt", "--eps", "one"], "bad eps"),
        (["report"], "RUN_DIR"),
        (["report", "/nonexistent-folder"], "is not a folder"),
        (["report", "."], "has no results.json"),
        (["report", ".", "."], "--out"),
        (["report", ".", "--k", "0"], "argument --k: must be >= 1, got 0"),
        (
            ["report", "damaged"],
            "damaged/results.json is not a usable topoat results.json: run 'a': the entry is not a",
        ),
        (
            ["report", "listed"],
            "listed/results.json is not a usable topoat results.json: the top level is not a mapping",
        ),
        (["report", "typed"], "run 'a': 'natural_acc' must be a number"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder, document in (
        ("damaged", {"runs": {"a": ["x"]}}),
        ("listed", []),
        ("typed", {"runs": {"a": {"natural_acc": "high"}}}),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(document))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def untrained_checkpoint(path, channels=1, num_classes=10):
    from topoat import build_model
    from topoat.runs.checkpoint import model_record, save_atomic

    model = build_model("small-cnn", num_classes, channels, [0.5] * channels, [0.25] * channels, width=4)
    save_atomic(model_record(model, "small-cnn", {"width": 4}, num_classes, channels, (28, 28)), path)
    return str(path)


@pytest.mark.parametrize(
    "model,reference,extra,message",
    [
        # a 3-channel model runs on 1-channel images (its normalisation broadcasts them): it must be refused
        ((3, 10), (1, 10), [], "checkpoint m.pt was made for 3 input channels, but synthetic has 1 input channels"),
        ((1, 10), (3, 10), [], "--reference r.pt was made for 3 input channels"),
        ((1, 5), (1, 10), [], "checkpoint m.pt was made for 5 classes, but synthetic has 10 classes"),
        ((1, 10), (1, 10), ["--json", "missing/a.json"], "--json missing/a.json: folder missing does not exist"),
        ((1, 10), (1, 10), ["--eps", "nan"], "bad eps 'nan': not a finite number"),
        ((1, 10), (1, 10), ["--eps", "2"], "analyze: Linf eps must be <= 1"),
        ((1, 10), (1, 10), ["--layer", "nope"], "--layer: the model has no layer 'nope'"),
    ],
)
def test_cli_analyze_refuses_models_and_settings_that_do_not_fit(
    model, reference, extra, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    untrained_checkpoint(tmp_path / "m.pt", *model)
    untrained_checkpoint(tmp_path / "r.pt", *reference)
    argv = [
        "analyze",
        "m.pt",
        "--reference",
        "r.pt",
        "--dataset",
        "synthetic",
        "--eps",
        "0.1",
        "--n",
        "32",
        "--k",
        "3",
        "--attack-steps",
        "1",
    ]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_report_refuses_a_reference_made_for_other_data(tmp_path, capsys):
    from topoat import build_model
    from topoat.runs.checkpoint import model_record, save_atomic

    run = tmp_path / "study" / "a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(tiny_config()))
    model = build_model("small-cnn", 10, 1, [0.5], [0.25], width=4, feature_dim=16)
    save_atomic(model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, 10, 1, (12, 12)), run / "last.pt")
    entry = {
        "method": "standard",
        "topology": None,
        "checkpoint": "a/last.pt",
        "natural_acc": 0.1,
        "robust_acc": {},
        "best": None,
    }
    (run.parent / "results.json").write_text(
        json.dumps({"dataset": "synthetic", "threat": {"norm": "Linf", "eps": 0.1}, "runs": {"a": entry}})
    )
    other = untrained_checkpoint(tmp_path / "rgb.pt", channels=3)
    assert (
        main(
            [
                "report",
                str(run.parent),
                "--reference",
                other,
                "--n",
                "32",
                "--k",
                "3",
                "--attack-steps",
                "1",
                "--tsne-points",
                "16",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "report: model " in err and "was made for 3 input channels, but synthetic has 1 input channels" in err


def test_table_helpers():
    assert format_spread([0.5]) == "50.00"
    assert format_spread([0.5, 0.7]) == "60.00 ± 14.14"
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines()[1] == "|---|---|"


def _fake_run(name: str, natural: float, robust: dict, lam: float = 0.0, tmp=Path(".")):
    from topoat.report import Run

    entry = {
        "method": "pgd-at",
        "natural_acc": natural,
        "robust_acc": robust,
        "topology": {"lambda_nat": lam, "lambda_adv": lam} if lam else None,
    }
    return Run(name=name, entry=entry, folder=tmp / name, checkpoint=tmp / name / "last.pt", threat={})


def test_paired_differences_per_attack_and_lambda_ablation_picture(tmp_path):
    from topoat.report import lambda_ablation, paired_section, plot_lambda_ablation

    runs = []
    for seed in (0, 1):
        runs.append(_fake_run(f"pgd-at-s{seed}", 0.70, {"pgd-20": 0.50, "aa": 0.45}))
        runs.append(_fake_run(f"pgd-at-train-s{seed}", 0.72 + seed / 100, {"pgd-20": 0.51, "aa": 0.47}, lam=30))
        runs.append(_fake_run(f"pgd-at-train-lambda3-s{seed}", 0.71, {"pgd-20": 0.50}, lam=3))
    text = paired_section(runs)
    assert text.splitlines()[0] == "| difference | seed | Δ natural | Δ pgd-20 | Δ aa |"
    assert "| **pgd-at-train − pgd-at** | mean ± std (2) | +2.50 ± 0.71 | +1.00 ± 0.00 | +2.00 ± 0.00 |" in text
    assert "| pgd-at-train-lambda3 − pgd-at | 0 | +1.00 | +0.00 | - |" in text  # no AA for the ablation
    method, weights = lambda_ablation(runs)
    assert method == "pgd-at" and list(weights) == [0.0, 3.0, 30.0]
    path = plot_lambda_ablation(runs, tmp_path / "lambda.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_lambda_ablation(runs[:2], tmp_path / "none.png", "test") is None  # two weights: no ablation


def test_tsne_columns_pair_each_train_run_with_its_base_and_name_what_is_left_out():
    from types import SimpleNamespace

    from topoat.report import MAX_TSNE_COLUMNS, tsne_selection

    def run(name, method, train=False, reference=False):
        return SimpleNamespace(
            name=f"{name}-s0",
            group=name,
            seed=0,
            method=method,
            is_train=train,
            checkpoint=name,
            reference="standard" if not reference else name,
        )

    runs = [
        run("standard", "standard", reference=True),
        run("pgd-at", "pgd-at"),
        run("trades", "trades"),
        run("mart", "mart"),
        run("awp", "awp"),
        run("extra", "pgd-at-x"),
        run("more", "pgd-at-y"),
        run("pgd-at-train", "pgd-at", train=True),
        run("mart-train", "mart", train=True),
    ]
    picked, left_out = tsne_selection(runs)
    assert [r.group for r in picked] == ["standard", "pgd-at", "pgd-at-train", "mart", "mart-train", "trades"]
    assert len(picked) == MAX_TSNE_COLUMNS and left_out == ["awp", "extra", "more"]
    picked, left_out = tsne_selection(runs, ["mart-train", "standard"])
    assert [r.group for r in picked] == ["mart-train", "standard"] and len(left_out) == 7
    with pytest.raises(TopoatError, match="--tsne-models: no run nope"):
        tsne_selection(runs, ["nope"])
