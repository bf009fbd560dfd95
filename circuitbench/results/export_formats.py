"""A result's edge scores or edge circuit in other tools' formats (`circuitbench circuit export
--format auto-circuit | edge-pruning`), each carrying what its numbers mean (`score_meaning`).

- auto-circuit: the scores of an edge method as a PruneScores .pt (circuits/autocircuit_files.py);
- edge-pruning: the result's edge circuit as Edge Pruning's [writer, reader] list
  (circuits/edge_pruning_files.py).
Both formats have no room for metadata, so the meaning (and the model's shape) goes to the sidecar
`<file>.circuitbench.json` beside the file (results/edge_score_meaning.py says what it holds).
"""
from __future__ import annotations

import json
from pathlib import Path

from circuitbench.circuits.score_meaning import sidecar_path
from circuitbench.errors import CircuitbenchError
from circuitbench.output_paths import EXPORTED_BY, check_output_file
from circuitbench.results.edge_score_meaning import score_meaning
from circuitbench.results.schema import RunResult
from circuitbench.results.store import read_result

FOREIGN_FORMATS: tuple[str, ...] = ("auto-circuit", "edge-pruning")


def edge_method_of(result: RunResult, method: str | None) -> str:
    """The edge method whose scores to export: `method`, else the one the edge circuit came from,
    else the result's only edge method."""
    if method is not None:
        return method
    c = result.circuit
    if c is not None and c.level == "edge" and c.method in result.edge_scores:
        return c.method
    if len(result.edge_scores) == 1:
        return next(iter(result.edge_scores))
    held = ", ".join(result.edge_scores) or "no edge method (run one: eap, eap_ig, edge_patching)"
    raise CircuitbenchError(f"give --method: the result holds the edge scores of {held}.")


def is_exported_with_sidecar(path: Path) -> bool:
    """A file `circuit export` wrote in a format with a sidecar (its sidecar says so)."""
    side = sidecar_path(path)
    try:
        raw = json.loads(side.read_text()) if side.is_file() and side.stat().st_size < 1 << 20 else None
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("written_by") == EXPORTED_BY and raw.get("file") == path.name


def _is_our_sidecar(side: Path) -> bool:
    return is_exported_with_sidecar(side.with_name(side.name.removesuffix(".circuitbench.json")))


def write_foreign_export(result_path: Path, out: Path, fmt: str, method: str | None = None,
                         force: bool = False) -> str:
    """A result's edge scores (auto-circuit) or edge circuit (edge-pruning) at `out`, its meaning in
    the sidecar beside it; never over the result, its edge-score files, or a file another program
    wrote (unless --force). Returns a one-line summary."""
    if fmt not in FOREIGN_FORMATS:
        raise CircuitbenchError(f"--format {fmt!r}: one of mib, {', '.join(FOREIGN_FORMATS)}.")
    result = read_result(result_path)
    if result.status != "complete":
        raise CircuitbenchError(f"{result_path}: not a complete RunResult (the unit failed); rerun it with --resume.")
    inputs = [result_path, *(result_path.parent / s.file for s in result.edge_scores.values())]
    what = f"a file `circuitbench circuit export --format {fmt}` wrote"
    check_output_file(out, "--out", force=force, ours=is_exported_with_sidecar, inputs=inputs, what=what,
                      suffixes=(".pt",) if fmt == "auto-circuit" else (".json",))
    check_output_file(sidecar_path(out), "--out (its sidecar)", force=force, ours=_is_our_sidecar, inputs=inputs,
                      what="the sidecar of a file `circuitbench circuit export` wrote")
    chosen = edge_method_of(result, method)
    from circuitbench.results.export import check_ungrouped, result_graph

    if fmt == "auto-circuit":
        from circuitbench.circuits.autocircuit_files import write_prune_scores

        meaning = score_meaning(result, chosen)  # first: names the edge methods the result has
        edges = result.edge_score_arrays()[chosen]
        check_ungrouped(edges.graph, result, "auto-circuit")
        write_prune_scores(out, edges, meaning, EXPORTED_BY)
        return f"wrote {out}: auto-circuit prune scores of {chosen} over {edges.graph.n_edges} edges " \
               f"(meaning in {sidecar_path(out).name})"
    from circuitbench.circuits.edge_pruning_files import write_edge_pruning

    c = result.circuit
    check_ungrouped(result_graph(result), result, "Edge Pruning")
    if c is None or c.level != "edge" or c.method != chosen:
        raise CircuitbenchError(f"{result_path}: no edge circuit of {chosen} (Edge Pruning's file holds a circuit, "
                                "not scores). Run the task with --circuit-level edge"
                                + (f" and {chosen} as the circuit's method." if c is not None else "."))
    pairs = write_edge_pruning(out, result_graph(result), c.edges, score_meaning(result, chosen, "membership"),
                               EXPORTED_BY)
    return f"wrote {out}: {len(c.edges)} edges of {chosen}'s circuit as {len(pairs)} Edge Pruning pairs " \
           f"(meaning and model shape in {sidecar_path(out).name})"
