"""Progress reporting from the library: a callback the caller passes in (the CLI draws rich bars
from it; a notebook can pass its own), so no library module draws anything."""
from __future__ import annotations

from collections.abc import Callable

# (what is being done, items done so far, items in all); called after each step.
ProgressFn = Callable[[str, int, int], None]


def no_progress(what: str, done: int, total: int) -> None:
    """The default: report nothing."""


class Steps:
    """Counts one piece of work for a ProgressFn: `advance(n)` after each n items."""

    def __init__(self, report: ProgressFn, what: str, total: int) -> None:
        self.report, self.what, self.total, self.done = report, what, total, 0
        report(what, 0, total)

    def advance(self, n: int) -> None:
        self.done += n
        self.report(self.what, self.done, self.total)
