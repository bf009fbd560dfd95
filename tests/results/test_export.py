"""A grouped-query model's result on disk: the graph with key and value inputs per group is what its
edge-score files hold and read back as, and formats whose graphs give every query head its own key and
value input (MIB / EAP-IG, auto-circuit, Edge Pruning) are refused for it until it runs ungrouped."""
from __future__ import annotations

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.errors import CircuitbenchError
from circuitbench.results.export import export_mib, result_graph
from circuitbench.results.export_formats import write_foreign_export
from circuitbench.results.store import read_result


def _run(model_dir, out, kv_graph):
    (result,) = cb.run(["ioi"], [str(model_dir)], n_prompts=4, methods=["eap"], circuit_level="edge",
                       batch_size=4, out=out, kv_graph=kv_graph)
    return result


def test_grouped_results_read_back_grouped_and_export_only_ungrouped(tiny_models, tmp_path):
    out = tmp_path / "grouped"
    _run(tiny_models["llama"], out, "grouped")
    path = next(out.rglob("ioi.json"))
    result = read_result(path)
    graph = result_graph(result)
    assert (result.model.n_key_value_heads, graph.grouped, graph.n_kv_heads) == (2, True, 2)
    scores = result.edge_score_arrays()["eap"]  # read from the sidecar file: the same grouped graph
    assert scores.graph == graph and "a1.kv0<k>" in graph.destinations
    assert np.abs(scores.scores).max() > 0
    with pytest.raises(CircuitbenchError, match="--kv-graph ungrouped"):
        export_mib(result)
    for fmt, name in (("auto-circuit", "x.pt"), ("edge-pruning", "x.json")):
        with pytest.raises(CircuitbenchError, match="--kv-graph ungrouped"):
            write_foreign_export(path, tmp_path / name, fmt)

    # ungrouped: EAP-IG's graph, exportable; the grouped result is not reused for it
    again = _run(tiny_models["llama"], out, "ungrouped")
    assert again.model.kv_graph == "ungrouped" and again.model.n_key_value_heads is None
    ungrouped = read_result(next(out.rglob("ioi.json")))
    exported = export_mib(ungrouped)
    assert len(exported["edges"]) == result_graph(ungrouped).n_edges > graph.n_edges
    assert "input->a0.h3<k>" in exported["edges"] and "n_key_value_heads" not in exported["cfg"]
