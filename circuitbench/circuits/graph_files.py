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
"""
from __future__ import annotations

from pathlib import Path

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph, node_of

UNITS = ("scores are normalised like noising patching: (m_clean − m_patched) / (m_clean − m_corrupted), mean over "
         "prompts, m the task's main metric oriented so higher is better")


def is_graph_json(raw: object) -> bool:
    return isinstance(raw, dict) and all(k in raw for k in ("cfg", "nodes", "edges"))


def graph_json(graph: ComponentGraph, scores: dict[str, float] | None = None, circuit: list[str] | None = None,
               node_scores: dict[str, float] | None = None, meta: dict[str, object] | None = None) -> dict:
    """The EAP-IG / MIB JSON of a graph: every edge with its score (0 when none) and whether it is
    in `circuit` (edge names), every node with whether the circuit touches it (and its score)."""
    chosen = set(circuit or [])
    used = {graph.sources[0], "logits"} if chosen else set()
    for name in chosen:
        src, dst = name.split("->")
        used |= {src, node_of(dst)}
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


def read_graph_json(raw: dict, where: str) -> GraphFile:
    """A graph JSON (ours, EAP-IG's, MIB's) as a GraphFile; names that are no edge of its cfg's graph
    are an error naming the file."""
    cfg = raw["cfg"]
    try:
        graph = ComponentGraph(int(cfg["n_layers"]), int(cfg["n_heads"]), has_mlp=not cfg.get("attn_only", False),
                               parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
                               d_model=int(cfg["d_model"]) if cfg.get("d_model") is not None else None)
    except (KeyError, TypeError, ValueError) as e:
        raise CircuitbenchError(f"{where}: the graph's cfg needs n_layers and n_heads ({e}).") from None
    scores: dict[str, float] = {}
    edges: list[str] = []
    for name, info in raw["edges"].items():
        try:
            graph.edge_position(name)
        except ValueError as e:
            raise CircuitbenchError(f"{where}: {e}") from None
        info = info if isinstance(info, dict) else {"in_graph": bool(info)}
        if info.get("score") is not None:
            scores[name] = float(info["score"])
        if info.get("in_graph"):
            edges.append(name)
    nodes = [n for n, info in raw["nodes"].items() if (info.get("in_graph") if isinstance(info, dict) else info)
             and n not in ("input", "logits")]
    node_scores = {n: float(info["score"]) for n, info in raw["nodes"].items()
                   if isinstance(info, dict) and info.get("score") is not None}
    meta = raw.get("circuitbench") if isinstance(raw.get("circuitbench"), dict) else {}
    return GraphFile(graph, scores, edges, nodes, node_scores, meta)


def load_graph_file(path: Path) -> GraphFile:
    import json

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: cannot read graph JSON ({e}).") from None
    if not is_graph_json(raw):
        raise CircuitbenchError(f"{path}: not an EAP-IG/MIB graph file (a JSON object with cfg, nodes, edges).")
    return read_graph_json(raw, str(path))
