"""The throughput benchmark runs end to end in its CI-sized mode and writes a well-formed JSON."""

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_share_above_the_peak_is_no_result():
    bench = _load()
    assert bench.share_of_peak(5.0, 10.0) == 0.5
    assert bench.share_of_peak(11.0, 10.0) is None
    assert "no share" in bench.format_share(11.0, 10.0)


def test_quick_benchmark_writes_every_measurement(tmp_path):
    out = tmp_path / "bench.json"
    assert _load().main(["--quick", "--modes", "pgd-at,pgd-at+train", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    peak = report["peak_flops"]["fp32"]
    assert peak["flops_per_s"] == max(peak["rates"].values()) and len(peak["rates"]) == 6
    model = report["models"]["small-cnn"]
    for row in model["modes"].values():
        assert row["images_per_s"] > 0 and row["warmup_seconds"] >= 0
        assert row["share_of_peak"] is None or 0 < row["share_of_peak"] <= 1
    assert model["speedup_vs_textbook"] > 0 and model["speedup_from_passes"] > 0
    overhead = model["train_overhead_pgd-at"]
    assert overhead["min"] <= overhead["measured"] <= overhead["max"] and overhead["rounds"] == 1
    assert overhead["ideal_from_timed_passes"] > 1  # TRAIN adds passes
    assert all(s > 0 for s in model["pass_seconds"].values())
    assert {r["batch_size"] for r in report["batch_scaling"]} == {16, 32}
    for row in report["topology_graph_cost"]["rows"]:
        # the fused natural + adversarial terms dispatch far fewer operations than the two apart
        assert row["aten_ops_two_terms_fused"] < 0.7 * row["aten_ops_two_terms_apart"]


def test_layout_comparison_runs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("channels_last", BENCHMARK.parent / "channels_last.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(module.throughput.CPU_SIZES, "small-cnn", (8, 1))
    out = tmp_path / "layout.json"
    assert module.main(["--models", "small-cnn", "--rounds", "2", "--json", str(out)]) == 0
    ratio = json.loads(out.read_text())["models"]["small-cnn"]["ratio"]
    assert ratio["rounds"] == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
