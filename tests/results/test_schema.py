"""The RunResult schema: documented, current in docs/, and strict about what each status holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from circuitbench.results.schema import RunResult

DOCS = Path(__file__).resolve().parents[2] / "docs" / "result.schema.json"


def test_docs_schema_is_current():
    """Regenerate with `circuitbench schema --out docs/result.schema.json` (make schema)."""
    assert json.loads(DOCS.read_text()) == RunResult.model_json_schema()


def test_every_field_is_described():
    schema = RunResult.model_json_schema()
    undocumented = []
    for name, model in [("RunResult", schema), *schema["$defs"].items()]:
        assert model.get("description"), name
        for field, spec in model["properties"].items():
            if "description" not in spec:
                undocumented.append(f"{name}.{field}")
    assert not undocumented, undocumented


def test_status_decides_what_a_result_must_hold():
    base = {"task": {"name": "t", "version": 1, "spec_hash": "h", "content_hash": "c", "spec": {}, "split": "test",
                     "main_metric": "m"},
            "model": {"name": "m", "source": "s", "init": "pretrained", "dtype": "float32"},
            "run": {"seed": 0, "device": "cpu", "started_at": "now", "duration_s": 0.0, "peak_memory_mb": 1.0,
                    "versions": {}, "git": None}}
    failed = RunResult.model_validate({**base, "status": "failed",
                                       "error": {"type": "RuntimeError", "message": "boom", "user_error": False}})
    assert failed.error.message == "boom"
    with pytest.raises(ValidationError, match="needs its error"):
        RunResult.model_validate({**base, "status": "failed"})
    with pytest.raises(ValidationError, match="a complete result has prompts"):
        RunResult.model_validate({**base, "status": "complete"})
