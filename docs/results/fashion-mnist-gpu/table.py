"""The GPU-scale key points as one table, and PGD-AT + TRAIN / + distillation minus PGD-AT.

Reads each run folder's results.json (the study was stopped at its time limit in the distillation run's
last epoch, so no study-level results.json exists):  .venv/bin/python docs/results/fashion-mnist-gpu/table.py
"""

import json
from pathlib import Path

from topoat.runs.results import format_table

HERE = Path(__file__).parent
ATTACK = "aa:apgd-ce+apgd-t"

runs = {}
for folder in sorted(p.parent for p in HERE.glob("*/results.json")):
    runs.update(json.loads((folder / "results.json").read_text())["runs"])
print(format_table(runs))
base = runs["pgd-at"]
for name in [n for n in runs if n != "pgd-at" and runs[n]["method"] == "pgd-at"]:
    for label, pick in (("last", lambda e: e), ("best", lambda e: e["best"])):
        a, b = pick(runs[name]), pick(base)
        nat = 100 * (a["natural_acc"] - b["natural_acc"])
        rob = 100 * (a["robust_acc"][ATTACK] - b["robust_acc"][ATTACK])
        print(f"{name} minus pgd-at ({label} checkpoints): natural {nat:+.1f}, {ATTACK} {rob:+.1f} points")
