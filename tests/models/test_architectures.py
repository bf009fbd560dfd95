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
from circuitbench.scores.edges import node_outputs, patched_edge_metrics
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

from helpers import destination_hooks, naive_edge_metrics

ARCHS = ["gpt2", "gpt_neo", "gpt_neox", "llama", "qwen2", "gemma2", "mistral", "phi"]
GQA = {"llama", "qwen2", "gemma2", "mistral"}  # 4 query heads over 2 key-value heads
PARALLEL = {"gpt_neox", "phi"}
METHODS = ["activation_patching", "attribution_patching", "ablation", "nap", "eap", "eap_ig", "edge_patching", "ifr",
           "acdc", "edge_pruning"]
OPTIONS = {"acdc": {"tau": 0.05}, "edge_pruning": {"steps": 3}, "eap_ig": {"steps": 2}}
# Edge methods that rebuild each query head's own q, k, v input: refused under grouped-query attention today.
PER_HEAD_INPUTS = {"eap", "eap_ig", "acdc", "edge_pruning"}
EDGE_METHODS = PER_HEAD_INPUTS | {"edge_patching", "ifr"}


def expected_refusal(arch: str, method: str) -> str | None:
    """The words the refusal must contain (None: the method runs)."""
    if arch == "gemma2" and method in EDGE_METHODS:
        return "post-norms"
    if arch in GQA and method in PER_HEAD_INPUTS:
        return "grouped-query attention"
    return None


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
    """A handful of edges: every kind of destination (q, k, v of heads in both key-value groups, each
    MLP, the logits) from the input, a head and an MLP where they feed it."""
    out = []
    for dst in ["a0.h1<q>", "a1.h0<q>", "a1.h3<k>", "a1.h2<v>", "m0", "m1", "logits"]:
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
    # edges counted by hand: per layer 3·4 head inputs read 1 + 5·layer sources, the MLP one more layer's heads
    # (not in parallel blocks), the logits all 11 sources
    mlp_reads = [1 + 5 * layer + (0 if arch in PARALLEL else 4) for layer in range(2)]
    assert graph.n_edges == sum(12 * (1 + 5 * layer) for layer in range(2)) + sum(mlp_reads) + 11
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
        assert scores.shape == ((11, 27) if method in EDGE_METHODS else (2, 4)), method
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


@pytest.mark.parametrize("arch_model", [a for a in ARCHS if a not in GQA], indirect=True)
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
        probe = {}

        def add_probe(x):
            probe["p"] = torch.zeros_like(x, requires_grad=True)
            return x + probe["p"]

        with model.frozen_weights(), torch.enable_grad():
            logits = model.run_with_hooks(batch.tokens, destination_hooks(model, clean, graph.destinations[j],
                                                                           add_probe), grad=True)
            (grad,) = torch.autograd.grad(oriented_metric("logit_diff", logits, batch).sum(), probe["p"])
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
