"""Draw the small CNN's PGD-AT frontier with topology's new default on it: the committed curve
(../results.json: PGD-AT alpha 0, 0.25, 0.5, 3 seeds), the constant-weight TRAIN run beside it, and the
warm-up run of results.json here, placed by the report's own frontier rule (topoat.report.frontier).
The committed study keeps no run folders, so `topoat report` cannot read it; this reads the two
results.json files alone.

    .venv/bin/python docs/results/frontier/new-default/draw.py   # writes frontier-new-default.png here
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from topoat.report.collect import SEED_SUFFIX
from topoat.report.frontier import HEADLINE_ATTACK, frontier, gain_rows, plot_frontier
from topoat.runs.results import ResultEntry, as_entry
from topoat.table_format import markdown_table

HERE = Path(__file__).resolve().parent
KEEP = re.compile(r"pgd-at-(nw\d+|sc-l10|sc-l10-w1)-s\d")


@dataclass
class ScoredRun:
    """What the frontier rule reads of a run: its name (NAME-sK) and results entry."""

    name: str
    entry: ResultEntry

    @property
    def group(self) -> str:
        return self._parts().group("group")

    @property
    def seed(self) -> int:
        return int(self._parts().group("seed"))

    def _parts(self) -> re.Match[str]:
        parts = SEED_SUFFIX.match(self.name)
        assert parts is not None, self.name  # KEEP admits only NAME-sK
        return parts

    @property
    def method(self) -> str:
        return self.entry.method


def runs_of(path: Path, names: set[str] | None = None) -> list[ScoredRun]:
    entries = json.loads(path.read_text())["runs"]
    return [
        ScoredRun(n, as_entry(e))
        for n, e in entries.items()
        if KEEP.fullmatch(n) and (names is None or n.startswith(tuple(names)))
    ]


def main() -> None:
    runs = runs_of(HERE.parent / "results.json") + runs_of(HERE / "results.json", {"pgd-at-sc-l10-w1"})
    f = frontier(runs, HEADLINE_ATTACK)
    assert f is not None
    header, rows = gain_rows(f)
    print(markdown_table(header, rows))
    title = "Natural/robust frontier under aa:apgd-ce+apgd-t (fashion-mnist, Linf eps=0.1; small-cnn)"
    print(plot_frontier(f, HERE / "frontier-new-default.png", title))


if __name__ == "__main__":
    main()
