"""Circuit selection rules over the component graph beyond top-k / fraction / threshold: pure
numpy/scipy over an [n_src, n_dst] score matrix in the graph's layout (models/graph.py).

- `greedy_edges`: from the logits backwards, as EAP-IG's `Graph.apply_greedy` (which MIB uses for
  information flow routes): the circuit starts as the logits; repeatedly the highest-scoring edge
  whose destination node is already in the circuit is added, and its source joins the circuit,
  until `k` edges. Ties go to the edge first in `graph.edges` (EAP-IG breaks them by set order).
  The result is connected to the logits by construction; a node whose incoming edges were never
  chosen still dangles, and `graph.prune` removes it with its outgoing edges, as MIB prunes after
  `apply_greedy`.
- `optimal_edges`: the edge set of at most `k` edges with the largest total score among those
  `graph.prune` leaves unchanged: every kept edge's destination and source nodes are in the
  circuit, every node in it has an outgoing kept edge (so, the graph being acyclic, it reaches
  the logits) and, but for the input, an incoming one. A mixed-integer program solved with
  `scipy.optimize.milp` (HiGHS) after reduced-cost fixing from its linear relaxation; it is
  refused above `max_edges` edges, or when the solver does not prove optimality within
  `time_limit` seconds.

Scores are ranked by |score| (`by="abs"`) or as they are (`by="signed"`), as CircuitRule.by does;
an edge scoring exactly 0 is never chosen by `greedy_edges` (as top_k / fraction never pick one).
"""
from __future__ import annotations

import heapq
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix, csr_matrix

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph

By = Literal["abs", "signed"]
# Edges of the graphs `optimal_edges` takes by default. GPT-2 small's 32,491 took 0.2–60 s on one CPU
# thread (IFR and random scores, k from 32 to 16,245; small budgets are the hardest); larger graphs
# are refused rather than left running.
MAX_OPTIMAL_EDGES = 40_000


def _edge_arrays(graph: ComponentGraph, scores: np.ndarray, by: By) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
    """(source index, destination index, ranking value, raw score) of every edge, in graph.edges order."""
    if scores.shape != graph.real_edges.shape:
        raise CircuitbenchError(f"Edge scores of shape {tuple(scores.shape)} do not fit the component graph "
                                f"({graph.describe()}: [n_sources, n_destinations] = {graph.real_edges.shape}).")
    if not np.isfinite(scores[graph.real_edges]).all():
        raise CircuitbenchError("Edge scores hold NaN or inf: no circuit can be selected from them.")
    dst, src = np.nonzero(graph.real_edges.T)
    raw = scores[src, dst].astype(np.float64)
    return src, dst, (np.abs(raw) if by == "abs" else raw), raw


def _check_budget(k: int) -> None:
    if k < 0:
        raise CircuitbenchError(f"A circuit of {k} edges was asked for: give a budget k ≥ 0.")


def greedy_edges(graph: ComponentGraph, scores: np.ndarray, k: int, by: By = "abs") -> list[str]:
    """At most `k` edge names, in the order chosen, grown from the logits backwards (see the module
    docstring). The first k of greedy_edges(k + 1) are greedy_edges(k), so one call with the
    largest budget gives every smaller one."""
    _check_budget(k)
    src, dst, value, raw = _edge_arrays(graph, scores, by)
    readers = graph.destination_readers[dst]  # [n_edges, n_src] the nodes each edge enters (none: the logits)
    incoming: dict[int, list[int]] = {}
    for e, node in zip(*np.nonzero(readers)):  # a key-value group's input enters each of its heads
        incoming.setdefault(int(node), []).append(int(e))
    names = graph.edges
    heap = [(-value[e], int(e)) for e in np.flatnonzero(~readers.any(1))]
    heapq.heapify(heap)
    in_circuit = np.zeros(len(graph.sources), dtype=bool)
    chosen: list[str] = []
    offered = np.zeros(len(src), dtype=bool)  # an edge into a key-value group is offered once, by its first head
    while heap and len(chosen) < k:
        _, e = heapq.heappop(heap)
        if raw[e] == 0 or offered[e]:
            continue
        offered[e] = True
        chosen.append(names[e])
        u = int(src[e])
        if not in_circuit[u]:
            in_circuit[u] = True
            for f in incoming.get(u, []):  # the input has none
                heapq.heappush(heap, (-value[f], f))
    return chosen


def optimal_edges(graph: ComponentGraph, scores: np.ndarray, k: int, by: By = "abs",
                  max_edges: int = MAX_OPTIMAL_EDGES, time_limit: float = 120.0) -> list[str]:
    """The connected edge set (see the module docstring) of at most `k` edges with the largest sum
    of scores, names in graph.edges order; an edge scoring exactly 0 is kept only where removing it
    would leave a node dangling.

    Exact, and quick on graphs up to GPT-2 small's size: the linear relaxation is solved first, the
    best of three feasible sets (its integral part, greedy and top-k, each pruned) bounds the
    optimum from below, and every variable whose reduced cost exceeds the gap between the two
    bounds is fixed at its relaxation value (no set scoring at least the incumbent can change it:
    reduced-cost fixing); the mixed-integer program is solved on what is left."""
    _check_budget(k)
    if graph.n_edges > max_edges:
        raise CircuitbenchError(
            f"optimal edge selection on a graph of {graph.n_edges:,} edges ({graph.describe()}) is a mixed-integer "
            f"program too large to solve here (limit {max_edges:,} edges): use the greedy or top-k selection.")
    src, dst, value, _ = _edge_arrays(graph, scores, by)
    n_e, n_s = len(src), len(graph.sources)
    if k == 0 or n_e == 0:
        return []
    scale = float(np.abs(value).max()) or 1.0
    cost = np.concatenate([-value / scale, np.zeros(n_s)])  # minimise −score (scaled to at most 1)
    matrix, upper = _connected_program(graph, src, dst, k)

    def solution(keep: np.ndarray) -> tuple[float, np.ndarray]:
        """(cost, kept edges) of an edge mask after pruning (a feasible point)."""
        mask = np.zeros(graph.real_edges.shape, dtype=bool)
        mask[src[keep], dst[keep]] = True
        pruned = graph.prune(mask)[0][src, dst]
        return float(cost[:n_e][pruned].sum()), pruned

    relaxed = linprog(cost, A_ub=matrix, b_ub=upper, bounds=(0, 1), method="highs-ds")
    if relaxed.status != 0:
        raise CircuitbenchError(f"optimal edge selection: the linear relaxation failed ({relaxed.message}).")
    order = np.argsort(-value, kind="stable")
    top_k = np.zeros(n_e, dtype=bool)
    top_k[order[:k]] = True
    candidates = [solution(relaxed.x[:n_e] > 1 - 1e-6), solution(_greedy_mask(graph, scores, k, by)), solution(top_k)]
    best_cost, best = min(candidates, key=lambda c: c[0])
    gap = best_cost - float(relaxed.fun)
    if gap <= 1e-9 * max(1.0, abs(best_cost)):  # the relaxation's optimum is reached: nothing to branch on
        return [graph.edges[e] for e in np.flatnonzero(_without_idle(graph, src, dst, value, best))]
    lower, high = np.zeros(n_e + n_s), np.ones(n_e + n_s)
    margin = gap + 1e-7
    high[relaxed.lower.marginals > margin] = 0.0  # raising these costs more than the gap
    lower[-relaxed.upper.marginals > margin] = 1.0  # lowering these too
    result = milp(cost, constraints=LinearConstraint(matrix, -np.inf, upper), integrality=np.ones(n_e + n_s),
                  bounds=Bounds(lower, high), options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    if result.status != 0 or result.x is None:
        raise CircuitbenchError(
            f"optimal edge selection ({graph.n_edges:,} edges, k = {k}) was not solved to optimality within "
            f"{time_limit:g} s ({result.message.strip()}): use the greedy or top-k selection, or a longer time limit.")
    keep = result.x[:n_e] > 0.5
    if float(cost[:n_e][keep].sum()) > best_cost:  # never worse than the incumbent (solver tolerances)
        keep = best
    return [graph.edges[e] for e in np.flatnonzero(_without_idle(graph, src, dst, value, keep))]


def _without_idle(graph: ComponentGraph, src: np.ndarray, dst: np.ndarray, value: np.ndarray,
                  keep: np.ndarray) -> np.ndarray:
    """`keep` (a set prune leaves unchanged) without its edges scoring 0 that connect no better
    edge: each, in graph order, is dropped when pruning what is left loses no edge scoring ≠ 0."""
    for e in np.flatnonzero(keep & (value == 0)):
        if not keep[e]:
            continue
        trial = np.zeros(graph.real_edges.shape, dtype=bool)
        trial[src[keep], dst[keep]] = True
        trial[src[e], dst[e]] = False
        left = graph.prune(trial)[0][src, dst]
        if not (keep & ~left & (value != 0)).any():
            keep = left
    return keep


def _greedy_mask(graph: ComponentGraph, scores: np.ndarray, k: int, by: By) -> np.ndarray:
    position = {name: e for e, name in enumerate(graph.edges)}
    mask = np.zeros(graph.n_edges, dtype=bool)
    mask[[position[name] for name in greedy_edges(graph, scores, k, by)]] = True
    return mask


def _connected_program(graph: ComponentGraph, src: np.ndarray, dst: np.ndarray, k: int) -> tuple[csr_matrix,
                                                                                                  np.ndarray]:
    """(A, b) of A·[x; y] ≤ b over edge variables x (graph.edges order) and node variables y
    (graph.sources order): at most k edges; a kept edge's destination and source nodes are in the
    circuit; a node in it has an outgoing kept edge and, but for the input, an incoming one."""
    n_e, n_s = len(src), len(graph.sources)
    into_edge, into_reader = np.nonzero(graph.destination_readers[dst])  # (edge, node it enters): a group's heads
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    n_rows = 0

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray, ub: np.ndarray) -> None:
        nonlocal n_rows
        rows.append(r + n_rows)
        cols.append(c)
        vals.append(v)
        upper.append(ub)
        n_rows += len(ub)

    edges = np.arange(n_e)
    add(np.zeros(n_e, dtype=int), edges, np.ones(n_e), np.array([float(k)]))  # Σ x ≤ k
    into_node = np.unique(into_edge)  # x_e ≤ Σ y over the nodes reading e's destination (one, or a group's heads)
    row_of = np.full(n_e, -1)
    row_of[into_node] = np.arange(len(into_node))
    add(np.concatenate([row_of[into_node], row_of[into_edge]]), np.concatenate([into_node, n_e + into_reader]),
        np.concatenate([np.ones(len(into_node)), -np.ones(len(into_edge))]), np.zeros(len(into_node)))
    add(np.repeat(edges, 2), np.stack([edges, n_e + src], 1).ravel(), np.tile([1.0, -1.0], n_e),
        np.zeros(n_e))  # x_e ≤ y_src
    nodes = np.arange(n_s)  # y_n ≤ Σ outgoing x: every node reaches the logits (the graph is acyclic)
    add(np.concatenate([nodes, src]), np.concatenate([n_e + nodes, edges]),
        np.concatenate([np.ones(n_s), -np.ones(n_e)]), np.zeros(n_s))
    inner = nodes[1:]  # y_n ≤ Σ incoming x for every node but the input (readers are never the input)
    add(np.concatenate([inner - 1, into_reader - 1]), np.concatenate([n_e + inner, into_edge]),
        np.concatenate([np.ones(n_s - 1), -np.ones(len(into_edge))]), np.zeros(n_s - 1))
    matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n_rows, n_e + n_s)).tocsr()
    return matrix, np.concatenate(upper)


def selection_value(graph: ComponentGraph, scores: np.ndarray, edges: list[str], by: By = "abs") -> float:
    """Σ of the ranking values (|score| or signed) of `edges`: the objective the selections maximise."""
    values = np.abs(scores) if by == "abs" else scores
    return float(sum(values[graph.edge_position(e)] for e in edges))
