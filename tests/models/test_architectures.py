"""Every scoring method on random-init tiny models of eight architectures (GPT-2, GPT-Neo, GPT-NeoX, Llama
with grouped-query attention, Qwen2, Gemma-2, Mistral, Phi): each runs with finite scores or refuses with a
CircuitbenchError naming why, the component graph matches the forward (node outputs sum to the residual
stream), and where the fast engines run they equal naive references: exact edge patching against one full
forward per edge, EAP against the gradient at each destination's input, head patching against one forward
per head."""
import numpy as np
import pytest
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.edges import circuit_metric, node_outputs, patched_edge_metrics
from circuitbench.scores.interventions import (
    naive_head_metrics,
    oriented_metric,
    patched_node_metrics,
    position_mask,
    record_base_run,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task

from helpers import destination_gradient, naive_edge_metrics

ARCHS = ["gpt2", "gpt_neo", "gpt_neox", "llama", "qwen2", "gemma2", "mistral", "phi"]
GQA = {"llama", "qwen2", "gemma2", "mistral"}  # 4 query heads over 2 key-value heads
PARALLEL = {"gpt_neox", "phi"}
METHODS = ["activation_patching", "attribution_patching", "ablation", "nap", "eap", "eap_ig", "edge_patching", "ifr",
           "acdc", "edge_pruning"]
OPTIONS = {"acdc": {"tau": 0.05}, "edge_pruning": {"steps": 3}, "eap_ig": {"steps": 2}}
EDGE_METHODS = {"eap", "eap_ig", "acdc", "edge_pruning", "edge_patching", "ifr"}


def expected_refusal(arch: str, method: str) -> str | None:
    """The words the refusal must contain (None: the method runs)."""
    if arch == "gemma2" and method in EDGE_METHODS:
        return "post-norms"
    return None


def kv_inputs(arch: str) -> int:
    """Key (and value) inputs per block in the component graph: one per key-value group under grouped-query
    attention (2 groups of 2 query heads here), one per head otherwise."""
    return 2 if arch in GQA else 4


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple]:
    """Models loaded so far in this module, by architecture."""
    return {}


@pytest.fixture
def arch_model(request, loaded, tiny_models, more_tiny_models):
    """(model, 4 IOI prompts, their batch, architecture name) of one architecture, loaded once per module."""
    arch = request.param
    if arch not in loaded:
        path = tiny_models[arch] if arch in tiny_models else more_tiny_models(arch)
        model = load_model(str(path), device="cpu")
        data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id,
                           model.n_ctx)
        loaded[arch] = (model, data, data.batch(0, 4), arch)
    return loaded[arch]


def _runs(model, batch):
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)) * valid[:, :, None, None]
    return clean, corrupt, delta


def _some_edges(graph):
    """A handful of edges: every kind of destination (q, k, v of heads or key-value groups, each MLP, the
    logits) from the input, a head and an MLP where they feed it."""
    out = []
    k, v = ("a1.kv1<k>", "a1.kv0<v>") if graph.grouped else ("a1.h3<k>", "a1.h2<v>")
    for dst in ["a0.h1<q>", "a1.h0<q>", k, v, "m0", "m1", "logits"]:
        j = graph.destination_index[dst]
        upstream = graph.n_upstream(dst)
        for i in sorted({0, upstream // 2, upstream - 1}):
            out.append((i, j))
    return out


@pytest.mark.parametrize("arch_model", ARCHS, indirect=True)
def test_graph_and_node_outputs_sum_to_the_residual_stream(arch_model):
    """The graph's sources are the terms of the final residual stream: input + every head's z_h·W_O[h] +
    every MLP's output (+ the attention output biases, which belong to no node), except where post-norms
    rescale the block outputs (Gemma-2), which is why edge methods refuse it."""
    model, _, batch, arch = arch_model
    graph = model.component_graph()
    assert (graph.n_layers, graph.n_heads, graph.has_mlp) == (2, 4, True)
    assert graph.parallel_attn_mlp == (arch in PARALLEL)
    assert model.n_kv_heads == (2 if arch in GQA else 4)
    # edges counted by hand: per layer 4 query inputs and the key and value inputs (per head, or per key-value
    # group) read 1 + 5·layer sources, the MLP one more layer's heads (not in parallel blocks), the logits all 11
    mlp_reads = [1 + 5 * layer + (0 if arch in PARALLEL else 4) for layer in range(2)]
    head_inputs = 4 + 2 * kv_inputs(arch)
    assert graph.n_edges == sum(head_inputs * (1 + 5 * layer) for layer in range(2)) + sum(mlp_reads) + 11
    sites = [hooks.resid_post(1)] + [site(layer) for layer in range(2) for site in (
        hooks.resid_pre, hooks.resid_mid, hooks.mlp_in, lambda layer: hooks.projection_input("k", layer))]
    logits, cache = model.run_with_cache(batch.tokens, [s for s in sites if model.has_site(s)])
    # the norms the engine recomputes on a patched input are the ones the forward applies (Phi's MLP reads its
    # attention's LayerNorm: it has no second one)
    for layer in range(2):
        x = cache[hooks.resid_pre(layer)]
        assert torch.allclose(model.normalize_attention_input(layer, x), cache[hooks.projection_input("k", layer)],
                              atol=1e-5)
        mlp_reads = x if arch in PARALLEL else cache[hooks.resid_mid(layer)]
        assert torch.allclose(model.normalize_mlp_input(layer, mlp_reads), cache[hooks.mlp_in(layer)], atol=1e-5)
    _, run = record_base_run(model, batch.tokens)
    terms = node_outputs(model, run).sum(2) + sum(model.attention_weights(layer).output_bias for layer in range(2))
    final = cache[hooks.resid_post(1)]
    gap = float((terms - final).abs().max() / final.abs().max())
    if arch == "gemma2":
        assert gap > 1e-2 and "post-norms ln1_post, ln2_post" in model.residual_support()
        assert model.edge_support() == model.residual_support()
    else:
        assert gap < 1e-5 and model.residual_support() is None and model.edge_support() is None


@pytest.mark.parametrize("arch_model", ARCHS, indirect=True)
def test_every_method_runs_or_refuses_with_a_reason(arch_model):
    model, data, _, arch = arch_model
    for method in METHODS:
        run = MethodRun(4, metric="logit_diff", method_options={method: OPTIONS.get(method, {})})
        reason = expected_refusal(arch, method)
        if reason is not None:
            with pytest.raises(CircuitbenchError) as info:
                run_methods(model, data, [method], run)
            assert f"{method} cannot run on '{model.name}'" in str(info.value) and reason in str(info.value)
            continue
        output = run_methods(model, data, [method], run)[method]
        scores = output.edges.scores if method in EDGE_METHODS else output.heads
        edge_shape = (11, 2 * (5 + 2 * kv_inputs(arch)) + 1)
        assert scores.shape == (edge_shape if method in EDGE_METHODS else (2, 4)), method
        assert np.isfinite(scores).all() and np.abs(scores).max() > 0, method


@pytest.mark.parametrize("arch_model", [a for a in ARCHS if a != "gemma2"], indirect=True)
def test_exact_edge_patching_equals_one_forward_per_edge(arch_model):
    model, _, batch, _ = arch_model
    graph = model.component_graph()
    clean, _, delta = _runs(model, batch)
    edges = _some_edges(graph)
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    fast = patched_edge_metrics(model, graph, batch, clean, delta.permute(2, 0, 1, 3).contiguous(), edges, ctx)
    naive = naive_edge_metrics(model, graph, batch, clean, delta, edges)
    base = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().sum())
    assert float((fast - naive).abs().max()) <= 1e-4 * max(1.0, float(naive.abs().max()))
    assert float((naive - base).abs().max()) > 1e-3  # the edges do move the metric


@pytest.mark.parametrize("arch_model", [a for a in ARCHS if a != "gemma2"], indirect=True)
def test_eap_equals_the_gradient_formula(arch_model):
    """EAP's score of u -> v is −Σ (a_u' − a_u)·∂m/∂x_v / |m_clean − m_corr| / n, the gradient taken at a
    probe added to v's own pre-norm input in a full forward."""
    model, data, batch, _ = arch_model
    graph = model.component_graph()
    clean, _, delta = _runs(model, batch)
    eap = run_methods(model, data, ["eap"], MethodRun(4, metric="logit_diff"))["eap"].edges.scores
    m_clean = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().mean())
    m_corr = float(oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch).double().mean())
    checked = []
    for i, j in _some_edges(graph):
        grad = destination_gradient(model, clean, batch, graph.destinations[j])
        by_hand = -float((delta[:, :, i] * grad).sum()) / len(batch) / abs(m_clean - m_corr)
        checked.append((eap[i, j], by_hand))
    got, want = np.array(checked).T
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()) and np.abs(want).max() > 1e-3


@pytest.mark.parametrize("arch_model", ["qwen2", "gemma2", "mistral", "phi"], indirect=True)
def test_fast_head_patching_equals_one_forward_per_head(arch_model):
    """Activation patching's engine (resumed forwards, copies on the batch axis) against a full forward per
    head; the first four architectures are checked in tests/scores/test_methods.py."""
    model, _, batch, _ = arch_model
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, "all")
    fast = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], None, mask, ctx)
    slow = naive_head_metrics(model, batch, lambda l: corrupt.z[l], mask, ctx)
    assert float((fast - slow).abs().max()) < 1e-4 and float(slow.abs().max()) > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_ungrouped_graph_is_eap_igs_and_sums_to_the_grouped_one(arch, tiny_models, more_tiny_models):
    """--kv-graph ungrouped: keys and values computed per query head (the forward unchanged), EAP-IG's edge
    count (every head its own k and v input: 12 per block here, as without grouped-query attention), exact
    edge patching into one head's key equal to one forward per edge, and EAP's score of an edge into a group's
    key or value input the sum of its scores into the group's heads' copies (the gradient at a shared input is
    the sum of the gradients at its copies)."""
    path = tiny_models[arch] if arch in tiny_models else more_tiny_models(arch)
    grouped, ungrouped = (load_model(str(path), device="cpu", kv_graph=kv) for kv in ("grouped", "ungrouped"))
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), grouped.vocab, grouped.unk_id,
                       grouped.n_ctx)
    batch = data.batch(0, 4)
    assert torch.allclose(grouped.run(batch.tokens), ungrouped.run(batch.tokens), atol=1e-5)
    g, u = grouped.component_graph(), ungrouped.component_graph()
    assert (g.grouped, u.grouped, g.n_kv_heads) == (True, False, 2)
    assert u.n_edges == sum(12 * (1 + 5 * layer) for layer in range(2)) + (1 + 4) + (6 + 4) + 11

    clean, _, delta = _runs(ungrouped, batch)
    edges = _some_edges(u)
    fast = patched_edge_metrics(ungrouped, u, batch, clean, delta.permute(2, 0, 1, 3).contiguous(), edges,
                                MethodContext(batch_size=4, metric="logit_diff"))
    naive = naive_edge_metrics(ungrouped, u, batch, clean, delta, edges)
    assert float((fast - naive).abs().max()) <= 1e-4 * max(1.0, float(naive.abs().max()))

    run = MethodRun(4, metric="logit_diff")
    eap_g = run_methods(grouped, data, ["eap"], run)["eap"].edges.scores
    eap_u = run_methods(ungrouped, data, ["eap"], run)["eap"].edges.scores
    for layer in range(2):
        for kind in "kv":
            for group, heads in ((0, (0, 1)), (1, (2, 3))):
                j = g.destination_index[f"a{layer}.kv{group}<{kind}>"]
                summed = sum(eap_u[:, u.destination_index[f"a{layer}.h{h}<{kind}>"]] for h in heads)
                assert np.allclose(eap_g[:, j], summed, atol=1e-5 * max(1.0, np.abs(summed).max()))
        for h in range(4):  # queries are per head in both
            assert np.allclose(eap_g[:, g.destination_index[f"a{layer}.h{h}<q>"]],
                               eap_u[:, u.destination_index[f"a{layer}.h{h}<q>"]], atol=1e-5)
    assert np.abs(eap_g).max() > 1e-3


@pytest.mark.parametrize("arch_model", [a for a in ARCHS if a != "gemma2"], indirect=True)
def test_circuit_forward_without_one_edge_is_that_edge_patched(arch_model):
    """The circuit forward (each head's queries and each key-value group's keys and values rebuilt from their
    own inputs) with every edge inside but one equals exact patching of that one edge (two separate engines),
    the whole graph equals the clean run and the empty one the counterfactual run."""
    model, _, batch, _ = arch_model
    graph = model.component_graph()
    clean, corrupt, delta = _runs(model, batch)
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    replacement = node_outputs(model, corrupt)
    edges = _some_edges(graph)
    patched = patched_edge_metrics(model, graph, batch, clean, delta.permute(2, 0, 1, 3).contiguous(), edges, ctx)
    for (i, j), want in zip(edges, patched):
        outside = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
        outside[i, j] = True
        got = circuit_metric(model, graph, batch, outside, replacement, ctx).double().sum()
        assert abs(float(got - want)) <= 1e-4 * max(1.0, abs(float(want))), graph.edges[0]
    nothing = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
    everything = torch.from_numpy(graph.real_edges)
    metric = lambda logits: oriented_metric("logit_diff", logits, batch)  # noqa: E731
    assert torch.allclose(circuit_metric(model, graph, batch, nothing, replacement, ctx),
                          metric(model.run(batch.tokens)), atol=1e-4)
    assert torch.allclose(circuit_metric(model, graph, batch, everything, replacement, ctx),
                          metric(model.run(batch.as_corrupted().tokens)), atol=1e-4)
