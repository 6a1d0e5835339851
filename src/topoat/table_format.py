"""Tables as text: aligned plain-text tables for the terminal and markdown tables for report.md.

Cells are converted with `str`. `align` is one letter per column, "l" (left) or "r" (right), or one
letter for every column; e.g. `align="l" + "r" * (len(header) - 1)` for a name column followed by
numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

Cells = Sequence[object]


def _alignment(align: str | None, columns: int) -> str:
    if align is None:
        return ""
    if len(align) == 1:
        align *= columns
    if len(align) != columns or set(align) - {"l", "r"}:
        raise ValueError(f"align: one of 'l'/'r' per column ({columns}), or one for all; got {align!r}")
    return align


def text_table(
    header: Cells, rows: Sequence[Cells], align: str | None = None, *, rule: bool = True, gap: str = "  "
) -> str:
    """Columns padded to their widest cell and joined by `gap`; a dashed `rule` under the header.
    Left-aligned unless `align` says otherwise. Lines carry no trailing spaces."""
    table = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    # not strict: a ragged row is cut to the shortest row's columns rather than refused
    widths = [max(len(c) for c in column) for column in zip(*table, strict=False)]
    sides = _alignment(align, len(widths)) or "l" * len(widths)
    if rule:
        table.insert(1, ["-" * w for w in widths])

    def line(cells: list[str]) -> str:
        return gap.join(
            c.rjust(w) if side == "r" else c.ljust(w) for c, w, side in zip(cells, widths, sides, strict=False)
        ).rstrip()

    return "\n".join(line(cells) for cells in table)


def markdown_table(header: Cells, rows: Sequence[Cells], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table. Without `align` the renderer's default alignment ("---")."""
    sides = _alignment(align, len(header))
    rule = [{"l": ":--", "r": "--:"}[s] for s in sides] if sides else ["---"] * len(header)
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
