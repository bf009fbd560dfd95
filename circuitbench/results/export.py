"""A result's circuit as an EAP-IG / MIB graph file (`circuitbench circuit export --format mib`).

An edge circuit is written with its method's edge scores (from the sidecar) and `in_graph` on its
edges and nodes. A head or node circuit is written as MIB writes node circuits (EAP-IG's
apply_topn at node level): its nodes in the graph, every edge between them (from the input, into
the logits) in it, pruned; node scores under each node's `score`, edge scores 0."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from circuitbench.circuits.graph_files import UNITS, graph_json
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.graph import ComponentGraph
from circuitbench.output_paths import EXPORTED_BY, check_output_file, is_exported_graph
from circuitbench.results.edge_score_meaning import score_meaning
from circuitbench.results.schema import RunResult
from circuitbench.results.store import read_result


def result_graph(result: RunResult) -> ComponentGraph:
    m = result.model
    if m.n_layers is None or m.n_heads is None:
        raise CircuitbenchError("the result has no model shape (a failed unit?)")
    has_mlp = m.has_mlp if m.has_mlp is not None else any(k.startswith("m") for s in result.node_scores.values()
                                                          for k in s)
    return ComponentGraph(m.n_layers, m.n_heads, has_mlp=has_mlp, parallel_attn_mlp=bool(m.parallel_attn_mlp),
                          d_model=m.d_model, n_kv_heads=m.n_key_value_heads)


def check_ungrouped(graph: ComponentGraph, result: RunResult, fmt: str) -> None:
    """Refuse to write a grouped graph (key and value inputs per key-value group) in a format whose
    graphs give every query head its own (EAP-IG / MIB, auto-circuit, Edge Pruning)."""
    if graph.grouped:
        raise CircuitbenchError(
            f"{result.model.name}: {fmt} files give every query head its own key and value input, and this result's "
            f"edges enter {graph.n_kv_heads} key-value groups per block (grouped-query attention). Run it again with "
            "--kv-graph ungrouped (EAP-IG's and MIB's graph) to export it in this format.")


def export_mib(result: RunResult, method: str | None = None) -> dict:
    """The graph JSON of the result's circuit (or, with `method`, of that edge method's scores and, if
    the circuit came from it, its circuit)."""
    c = result.circuit
    graph = result_graph(result)
    check_ungrouped(graph, result, "MIB (EAP-IG)")
    meta = {"task": result.task.name, "model": result.model.name, "metric": result.task.main_metric, "units": UNITS,
            "label": f"{result.model.name}/{result.task.name}"}
    edge_method = method or (c.method if c is not None and c.level == "edge" else None)
    if edge_method is not None and edge_method in result.edge_scores:
        scores = result.edge_score_arrays()[edge_method].as_dict()  # the result reads its sidecar
        chosen = c.edges if c is not None and c.level == "edge" and c.method == edge_method else []
        meaning = score_meaning(result, edge_method)
        return graph_json(graph, scores, chosen, meta={
            **meta, "method": edge_method, "units": meaning.units, "settings": result.edge_scores[edge_method].settings,
            "scores": meaning.model_dump(mode="json")})
    if method is not None and method not in result.head_scores and method not in result.node_scores:
        known = sorted(set(result.edge_scores) | set(result.head_scores) | set(result.node_scores))
        raise CircuitbenchError(f"--method {method}: the result holds no scores of it (it has {', '.join(known)}).")
    if c is None:
        raise CircuitbenchError("the result holds no circuit (its task has no circuit rule): give --method of an edge "
                                f"method ({', '.join(result.edge_scores) or 'none ran'}) or rerun with a rule.")
    nodes = {"logits"} | ({"input"} if c.input else set()) | {f"a{l}.h{h}" for l, h in c.heads} | \
        {f"m{l}" for l in c.mlps}
    keep = np.zeros(graph.real_edges.shape, dtype=bool)
    for j, dst in enumerate(graph.destinations):
        if any(node in nodes for node in graph.destination_nodes(dst)) or dst == "logits":
            for i in range(graph.n_upstream(dst)):
                keep[i, j] = graph.sources[i] in nodes
    pruned, _ = graph.prune(keep)
    edges = [f"{graph.sources[i]}->{graph.destinations[j]}" for j, i in zip(*np.nonzero(pruned.T))]
    scores_of = method or c.method
    node_scores = result.node_scores.get(scores_of) or {
        f"a{l}.h{h}": v for l, row in enumerate(result.head_scores.get(scores_of, [])) for h, v in enumerate(row)}
    return graph_json(graph, None, edges, node_scores, meta={**meta, "method": scores_of, "level": c.level})


def write_export(result_path: Path, out: Path, method: str | None = None, force: bool = False) -> dict:
    """A result's circuit written as an EAP-IG / MIB graph file at `out` (never over the result or
    its edge-score files; over another file only if an earlier export, else --force). Returns the graph."""
    result = read_result(result_path)  # another schema version, NaN …: refused, named
    if result.status != "complete":
        raise CircuitbenchError(f"{result_path}: not a complete RunResult (the unit failed); rerun it with --resume.")
    sidecars = [result_path.parent / s.file for s in result.edge_scores.values()]
    check_output_file(out, "--out", force=force, ours=is_exported_graph, inputs=[result_path, *sidecars],
                      what="a graph file `circuitbench circuit export` wrote")
    graph = export_mib(result, method)
    graph.setdefault("circuitbench", {})["written_by"] = EXPORTED_BY  # a later export may replace it
    write_atomic(out, json.dumps(graph) + "\n")
    return graph
