"""RunResult: one JSON per (model, task) unit, with the effective spec, the run options and
provenance. `RunResult.model_json_schema()` is the documented schema (docs/result.schema.json)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, model_validator

from circuitbench.circuits.circuit import FROM_RESULT, Circuit, model_label
from circuitbench.circuits.graph_files import UNITS, graph_json, load_sidecar
from circuitbench.circuits.recovery import RecoveryInterval, RecoveryScores
from circuitbench.scores.cost import MethodCost
from circuitbench.scores.evaluation import SplitMetrics
from circuitbench.scores.methods.outputs import EdgeScores

SCHEMA_VERSION = 4  # 3: run.options is what run_unit honours, run.overrides, metric_values, run.plugin_code;
# 4: circuit is a Circuit, its faithfulness one record (circuit.faithfulness.value, .undefined, .cpr …),
# the circuit's panel, verdict, invisible and outside_necessary, visibility, unknown_scores


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(_Strict):
    """Why a unit failed."""

    type: str = Field(description="exception type, e.g. CircuitbenchError (a user mistake) or RuntimeError")
    message: str = Field(description="the error message")
    user_error: bool = Field(description="a mistake the user can fix (exit code 2), not a bug or a crash")
    traceback: str | None = Field(None, description="where a bug or crash happened (None for user mistakes)")


class TaskInfo(_Strict):
    """The task as it ran (prompt counts are None when a unit failed before its prompts were encoded)."""

    name: str = Field(description="task id")
    version: int = Field(description="task version (bumped when its prompts or metrics change meaning)")
    spec_hash: str = Field(description="hash of the effective spec: same hash, same prompts and computation")
    content_hash: str = Field(description="hash of version, prompt distribution and metrics: same hash, comparable")
    spec: dict[str, Any] = Field(description="the effective TaskSpec as run (run options applied)")
    split: str = Field(description="the split the task ran on")
    main_metric: str = Field(description="the metric methods score and circuits keep")
    prompt_hash: str | None = Field(None, description="hash of the generated prompts, before tokenization")
    n_prompts: int | None = Field(None, description="prompts evaluated (after drops)")
    n_dropped: int = Field(0, description="prompts dropped for this tokenizer")
    dropped_reasons: dict[str, int] = Field(default_factory=dict, description="reason -> count")
    dropped_examples: dict[str, list[str]] = Field(default_factory=dict, description="reason -> up to 3 examples")


class ModelInfo(_Strict):
    """The model as loaded (shape fields are None when loading failed)."""

    name: str = Field(description="registry name, or a local directory's folder name, or the hub id")
    source: str = Field(description="hub id or resolved directory")
    revision: str | None = Field(None, description="hub revision of pretrained weights")
    fingerprint: str | None = Field(None, description="the weights' identity beyond the name (models/fingerprint.py)")
    init: Literal["pretrained", "random"] = Field(description="random: seeded random weights (a baseline)")
    init_seed: int | None = Field(None, description="the seed of random-init weights")
    dtype: str = Field(description="weights dtype")
    n_layers: int | None = Field(None, description="transformer blocks")
    n_heads: int | None = Field(None, description="attention heads per block")
    n_params: int | None = Field(None, description="parameters of the loaded model")
    d_model: int | None = Field(None, description="residual stream width")
    has_mlp: bool | None = Field(None, description="whether its blocks have MLPs (attention-only toys do not)")
    parallel_attn_mlp: bool | None = Field(None, description="whether each MLP reads the block input (GPT-NeoX)")
    n_key_value_heads: int | None = Field(
        None, description="grouped-query attention, grouped graph: the key-value groups whose key and value inputs "
        "are the graph's (None: one per head)")
    kv_graph: Literal["grouped", "ungrouped"] = Field(
        "grouped", exclude_if=lambda kv: kv == "grouped",
        description="ungrouped: a grouped-query model's keys and values computed per query head (--kv-graph)")
    tokenizer: str | None = Field(None, description="where the tokenizer came from")

    @property
    def label(self) -> str:
        """The name as shown in tables, reports and overlap output (random init: name@random-init)."""
        return model_label(self.name, self.init)


class PluginCode(_Strict):
    """The plugin code behind one generator, metric or method of a task (what --resume compares)."""

    module: str = Field(description="the module that registered it (a --plugin file: circuitbench_plugin_<stem>)")
    file: str | None = Field(None, description="that module's source file")
    version: str | None = Field(None, description="version of the installed distribution providing the module "
                                "(None: not installed, e.g. a --plugin file)")
    code_sha256: str | None = Field(None, description="sha256 (16 hex digits) of the source of the module that "
                                    "registered it and of the modules its implementation lives in (None: no "
                                    "source found)")


class RunInfo(_Strict):
    """How the unit ran."""

    seed: int = Field(description="prompt seed (and random-init seed)")
    batch_size: int | None = Field(None, description="prompts per forward pass (None: failed before it was chosen)")
    device: str = Field(description="where the model ran (cpu, cuda:0, ...)")
    started_at: str = Field(description="ISO time (UTC)")
    duration_s: float = Field(description="this unit's prompts, metrics and methods, in seconds")
    model_load_s: float = Field(0.0, description="loading the model (shared by the units that ran on it)")
    peak_memory_mb: float = Field(description="process peak RSS (and CUDA peak) at the end of the unit")
    versions: dict[str, str] = Field(description="python and package versions")
    git: str | None = Field(description="commit of a source checkout ('-dirty': uncommitted changes)")
    command: str | None = Field(None, description="the command line, when run from the CLI")
    options: dict[str, Any] = Field(default_factory=dict, description="the ExecutionOptions the unit ran with "
                                    "(batch_size, cache_dir, threads): everything run_unit honours")
    overrides: dict[str, Any] = Field(default_factory=dict, description="the task overrides (n_prompts, seed, split, "
                                      "methods, circuit_level) applied to the task's spec before the unit ran; the "
                                      "spec in task.spec already has them")
    plugins: list[str] = Field(default_factory=list, description="plugins loaded (entry points, --plugin)")
    plugin_code: dict[str, PluginCode] = Field(
        default_factory=dict, description="'generator:x', 'metric:x', 'method:x' -> the plugin code behind each "
        "generator, metric and method the task used that is not built in; --resume recomputes a result whose "
        "plugin code differs from the code loaded now")
    world_size: int = Field(1, description="data-parallel processes that shared the prompts")
    device_map: str | None = Field(None, description="'auto': the HF model was spread over devices by accelerate")
    cache: dict[str, int] = Field(default_factory=dict, description="activation cache {hits, misses}; empty: off")
    threads: int | None = Field(None, description="torch intra-op threads the unit ran with (--threads; default by "
                                "model size: 1 under 20M parameters, then one per 150M up to every core)")


class EdgeScoresInfo(_Strict):
    """An edge method's scores: in a sidecar file next to the result (EAP-IG / MIB graph JSON)."""

    file: str = Field(description="the sidecar's name, in the result's folder: <task>.<method>.edges.json")
    n_edges: int = Field(description="edges scored (every edge of the component graph)")
    settings: dict[str, object] = Field(default_factory=dict, description="what ran (variant, steps, step points …)")
    top: list[tuple[str, float]] = Field(default_factory=list, description="the 20 edges of largest |score|")
    spans: list[str] | None = Field(None, exclude_if=lambda spans: spans is None,
                                    description="positions: per_span: the spans the edges were also scored per")
    top_spans: list[tuple[str, float]] = Field(
        default_factory=list, exclude_if=lambda top: not top,
        description="positions: per_span: the 20 (edge, span) pairs of largest |score|, named 'u->v@SPAN'")


class ReferenceInfo(_Strict):
    """The known circuit recovery was scored against."""

    source: str = Field(description="--reference FILE, the task's reference_circuits, or the model's circuit.json")
    heads: list[tuple[int, int]] = Field(description="[layer, head] pairs of the known circuit")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the known circuit")
    edges: list[str] = Field(default_factory=list, description="edges of the known circuit, when it names them")
    invisible: list[tuple[int, int]] = Field(
        default_factory=list, description="reference heads whose clean and counterfactual outputs are identical: "
        "patching with this counterfactual cannot see them")


class CounterfactualRun(_Strict):
    """What one counterfactual of a task with several showed (TaskSpec.counterfactuals)."""

    name: str = Field(description="the counterfactual (a value of the generator's `counterfactual` parameter)")
    n_prompts: int = Field(description="prompts kept with this counterfactual (its own drops counted)")
    n_dropped: int = Field(0, description="prompts dropped because this counterfactual could not be encoded")
    metrics_corrupted: dict[str, float] = Field(default_factory=dict,
                                                description="metric id -> mean on this counterfactual's prompts")
    head_scores: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="method -> [n_layers][n_heads] scores under this counterfactual (methods "
        "that use the counterfactual)")
    node_scores: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                     description="method -> {node: score} under this counterfactual")
    visibility: dict[str, float] = Field(default_factory=dict,
                                         description="node -> share of prompts this counterfactual changes it on")
    invisible: list[str] = Field(default_factory=list, description="nodes this counterfactual never changes")


class RunResult(_Strict):
    """One (model, task) unit: complete with its numbers, or failed with the error."""

    schema_version: int = Field(SCHEMA_VERSION, description="bumped when the layout changes")
    status: Literal["complete", "failed"] = Field(description="complete: every number below; failed: see error")
    error: ErrorInfo | None = Field(None, description="why the unit failed (status failed only)")
    task: TaskInfo = Field(description="the task as it ran")
    model: ModelInfo = Field(description="the model as loaded")
    run: RunInfo = Field(description="how the unit ran: options, software, timings, memory")
    metrics: dict[str, float] = Field(default_factory=dict, description="metric id -> mean on clean prompts")
    metrics_stderr: dict[str, float | None] = Field(
        default_factory=dict, description="metric id -> standard error; None: undefined (one prompt has no spread)")
    metrics_corrupted: dict[str, float] = Field(
        default_factory=dict, description="metric id -> mean on corrupted prompts")
    metric_values: dict[str, list[float]] = Field(
        default_factory=dict, description="metric id -> its value on each clean prompt, in prompt order (to recompute "
        "any statistic later)")
    metric_values_corrupted: dict[str, list[float]] = Field(
        default_factory=dict, description="metric id -> its value on each corrupted prompt, in prompt order")
    metrics_by_split: dict[str, SplitMetrics] = Field(
        default_factory=dict, description="split -> metrics, for the task's report_splits and its own split")
    head_scores: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="method -> [n_layers][n_heads] scores")
    node_scores: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="method -> {node: score} over heads ('a0.h1') and MLPs ('m0'), for the "
        "methods that score MLPs too (same units as its head scores)")
    method_agreement: dict[str, float] = Field(
        default_factory=dict, description="e.g. Spearman correlation of exact vs attribution patching")
    edge_scores: dict[str, EdgeScoresInfo] = Field(
        default_factory=dict, description="edge method -> its sidecar file of every edge's score, and the top edges")
    traces: dict[str, dict[str, object]] = Field(default_factory=dict, description="causal tracing maps (TraceMap)")
    method_costs: dict[str, MethodCost] = Field(
        default_factory=dict, description="method -> what its run cost: seconds and forward-equivalents (under several "
        "counterfactuals: the primary one's run; empty in results made before costs were recorded)")
    circuit: Circuit | None = Field(None, description="the circuit the task's rule chose, with its faithfulness "
                                    "(scores, shape and label are not written in it: the result holds them)")
    reference: ReferenceInfo | None = Field(None, description="the known circuit, when there is one")
    recovery: dict[str, RecoveryScores] = Field(
        default_factory=dict, description="method -> precision, recall, F1 of its circuit and AUROC, average "
        "precision of its |scores| against the reference")
    node_recovery: dict[str, RecoveryScores] = Field(
        default_factory=dict, description="method -> the same over nodes (heads and MLPs) against the reference's "
        "nodes; the circuit: the method's top |reference| nodes by |score| (exact zeros never picked)")
    edge_recovery: dict[str, RecoveryScores] = Field(
        default_factory=dict, description="edge method -> the same over edges against the reference's edges (top "
        "|reference| edges by |score|)")
    recovery_ci: dict[str, RecoveryInterval] = Field(
        default_factory=dict, description="method -> 95 % bootstrap intervals over prompts of its recovery scores "
        "(every method rerun per resample; small models only, circuits/recovery_intervals.py)")
    node_recovery_ci: dict[str, RecoveryInterval] = Field(
        default_factory=dict, description="method -> the same for node_recovery")
    warnings: list[str] = Field(default_factory=list, description="what the reader should know: e.g. methods that "
                                "disagree, reference heads invisible to the counterfactual")
    visibility: dict[str, float] = Field(
        default_factory=dict, description="node ('a0.h1', 'm0') -> share of prompts on which its output differs "
        "between the clean and counterfactual run (empty: no counterfactual prompts)")
    unknown_scores: dict[str, list[str]] = Field(
        default_factory=dict, description="patching-style method -> the nodes its scores cannot see (invisible on "
        "almost every prompt): their score is unknown, not 0")
    counterfactuals: list[CounterfactualRun] = Field(
        default_factory=list, description="a task with several counterfactuals: each one's scores and visibility, the "
        "primary first; head_scores, node_scores, edge scores and visibility above are their combination")
    score_combination: str | None = Field(None, description="how several counterfactuals' scores were combined")
    counterfactual_agreement: dict[str, float | None] = Field(
        default_factory=dict, description="'method: jaccard(a, b)' -> Jaccard of the circuits the rule picks from "
        "method's scores under counterfactual a alone and b alone (None: both empty)")
    # Each edge method's scores over the component graph, in memory (not part of the JSON): written
    # next to the result as the sidecar file edge_scores[method].file (edge_files()).
    _edges: dict[str, EdgeScores] = PrivateAttr(default_factory=dict)
    _sidecar_dir: Path | None = PrivateAttr(None)  # where a result read from disk finds its sidecar files

    def attach_edge_scores(self, edges: Mapping[str, EdgeScores]) -> None:
        """Keep each edge method's scores with this result (its edge_scores entries say where they
        go); an edge circuit gets the scores of the method it came from."""
        missing = sorted(set(edges) - set(self.edge_scores))
        if missing:
            raise ValueError(f"edge scores of {missing} have no edge_scores entry in this result")
        self._edges = dict(edges)
        c = self.circuit
        if c is not None and c.level == "edge" and c.method in edges:
            c.edge_scores = edges[c.method].as_dict()

    def sidecars_in(self, folder: Path) -> None:
        """Where this result's sidecar files are (a result read from disk: its own folder)."""
        self._sidecar_dir = folder

    def edge_score_arrays(self) -> dict[str, EdgeScores]:
        """Each edge method's scores over the component graph: attached by the run, or read (once,
        when first asked) from the sidecar files next to a result read from disk. A missing or
        unusable sidecar is an error naming the file."""
        for method, info in self.edge_scores.items():
            if method not in self._edges and self._sidecar_dir is not None:
                graph_file = load_sidecar(self._sidecar_dir / info.file, self.model.n_layers, self.model.n_heads,
                                          method)
                self._edges[method] = graph_file.edge_scores()
        return dict(self._edges)

    def edge_files(self) -> dict[str, dict]:
        """The sidecar files of this result, name -> content: each edge method's scores as EAP-IG /
        MIB graph JSON, the edge circuit marked in the file of the method it came from."""
        circuit = self.circuit
        files = {}
        for method, scores in self._edges.items():
            info = self.edge_scores[method]
            chosen = circuit.edges if circuit is not None and circuit.level == "edge" and circuit.method == method \
                else []
            chosen = list(dict.fromkeys(e.split("@")[0] for e in chosen))  # a per-span circuit: its edges
            files[info.file] = graph_json(scores.graph, scores.as_dict(), chosen, meta={
                "method": method, "settings": info.settings, "task": self.task.name, "model": self.model.name,
                "metric": self.task.main_metric, "units": UNITS})
        return files

    def scores(self, method: str) -> np.ndarray:
        """A method's head scores as an array [n_layers, n_heads]."""
        if method not in self.head_scores:
            known = ", ".join(self.head_scores) or "none (a failed unit, or no head-scoring method ran)"
            raise KeyError(f"no head scores of method {method!r} in this result; it has {known}")
        return np.asarray(self.head_scores[method], dtype=float)

    @field_serializer("circuit")
    def _circuit_without_copies(self, circuit: Circuit | None) -> dict | None:
        return None if circuit is None else circuit.model_dump(mode="json", exclude=set(FROM_RESULT))

    @model_validator(mode="after")
    def _circuit_from_result(self) -> "RunResult":
        """The circuit as a Circuit of this result: its scores, shape and label filled in from the
        result (checked against the model's shape)."""
        c = self.circuit
        if c is None:
            return self
        fill: dict[str, Any] = {"n_layers": self.model.n_layers, "n_heads": self.model.n_heads,
                                "label": f"{model_label(self.model.name, self.model.init)}/{self.task.name}"}
        if c.method in self.head_scores:
            fill["scores"] = self.head_scores[c.method]
        if c.method in self.node_scores:
            fill["node_scores"] = self.node_scores[c.method]
        fill = {k: v for k, v in fill.items() if getattr(c, k) is None}
        if fill:
            self.circuit = Circuit.model_validate({**c.model_dump(), **fill})
        return self

    @model_validator(mode="after")
    def _status_fields(self) -> "RunResult":
        if self.status == "failed" and self.error is None:
            raise ValueError("a failed result needs its error")
        if self.status == "complete" and (self.error is not None or self.task.n_prompts is None
                                          or self.model.n_layers is None or self.run.batch_size is None):
            raise ValueError("a complete result has prompts, a loaded model and a batch size, and no error")
        return self


def schema_json() -> str:
    """The JSON schema of a RunResult, every field described (docs/result.schema.json is this)."""
    import json

    return json.dumps(RunResult.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
