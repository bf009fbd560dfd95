"""Position-aware edge scores (scores/span_edges.py) on the tiny random-init GPT-2: per-span EAP
against the gradient formula summed over each span's positions, and against the position-blind
score (the spans add up to it); per-span exact patching against a naive one-forward-per-(edge,
span) loop; the per-span circuit forward against single-edge patching and the position-blind one."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.edges import circuit_metric, node_outputs
from circuitbench.scores.interventions import oriented_metric, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.scores.span_edges import OTHER, SpanLayout, patched_span_edge_metrics, span_circuit_metric
from circuitbench.specs.catalog import load_task

from helpers import destination_gradient, naive_edge_metrics


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    torch.set_num_threads(1)
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    data = replace(data, span_names=(), spans=None, corrupted_spans=None)  # the named-position fallback
    batch = data.batch(0, 4)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)) * valid[:, :, None, None]
    return model, data, batch, clean, corrupt, delta


def masked(delta, spans, s):
    """[batch, pos, n_src, d] delta kept at the positions of span s only."""
    return delta * (spans == s).float()[:, :, None, None]


def test_named_positions_fallback_partitions_every_token(tiny):
    _, data, batch, *_ = tiny
    layout = SpanLayout.of(data)
    assert layout.names == ("IO", "S1", "S2", "END", OTHER) or layout.names == ("S1", "IO", "S2", "END", OTHER)
    spans = layout.spans(batch)
    rows = torch.arange(len(batch))
    for index, name in enumerate(layout.names[:-1]):
        assert (spans[rows, batch.positions[name]] == index).all()
    valid = torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]
    assert ((spans >= 0) == valid).all() and int((spans == len(layout) - 1).sum()) == int(valid.sum()) - 4 * 4


def test_eap_per_span_is_the_gradient_formula_span_by_span_and_sums_to_eap(tiny):
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    blind = run_methods(model, data, ["eap"], MethodRun(4, metric="logit_diff"))["eap"]
    out = run_methods(model, data, ["eap"], MethodRun(4, metric="logit_diff",
                                                      method_options={"eap": {"positions": "per_span"}}))["eap"]
    assert blind.span_edges is None and "positions" not in blind.settings
    assert np.array_equal(out.edges.scores, blind.edges.scores)  # the position-blind scores, bit for bit
    per_span = out.span_edges.scores
    layout = SpanLayout.of(data)
    assert out.span_edges.span_names == layout.names and per_span.shape == (len(layout), *graph.real_edges.shape)
    assert np.abs(per_span.sum(0) - blind.edges.scores).max() <= 1e-6 * np.abs(blind.edges.scores).max()
    spans = layout.spans(batch)
    m_clean = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().mean())
    m_corr = float(oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch).double().mean())
    by_hand = np.zeros_like(per_span)
    for j, dst in enumerate(graph.destinations):
        grad = destination_gradient(model, clean, batch, dst)
        for s in range(len(layout)):
            for i in range(graph.n_upstream(dst)):
                by_hand[s, i, j] = -float((masked(delta, spans, s)[:, :, i] * grad).sum()) / 4 / (m_clean - m_corr)
    assert np.abs(per_span - by_hand).max() <= 1e-5 * np.abs(by_hand).max()
    end = layout.names.index("END")
    assert np.abs(by_hand[end]).max() > 1e-3 and np.abs(by_hand[0]).max() > 1e-3  # spans other than END count too
    assert out.span_edges.as_dict()["a1.h0->logits@END"] == per_span[end, graph.edge_position("a1.h0->logits")[0], -1]


def test_eap_ig_per_span_sums_to_eap_ig(tiny):
    model, data = tiny[0], tiny[1]
    opts = {"steps": 2}
    blind = run_methods(model, data, ["eap_ig"], MethodRun(4, metric="logit_diff",
                                                           method_options={"eap_ig": opts}))["eap_ig"]
    out = run_methods(model, data, ["eap_ig"], MethodRun(4, metric="logit_diff", method_options={
        "eap_ig": {**opts, "positions": "per_span"}}))["eap_ig"]
    assert np.array_equal(out.edges.scores, blind.edges.scores)
    assert np.abs(out.span_edges.scores.sum(0) - blind.edges.scores).max() <= 1e-6 * np.abs(blind.edges.scores).max()


def test_edge_patching_per_span_equals_one_forward_per_edge_and_span(tiny):
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    layout = SpanLayout.of(data)
    spans = layout.spans(batch)
    edges = [(int(i), int(j)) for j, i in zip(*np.nonzero(graph.real_edges.T))]
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    fast = patched_span_edge_metrics(model, graph, batch, clean, delta.permute(2, 0, 1, 3).contiguous(), edges, spans,
                                     len(layout), ctx)
    base = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().sum())
    for s in range(len(layout)):
        naive = naive_edge_metrics(model, graph, batch, clean, masked(delta, spans, s), edges)
        assert float((fast[s] - naive).abs().max()) <= 1e-5
        assert float((naive - base).abs().max()) > 1e-4  # every span's patches move the metric
    out = run_methods(model, data, ["edge_patching"], MethodRun(4, metric="logit_diff", method_options={
        "edge_patching": {"positions": "per_span"}}))["edge_patching"]
    m_corr = float(oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch).double().sum())
    rows, cols = zip(*edges)
    expected = (base - fast.numpy()) / abs(base - m_corr)
    assert np.abs(out.span_edges.scores[:, rows, cols] - expected).max() <= 1e-5
    assert out.settings["positions"] == "per_span" and out.settings["spans"] == list(layout.names)


def test_per_span_circuit_forward(tiny):
    """Every span of the same edges outside: the position-blind circuit; one (edge, span) outside:
    that edge patched at that span alone."""
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    layout = SpanLayout.of(data)
    spans = layout.spans(batch)
    replacement = node_outputs(model, corrupt)
    rng = np.random.default_rng(0)
    outside = torch.from_numpy(graph.real_edges & (rng.random(graph.real_edges.shape) < 0.5))
    blind = circuit_metric(model, graph, batch, outside, replacement, ctx)
    every = span_circuit_metric(model, graph, batch, outside[None].expand(len(layout), -1, -1), replacement, spans, ctx)
    assert torch.allclose(every, blind, atol=1e-5)
    assert float((blind - oriented_metric("logit_diff", model.run(batch.tokens), batch)).abs().max()) > 1e-3
    nothing = torch.zeros((len(layout), *graph.real_edges.shape), dtype=torch.bool)
    for name, span in [("input->a1.h0<k>", "IO"), ("a0.h1->m0", "S2"), ("m0->a1.h1<v>", OTHER),
                       ("a1.h0->logits", "END"), ("a0.h0->a1.h1<q>", "END")]:
        i, j = graph.edge_position(name)
        s = layout.names.index(span)
        one = nothing.clone()
        one[s, i, j] = True
        alone = naive_edge_metrics(model, graph, batch, clean, masked(delta, spans, s), [(i, j)])
        got = float(span_circuit_metric(model, graph, batch, one, replacement, spans, ctx).double().sum())
        assert abs(got - float(alone[0])) < 1e-5
