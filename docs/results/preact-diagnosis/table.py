"""The PreAct diagnosis as one table: each candidate's accuracy (best-by-validation checkpoint, the same
1,000 test images), its difference from PGD-AT, and what its training logs say per epoch.

    .venv/bin/python docs/results/preact-diagnosis/table.py [STUDY_FOLDER]   # default: this folder

Reads the study's results.json and each run's metrics.jsonl (in STUDY_FOLDER/<run>/ or per-run/<run>/).
Columns per run: natural and PGD-20 accuracy (%) and their difference from PGD-AT of the same network
(points; cnn-* runs are the small CNN's, e10-* runs the 10-epoch schedule's); from the last
epoch: the natural and adversarial topology terms (first -> last epoch), the kNN overlap (k = 10) with the
teacher at the run's layer, the row entropy of the penultimate features' softmax-cosine graph at T 0.1
(nats; 4.84 is uniform for graphs of 128) and their mean pairwise cosine, the training adversarial
accuracy, and the epoch means of the parameter-gradient norms of the base loss and of the weighted
topology terms with the cosine between the two gradients.
"""

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
ATTACK = "pgd-20"
# Runs compared with their own PGD-AT: the small CNN's, and the 10-epoch schedule's.
PREFIXES = ("cnn-", "e10-")


def epochs(folder: Path, run: str) -> list[dict]:
    for path in (folder / run / "metrics.jsonl", folder / "per-run" / run / "metrics.jsonl"):
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def fmt(value, spec=".2f", missing="-"):
    return missing if value is None else format(value, spec)


def main(folder: Path) -> None:
    runs = json.loads((folder / "results.json").read_text())["runs"]

    def base_scores(name: str):
        """PGD-AT's scores for the run's network, schedule and seed: cnn-* runs are the small CNN's,
        e10-* runs are trained 10 epochs."""
        seed = name.rsplit("-", 1)[-1]
        prefix = next((p for p in PREFIXES if name.startswith(p)), "")
        base = runs.get(f"{prefix}pgd-at-{seed}")
        return (base["best"]["natural_acc"], base["best"]["robust_acc"][ATTACK]) if base else None

    header = (
        "| run | natural | PGD-20 | Δ nat | Δ PGD-20 | topo nat (1st → last) | topo adv | kNN overlap | "
        "entropy | mean cos | train adv acc | ‖∇ base‖ | ‖∇ topo‖ | cos(∇) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, entry in runs.items():
        if not name.endswith("-s0"):
            continue
        log = epochs(folder, name)
        last = log[-1] if log else {}
        first = log[0] if log else {}
        best = entry.get("best") or entry
        nat, rob = best.get("natural_acc"), (best.get("robust_acc") or {}).get(ATTACK)
        reference = base_scores(name)
        if reference and nat is not None and rob is not None and entry.get("method") == "pgd-at":
            d_nat, d_rob = f"{100 * (nat - reference[0]):+.1f}", f"{100 * (rob - reference[1]):+.1f}"
        else:
            d_nat = d_rob = "-"
        topo_nat = (
            f"{first['topo_nat']:.2f} → {last['topo_nat']:.2f}" if "topo_nat" in last and "topo_nat" in first else "-"
        )
        row = [
            name,
            fmt(None if nat is None else 100 * nat, ".1f"),
            fmt(None if rob is None else 100 * rob, ".1f"),
            d_nat,
            d_rob,
            topo_nat,
            fmt(last.get("topo_adv")),
            fmt(last.get("val_knn_overlap"), ".3f"),
            fmt(last.get("val_graph_entropy")),
            fmt(last.get("val_mean_cosine")),
            fmt(None if "train_adv_acc" not in last else 100 * last["train_adv_acc"], ".1f"),
            fmt(last.get("grad_norm_base")),
            fmt(last.get("grad_norm_topo")),
            fmt(last.get("grad_cosine")),
        ]
        print("| " + " | ".join(row) + " |")
    seeded_table(runs, base_scores)
    reference = next((r.get("val_reference_graph_entropy") for n in runs for r in epochs(folder, n)[-1:]), None)
    if reference is not None:
        print(f"\nThe teacher's graph entropy on the same validation images: {reference:.2f} nats.")


def seeded_table(runs: dict, base_scores) -> None:
    """Runs with more than one seed: per seed and mean ± sample std, and the paired difference from PGD-AT."""
    groups: dict[str, list[str]] = {}
    for name in runs:
        groups.setdefault(name.rsplit("-", 1)[0], []).append(name)
    groups = {k: sorted(v, key=seed_of) for k, v in groups.items() if len(v) > 1 and not k.startswith("standard")}
    if not groups:
        return
    print("\n| run | seeds | natural | PGD-20 | Δ natural per seed | Δ PGD-20 per seed | Δ natural | Δ PGD-20 |")
    print("|---|---|---|---|---|---|---|---|")
    for group, names in groups.items():
        nat = [100 * runs[n]["best"]["natural_acc"] for n in names]
        rob = [100 * runs[n]["best"]["robust_acc"][ATTACK] for n in names]
        pairs = [(n, base_scores(n)) for n in names]
        d_nat = [100 * (runs[n]["best"]["natural_acc"] - b[0]) for n, b in pairs if b]
        d_rob = [100 * (runs[n]["best"]["robust_acc"][ATTACK] - b[1]) for n, b in pairs if b]
        seeds = ", ".join(str(seed_of(n)) for n in names)
        row = [group, seeds, spread(nat), spread(rob)]
        if group.endswith("pgd-at"):
            row += ["-", "-", "-", "-"]
        else:
            row += [", ".join(f"{d:+.1f}" for d in d_nat), ", ".join(f"{d:+.1f}" for d in d_rob)]
            row += [spread(d_nat, "+.2f"), spread(d_rob, "+.2f")]
        print("| " + " | ".join(row) + " |")


def seed_of(name: str) -> int:
    return int(name.rsplit("-s", 1)[-1])


def spread(values: list[float], spec: str = ".2f") -> str:
    if len(values) < 2:
        return format(values[0], spec) if values else "-"
    return f"{format(statistics.mean(values), spec)} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
