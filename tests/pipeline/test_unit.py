"""run_unit's own judgements of a run (pipeline/unit.py)."""
from __future__ import annotations

import circuitbench as cb
from circuitbench.pipeline.unit import CAPABLE, competence_warnings
from circuitbench.specs.catalog import load_task


def test_a_model_that_cannot_do_the_task_is_said_to():
    """toy-tasks answers fewer than half of fibonacci's test prompts (held-out starts) and nearly all of
    IOI's: only the first run warns, with the accuracy measured on its own prompts."""
    warned = {}
    for task in ("fibonacci", "ioi"):
        spec = load_task(task).model_copy(update={"n_prompts": 32, "circuit": None, "methods": ["previous_token"]})
        result = cb.run(spec, "toy-tasks")
        warned[task] = [w for w in result.warnings if "mostly cannot do this task" in w]
        assert (result.metrics["accuracy"] < CAPABLE) == bool(warned[task]), task
    assert warned["fibonacci"] and not warned["ioi"]


def test_competence_needs_an_accuracy_metric():
    assert competence_warnings({"induction_loss": 9.0}) == []
    assert competence_warnings({"accuracy": CAPABLE}) == []
    assert "answers 20% of these prompts right" in competence_warnings({"accuracy": 0.2})[0]


def test_an_empty_circuit_is_explained_by_what_emptied_it():
    """Edges pruned away (no path from the input to the logits) are not a threshold above every score."""
    from circuitbench.circuits.edge_faithfulness import edge_circuit
    from circuitbench.models.graph import ComponentGraph
    from circuitbench.pipeline.unit import rule_warnings
    from circuitbench.scores.methods.outputs import EdgeScores
    from circuitbench.specs.task import CircuitRule

    graph = ComponentGraph(2, 1, has_mlp=False)
    scores = graph.real_edges.astype(float) * 0.01
    scores[graph.edge_position("a0.h0->a1.h0<v>")] = 1.0  # the best edge reaches the logits through nothing
    rule = CircuitRule(level="edge", top_k=1)
    circuit = edge_circuit(EdgeScores(graph, scores), rule, "eap")
    assert circuit.edges == []
    (warning,) = rule_warnings(rule, len(circuit.edges), graph.n_edges, graph.n_edges, "edges")
    assert "no path from the input to the logits" in warning and "threshold" not in warning
    (warning,) = rule_warnings(CircuitRule(top_k=1), 0, 4, 0, "heads")
    assert "only 0 heads score other than exactly 0" in warning and "threshold" not in warning
