"""User-facing errors: one clear message, exit code 2, no traceback (see DESIGN.md, Errors)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import ValidationError


class CircuitbenchError(Exception):
    """A mistake the user can fix: the message names the file/field/value and what to do."""

    exit_code = 2


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def format_validation_error(err: ValidationError, source: str, kind: str = "spec") -> str:
    """One paragraph: where, then each failing field path with pydantic's message."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here; check the spelling)"
        parts.append(f"{loc}: {msg}")
    return f"{source}: invalid {kind}. " + "; ".join(parts)


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped the work. A BaseException, like KeyboardInterrupt, so no
    `except Exception` records it as a failed unit; `detail` says what had finished."""

    def __init__(self, signal_name: str, exit_code: int, detail: str = "") -> None:
        super().__init__(signal_name)
        self.signal_name, self.exit_code, self.detail = signal_name, exit_code, detail
