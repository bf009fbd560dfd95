"""Where results live (OUT/<model>/<task>.json), writing them atomically, reading them back."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import ValidationError

from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult


def nonfinite_fields(value: object, path: str = "") -> list[str]:
    """Where a result holds NaN or inf (JSON would turn them into nulls that no longer load)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path or "(top level)"]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in nonfinite_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [f for i, v in enumerate(value) for f in nonfinite_fields(v, f"{path}[{i}]")]
    return []


def save_result(result: RunResult, path: Path) -> None:
    """Write the result atomically, its sidecar files (edge scores) first, next to it; a
    non-finite number anywhere in it is a bug, refused."""
    bad = nonfinite_fields(result.model_dump())
    if bad:
        raise ValueError(f"result for {path} holds non-finite numbers at {', '.join(bad[:5])}")
    for name, content in result._sidecars.items():
        write_atomic(path.parent / name, json.dumps(content) + "\n")
    write_atomic(path, result.model_dump_json(indent=2) + "\n")


def load_result(path: Path) -> RunResult | None:
    """The stored result, or None if missing or unreadable (an unreadable one is redone)."""
    try:
        return RunResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        return None
