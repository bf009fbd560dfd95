"""RunResult: one JSON per (model, task) unit, with the effective spec, the run options and
provenance. `RunResult.model_json_schema()` is the documented schema (docs/result.schema.json)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from circuitbench.circuits.circuit import model_label
from circuitbench.circuits.graph_files import UNITS, graph_json
from circuitbench.circuits.recovery import RecoveryScores
from circuitbench.scores.evaluation import SplitMetrics
from circuitbench.scores.methods.outputs import EdgeScores

SCHEMA_VERSION = 3  # 3: run.options is what run_unit honours, run.overrides, metric_values, run.plugin_code


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


class CircuitCandidate(_Strict):
    """One method's circuit under the task's rule, as `circuit: {method: auto}` weighed it."""

    method: str = Field(description="the method whose scores the rule picked from")
    heads: list[tuple[int, int]] = Field(description="[layer, head] pairs")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the circuit (node level)")
    n_edges: int | None = Field(None, description="edges in the circuit (edge level, after pruning)")
    faithfulness: float | None = Field(description="f(C) under the rule's ablation (None: undefined, see the "
                                       "circuit's faithfulness_undefined)")


class CircuitInfo(_Strict):
    """The circuit chosen by the task's rule, with its faithfulness."""

    method: str = Field(description="the scores it was chosen from")
    rule: dict[str, object] = Field(description="the circuit rule (method, top_k | threshold | fraction, by, ablation)")
    level: Literal["head", "node", "edge"] = Field("head", description="heads, nodes (heads and MLPs) or edges")
    heads: list[tuple[int, int]] = Field(description="[layer, head] pairs (edge level: the heads its edges touch)")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the circuit (node, edge level)")
    edges: list[str] = Field(default_factory=list, description="edge names ('a0.h1->a2.h3<k>'), after pruning "
                             "dangling nodes (edge level)")
    faithfulness: float | None = Field(None, description="f(C) = (m(C) − m(∅)) / (m(M) − m(∅)) under `ablation`; "
                                       "None when undefined (see faithfulness_undefined)")
    faithfulness_undefined: str | None = Field(
        None, description="why faithfulness is undefined: |m(M) − m(∅)| is 0 or below 2 standard errors of the "
        "paired per-prompt difference (the components have no measurable effect); None when it is defined")
    gap_stderr: float | None = Field(None, description="standard error of m(M) − m(∅) over prompts (paired)")
    metric: str | None = Field(None, description="the metric m; m_circuit, m_full and m_empty are its own values")
    m_circuit: float | None = Field(None, description="the metric with only the circuit's heads kept")
    m_full: float | None = Field(None, description="the metric of the full model, m(M)")
    m_empty: float | None = Field(None, description="the metric with every head ablated, m(∅)")
    ablation: str | None = Field(None, description="how heads outside the circuit were removed")
    by_ablation: dict[str, float | None] = Field(
        default_factory=dict, description="f(C) under each ablation computed: the rule's and zero ablation")
    integration: str | None = Field(None, description="the curve: mib (MIB's sizes 0.1 %…100 %, CPR on the signed "
                                    "ranking, CMD on |score|, trapezoids between those points) or sizes (every size "
                                    "from 0, the rule's ranking)")
    curve: list[tuple[int, float, float]] = Field(default_factory=list, description="(components kept, fraction, f); "
                                                  "mib: on the |score| ranking")
    curve_signed: list[tuple[int, float, float]] = Field(default_factory=list,
                                                         description="mib: (components kept, fraction, f) on the "
                                                         "signed ranking")
    cpr: float | None = Field(None, description="area under the faithfulness curve (higher better)")
    cmd: float | None = Field(None, description="area under |1 − f| (lower better)")
    by_method: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="MIB's integration: every candidate method's {faithfulness, cpr, cmd} at "
        "this level, each on its own ranking (the leaderboards' per-method columns)")
    candidates: list[CircuitCandidate] = Field(
        default_factory=list, description="every method's circuit and faithfulness (method: auto keeps the most "
        "faithful: f closest to 1, then the smaller circuit)")
    warnings: list[str] = Field(default_factory=list, description="what the rule made of the circuit, when surprising")
    notes: list[str] = Field(default_factory=list, description="what holds by construction (e.g. a one-head model: "
                             "every non-empty circuit is the whole model)")


class EdgeScoresInfo(_Strict):
    """An edge method's scores: in a sidecar file next to the result (EAP-IG / MIB graph JSON)."""

    file: str = Field(description="the sidecar's name, in the result's folder: <task>.<method>.edges.json")
    n_edges: int = Field(description="edges scored (every edge of the component graph)")
    settings: dict[str, object] = Field(default_factory=dict, description="what ran (variant, steps, step points …)")
    top: list[tuple[str, float]] = Field(default_factory=list, description="the 20 edges of largest |score|")


class ReferenceInfo(_Strict):
    """The known circuit recovery was scored against."""

    source: str = Field(description="--reference FILE, the task's reference_circuits, or the model's circuit.json")
    heads: list[tuple[int, int]] = Field(description="[layer, head] pairs of the known circuit")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the known circuit")
    edges: list[str] = Field(default_factory=list, description="edges of the known circuit, when it names them")
    invisible: list[tuple[int, int]] = Field(
        default_factory=list, description="reference heads whose clean and counterfactual outputs are identical: "
        "patching with this counterfactual cannot see them")


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
    circuit: CircuitInfo | None = Field(None, description="the circuit the task's rule chose, with its faithfulness")
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
    warnings: list[str] = Field(default_factory=list, description="what the reader should know: e.g. methods that "
                                "disagree, reference heads invisible to the counterfactual")
    # Each edge method's scores over the component graph, in memory (not part of the JSON): written
    # next to the result as the sidecar file edge_scores[method].file (edge_files()).
    _edges: dict[str, EdgeScores] = PrivateAttr(default_factory=dict)

    def attach_edge_scores(self, edges: Mapping[str, EdgeScores]) -> None:
        """Keep each edge method's scores with this result (its edge_scores entries say where they go)."""
        missing = sorted(set(edges) - set(self.edge_scores))
        if missing:
            raise ValueError(f"edge scores of {missing} have no edge_scores entry in this result")
        self._edges = dict(edges)

    def edge_files(self) -> dict[str, dict]:
        """The sidecar files of this result, name -> content: each edge method's scores as EAP-IG /
        MIB graph JSON, the edge circuit marked in the file of the method it came from."""
        circuit = self.circuit
        files = {}
        for method, scores in self._edges.items():
            info = self.edge_scores[method]
            chosen = circuit.edges if circuit is not None and circuit.level == "edge" and circuit.method == method \
                else []
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
