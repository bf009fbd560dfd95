"""User-facing errors: one clear message, exit code 2, no traceback (see DESIGN.md, Errors)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class CircuitbenchError(Exception):
    """A mistake the user can fix: the message names the file/field/value and what to do."""

    exit_code = 2


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
