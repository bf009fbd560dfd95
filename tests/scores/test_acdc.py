"""ACDC (scores/methods/acdc.py) on a tiny random-init GPT-2 (2 layers × 2 heads, MLPs) built here,
against a literal loop that runs one whole circuit forward per edge tried and applies ACDC's rule;
its limits (τ = 0, a huge τ); two data-parallel ranks against one process; the shipped tracr zoo,
whose reference nodes it must find where patching can see them; and the max_forwards refusal."""
import json
import threading

import numpy as np
import pytest
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.models.toy import ZOO_DIR
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.edges import circuit_logits, circuit_metric, node_outputs
from circuitbench.scores.interventions import oriented_metric, record_base_run
from circuitbench.scores.methods.acdc import acdc, acdc_sweep
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.scores.visibility import visibility
from circuitbench.specs.catalog import load_task

# ACDC's sender order (TLACDCCorrespondence: later blocks first, MLP before heads; heads in
# `indices_mode: reverse`, i.e. ascending; the embedding last), written out for this 2 × 2 model.
SENDERS = ["m1", "a1.h0", "a1.h1", "m0", "a0.h0", "a0.h1", "input"]


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


class NaiveLoss:
    """ACDC's loss of a circuit, by hand: one whole circuit forward of all 4 prompts per call (no
    reuse), KL(full ‖ circuit) of the END distribution / KL(full ‖ corrupted run), or −mean logit
    diff / |clean − corrupted| (τ relative to the empty circuit's loss, the default units)."""

    def __init__(self, model, data, metric):
        self.model, self.metric, self.graph = model, metric, model.component_graph()
        self.batch = data.batch(0, 4)
        self.ctx = MethodContext(batch_size=4, metric="logit_diff")
        _, corrupt = record_base_run(model, self.batch.as_corrupted().tokens)
        self.replacement = node_outputs(model, corrupt)
        self.reference = self.end_log_probs(self.graph.real_edges)
        m_clean = oriented_metric("logit_diff", model.run(self.batch.tokens), self.batch).double().mean()
        m_corr = oriented_metric("logit_diff", model.run(self.batch.as_corrupted().tokens), self.batch).double().mean()
        self.gap = abs(float(m_clean - m_corr))
        corrupted_log_probs = torch.log_softmax(model.run(self.batch.as_corrupted().tokens)[
            torch.arange(4), self.batch.end].double(), -1)
        self.kl_scale = float((self.reference.exp() * (self.reference - corrupted_log_probs)).sum(-1).mean())
        self.calls = 0

    def outside(self, present):
        return torch.from_numpy(self.graph.real_edges & ~present)

    def end_log_probs(self, present):
        logits, scored = circuit_logits(self.model, self.graph, self.batch, self.outside(present), self.replacement,
                                        self.ctx)
        return torch.log_softmax(logits[torch.arange(4), scored.end].double(), -1)

    def __call__(self, present):
        self.calls += 1
        if self.metric == "kl":
            log_q = self.end_log_probs(present)
            return float((self.reference.exp() * (self.reference - log_q)).sum(-1).mean()) / self.kl_scale
        m = circuit_metric(self.model, self.graph, self.batch, self.outside(present), self.replacement, self.ctx)
        return -float(m.double().mean()) / self.gap


def naive_acdc(graph, loss, tau):
    """The literal loop: destinations from the logits backwards; a destination whose node feeds
    nothing loses its inputs; else each incoming edge in ACDC's sender order is removed, measured,
    and kept removed when the loss rose by less than τ. (kept edges, smallest |Δ − τ| seen)."""
    present = graph.real_edges.copy()
    current = loss(present)
    margin = np.inf
    for j in range(len(graph.destinations) - 1, -1, -1):
        dst = graph.destinations[j]
        node = dst.split("<")[0]
        if node != "logits" and not present[graph.sources.index(node)].any():
            present[:, j] = False
            continue
        for name in SENDERS:
            i = graph.sources.index(name)
            if not graph.real_edges[i, j]:
                continue
            present[i, j] = False
            new = loss(present)
            margin = min(margin, abs(new - current - tau))
            if new - current < tau:
                current = new
            else:
                present[i, j] = True
    return present, margin


@pytest.mark.parametrize("metric,taus", [("kl", (3e-3, 3e-2)), ("task", (1e-3, 0.1))])
def test_acdc_equals_the_literal_loop(tiny, metric, taus):
    model, data = tiny
    graph = model.component_graph()
    loss = NaiveLoss(model, data, metric)
    expected = np.zeros(graph.real_edges.shape)
    tried = 0
    for tau in taus:
        before = loss.calls
        kept, margin = naive_acdc(graph, loss, tau)
        tried += loss.calls - before - 1  # every call but the full graph's tries one edge
        assert margin > 1e-3 * tau  # no decision within rounding of τ: the comparison below is exact
        assert 0 < kept.sum() < graph.n_edges  # each τ keeps some edges and removes others
        expected = np.where(kept, tau, expected)
    output = run_methods(model, data, ["acdc"], MethodRun(4, metric="logit_diff", method_options={
        "acdc": {"loss": metric, "thresholds": list(taus)}}))["acdc"]
    assert np.array_equal(output.edges.scores, expected)  # score: the largest τ at which the edge is kept
    assert output.settings["kept_edges"] == [int((expected >= t).sum()) for t in taus]
    assert output.settings["edges_tried"] == tried
    assert output.settings["circuit_forwards"] <= tried + 1  # circuits the two τ share are measured once
    one = run_methods(model, data, ["acdc"], MethodRun(4, metric="logit_diff", method_options={
        "acdc": {"loss": metric, "tau": taus[1]}}))["acdc"]
    assert np.array_equal(one.edges.scores, np.where(expected == taus[1], taus[1], 0.0))


def test_tau_zero_keeps_every_edge_with_an_effect_and_a_huge_tau_none(tiny):
    model, data = tiny
    graph = model.component_graph()
    loss = NaiveLoss(model, data, "kl")
    effect = np.zeros(graph.real_edges.shape)
    for i, j in zip(*np.nonzero(graph.real_edges)):
        alone = graph.real_edges.copy()
        alone[i, j] = False
        effect[i, j] = loss(alone)  # KL of the full graph less this one edge
    kept = acdc_sweep(graph, loss, 0.0)
    assert (effect > 1e-12).sum() >= 10 and kept[effect > 1e-12].all()
    assert not acdc_sweep(graph, loss, 1e9).any()


def test_signed_and_absolute_rules_and_dangling_nodes_on_an_additive_loss():
    """A loss that adds a planted weight per removed edge (1 layer, 1 head, MLP): the signed rule
    removes an edge whose removal helps (weight < 0), the absolute one keeps it; a node left
    without outgoing edges loses its inputs untried."""
    from circuitbench.models.graph import ComponentGraph

    graph = ComponentGraph(n_layers=1, n_heads=1)
    weights = {"m0->logits": -0.5, "a0.h0->logits": 0.05, "input->logits": 2.0, "a0.h0->m0": 1.0, "input->m0": 0.01,
               "input->a0.h0<q>": 0.3, "input->a0.h0<k>": 0.001, "input->a0.h0<v>": -0.2}
    assert set(weights) == set(graph.edges)
    w = np.zeros(graph.real_edges.shape)
    for name, value in weights.items():
        w[graph.edge_position(name)] = value
    tried = []

    def loss(present):
        tried.append(present.copy())
        return float(w[graph.real_edges & ~present].sum())

    def names(present):
        return {e for e in graph.edges if present[graph.edge_position(e)]}

    assert names(acdc_sweep(graph, loss, 0.1)) == {"input->logits"}
    assert len(tried) == 1 + 3  # the full graph, then the logits' three edges: m0 and a0.h0 dangle after
    assert names(acdc_sweep(graph, loss, 0.1, abs_value_threshold=True)) == {
        "m0->logits", "input->logits", "a0.h0->m0", "input->a0.h0<q>", "input->a0.h0<v>"}


def _two_ranks(models, data, options):
    """Two data-parallel ranks, as threads, each with its own copy of the model (hooks are per
    model) on half the prompts, summing through a barrier."""
    barrier, slots, outputs = threading.Barrier(2), [None, None], [None, None]

    def add(a, b):
        return type(a)(add(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else a + b

    def rank(r):
        def sum_shards(value):
            slots[r] = value
            barrier.wait()
            total = add(slots[0], slots[1])
            barrier.wait()
            return total
        ctx = MethodContext(batch_size=2, metric="logit_diff", options=options, sum_shards=sum_shards)
        outputs[r] = acdc(models[r], data.subset(2 * r, 2 * r + 2), ctx)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outputs


def test_data_parallel_ranks_take_the_one_process_decisions(tiny, tiny_gpt2_dir):
    model, data = tiny
    options = {"loss": "task", "thresholds": [1e-3, 0.1]}
    one = acdc(model, data, MethodContext(batch_size=2, metric="logit_diff", options=options))
    ranks = _two_ranks([model, load_model(str(tiny_gpt2_dir), device="cpu")], data, options)
    for out in ranks:
        assert np.array_equal(out.edges.scores, one.edges.scores)
        assert out.settings == one.settings
    assert 0 < (one.edges.scores > 0).sum() < model.component_graph().n_edges


ZOO = {"tracr-hist": "tracr_hist", "tracr-sort-unique": "tracr_sort_unique", "tracr-detect-abc": "tracr_detect_abc",
       "tracr-reverse": "tracr_reverse"}
# Reference nodes whose clean and counterfactual outputs agree on every prompt: tracr reverse's
# length head and its MLPs computing length, opp_idx and opp_idx − 1 read only the length and the
# positions, which the counterfactual (same length) keeps. No counterfactual method can see them.
INVISIBLE = {"tracr-reverse": {"a0.h0", "m0", "m1", "m2"}}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_acdc_finds_every_reference_node_patching_can_see_on_the_tracr_zoo(name):
    model = load_model(name, device="cpu")
    data = encode_task(load_task(ZOO[name]), model.vocab, model.unk_id, model.n_ctx)
    graph = model.component_graph()
    reference = set(json.loads((ZOO_DIR / name / "circuit.json").read_text())["nodes"])
    ctx = MethodContext(batch_size=32, metric="logit_diff")
    shares = visibility(model, data, ctx)
    invisible = {node for node, share in shares.items() if share == 0}
    assert reference & invisible == INVISIBLE.get(name, set())
    output = acdc(model, data, MethodContext(batch_size=32, metric="logit_diff", options={"tau": 0.01}))
    _, nodes = graph.prune(output.edges.scores > 0)
    found = {graph.sources[i] for i in np.nonzero(nodes)[0]} - {"input"}
    assert found == reference - invisible  # every visible reference node, and nothing else (tracr: zero weights)


def test_max_forwards_refusal_names_the_option_and_cheaper_methods(tiny):
    model, data = tiny
    with pytest.raises(CircuitbenchError) as refused:
        acdc(model, data, MethodContext(batch_size=4, metric="logit_diff", options={"max_forwards": 100}))
    message = str(refused.value)
    n_edges = model.component_graph().n_edges
    assert f"{n_edges:,} edges × 9 thresholds" in message and f"up to {9 * (n_edges + 1) + 1:,} batch" in message
    assert "method_options.acdc.max_forwards = 100" in message and "eap or eap_ig" in message and " h here" in message
