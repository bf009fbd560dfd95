"""mkdocs hook: the site's home page is README.md (one source), with its links rewritten from the
repository root to the site: `docs/x.md` becomes `x.md`, and a link to a file outside docs/ (the
committed leaderboards) becomes its path in code, since the site does not hold it."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _site_link(match: re.Match) -> str:
    bang, text, target = match.groups()
    if re.match(r"[a-z]+://|#", target):
        return match.group(0)
    if target.startswith("docs/"):
        return f"{bang}[{text}]({target[len('docs/'):]})"
    return f"`{target}`" if not text.startswith("`") else text


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return LINK.sub(_site_link, README.read_text())
