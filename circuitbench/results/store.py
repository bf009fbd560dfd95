"""Where results live (OUT/<model>/<task>.json), writing them atomically, reading them back."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult


def result_path(out: Path, model: str, task: str) -> Path:
    safe_model = model.replace("/", "__")
    return out / safe_model / f"{task}.json"


def save_result(result: RunResult, path: Path) -> None:
    write_atomic(path, result.model_dump_json(indent=2) + "\n")


def load_result(path: Path) -> RunResult | None:
    """The stored result, or None if missing or unreadable (an unreadable one is redone)."""
    try:
        return RunResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        return None


def is_finished(path: Path, spec_hash: str, init: str, dtype: str | None) -> bool:
    """True if `path` holds a complete result of the same task spec, init and dtype."""
    existing = load_result(path)
    return (
        existing is not None
        and existing.status == "complete"
        and existing.task.spec_hash == spec_hash
        and existing.model.init == init
        and (dtype is None or existing.model.dtype == dtype)
    )
