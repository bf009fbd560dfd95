"""Reading the written HTML pages back with the standard library's parser (what the leaderboard,
report and method-board tests check: the head, one element per line, tables, links)."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote


class Page(HTMLParser):
    """Tags, meta attributes, the title, every link and picture, and each table as rows of cell texts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = ""
        self.tags: list[str] = []
        self.meta: list[dict[str, str]] = []
        self.title = ""
        self.links: list[str] = []
        self.tables: list[dict] = []  # {"headers": [...], "rows": [[text, ...]], "cells": [[{attrs, text}]]}
        self.terms: list[str] = []  # <dt> texts (the legend)
        self.paragraphs: list[str] = []
        self.headings: list[tuple[str, str, int]] = []  # (h1/h2/h3, text, how many tables came before it)
        self._stack: list[str] = []
        self._text: list[str] | None = None
        self._cell: dict | None = None
        self.feed(text)

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "meta":
            self.meta.append(a)
            return
        if tag in ("a", "img") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        if tag in ("img", "br"):
            return
        self._stack.append(tag)
        if tag == "table":
            self.tables.append({"headers": [], "rows": [], "cells": []})
        elif tag == "tr" and self.tables:
            if "thead" not in self._stack:
                self.tables[-1]["rows"].append([])
                self.tables[-1]["cells"].append([])
        elif tag in ("td", "th", "title", "dt", "p", "h1", "h2", "h3"):
            self._text = []
            self._cell = {"attrs": a, "links": []}
        elif tag == "a" and self._cell is not None:
            self._cell["links"].append(a.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("meta", "img", "br"):
            return
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()
        if tag in ("td", "th", "title", "dt", "p", "h1", "h2", "h3") and self._text is not None:
            text = " ".join("".join(self._text).split())
            if tag == "th":
                self.tables[-1]["headers"].append(text)
            elif tag == "td":
                self.tables[-1]["rows"][-1].append(text)
                self.tables[-1]["cells"][-1].append({**self._cell, "text": text})
            elif tag == "title":
                self.title = text
            elif tag == "dt":
                self.terms.append(text)
            elif tag.startswith("h"):
                self.headings.append((tag, text, len(self.tables)))
            else:
                self.paragraphs.append(text)
            self._text = None
            self._cell = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def section_tables(self, heading: str) -> list[int]:
        """Indices of the tables between the <h2> `heading` and the next <h2>."""
        h2 = [(text, before) for tag, text, before in self.headings if tag == "h2"]
        for i, (text, before) in enumerate(h2):
            if text == heading:
                end = h2[i + 1][1] if i + 1 < len(h2) else len(self.tables)
                return list(range(before, end))
        return []

    def records(self, table: int) -> list[dict[str, str]]:
        t = self.tables[table]
        return [dict(zip(t["headers"], row)) for row in t["rows"]]


def read_page(path: Path) -> Page:
    return Page(path.read_text())


def check_page_shell(path: Path) -> Page:
    """A whole document: doctype, charset, viewport, title; pretty-printed (many lines, never two
    table rows or two cells on one line). Returns the parsed page."""
    text = path.read_text()
    page = Page(text)
    assert page.doctype.lower() == "doctype html", path
    assert any(m.get("charset", "").lower() == "utf-8" for m in page.meta), path
    assert any(m.get("name") == "viewport" and "width=device-width" in m.get("content", "") for m in page.meta), path
    assert page.title and "head" in page.tags and "body" in page.tags, path
    lines = text.splitlines()
    assert len(lines) > 30, (path, len(lines))
    for line in lines:
        assert line.count("<td") + line.count("<th") + line.count("<tr") <= 1, (path, line)
    return page


def local_targets(path: Path, page: Page) -> list[Path]:
    """The files the page's relative links and pictures point at (fragments and data: URLs left out)."""
    out = []
    for link in page.links:
        if link.startswith(("data:", "http:", "https:", "#", "mailto:")):
            continue
        out.append((path.parent / unquote(link.split("#")[0])).resolve())
    return out
