"""Per-span edge circuits (circuits/span_circuits.py): the span-aware prune against the
position-blind one, the rule over (edge, span) pairs on planted scores, the faithfulness of a
circuit holding every span of its edges against the position-blind circuit, and the task rule."""
from dataclasses import replace

import numpy as np
import pytest

from circuitbench.circuits.edge_faithfulness import EdgeBaseline, circuit_of
from circuitbench.circuits.span_circuits import (
    SpanEdgeBaseline,
    keep_of,
    member_name,
    prune_spans,
    span_edge_circuit,
)
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.ablations import parse_ablation
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import SpanEdgeScores
from circuitbench.scores.span_edges import SpanLayout
from circuitbench.specs.catalog import load_task
from circuitbench.specs.task import CircuitRule, TaskSpec

SPANS = ("IO", "S1", "S2", "END", "other")


def test_prune_holding_every_span_is_the_position_blind_prune():
    graph = ComponentGraph(2, 2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        keep = graph.real_edges & (rng.random(graph.real_edges.shape) < 0.3)
        pairs, _ = prune_spans(graph, np.broadcast_to(keep, (3, *keep.shape)).copy())
        blind, _ = graph.prune(keep)
        assert all((pairs[s] == blind).all() for s in range(3))


def test_rule_over_edge_span_pairs_on_planted_scores():
    """The planted path a1.h0 at END (its query at END, its key at IO) is kept; a pair whose source
    reads nothing at its span is pruned; a pair scoring 0 is never picked."""
    graph = ComponentGraph(2, 2)
    scores = np.zeros((len(SPANS), *graph.real_edges.shape))
    planted = {("a1.h0->logits", "END"): 3.0, ("input->a1.h0<q>", "END"): -2.5, ("input->a1.h0<k>", "IO"): 2.0,
               ("a0.h1->a1.h1<q>", "S2"): 1.5, ("a0.h0->logits", "S1"): 0.5}
    for (edge, span), value in planted.items():
        scores[(SPANS.index(span), *graph.edge_position(edge))] = value
    span_scores = SpanEdgeScores(graph, SPANS, scores)
    assert span_scores.as_dict()["a1.h0->logits@END"] == 3.0 and len(span_scores.as_dict()) == 5 * graph.n_edges
    c = span_edge_circuit(span_scores, CircuitRule(level="edge", positions="per_span", top_k=4), "eap")
    assert sorted(c.edges) == sorted(["input->a1.h0<q>@END", "input->a1.h0<k>@IO", "a1.h0->logits@END"])
    assert c.heads == [(1, 0)] and c.level == "edge"
    signed = span_edge_circuit(span_scores, CircuitRule(level="edge", positions="per_span", top_k=3, by="signed"),
                               "eap")
    assert "input->a1.h0<q>@END" not in signed.edges  # −2.5 ranks last when signed
    rule = CircuitRule(level="edge", positions="per_span", threshold=0.0)
    assert len(span_edge_circuit(span_scores, rule, "eap").edges) == 3  # a0.h0 reads nothing at S1: pruned
    scores[(SPANS.index("S1"), *graph.edge_position("input->a0.h0<q>"))] = 0.1  # now it reads its query at S1
    assert sorted(span_edge_circuit(span_scores, rule, "eap").edges) == sorted(
        c.edges + [member_name("a0.h0->logits", "S1"), "input->a0.h0<q>@S1"])


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    return model, replace(data, span_names=(), spans=None, corrupted_spans=None)


def test_circuit_of_every_span_has_the_position_blind_faithfulness(tiny):
    model, data = tiny
    graph = model.component_graph()
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    layout = SpanLayout.of(data)
    spans = SpanEdgeBaseline(model, data, parse_ablation("counterfactual"), ctx, layout)
    blind = EdgeBaseline(model, data, parse_ablation("counterfactual"), ctx)
    assert spans.m_full == blind.m_full and spans.m_empty == blind.m_empty
    picked = ["input->a0.h1<v>", "a0.h1->a1.h0<v>", "input->a1.h0<q>", "a1.h0->logits", "a0.h1->m0", "m0->logits",
              "a0.h0->a1.h1<k>"]  # the last one dangles
    edges = circuit_of(graph, picked, None, {}).edges
    assert sorted(edges) == sorted(picked[:-1])
    members = [member_name(e, s) for s in layout.names for e in edges]
    assert (keep_of(graph, layout.names, members) == blind.keep_of(edges)[None]).all()
    f_spans, f_blind = spans.f(members), blind.f(edges)
    assert abs(f_spans - f_blind) < 1e-6 and abs(spans.blind_f(edges) - f_blind) < 1e-9
    one_span = [member_name(e, "END") for e in edges]  # the same edges at END only: another circuit
    assert abs(spans.f(one_span) - f_blind) > 1e-3


def test_task_rule_asks_every_edge_method_for_span_scores():
    base = {"name": "t", "generator": {"name": "ioi"}, "metrics": ["logit_diff"],
            "methods": ["eap", "edge_patching", "activation_patching"]}
    spec = TaskSpec.model_validate({**base, "circuit": {"level": "edge", "positions": "per_span", "top_k": 5}})
    assert spec.options_of("eap") == {"positions": "per_span"} and spec.options_of("edge_patching") == {
        "positions": "per_span"} and spec.options_of("activation_patching") == {}
    assert "positions" not in TaskSpec.model_validate({**base, "circuit": {"level": "edge", "top_k": 5}}).model_dump(
        mode="json")["circuit"]
    for bad in ({"circuit": {"level": "edge", "positions": "per_span", "top_k": 5, "selection": "greedy"}},
                {"circuit": {"positions": "per_span", "top_k": 5}},
                {"circuit": {"level": "edge", "positions": "per_span", "top_k": 5},
                 "method_options": {"eap": {"positions": "all"}}}):
        with pytest.raises(Exception, match="per_span"):
            TaskSpec.model_validate({**base, **bad})
    with pytest.raises(CircuitbenchError, match="per-span edge scores"):
        from circuitbench.circuits.span_circuits import per_span_circuit
        per_span_circuit(None, None, {}, CircuitRule(level="edge", positions="per_span", top_k=1),  # type: ignore
                         MethodContext(batch_size=1), {}, 0)


def test_a_per_span_circuit_carries_its_panel_verdict_and_completeness():
    """Per-span circuits are judged as every circuit is: the ablation panel (each ablation's circuit kept per
    span), the verdict, what is necessary outside, and completeness over subsets of its (edge, span) pairs;
    the panel's counterfactual entry is the faithfulness the circuit reports."""
    import circuitbench as cb

    task = TaskSpec.model_validate({**load_task("ioi").model_dump(exclude_defaults=True), "name": "ioi_spans",
                                    "methods": ["eap"], "n_prompts": 8,
                                    "circuit": {"level": "edge", "positions": "per_span", "top_k": 12,
                                                "ablation": "counterfactual"}})
    c = cb.run(task, "toy-tasks", batch_size=8).circuit
    assert c.verdict in ("robust", "counterfactual_specific", "unfaithful") and c.verdict_reasons is not None
    assert {"counterfactual", "mean_clean", "zero", "resample"} <= set(c.panel)
    assert c.panel["counterfactual"].value == pytest.approx(c.faithfulness.value)
    assert all("@" in e for e in c.edges) and c.completeness is not None
    assert all("@" in e for e in c.completeness.worst_subset)
