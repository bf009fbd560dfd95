"""Graph files in EAP-IG's JSON format, which MIB's circuit-localization track reads (EAP-IG's
`Graph.to_json` / `Graph.from_json`; MIB's `load_graph_from_json`):

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false, "score": 0.1}, ..., "logits": {...}},
     "edges": {"input->a0.h0<q>": {"score": 0.0123, "in_graph": false}, ...}}

Edge scores are written like this next to a RunResult (`<task>.<method>.edges.json`), and
`circuitbench circuit export --format mib` writes a result's circuit the same way: `in_graph` marks
the circuit's edges and nodes, `score` carries the method's scores. Extra keys (`circuitbench`:
method, settings, units) are ignored by EAP-IG. Attention-only models have no MLP nodes (EAP-IG's
graphs always do: such a file has `"attn_only": true` in its cfg and no `m` entries). No torch here.

A file read back is validated into `GraphJson` (every field typed, scores finite numbers, node and
edge names those of its cfg's graph) and its cfg bounded before any graph is built: a few bytes of
JSON must not make a reader allocate gigabytes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Required, TypedDict

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.scores.methods.outputs import EdgeScores

UNITS = ("scores are normalised like noising patching: (m_clean − m_patched) / |m_clean − m_corrupted|, mean over "
         "prompts, m the task's main metric oriented so higher is better")
# The largest graph a file is read as: ~6× the edges of Llama-3-8B (1.6 M); its cfg is refused beyond.
MAX_GRAPH_EDGES = 10_000_000
# The most heads a circuit file's n_layers × n_heads may give: 4× the largest published model (16,128).
MAX_MODEL_HEADS = 65_536
GRAPH_FORMAT = ('an EAP-IG/MIB graph file is {"cfg": {"n_layers": L, "n_heads": H, ...}, "nodes": {name: '
                '{"in_graph": true|false, "score": number}}, "edges": {name: {"score": number, "in_graph": '
                'true|false}}}')

Count = Annotated[int, Field(strict=True, ge=1)]
Score = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def graph_size(n_layers: int, n_heads: int, has_mlp: bool = True, parallel_attn_mlp: bool = False) -> tuple[int, int]:
    """(edges, bytes a reader needs, roughly) of the component graph of that shape, computed
    without building it: the [sources × destinations] edge mask plus ~100 bytes per listed edge."""
    m = int(has_mlp)
    sources = 1 + n_layers * (n_heads + m)
    destinations = n_layers * (3 * n_heads + m) + 1
    pairs = n_layers * (n_layers - 1) // 2  # Σ_l l
    into_heads = 3 * n_heads * (n_layers + (n_heads + m) * pairs)  # a head in layer l reads 1 + l·(H + m) sources
    into_mlps = m * (n_layers + (n_heads + 1) * pairs + (0 if parallel_attn_mlp else n_heads * n_layers))
    edges = into_heads + into_mlps + sources
    return edges, sources * destinations + 100 * edges


def size_text(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:,.0f} {unit}" if unit == "bytes" else f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError


def check_graph_bounds(n_layers: int, n_heads: int, where: str, has_mlp: bool = True,
                       parallel_attn_mlp: bool = False) -> None:
    """Refuse a cfg whose graph is beyond any real model's, with the estimate, before building it."""
    edges, need = graph_size(n_layers, n_heads, has_mlp, parallel_attn_mlp)
    if edges > MAX_GRAPH_EDGES:
        raise CircuitbenchError(
            f"{where}: cfg: n_layers {n_layers} × n_heads {n_heads} make a graph of {edges:,} edges (reading it needs "
            f"about {size_text(need)}); graph files are read up to {MAX_GRAPH_EDGES:,} edges (~6× Llama-3-8B's). "
            "Check cfg.n_layers and cfg.n_heads.")


def check_head_bounds(n_layers: int, n_heads: int, where: str, fields: str = "n_layers and n_heads") -> None:
    """Refuse a model shape beyond any real model's (a circuit file's n_layers × n_heads, --shape),
    with what the overlap's permutation null would need, before anything is allocated."""
    heads = n_layers * n_heads
    if heads > MAX_MODEL_HEADS:
        need = 200 * heads * 24  # the default 200 shuffles: random keys, argsort, shuffled scores
        raise CircuitbenchError(
            f"{where}: n_layers {n_layers} × n_heads {n_heads} = {heads:,} heads (overlap's permutation null alone "
            f"would need about {size_text(need)}); a model has at most {MAX_MODEL_HEADS:,} heads here. Check {fields}.")


class GraphConfig(BaseModel):
    """The graph's cfg. EAP-IG copies a TransformerLens config into it: other keys are kept, unread."""

    model_config = ConfigDict(extra="allow")
    n_layers: Count = Field(description="transformer blocks")
    n_heads: Count = Field(description="attention heads per block")
    parallel_attn_mlp: bool = Field(False, strict=True, description="each MLP reads the block input (GPT-NeoX)")
    d_model: Count | None = Field(None, description="residual stream width")
    attn_only: bool = Field(False, strict=True, description="no MLP nodes (circuitbench's attention-only toys)")
    n_key_value_heads: Count | None = Field(
        None, description="circuitbench's grouped graph of a grouped-query model: key and value inputs per group "
        "(a{L}.kv{G}<k>); absent in EAP-IG's files, whose graphs give every head its own")

    @model_validator(mode="after")
    def _groups_divide_heads(self) -> "GraphConfig":
        if self.n_key_value_heads is not None and self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_key_value_heads {self.n_key_value_heads} does not divide n_heads {self.n_heads}")
        return self


def _nan_is_unscored(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


class NodeEntry(TypedDict, total=False):
    """One node: whether the circuit holds it, and its score (EAP-IG writes NaN for a node it did not
    score). Entries are TypedDicts, not models: a Llama-8B graph holds 1.6 M of them."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    in_graph: Required[Annotated[bool, Field(strict=True, description="whether the circuit holds the node")]]
    score: Annotated[Score | None, BeforeValidator(_nan_is_unscored),
                     Field(description="the node's score; NaN or null: not scored")]
    neurons: Annotated[list[Any], Field(description="EAP-IG's neuron mask (kept, unread)")]
    neurons_scores: Annotated[list[Any], Field(description="EAP-IG's neuron scores (kept, unread)")]


class EdgeEntry(TypedDict):
    """One edge: its score and whether the circuit holds it."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    score: Annotated[Score, Field(description="the method's score of the edge (a finite number)")]
    in_graph: Annotated[bool, Field(strict=True, description="whether the circuit holds the edge")]


class GraphMeta(BaseModel):
    """circuitbench's own notes in a graph file it wrote (EAP-IG ignores them)."""

    model_config = ConfigDict(extra="allow")
    method: str | None = Field(None, description="the method whose scores the file holds")
    label: str | None = Field(None, description="the circuit's name in tables (model/task)")


class GraphJson(BaseModel):
    """An EAP-IG / MIB graph file."""

    model_config = ConfigDict(extra="forbid")
    cfg: GraphConfig = Field(description="the model's shape")
    nodes: dict[str, NodeEntry] = Field(description="node name -> {in_graph, score}")
    edges: dict[str, EdgeEntry] = Field(description="edge name -> {score, in_graph}")
    circuitbench: GraphMeta | None = Field(None, description="circuitbench's notes (method, label, units)")

    @field_validator("nodes", mode="before")
    @classmethod
    def _bare_flags(cls, value: object) -> object:
        """EAP-IG's from_json also documents nodes as {name: bool}."""
        if isinstance(value, dict):
            return {k: {"in_graph": v} if isinstance(v, bool) else v for k, v in value.items()}
        return value


def is_graph_json(raw: object) -> bool:
    """A graph file: a cfg, or nodes or edges given by name (a missing part is then named by
    `read_graph_json`; circuit files of heads give nodes and edges as lists)."""
    return isinstance(raw, dict) and ("cfg" in raw or isinstance(raw.get("nodes"), dict)
                                      or isinstance(raw.get("edges"), dict))


def graph_json(graph: ComponentGraph, scores: dict[str, float] | None = None, circuit: list[str] | None = None,
               node_scores: dict[str, float] | None = None, meta: dict[str, object] | None = None) -> dict:
    """The EAP-IG / MIB JSON of a graph: every edge with its score (0 when none) and whether it is
    in `circuit` (edge names), every node with whether the circuit touches it (and its score)."""
    chosen = set(circuit or [])
    used = {graph.sources[0], "logits"} if chosen else set()
    for name in chosen:
        src, dst = name.split("->")
        used |= {src, *graph.destination_nodes(dst)}
    nodes: dict[str, dict[str, object]] = {}
    for name in graph.nodes:
        entry: dict[str, object] = {"in_graph": name in used or name == "logits"}
        if node_scores is not None and name in node_scores:
            entry["score"] = float(node_scores[name])
        nodes[name] = entry
    edges = {name: {"score": float((scores or {}).get(name, 0.0)), "in_graph": name in chosen} for name in graph.edges}
    out: dict[str, object] = {"cfg": graph.config(), "nodes": nodes, "edges": edges}
    if meta:
        out["circuitbench"] = meta
    return out


class GraphFile:
    """A graph file read back: the graph, edge scores, the circuit's edges and nodes."""

    def __init__(self, graph: ComponentGraph, scores: dict[str, float], edges: list[str], nodes: list[str],
                 node_scores: dict[str, float], meta: dict[str, object]) -> None:
        self.graph, self.scores, self.edges, self.nodes = graph, scores, edges, nodes
        self.node_scores, self.meta = node_scores, meta

    def edge_scores(self) -> EdgeScores:
        """The file's edge scores as the array a method returns ([n_sources, n_destinations], 0 where
        there is no edge or the file gives no score)."""
        matrix = np.zeros(self.graph.real_edges.shape)
        for name, value in self.scores.items():
            matrix[self.graph.edge_position(name)] = value
        return EdgeScores(self.graph, matrix)


def _field(loc: tuple) -> str:
    """A pydantic location as a field path: cfg.n_layers, edges['input->a0.h0<q>'].score."""
    out = ""
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] in ("nodes", "edges") and i == 1:
            out += f"[{str(part)!r}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _problems(errors: list, prefix: tuple = (), limit: int = 3) -> str:
    """Pydantic's errors as 'field: what is wrong' (the first `limit`)."""
    parts = []
    for e in errors[:limit]:
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not part of the format; check the spelling)"
        elif e["type"] == "missing" or e["type"] == "model_type" and given is None:
            msg = "missing"
        elif e["type"] in ("dict_type", "model_type"):
            msg = f"must be a JSON object {{…}}, not {'a list' if isinstance(given, list) else repr(given)[:40]}"
        elif not isinstance(given, (dict, list)):
            msg += f" (got {given!r:.40})"
        parts.append(f"{_field((*prefix, *e['loc']))}: {msg}")
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def read_graph_json(raw: object, where: str, fix: str = "Fix the file or export it again (circuitbench circuit "
                    "export --format mib).") -> GraphFile:
    """A graph JSON (ours, EAP-IG's, MIB's) as a GraphFile, validated: a wrong type, a non-finite
    score, a cfg beyond any real model or a name that is no node or edge of its cfg's graph is an
    error naming the file, the field and what to do."""
    if not isinstance(raw, dict):
        raise CircuitbenchError(f"{where}: (top level): a JSON {type(raw).__name__}, not an object; {GRAPH_FORMAT}.")
    cfg_raw = raw.get("cfg")
    try:  # the cfg first, alone: its sizes are bounded before the nodes and edges are looked at
        cfg = GraphConfig.model_validate(cfg_raw)
    except ValidationError as e:
        raise CircuitbenchError(f"{where}: {_problems(e.errors(), ('cfg',))}. {fix}") from None
    check_graph_bounds(cfg.n_layers, cfg.n_heads, where, not cfg.attn_only, cfg.parallel_attn_mlp)
    try:
        parsed = GraphJson.model_validate(raw)
    except ValidationError as e:
        raise CircuitbenchError(f"{where}: {_problems(e.errors())}. {fix}") from None
    graph = ComponentGraph.from_config(cfg)
    known = set(graph.nodes)
    for name in parsed.nodes:
        if name not in known:
            raise CircuitbenchError(
                f"{where}: nodes[{name!r}]: not a node of this graph ({graph.describe()}: input, a0.h0 … "
                f"a{cfg.n_layers - 1}.h{cfg.n_heads - 1}{', m0 … m' + str(cfg.n_layers - 1) if graph.has_mlp else ''}"
                f", logits). {fix}")
    scores: dict[str, float] = {}
    edges: list[str] = []
    for name, info in parsed.edges.items():
        try:
            graph.edge_position(name)
        except ValueError as e:
            raise CircuitbenchError(f"{where}: edges[{name!r}]: {e}. {fix}") from None
        scores[name] = info["score"]
        if info["in_graph"]:
            edges.append(name)
    nodes = [n for n, info in parsed.nodes.items() if info["in_graph"] and n not in ("input", "logits")]
    node_scores = {n: score for n, info in parsed.nodes.items() if (score := info.get("score")) is not None}
    meta = parsed.circuitbench.model_dump(exclude_none=True) if parsed.circuitbench else {}
    return GraphFile(graph, scores, edges, nodes, node_scores, meta)


def read_json(path: Path, what: str) -> object:
    """A JSON file's content; unreadable or invalid JSON is an error naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: cannot read {what} ({e}).") from None


def load_graph_file(path: Path) -> GraphFile:
    raw = read_json(path, "graph JSON")
    if not is_graph_json(raw):
        raise CircuitbenchError(f"{path}: not an EAP-IG/MIB graph file: {GRAPH_FORMAT}.")
    return read_graph_json(raw, str(path))


EDGE_SCORES_SUFFIX = ".edges.json"  # <task>.<method>.edges.json: a result's edge scores, beside it


def edge_scores_name(task: str, method: str) -> str:
    """The file name of a result's edge scores for one method, in the result's folder."""
    return f"{task}.{method}{EDGE_SCORES_SUFFIX}"


def edge_scores_owner(path: Path) -> Path | None:
    """The result (<task>.json beside it) whose edge scores `path` holds, judged by its name (task
    names have no dots); None for any other file."""
    if not path.name.endswith(EDGE_SCORES_SUFFIX) or path.name.count(".") < 3:
        return None
    return path.with_name(path.name.split(".", 1)[0] + ".json")


def load_sidecar(path: Path, n_layers: int | None, n_heads: int | None, method: str) -> GraphFile:
    """A result's edge-score file (<task>.<method>.edges.json): a graph file with every edge's score,
    of the result's model (n_layers × n_heads)."""
    fix = "Rerun the unit to write it again (circuitbench run … without --resume)."
    raw = read_json(path, f"the edge scores of {method}")
    if not isinstance(raw, dict) or "edges" not in raw:
        raise CircuitbenchError(f"{path}: edges: missing; the edge scores of {method} are a graph file with every "
                                f"edge's score. {fix}")
    graph_file = read_graph_json(raw, str(path), fix)
    g = graph_file.graph
    if None not in (n_layers, n_heads) and (g.n_layers, g.n_heads) != (n_layers, n_heads):
        raise CircuitbenchError(f"{path}: cfg: a graph of {g.n_layers} layers × {g.n_heads} heads, but the result's "
                                f"model has {n_layers} × {n_heads}: the file belongs to another run. {fix}")
    return graph_file
