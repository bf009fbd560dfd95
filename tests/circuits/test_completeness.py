"""Completeness as Wang et al. define it (circuits/completeness.py)."""
from __future__ import annotations

import numpy as np
import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.completeness import completeness, subsets_of
from circuitbench.circuits.edge_faithfulness import EdgeBaseline
from circuitbench.circuits.faithfulness import Baseline
from circuitbench.scores.ablations import Mean
from circuitbench.scores.interventions import ablated_nodes_values
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.task import CircuitRule


@pytest.fixture(scope="module")
def reverse():
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    model = load_model("tracr-reverse", device="cpu")
    spec = load_task("tasks/known_answers/tracr_reverse.yaml")
    return model, encode_task(spec, model.vocab, model.unk_id, model.n_ctx), MethodContext(batch_size=8,
                                                                                             metric=spec.metric)


def _node_circuit(nodes: list[str]) -> Circuit:
    scores = {n: 1.0 for n in nodes}
    return Circuit.from_node_scores(scores, CircuitRule(top_k=len(nodes), level="node"), "given", (4, 1))


def test_incompleteness_is_wang_et_al_s_formula_and_finds_a_missing_backup_head():
    """toy-induction-2l has two induction heads in layer 1 (a1.h0, a1.h1), each a backup of the other.
    A circuit with only one is incomplete: knocking it out of the circuit leaves nothing, knocking it
    out of the model leaves the backup. Every value recomputed from plain ablated forwards."""
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    model = load_model("toy-induction-2l", device="cpu")
    data = encode_task(load_task("induction").model_copy(update={"n_prompts": 16}), model.vocab, model.unk_id,
                       model.n_ctx)
    ctx = MethodContext(batch_size=16, metric="induction_loss")
    baseline = Baseline(model, data, Mean(over="clean"), ctx, "head")

    def metric(heads: set[str]) -> float:
        kept = {(int(n[1]), int(n.split(".h")[1])) for n in heads}
        return -float(ablated_nodes_values(model, data, kept, None, Mean(over="clean"), ctx).double().mean())

    everything = {f"a{l}.h{h}" for l in range(2) for h in range(4)}
    scale = abs(metric(everything) - metric(set()))
    found = {}
    for nodes in (["a0.h2", "a1.h0"], ["a0.h2", "a1.h0", "a1.h1"]):
        circuit = Circuit.from_scores(np.array([[0, 0, 1, 0], [1, "a1.h1" in nodes, 0, 0]], dtype=float),
                                      CircuitRule(top_k=len(nodes)), "given")
        got = completeness(circuit, baseline, seed=5)
        expected = [abs(metric(set(nodes) - set(k)) - metric(everything - set(k))) / scale
                    for k in subsets_of(circuit.nodes, 5)]
        assert got is not None and got.subsets == len(expected)
        assert got.max_incompleteness == pytest.approx(max(expected))
        assert got.mean_incompleteness == pytest.approx(np.mean(expected))
        found[len(nodes)] = got
    assert found[2].max_incompleteness > 0.5 and found[2].worst_subset == ["a1.h0"]
    assert found[3].max_incompleteness < found[2].max_incompleteness


@pytest.mark.parametrize("level", ["node", "edge"])
def test_the_whole_model_is_complete(reverse, level):
    """C = M: knocking K out of both is the same run, for every K."""
    model, data, ctx = reverse
    if level == "node":
        everything = [f"a{l}.h0" for l in range(4)] + [f"m{l}" for l in range(4)]
        got = completeness(_node_circuit(everything), Baseline(model, data, Mean(over="clean"), ctx, "node"), 0)
    else:
        baseline = EdgeBaseline(model, data, Mean(over="clean"), ctx)
        edges = baseline.graph.edges
        circuit = Circuit(heads=[], edges=edges, level="edge", method="given",
                          rule=CircuitRule(top_k=1, level="edge").model_dump())
        got = completeness(circuit, baseline, 0)
    assert got is not None and got.max_incompleteness == pytest.approx(0.0, abs=1e-9)


def test_subsets_are_each_member_then_distinct_random_halves():
    members = [f"a0.h{i}" for i in range(5)]
    subsets = subsets_of(members, 0)
    assert subsets[:5] == [[m] for m in members]
    assert len({tuple(k) for k in subsets}) == len(subsets) and all(k and set(k) <= set(members) for k in subsets)
    assert subsets_of(members, 0) == subsets  # seeded
    assert all(len(k) >= 1 for k in subsets_of([f"a0.h{i}" for i in range(20)], 1))
