"""Options of a run, in three parts by who honours them:

- `TaskOverrides` (n_prompts, seed, split, methods, circuit level) change the task: they are applied
  to the TaskSpec *before* a unit runs (`effective_spec`), so what a result records as its spec is what
  ran; `run_unit` cannot take them.
- `ExecutionOptions` (batch size, activation cache, threads) are all `run_unit` honours; it records
  them as `run.options`.
- `RunOptions` is what the grid and the CLI take: both of the above, flat, plus what only the grid
  does (loading models: init, dtype, device, device_map; the result store: out, resume; --reference).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from circuitbench.errors import CircuitbenchError, format_validation_error
from circuitbench.files import default_cache_dir
from circuitbench.specs.byte_size import parse_byte_size
from circuitbench.specs.model import DType
from circuitbench.specs.task import SPLITS, CircuitRule, MethodName, Split, TaskSpec

# The circuit rule --circuit-level uses when a task has none.
DEFAULT_LEVEL_RULES = {"head": {"top_k": 10}, "node": {"top_k": 10}, "edge": {"fraction": 0.05}}


def _positive_batch_size(v: int | str) -> int | str:
    if isinstance(v, int) and v < 1:
        raise ValueError("batch_size must be a positive integer or 'auto'")
    return v


class TaskOverrides(BaseModel):
    """Changes to a task's spec for one run; applied with `effective_spec` before the unit runs."""

    model_config = ConfigDict(extra="forbid")
    n_prompts: int | None = Field(None, ge=1, description="override the task's n_prompts (--n-prompts, --n)")
    seed: int | None = Field(None, ge=0, lt=2**63,
                             description="override the task's prompt seed (also the random-init seed)")
    split: Split | None = Field(None, description="override the task's split")
    methods: list[MethodName] | None = Field(None, description="override the task's methods")
    circuit_level: Literal["head", "node", "edge"] | None = Field(
        None, description="build the task's circuit at this level (--circuit-level): heads, nodes (heads and MLPs) or "
        "edges; a task without a rule gets top_k 10 (head, node) or fraction 0.05 (edge)")


class ExecutionOptions(BaseModel):
    """How a unit is computed, none of which changes what is computed (beyond float rounding by
    batch size): all `run_unit` honours. Recorded in every result as `run.options`."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | Literal["auto"] = Field(32, description="prompts per forward pass, or 'auto' (fits free memory)")
    cache_dir: str | None = Field(None, description="activation cache directory for unpatched forwards; None: no "
                                  "cache, nothing written")
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads while the unit runs (None: leave the "
                                "process's setting)")
    max_memory: int | None = Field(None, ge=1, description="bytes the weights and an edge method's tensors may "
                                   "take (eap, eap_ig, edge_patching plan their chunks under it); None: the weights "
                                   "plus half the free memory")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        return _positive_batch_size(v)


class RunOptions(BaseModel):
    """Options of one `run`. Stored in every result (`run.options`)."""

    model_config = ConfigDict(extra="forbid")
    n_prompts: int | None = Field(None, ge=1, description="number of prompts (overrides the task's n_prompts)")
    seed: int | None = Field(None, ge=0, lt=2**63,
                             description="override the task's prompt seed (also the random-init seed)")
    split: Split | None = Field(None, description="train | val | test (overrides the task's split, test by default)")
    batch_size: int | Literal["auto"] = Field(32, description="prompts per forward pass, or 'auto' (fits free memory)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    device_map: Literal["auto"] | None = Field(
        None, description="'auto': accelerate spreads a HuggingFace model over the devices (model parallel)")
    dtype: DType | None = Field(None, description="float32 | bfloat16 | float16: the weights' dtype (default: the "
                                "model's)")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="pretrained | random (seeded random weights, architecture from models.yaml)")
    kv_graph: Literal["grouped", "ungrouped"] = Field(
        "grouped", description="grouped-query attention models: grouped = edges into each key-value group's key and "
        "value inputs (what the model computes); ungrouped = keys and values per query head, EAP-IG's and MIB's "
        "edge count")
    methods: list[MethodName] | None = Field(None, description="scoring methods, run instead of the task's (on the "
                                              "command line comma-separated)")
    circuit_level: Literal["head", "node", "edge"] | None = Field(
        None, description="build the task's circuit at this level (--circuit-level): heads, nodes (heads and MLPs) or "
        "edges; a task without a rule gets top_k 10 (head, node) or fraction 0.05 (edge)")
    out: str = Field("results", description="results directory: OUT/<model>/<task>.json")
    resume: bool = Field(False, description="keep finished units whose result matches; rerun the rest")
    cache: bool = Field(True, description="reuse unpatched forwards from the activation cache")
    cache_dir: str | None = Field(None, description="activation cache directory (default: $CIRCUITBENCH_CACHE or "
                                  "~/.cache/circuitbench)")
    reference: str | None = Field(None, description="a known circuit (JSON file) to score recovery against; "
                                  "default: the task's reference_circuits, then the model directory's circuit.json")
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads (default: by model size, 1 under "
                                "20M parameters, then one per 150M up to every core); recorded as run.threads")
    max_memory: int | None = Field(None, description="memory budget, e.g. 4GB, 512MB, 1.5GiB: the weights and an edge "
                                   "method's tensors together (eap, eap_ig and edge_patching pick sub-batches and "
                                   "source chunks under it); default: the weights plus half the free memory")

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, v: object) -> int | None:
        return None if v is None else parse_byte_size(v)  # type: ignore[arg-type]

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        return _positive_batch_size(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
            raise ValueError(f"device '{v}' is not one of auto, cpu, cuda, cuda:N, mps")
        return v


    def overrides(self) -> TaskOverrides:
        """The part that changes the task (applied to its spec before the unit runs)."""
        return TaskOverrides(**{k: getattr(self, k) for k in TaskOverrides.model_fields})

    def execution(self) -> ExecutionOptions:
        """The part run_unit honours; the cache resolved to a directory (None with --no-cache)."""
        cache_dir = (self.cache_dir or str(default_cache_dir())) if self.cache else None
        return ExecutionOptions(batch_size=self.batch_size, cache_dir=cache_dir, threads=self.threads,
                                max_memory=self.max_memory)


def effective_spec(spec: TaskSpec, options: TaskOverrides | RunOptions) -> TaskSpec:
    """The task spec with run-time overrides applied (and re-validated); its hash names the unit."""
    if isinstance(options, RunOptions):
        options = options.overrides()
    update: dict[str, object] = {}
    if options.n_prompts is not None:
        update["n_prompts"] = options.n_prompts
    if options.seed is not None:
        update["seed"] = options.seed
    if options.split is not None:
        update["split"] = options.split
        if spec.report_splits:  # still side by side: the task's own split joins the reported ones
            update["report_splits"] = [s for s in SPLITS
                                       if s != options.split and (s in spec.report_splits or s == spec.split)]
    if options.methods is not None:
        update["methods"] = options.methods
        if spec.circuit and spec.circuit.method != "auto" and spec.circuit.method not in options.methods:
            update["circuit"] = spec.circuit.model_copy(update={"method": "auto"})
    if options.circuit_level is not None and (spec.circuit is None or spec.circuit.level != options.circuit_level):
        if spec.circuit is None:
            rule = {**DEFAULT_LEVEL_RULES[options.circuit_level], "level": options.circuit_level}
        else:  # the task's rule at another level; an edge circuit patches counterfactuals unless the task said
            told = "ablation" in spec.circuit.model_fields_set
            rule = spec.circuit.model_dump(exclude_none=True, exclude=None if told else {"ablation"})
            rule["level"] = options.circuit_level
        update["circuit"] = CircuitRule.model_validate(rule)
    if not update:
        return spec
    try:
        return TaskSpec.model_validate({**spec.model_dump(), **update})
    except ValidationError as e:
        raise CircuitbenchError(format_validation_error(e, f"task '{spec.name}' with run options")) from None
