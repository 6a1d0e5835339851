"""The natural/robust frontier: base curves, per-seed interpolation, frontier gains, the picture."""

from dataclasses import dataclass

import pytest

from topoat.registry import KERNELS
from topoat.report.frontier import (
    _marker,
    envelope,
    frontier,
    frontier_at,
    frontier_section,
    gain_rows,
    plot_frontier,
)
from topoat.runs.results import ResultEntry, added_term


def point_label(entry):
    return added_term(ResultEntry.from_dict(entry))


@dataclass
class FakeRun:
    name: str
    entry: dict
    config: object = None  # a run whose folder has no readable config.yaml

    @property
    def group(self):
        return self.name.rsplit("-s", 1)[0]

    @property
    def seed(self):
        return int(self.name.rsplit("-s", 1)[1])

    @property
    def method(self):
        return self.entry["method"]


def run(name, method, natural, robust, knob=None, topology=None, distillation=None, attack="aa:apgd-ce+apgd-t"):
    config = {} if knob is None else ({"beta": knob} if method == "trades" else {"natural_weight": knob})
    scores = {"natural_acc": natural, "robust_acc": {attack: robust}}
    return FakeRun(
        name,
        {
            "method": method,
            "method_config": config,
            "topology": topology,
            "distillation": distillation,
            **scores,
            "best": dict(scores, epoch=3),
        },
    )


def test_a_point_scored_on_other_test_images_than_its_curve_is_left_out():
    topo = {"kernel": "cosine", "lambda_nat": 30, "lambda_adv": 30}
    runs = [
        run("trades-b1-s0", "trades", 0.80, 0.40, 1),
        run("trades-b6-s0", "trades", 0.70, 0.50, 6),
        run("trades-cos-s0", "trades", 0.78, 0.45, 6, topology=topo),  # a screen on the first 500 images
        run("trades-sc-s0", "trades", 0.78, 0.45, 6, topology=dict(topo, kernel="softmax-cosine")),
    ]
    for r in runs:
        r.entry["n_eval"] = 500 if r.group == "trades-cos" else 1000
    runs[3].entry["best"]["n_by_attack"] = {"aa:apgd-ce+apgd-t": 250}  # AutoAttack on fewer images
    f = frontier(runs)
    assert f.points == []
    assert f.left_out == [
        "trades-cos-s0: natural/aa:apgd-ce+apgd-t on 500/500 test images, its base curve on 1000/1000",
        "trades-sc-s0: natural/aa:apgd-ce+apgd-t on 1000/250 test images, its base curve on 1000/1000",
    ]
    assert "Left out" in frontier_section(f) and "trades-cos-s0" in frontier_section(f)
    del runs[2].entry["n_eval"]  # results written before the count was recorded are taken as they are
    assert [p.group for p in frontier(runs).points] == ["trades-cos"]


def test_frontier_is_the_envelope_held_flat_beyond_its_ends():
    curve = [(50.0, 80.0), (40.0, 90.0), (55.0, 70.0), (45.0, 79.0)]  # (45, 79) is beaten by (50, 80)
    assert envelope(curve) == [(40.0, 90.0), (50.0, 80.0), (55.0, 70.0)]
    assert frontier_at(curve, 45.0) == (pytest.approx(85.0), False)
    assert frontier_at(curve, 52.5) == (pytest.approx(75.0), False)
    assert frontier_at(curve, 60.0) == (pytest.approx(70.0), True)  # the most robust end, flat
    assert frontier_at(curve, 30.0) == (pytest.approx(90.0), True)
    assert frontier_at(curve, 75.0, "natural") == (pytest.approx(52.5), False)
    assert frontier_at(curve, 95.0, "natural") == (pytest.approx(40.0), True)


def test_frontier_gain_is_per_seed_against_that_seeds_curve():
    topo = {"kernel": "softmax-cosine", "temperature": 0.1, "lambda_nat": 10, "lambda_adv": 10}
    runs = []
    for seed, shift in [(0, 0.0), (1, 0.02)]:
        runs += [
            run(f"trades-b1-s{seed}", "trades", 0.80 + shift, 0.40, 1),
            run(f"trades-b6-s{seed}", "trades", 0.70 + shift, 0.50, 6),
            # halfway between the two in robustness: the curve gives 0.75 + shift natural
            run(f"trades-sc-s{seed}", "trades", 0.78 + shift, 0.45, 6, topology=topo),
            run(
                f"trades-kd-s{seed}", "trades", 0.74 + shift, 0.45, 6, distillation={"lambda": 2.0, "temperature": 4.0}
            ),
        ]
    runs.append(run("pgd-at-nw0-s0", "pgd-at", 0.75, 0.55, 0.0))  # one setting only: no PGD-AT curve
    f = frontier(runs)
    assert list(f.curves) == ["trades"]
    gains = {p.group: p.gains for p in f.points}
    assert gains["trades-sc"] == pytest.approx([3.0, 3.0])
    assert gains["trades-kd"] == pytest.approx([-1.0, -1.0])
    header, rows = gain_rows(f)
    by_run = {r[1]: r for r in rows}
    assert by_run["trades-sc"][6] == "+3.00 ± 0.00" and by_run["trades-sc"][3] == "2"
    assert by_run["trades-sc"][7] == "+3.00 ± 0.00"  # the frontier reaches 78 % natural at 47 % robust
    assert by_run["base β=1"][4] == "81.00 ± 1.41"
    # an entry without warmup_epochs predates the option: it trained without warm-up, which is no longer the default
    assert point_label(runs[2].entry) == "TRAIN softmax-cosine T=0.1, λ=10, warmup_epochs=0"
    assert (
        point_label(dict(runs[2].entry, topology=dict(topo, warmup_epochs=1.0))) == "TRAIN softmax-cosine T=0.1, λ=10"
    )
    assert point_label(runs[3].entry) == "distillation T=4, λ=2"


def test_frontier_needs_the_attack_and_draws_the_picture(tmp_path):
    runs = [
        run("pgd-at-nw0-s0", "pgd-at", 0.75, 0.55, 0.0),
        run("pgd-at-nw50-s0", "pgd-at", 0.82, 0.45, 0.5),
        run(
            "pgd-at-cos-s0",
            "pgd-at",
            0.80,
            0.56,
            0.0,
            topology={"kernel": "cosine", "lambda_nat": 30, "lambda_adv": 30},
        ),
    ]
    assert frontier(runs, attack="pgd-20") is None
    f = frontier(runs)
    (point,) = f.points
    # more robust than every base setting: compared with the most robust one (75 % natural), flat
    assert point.outside and point.gains[0] == pytest.approx(5.0)
    assert point.robust_gains[0] == pytest.approx(56 - (55 - 10 * 5 / 7))
    path = plot_frontier(f, tmp_path / "frontier.png", "test")
    assert path.stat().st_size > 1000


def test_report_section_reads_attacks_run_on_the_best_checkpoint_only(tmp_path):
    from topoat.report import frontier_sections

    runs = [
        run("pgd-at-nw0-s0", "pgd-at", 0.75, 0.55, 0.0, attack="aa:apgd-ce"),
        run("pgd-at-nw50-s0", "pgd-at", 0.82, 0.45, 0.5, attack="aa:apgd-ce"),
        run(
            "pgd-at-sc-s0",
            "pgd-at",
            0.80,
            0.56,
            0.0,
            attack="aa:apgd-ce",
            topology={"kernel": "softmax-cosine", "lambda_nat": 10, "lambda_adv": 10},
        ),
    ]
    for r in runs:
        r.entry["robust_acc"] = {}  # evaluation.checkpoints: [best]
    ((heading, text, picture),) = frontier_sections(runs, tmp_path, "test")
    assert heading == "Frontier under aa:apgd-ce" and "pgd-at-sc" in text and picture.is_file()


def test_every_kernel_has_its_own_marker_and_distillation_another():
    kernels = KERNELS.names()
    markers = [_marker(k, kernels) for k in kernels]
    assert len(set(markers)) == len(kernels)
    assert _marker(None, kernels) == "X" and "X" not in markers
    # a kernel registered later (or unknown to this process) still gets a marker of its own
    assert _marker("my-kernel", kernels) not in markers
