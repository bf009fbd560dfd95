"""The HTML the leaderboards and reports are written as: a page shell (doctype, head with charset,
viewport, title, generator mark, one small style sheet) and tables of cells, pretty-printed one
element per line so a regenerated page diffs line by line, not as one changed 9 KB line."""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from circuitbench.output_paths import HTML_GENERATOR

INDENT = "  "
# Narrow screens: a table scrolls inside its own box (div.scroll) instead of widening the page.
STYLE = """\
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.45; color: #1f2328;
       margin: 1.5em auto; padding: 0 1em; max-width: 1240px; }
h1 { font-size: 1.6em; margin-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
a { color: #0b57d0; }
.scroll { overflow-x: auto; margin-bottom: 1.2em; }
table { border-collapse: collapse; font-size: 90%; }
td, th { padding: 4px 6px; border-bottom: 1px solid #e1e4e8; text-align: left; vertical-align: top; }
th { background: #f6f8fa; vertical-align: bottom; font-weight: 600; }
table.sortable th { cursor: pointer; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { white-space: nowrap; }
.se, .muted { color: #6e7781; font-size: 85%; }
.components { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 85%; min-width: 9em; }
.badge { background: #b45309; color: #fff; border-radius: 3px; padding: 1px 5px; font-size: 75%;
         margin-left: 4px; white-space: nowrap; }
.note { background: #fff7ed; border-left: 4px solid #b45309; padding: .5em 1em; }
.info { background: #f1f5f9; border-left: 4px solid #64748b; padding: .5em 1em; }
.verdict-robust { color: #1a7f37; font-weight: 600; }
.verdict-unfaithful { color: #b42318; }
.verdict-undefined { color: #6e7781; }
.warning { color: #b45309; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 14px; }
dt { font-weight: 600; }
dd { margin: 0; }
img { max-width: 100%; height: auto; }
nav { margin-bottom: 1em; }"""

SORT_SCRIPT = """\
// Click a column header to sort; empty cells always go last, whatever the direction.
document.querySelectorAll('table.sortable').forEach(t => t.querySelectorAll('th').forEach((th, i) =>
  th.onclick = () => {
    const rows = Array.from(t.tBodies[0].rows), asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
    const key = r => { const v = r.cells[i].innerText.trim().split(/\\s/)[0]; const n = parseFloat(v);
                       return v === '' || v === '—' ? null : isNaN(n) ? v : n; };
    rows.sort((a, b) => { const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
    rows.forEach(r => t.tBodies[0].appendChild(r)); }));"""


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, and optionally a link, a hover title, a grey second part (a
    standard error, an interval) and a class (num: right-aligned figures)."""

    text: str = ""
    href: str | None = None
    title: str | None = None
    sub: str = ""
    cls: str | None = None
    raw_html: str | None = None  # already-escaped HTML (a badge), used instead of `text` in HTML

    def html(self) -> str:
        inner = self.raw_html if self.raw_html is not None else html.escape(self.text)
        if self.href:
            inner = f'<a href="{html.escape(self.href)}">{inner}</a>'
        if self.sub:
            inner += f' <span class="se">{html.escape(self.sub)}</span>'
        attrs = (f' class="{self.cls}"' if self.cls else "") + (
            f' title="{html.escape(self.title)}"' if self.title else "")
        return f"<td{attrs}>{inner}</td>"

    def markdown(self) -> str:
        text = (self.text + (f" {self.sub}" if self.sub else "")).replace("|", "\\|")
        return f"[{text}]({self.href})" if self.href and text else text


def esc(text: str) -> str:
    return html.escape(text, quote=False)


def indent(lines: Iterable[str], level: int = 1) -> list[str]:
    return [INDENT * level + line if line else line for line in lines]


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Cell]], sortable: bool = True,
               titles: dict[str, str] | None = None) -> list[str]:
    """A table, one element per line, inside a box that scrolls sideways on a narrow screen;
    `titles`: column -> hover text of its header."""
    head = [f'<th title="{html.escape(titles[c])}">{esc(c)}</th>' if titles and c in titles else f"<th>{esc(c)}</th>"
            for c in columns]
    body: list[str] = []
    for row in rows:
        body += ["<tr>", *indent(cell.html() for cell in row), "</tr>"]
    opening = '<table class="sortable">' if sortable else "<table>"
    table = [opening,
             *indent(["<thead>", *indent(["<tr>", *indent(head), "</tr>"]), "</thead>",
                      "<tbody>", *indent(body), "</tbody>"]),
             "</table>"]
    return ['<div class="scroll">', *indent(table), "</div>"]


def table_markdown(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> list[str]:
    """The same table in Markdown (links kept)."""
    cells = [[c.replace("|", "\\|") for c in columns]] + [[cell.markdown() for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = ["| " + " | ".join(v.ljust(w) for v, w in zip(cells[0], widths)) + " |",
           "|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|"]
    return out + ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells[1:]]


def definition_list(items: Sequence[tuple[str, str]]) -> list[str]:
    body: list[str] = []
    for term, meaning in items:
        body += [f"<dt>{esc(term)}</dt>", f"<dd>{esc(meaning)}</dd>"]
    return ["<dl>", *indent(body), "</dl>"]


def page(title: str, body: Sequence[str] | str, what: str, script: str = "", style: str = "") -> str:
    """A whole HTML document: `what` is the generator mark (leaderboard, report) that tells a folder
    circuitbench wrote from any other (output_paths.html_written_by reads the first 4 KB)."""
    lines = body.splitlines() if isinstance(body, str) else list(body)
    head = ['<meta charset="utf-8">', '<meta name="viewport" content="width=device-width, initial-scale=1">',
            HTML_GENERATOR.format(what=what), f"<title>{esc(title)}</title>",
            "<style>", *indent((STYLE + ("\n" + style if style else "")).splitlines()), "</style>"]
    tail = ["<script>", *indent(script.splitlines()), "</script>"] if script else []
    doc = ["<!doctype html>", '<html lang="en">', "<head>", *indent(head), "</head>", "<body>",
           *indent(lines + tail), "</body>", "</html>"]
    return "\n".join(doc) + "\n"


def frame_cells(frame) -> tuple[list[str], list[list[Cell]]]:  # a pandas DataFrame (pandas not imported here)
    """A table of already formatted text (a DataFrame of strings) as columns and cells; a cell that
    starts with a figure is right-aligned."""
    def cell(value: object) -> Cell:
        text = "" if value is None or value != value else str(value)  # NaN: empty
        return Cell(text, cls="num" if text[:1].isdigit() or text[:2] in ("-0", "-1", "−") else None)

    return [str(c) for c in frame.columns], [[cell(v) for v in row] for row in frame.itertuples(index=False)]
