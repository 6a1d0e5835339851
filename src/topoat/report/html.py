"""report.html: report.md as one self-contained page for a browser, pictures inline as base64 PNGs, no
script, no style sheet or font from elsewhere, so it can be mailed or opened from any folder.

It renders the Markdown that `write.py` produces (headings, pipe tables, pictures on lines of their own,
lists, paragraphs, `code`, **bold**, links), not Markdown in general."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45;
       color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; height: auto; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""

_PICTURE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>[^)]+)\)$")
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<text>.*)$")


def markdown_to_html(text: str, folder: Path) -> str:
    """The page for report.md's `text`; pictures are read from paths relative to `folder`."""
    lines = text.splitlines()
    title = next((m.group("text") for m in map(_HEADING.match, lines) if m), "topoat report")
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif heading := _HEADING.match(line):
            level = len(heading.group("level"))
            body.append(f"<h{level}>{_inline(heading.group('text'))}</h{level}>")
            i += 1
        elif picture := _PICTURE.match(line):
            body.append(_figure(picture.group("alt"), folder / picture.group("path")))
            i += 1
        elif line.startswith("|"):
            block = _take(lines, i, lambda s: s.startswith("|"))
            body.append(_table(block))
            i += len(block)
        elif line.startswith("- "):
            block = _take(lines, i, lambda s: s.startswith("- "))
            body.append("<ul>" + "".join(f"<li>{_inline(item[2:])}</li>" for item in block) + "</ul>")
            i += len(block)
        else:
            block = _take(lines, i, lambda s: bool(s) and not s.startswith(("|", "- ", "#", "![")))
            body.append(f"<p>{_inline(' '.join(block))}</p>")
            i += len(block)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _take(lines: list[str], start: int, belongs: Callable[[str], bool]) -> list[str]:
    """The stripped lines from `start` on that belong to one block."""
    block = []
    for line in lines[start:]:
        if not belongs(line.strip()):
            break
        block.append(line.strip())
    return block or [lines[start].strip()]


def _table(rows: list[str]) -> str:
    def cells(row: str) -> list[str]:
        return [c.strip() for c in row.strip().strip("|").split("|")]

    header, body = cells(rows[0]), [cells(r) for r in rows[1:] if not re.fullmatch(r"\|[-:| ]+\|", r)]
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"


def _figure(alt: str, path: Path) -> str:
    """A picture inline; one that is missing becomes a line saying so, never a broken image."""
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return f"<p><em>(picture {html.escape(path.name)} is missing)</em></p>"
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}"></figure>'


def _inline(text: str) -> str:
    """`code`, **bold** and [links](...) (kept as their text: the page refers to nothing outside itself)."""
    out = []
    for k, piece in enumerate(re.split(r"(`[^`]*`)", text)):
        if k % 2:
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        piece = html.escape(piece, quote=False)
        piece = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", piece)
        piece = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", piece)
        out.append(piece)
    return "".join(out)
