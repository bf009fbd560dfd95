"""Where results live (OUT/<model>/<task>.json), writing them atomically, reading them back."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import ValidationError

from circuitbench.circuits.circuit import Circuit
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.results.schema import SCHEMA_VERSION, RunResult


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
    for name, content in result.edge_files().items():
        write_atomic(path.parent / name, json.dumps(content) + "\n")
    write_atomic(path, result.model_dump_json(indent=2) + "\n")


def load_result(path: Path) -> RunResult | None:
    """The stored result, or None if missing, unreadable, of another schema version or holding
    NaN/inf (such a result is redone; `read_result` says which)."""
    try:
        return read_result(path)
    except UnusableResult:
        return None


class UnusableResult(CircuitbenchError):
    """A result file that cannot be used as a current result; `reason` says why in a few words
    (for lists of flagged files), the message adds the file and what to do."""

    def __init__(self, path: Path, reason: str, fix: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {reason}. {fix}")
        self.path, self.reason, self.kind = path, reason, kind  # kind: unreadable | version | nonfinite


RERUN = "Rerun the unit (circuitbench run … --resume redoes it) to get a current result."


def read_result(path: Path) -> RunResult:
    """The stored result, validated: a readable RunResult of the current schema version, every
    number finite (Python's json reads NaN and Infinity; they are refused, never shown)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UnusableResult(path, f"cannot be read ({e.strerror or e})", "Check the path.") from None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise UnusableResult(path, f"not valid JSON ({e})", RERUN) from None
    result = parse_result(raw, path)
    result.sidecars_in(path.parent)  # its edge scores, read when asked (RunResult.edge_score_arrays)
    return result


def load_circuit(path: Path) -> Circuit:
    """The circuit of any circuit file: a RunResult (checked as a result: its schema version, NaN,
    a failed unit; edge scores from its sidecar), any JSON with heads / nodes, or an EAP-IG / MIB
    graph file (Circuit.load)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None  # Circuit.load names what is wrong
    if isinstance(raw, dict) and "schema_version" in raw and "status" in raw:
        result = parse_result(raw, path)
        result.sidecars_in(path.parent)
        return Circuit.from_result(result)
    return Circuit.load(path)


def parse_result(raw: object, path: Path) -> RunResult:
    """`raw` (the JSON of `path`) as a current RunResult, or UnusableResult saying why not."""
    if not isinstance(raw, dict) or "schema_version" not in raw or "status" not in raw:
        raise UnusableResult(path, "not a readable RunResult (no schema_version and status)",
                             "Give a result written by circuitbench run.")
    version = raw["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise UnusableResult(path, f"schema_version: {version!r}, not the current {SCHEMA_VERSION} (written by "
                             "another version of circuitbench)", RERUN, "version")
    bad = nonfinite_fields(raw)
    if bad:
        raise UnusableResult(path, f"{', '.join(bad[:3])}: not a finite number (NaN or infinite)", RERUN, "nonfinite")
    try:
        return RunResult.model_validate(raw)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()[:3])
        raise UnusableResult(path, f"not a valid RunResult ({fields})", RERUN) from None
