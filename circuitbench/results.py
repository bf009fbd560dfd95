"""RunResult: one JSON per (model, task) unit, with provenance; written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskInfo(_Strict):
    name: str
    version: int
    spec_hash: str
    content_hash: str  # same task version, prompt distribution and metrics (see TaskSpec.content_hash)
    prompt_hash: str  # hash of the generated prompts, before tokenization
    split: str
    n_prompts: int  # prompts evaluated (after drops)
    n_dropped: int
    dropped_reasons: dict[str, int]
    dropped_examples: dict[str, list[str]] = Field(default_factory=dict)
    main_metric: str


class ModelInfo(_Strict):
    name: str
    source: str
    revision: str | None
    n_layers: int
    n_heads: int
    n_params: int
    init: Literal["pretrained", "random"]
    dtype: str
    tokenizer: str


class RunInfo(_Strict):
    seed: int
    batch_size: int
    device: str
    started_at: str
    duration_s: float  # this unit's prompts, metrics and methods
    model_load_s: float  # loading the model (shared by the units that ran on it)
    peak_memory_mb: float  # process peak RSS (and CUDA peak) at the end of the unit
    versions: dict[str, str]
    git: str | None
    command: str | None = None
    world_size: int = 1  # data-parallel processes that shared the prompts (torchrun / accelerate launch)
    device_map: str | None = None  # "auto": the HF model was spread over devices by accelerate
    cache: dict[str, int] = Field(default_factory=dict)  # activation cache {"hits", "misses"}; empty: off


class CircuitInfo(_Strict):
    method: str
    rule: dict[str, object]
    heads: list[tuple[int, int]]
    faithfulness: float | None = None  # f(C) = (m(C) − m(∅)) / (m(M) − m(∅))
    m_circuit: float | None = None
    m_full: float | None = None
    m_empty: float | None = None
    ablation: str | None = None
    curve: list[tuple[int, float, float]] = Field(default_factory=list)  # (n_heads, fraction, f)
    cpr: float | None = None  # area under the faithfulness curve (higher better)
    cmd: float | None = None  # area under |1 − f| (lower better)


class SplitMetrics(_Strict):
    n_prompts: int
    metrics: dict[str, float]
    metrics_stderr: dict[str, float]


class RunResult(_Strict):
    schema_version: int = SCHEMA_VERSION
    status: Literal["complete", "failed"]
    task: TaskInfo
    model: ModelInfo
    run: RunInfo
    metrics: dict[str, float]
    metrics_stderr: dict[str, float] = Field(default_factory=dict)
    metrics_corrupted: dict[str, float] = Field(default_factory=dict)
    # split -> SplitMetrics for the task's report_splits, and its own split, side by side
    metrics_by_split: dict[str, SplitMetrics] = Field(default_factory=dict)
    head_scores: dict[str, list[list[float]]] = Field(default_factory=dict)
    method_agreement: dict[str, float] = Field(default_factory=dict)  # e.g. Spearman exact vs attribution
    traces: dict[str, dict[str, object]] = Field(default_factory=dict)  # causal tracing maps (TraceMap)
    circuit: CircuitInfo | None = None
    error: str | None = None


def result_path(out: Path, model: str, task: str) -> Path:
    safe_model = model.replace("/", "__")
    return out / safe_model / f"{task}.json"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
