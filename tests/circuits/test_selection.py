"""Selection rules (circuits/selection.py) on small component graphs with random scores: greedy
against a naive loop, optimal against brute force over every edge subset (tiny graphs), against
greedy and pruned top-k (it must do at least as well), and its result connected to the logits."""
import itertools

import numpy as np
import pytest

from circuitbench.circuits.selection import greedy_edges, optimal_edges, selection_value
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph, node_of

GRAPHS = [ComponentGraph(1, 1), ComponentGraph(2, 1), ComponentGraph(2, 2), ComponentGraph(3, 2, has_mlp=False),
          ComponentGraph(2, 2, parallel_attn_mlp=True), ComponentGraph(2, 4, n_kv_heads=2)]


def readers(graph, dst):
    """The nodes reading a destination, parsed here: a key-value group 'a1.kv1<k>' of a graph with r query heads
    per group is read by heads r·1 … r·1 + r − 1 of block 1; 'logits' by none."""
    node = node_of(dst)
    if ".kv" not in node:
        return [] if node == "logits" else [node]
    layer, group = node[1:].split(".kv")
    per = graph.n_heads // graph.n_kv_heads
    return [f"a{layer}.h{h}" for h in range(int(group) * per, (int(group) + 1) * per)]


def random_scores(graph, seed, zeros=0.0):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(graph.real_edges.shape)
    scores[rng.random(scores.shape) < zeros] = 0.0
    return scores * graph.real_edges


def naive_greedy(graph, scores, k, by="abs"):
    """k times: of the edges not yet taken whose destination's node is in the circuit (the logits
    from the start), the one with the largest value (ties: first in graph.edges) — never one
    scoring exactly 0."""
    values = np.abs(scores) if by == "abs" else scores
    in_circuit, taken = {"logits"}, []
    for _ in range(k):
        best = None
        for name in graph.edges:
            src, dst = name.split("->")
            i, j = graph.edge_position(name)
            entered = readers(graph, dst) or ["logits"]
            if name in taken or not in_circuit.intersection(entered) or scores[i, j] == 0:
                continue
            if best is None or values[i, j] > best[0]:
                best = (values[i, j], name, src)
        if best is None:
            break
        taken.append(best[1])
        in_circuit.add(best[2])
    return taken


def mask_of(graph, edges):
    keep = np.zeros(graph.real_edges.shape, dtype=bool)
    for e in edges:
        keep[graph.edge_position(e)] = True
    return keep


def pruned(graph, edges):
    keep, _ = graph.prune(mask_of(graph, edges))
    return [e for e in graph.edges if keep[graph.edge_position(e)]]


def value(graph, scores, keep, by):
    return float(((np.abs(scores) if by == "abs" else scores) * keep).sum())


def reaches_logits(graph, edges):
    """Every node an edge touches reaches the logits along the edges (a backward search)."""
    reached, frontier = {"logits"}, ["logits"]
    parents: dict[str, list[str]] = {}
    for e in edges:
        src, dst = e.split("->")
        for node in readers(graph, dst) or ["logits"]:
            parents.setdefault(node, []).append(src)
    while frontier:
        for src in parents.get(frontier.pop(), []):
            if src not in reached:
                reached.add(src)
                frontier.append(src)
    # an edge into a key-value group needs one of its heads to reach the logits
    into = all(set(readers(graph, e.split("->")[1]) or ["logits"]) & reached for e in edges)
    return {e.split("->")[0] for e in edges} <= reached and into


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.describe())
@pytest.mark.parametrize("by", ["abs", "signed"])
def test_greedy_equals_a_naive_loop(graph, by):
    for seed in range(4):
        scores = random_scores(graph, seed, zeros=0.2)
        for k in (0, 1, 3, graph.n_edges // 3, graph.n_edges):
            assert greedy_edges(graph, scores, k, by) == naive_greedy(graph, scores, k, by)
    scores = random_scores(graph, 9)
    full = greedy_edges(graph, scores, graph.n_edges, by)
    assert greedy_edges(graph, scores, 5, by) == full[:5]  # one call gives every smaller budget


def test_greedy_breaks_ties_in_graph_order_and_starts_at_the_logits():
    graph = ComponentGraph(1, 1)
    scores = graph.real_edges.astype(float)  # all tied: graph.edges order (destination by destination)
    assert greedy_edges(graph, scores, 3) == ["input->logits", "a0.h0->logits", "input->a0.h0<q>"]
    scores[graph.edge_position("m0->logits")] = 0.5
    scores[graph.edge_position("input->m0")] = 10.0  # the best edge, but m0 joins the circuit last
    assert greedy_edges(graph, scores, 8) == ["input->logits", "a0.h0->logits", "input->a0.h0<q>", "input->a0.h0<k>",
                                              "input->a0.h0<v>", "m0->logits", "input->m0", "a0.h0->m0"]


def brute_force(graph, scores, k_max, by):
    """[k] the largest value of an edge set of ≤ k edges that prune leaves unchanged, for k = 0 … k_max,
    over every subset."""
    best = [0.0] * (k_max + 1)
    for size in range(1, k_max + 1):
        best[size] = best[size - 1]
        for subset in itertools.combinations(graph.edges, size):
            keep = mask_of(graph, subset)
            if (graph.prune(keep)[0] == keep).all():
                best[size] = max(best[size], value(graph, scores, keep, by))
    return best


@pytest.mark.parametrize("graph,k_max,seeds", [
    (ComponentGraph(1, 1), 8, 3), (ComponentGraph(2, 1), 4, 3), (ComponentGraph(2, 2), 3, 1),
    (ComponentGraph(1, 2, n_kv_heads=1), 5, 2)], ids=["1x1", "2x1", "2x2", "1x2-grouped"])
def test_optimal_equals_brute_force_over_every_subset(graph, k_max, seeds):
    """(The three ways optimal_edges ends are all taken here: the relaxation already integral,
    variables fixed by reduced cost, the full program.)"""
    for seed in range(seeds):
        scores = random_scores(graph, seed)
        for by in ("abs", "signed"):
            best = brute_force(graph, scores, k_max, by)
            for k in range(k_max + 1):
                chosen = optimal_edges(graph, scores, k, by)
                assert len(chosen) <= k
                assert selection_value(graph, scores, chosen, by) == pytest.approx(best[k], abs=1e-7)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.describe())
def test_optimal_beats_greedy_and_pruned_top_k_and_is_connected(graph):
    for seed in range(3):
        scores = random_scores(graph, seed, zeros=0.1)
        for by in ("abs", "signed"):
            values = np.abs(scores) if by == "abs" else scores
            order = [graph.edges[i] for i in np.argsort(-np.array([values[graph.edge_position(e)]
                                                                  for e in graph.edges]), kind="stable")]
            for k in (1, 2, 5, graph.n_edges // 4, graph.n_edges // 2):
                chosen = optimal_edges(graph, scores, k, by)
                best = selection_value(graph, scores, chosen, by)
                greedy = pruned(graph, greedy_edges(graph, scores, k, by))
                top_k = pruned(graph, order[:k])
                assert best >= selection_value(graph, scores, greedy, by) - 1e-9
                assert best >= selection_value(graph, scores, top_k, by) - 1e-9
                assert len(chosen) <= k and pruned(graph, chosen) == chosen  # nothing dangles
                assert reaches_logits(graph, chosen)


def test_optimal_keeps_a_zero_edge_only_to_connect_better_ones():
    graph = ComponentGraph(1, 1)
    scores = np.zeros(graph.real_edges.shape)
    scores[graph.edge_position("a0.h0->logits")] = 2.0  # worth keeping, through a zero edge into a0.h0
    scores[graph.edge_position("input->logits")] = 1.0
    chosen = optimal_edges(graph, scores, 8)
    assert chosen[-2:] == ["input->logits", "a0.h0->logits"] and len(chosen) == 3  # + one input -> a0.h0 edge
    assert chosen[0].startswith("input->a0.h0<")
    assert optimal_edges(graph, np.zeros(graph.real_edges.shape), 8) == []
    scores[graph.edge_position("a0.h0->logits")] = 0.0  # now the whole a0.h0 branch connects nothing
    assert optimal_edges(graph, scores, 8) == ["input->logits"]


def test_optimal_is_refused_above_its_size_and_bad_budgets_are_errors():
    big = ComponentGraph(12, 12)
    with pytest.raises(CircuitbenchError, match=r"32,491 edges .* too large .* greedy or top-k"):
        optimal_edges(big, np.ones(big.real_edges.shape), 10, max_edges=20_000)
    graph = ComponentGraph(1, 1)
    with pytest.raises(CircuitbenchError, match="k ≥ 0"):
        greedy_edges(graph, np.ones(graph.real_edges.shape), -1)
    with pytest.raises(CircuitbenchError, match="do not fit"):
        optimal_edges(graph, np.ones((2, 2)), 1)


def test_a_circuit_rule_selects_greedily_or_optimally_and_prunes():
    """CircuitRule(selection=greedy | optimal) builds the edge circuit from these functions (then
    pruned, as MIB prunes after apply_greedy); the greedy curve order starts with greedy's picks."""
    from circuitbench.circuits.edge_faithfulness import circuit_of, edge_circuit, edge_order
    from circuitbench.scores.methods.outputs import EdgeScores
    from circuitbench.specs.task import CircuitRule

    graph = ComponentGraph(2, 2)
    scores = EdgeScores(graph, random_scores(graph, 7, zeros=0.3))
    for selection, pick in (("greedy", greedy_edges), ("optimal", optimal_edges)):
        rule = CircuitRule(level="edge", top_k=6, selection=selection)
        circuit = edge_circuit(scores, rule, "eap")
        assert sorted(circuit.edges) == sorted(circuit_of(graph, pick(graph, scores.scores, 6), "eap", {}).edges)
        assert circuit.rule["selection"] == selection
    order = edge_order(scores, "abs", "greedy")
    assert order[:6] == greedy_edges(graph, scores.scores, 6) and sorted(order) == sorted(graph.edges)
    assert edge_order(scores, "abs") != order  # the ranking and the greedy order differ on these scores


@pytest.mark.parametrize("rule", [dict(top_k=3, selection="greedy"), dict(level="edge", threshold=0.1,
                                                                            selection="optimal")])
def test_selection_beyond_top_needs_an_edge_budget(rule):
    from pydantic import ValidationError

    from circuitbench.specs.task import CircuitRule

    with pytest.raises(ValidationError, match="needs level: edge and top_k or fraction"):
        CircuitRule(**rule)
