"""User-facing errors: one clear message, exit code 2, no traceback (see DESIGN.md, Errors)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


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


def options_error(err: ValidationError, flags: Mapping[str, str] | None = None) -> CircuitbenchError:
    """One message naming each bad option by its flag: `flags` maps a field path ("noise.site") or
    name to its flag where they differ ("--noise-site"), else a field `n_prompts` is `--n-prompts`;
    a check across fields names no field (its message names them)."""
    parts = []
    for e in err.errors():
        names = [str(x) for x in e["loc"] if isinstance(x, str)]
        msg = e["msg"].removeprefix("Value error, ")
        if not names:
            parts.append(msg)
            continue
        flag = (flags or {}).get(".".join(names)) or (flags or {}).get(names[-1]) or f"--{names[-1].replace('_', '-')}"
        parts.append(f"{flag}: {msg}")
    return CircuitbenchError("Invalid option. " + "; ".join(parts))


def validate_options(model: type[M], flags: Mapping[str, str] | None = None, **values: object) -> M:
    """`model(**values)`, a bad value an error naming its flag (see `options_error`)."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise options_error(e, flags) from None


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped the work. A BaseException, like KeyboardInterrupt, so no
    `except Exception` records it as a failed unit; `detail` says what had finished."""

    def __init__(self, signal_name: str, exit_code: int, detail: str = "") -> None:
        super().__init__(signal_name)
        self.signal_name, self.exit_code, self.detail = signal_name, exit_code, detail
