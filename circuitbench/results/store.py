"""Where results live (OUT/<model>/<task>.json), writing them atomically, reading them back."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult


def save_result(result: RunResult, path: Path) -> None:
    write_atomic(path, result.model_dump_json(indent=2) + "\n")


def load_result(path: Path) -> RunResult | None:
    """The stored result, or None if missing or unreadable (an unreadable one is redone)."""
    try:
        return RunResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        return None
