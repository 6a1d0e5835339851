"""Recompute the frontier figures quoted in docs/RESULTS.md from the committed outputs alone.

Reads results.json beside this file (and, with --old, the same file as it was on 500 test images:
`git show 4d13bdf:docs/results/frontier/results.json > /tmp/frontier-500.json`; with --add, the TRAIN and
distillation runs of another results.json of the same study placed against these base curves, e.g.
new-default/results.json, topology's new default trained later). Any other study's
results.json (e.g. ../frontier-preact/results.json) is read the same way when named. It re-implements the
rule of src/topoat/report/frontier.py with numpy only, so it does not depend on the package:

  per seed, the base curve is the upper-right envelope of that seed's base settings (robust, natural);
  natural gain = natural - the envelope's natural accuracy at the run's robust accuracy;
  robust gain = robust - the envelope's robust accuracy at the run's natural accuracy;
  beyond the envelope's range the nearest end is held flat (np.interp), and "(outside)" marks a run
  whose robust accuracy lies outside the envelope's robust range.

    .venv/bin/python docs/results/frontier/check.py [RESULTS] [--old /tmp/frontier-500.json] [--add RESULTS]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KNOB = {"pgd-at": "natural_weight", "trades": "beta"}
ATTACKS = ("aa:apgd-ce+apgd-t", "aa:apgd-ce")


def load(path: Path) -> dict:
    runs = {}
    for name, e in json.loads(path.read_text())["runs"].items():
        m = re.fullmatch(r"(.+)-s(\d+)", name)
        best = e["best"] if isinstance(e.get("best"), dict) else e
        runs[name] = {
            "group": m.group(1),
            "seed": int(m.group(2)),
            "method": e["method"],
            "regularized": bool(e.get("topology") or e.get("distillation")),
            "knob": (e.get("method_config") or {}).get(KNOB.get(e["method"], ""), None),
            "n": e["n_eval"],
            "epoch": best.get("epoch"),
            "natural": 100 * best["natural_acc"],
            "robust": {a: 100 * v for a, v in (best.get("robust_acc") or {}).items()},
        }
    return runs


def envelope(points):
    kept = []
    for rob, nat in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not kept or nat > kept[-1][1]:
            kept.append((rob, nat))
    return kept[::-1]  # robust ascending, natural descending


def ms(values, sign=""):
    mean = statistics.fmean(values)
    text = f"{mean:{sign}.2f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.2f}"


def gains(runs: dict, attack: str) -> dict:
    """group -> per-seed rows of (seed, natural, robust, natural gain, robust gain, outside, ends)."""
    out: dict = {}
    for _, r in sorted(runs.items()):
        if not r["regularized"] or r["method"] not in KNOB or attack not in r["robust"]:
            continue
        base = [
            (b["robust"][attack], b["natural"], b["knob"])
            for b in runs.values()
            if b["method"] == r["method"]
            and not b["regularized"]
            and b["seed"] == r["seed"]
            and attack in b["robust"]
            and b["n"] == r["n"]
        ]
        env = envelope([(rob, nat) for rob, nat, _ in base])
        rob, nat = r["robust"][attack], r["natural"]
        xs, ys = [p[0] for p in env], [p[1] for p in env]
        natural_there = float(np.interp(rob, xs, ys))
        robust_there = float(np.interp(nat, ys[::-1], xs[::-1]))
        outside = rob < xs[0] or rob > xs[-1]
        knob_of = {(b_rob, b_nat): k for b_rob, b_nat, k in base}
        ends = (
            "more robust than every base setting" if rob > xs[-1] else "",
            "more natural than every base setting" if nat > ys[0] else "",
            f"most robust setting {knob_of[env[-1]]:g} ({env[-1][1]:.1f} nat, {env[-1][0]:.1f} rob)",
            f"most natural setting {knob_of[env[0]]:g} ({env[0][1]:.1f} nat, {env[0][0]:.1f} rob)",
        )
        row = (r["seed"], nat, rob, nat - natural_there, rob - robust_there, outside, ends)
        out.setdefault((r["method"], r["group"]), []).append(row)
    return out


def report(runs: dict, title: str) -> None:
    print(f"=== {title}")
    teachers = {n: r for n, r in runs.items() if r["method"] == "standard"}
    print(
        "teachers (best-by-validation checkpoint):",
        ", ".join(f"{n} {r['natural']:.1f} % on {r['n']} images, epoch {r['epoch']}" for n, r in teachers.items()),
    )
    for attack in ATTACKS:
        print(f"--- {attack}")
        for (method, group), rows in gains(runs, attack).items():
            nat, rob, ng, rg = ([row[i] for row in rows] for i in (1, 2, 3, 4))
            flag = " (outside)" if any(row[5] for row in rows) else ""
            print(
                f"{method:7} {group:16} seeds {[row[0] for row in rows]} natural {ms(nat)} robust {ms(rob)} "
                f"natural gain {ms(ng, '+')}{flag} robust gain {ms(rg, '+')}"
            )
            for row in rows:
                print(
                    f"          s{row[0]}: nat {row[1]:.1f} rob {row[2]:.1f} gain {row[3]:+.2f} / {row[4]:+.2f}; "
                    + "; ".join(x for x in row[6] if x)
                )


def paired(runs: dict, attack: str, group: str, base: str) -> None:
    rows = [
        (
            s,
            runs[f"{group}-s{s}"]["natural"] - runs[f"{base}-s{s}"]["natural"],
            runs[f"{group}-s{s}"]["robust"][attack] - runs[f"{base}-s{s}"]["robust"][attack],
        )
        for s in (0, 1, 2)
        if f"{group}-s{s}" in runs and attack in runs[f"{group}-s{s}"]["robust"]
    ]
    if not rows:
        return
    print(
        f"{group} - {base} ({attack}): natural {ms([r[1] for r in rows], '+')}, robust "
        f"{ms([r[2] for r in rows], '+')}; per seed robust " + ", ".join(f"{r[2]:+.1f}" for r in rows)
    )


def margin(runs: dict, attack: str, group: str) -> None:
    """A run's robust accuracy minus that of its seed's most robust base setting (of tied ones, the more
    natural, as the envelope keeps it): the robust lead without reading the curve at any natural accuracy."""
    lead = []
    for r in (r for r in runs.values() if r["group"] == group and attack in r["robust"]):
        base = [
            b
            for b in runs.values()
            if b["method"] == r["method"] and not b["regularized"] and b["seed"] == r["seed"] and attack in b["robust"]
        ]
        top = max(base, key=lambda b: (b["robust"][attack], b["natural"]))
        lead.append(r["robust"][attack] - top["robust"][attack])
    if not lead:
        return
    print(
        f"{group}: robust minus the most robust base setting's ({attack}): {ms(lead, '+')} "
        f"(per seed {', '.join(f'{x:+.1f}' for x in lead)})"
    )


def apgd_t_drops(runs: dict) -> None:
    """How much APGD-T lowers each run scored under both attacks."""
    drops = {
        n: r["robust"]["aa:apgd-ce"] - r["robust"]["aa:apgd-ce+apgd-t"]
        for n, r in runs.items()
        if {"aa:apgd-ce", "aa:apgd-ce+apgd-t"} <= set(r["robust"])
    }
    if not drops:
        return
    print(f"APGD-CE minus APGD-CE + APGD-T, per run: {min(drops.values()):.1f} to {max(drops.values()):.1f}")
    groups: dict = {}
    for n, d in drops.items():
        groups.setdefault(runs[n]["group"], []).append(d)
    means = {g: statistics.fmean(v) for g, v in groups.items()}
    print(
        f"the same, mean over seeds per row: {min(means.values()):.2f} to {max(means.values()):.2f} "
        f"({min(means, key=means.get)} to {max(means, key=means.get)})"
    )


def paired_base(runs: dict, group: str) -> str | None:
    """The base setting a regularized group adds its term to: the same method at the same knob value."""
    r = next(r for r in runs.values() if r["group"] == group)
    same = {
        b["group"]
        for b in runs.values()
        if b["method"] == r["method"] and not b["regularized"] and b["knob"] == r["knob"]
    }
    return min(same) if same else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=HERE / "results.json", help="a study's results.json")
    parser.add_argument("--old", type=Path, help="the results.json of the 500-image evaluation")
    parser.add_argument("--add", type=Path, help="another results.json of the study: its TRAIN runs on these curves")
    args = parser.parse_args()
    runs = load(args.results)
    report(runs, str(args.results))
    if args.add:
        added = {n: r for n, r in load(args.add).items() if r["regularized"]}
        clash = sorted(set(added) & set(runs))
        if clash:
            raise SystemExit(f"{args.add} repeats runs of {args.results}: {', '.join(clash)}")
        runs = {**runs, **added}
        report({n: r for n, r in runs.items() if n in added or not r["regularized"]}, f"{args.add}, added")
    regularized = sorted({r["group"] for r in runs.values() if r["regularized"] and r["method"] in KNOB})
    for attack in ATTACKS:
        for group in regularized:
            base = paired_base(runs, group)
            if base:
                paired(runs, attack, group, base)
    for group in regularized:
        margin(runs, ATTACKS[0], group)
    if "pgd-at-kd-l2-s0" in runs and ATTACKS[0] in runs["pgd-at-kd-l2-s0"]["robust"]:
        kd = [runs[f"pgd-at-kd-l2-s{s}"]["robust"][ATTACKS[0]] for s in (0, 1, 2) if f"pgd-at-kd-l2-s{s}" in runs]
        print("pgd-at-kd-l2 APGD-CE + APGD-T per seed:", ", ".join(f"{v:.1f}" for v in kd))
    apgd_t_drops(runs)
    if args.old:
        old = load(args.old)
        report(old, f"{args.old} (earlier evaluation)")
        falls = {n: old[n]["natural"] - r["natural"] for n, r in runs.items() if n in old and r["n"] > old[n]["n"]}
        adv = {n: f for n, f in falls.items() if runs[n]["method"] != "standard"}
        rows: dict = {}
        for n, f in adv.items():
            rows.setdefault(runs[n]["group"], []).append(f)
        multi = {g: statistics.fmean(v) for g, v in rows.items() if len(v) > 1}
        print(
            f"natural accuracy, earlier minus now, mean over seeds of the multi-seed rows: "
            f"{min(multi.values()):+.2f} to {max(multi.values()):+.2f}"
        )
        print(
            f"natural accuracy, earlier minus now, {len(adv)} adversarially trained runs: "
            f"{min(adv.values()):+.1f} to {max(adv.values()):+.1f}; all runs: "
            + ", ".join(f"{n} {f:+.1f}" for n, f in sorted(falls.items()))
        )


if __name__ == "__main__":
    main()
