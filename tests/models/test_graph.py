"""The component graph: EAP-IG's node and edge naming and counts, and that the graph is what each
architecture's forward computes (every node input is the sum of its upstream nodes' outputs)."""
import numpy as np
import pytest
import torch

from circuitbench.models import hooks
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loading import load_model


def test_graph_names_and_counts_match_eap_ig():
    gpt2 = ComponentGraph(12, 12)
    assert gpt2.n_edges == 32491  # MIB's edge count for GPT-2 small
    assert len(gpt2.sources) == 1 + 12 * 13 and len(gpt2.destinations) == 12 * 37 + 1
    assert gpt2.edges[0] == "input->a0.h0<q>" and gpt2.edges[-1] == "m11->logits"
    assert gpt2.edge_position("a0.h1->a2.h3<k>") == (2, gpt2.destination_index["a2.h3<k>"])
    assert gpt2.destination_index["a2.h3<k>"] == 2 * 37 + 12 + 3  # EAP-IG's backward index
    assert "a1.h0->m1" in gpt2.edges and "m1->a1.h0<q>" not in gpt2.edges
    parallel = ComponentGraph(2, 2, parallel_attn_mlp=True)
    assert "a1.h0->m1" not in parallel.edges and "a0.h0->m1" in parallel.edges and "m0->m1" in parallel.edges
    attn_only = ComponentGraph(2, 4, has_mlp=False)
    assert not [n for n in attn_only.nodes if n.startswith("m")]
    assert attn_only.n_edges == 4 * 3 * 1 + 4 * 3 * 5 + 9  # layer 0 heads, layer 1 heads, logits
    with pytest.raises(ValueError, match="no edge"):
        gpt2.edge_position("a3.h0->a1.h0<q>")
    with pytest.raises(ValueError, match="not an edge name"):
        gpt2.edge_position("a0.h0->a1.h0")


@pytest.mark.parametrize("model, n_layers, n_heads, n_edges", [
    ("gpt2-small", 12, 12, 32_491),
    ("Qwen2.5-0.5B", 24, 14, 179_749),
    ("Gemma-2-2B", 26, 8, 74_218),
    ("Llama-3.1-8B (ungrouped)", 32, 32, 1_592_881),
])
def test_edge_counts_are_eap_igs_on_real_configs(model, n_layers, n_heads, n_edges):
    """Golden values needing no weights (issue 24): EAP-IG's edge count, every head's q/k/v input from
    every upstream node (input, earlier heads and MLPs), every MLP from upstream and its own layer's
    heads, the logits from everything; grouped-query models counted ungrouped, one query head each."""
    graph = ComponentGraph(n_layers, n_heads)
    assert graph.n_edges == n_edges, model
    per_layer = n_heads + 1
    by_formula = sum(3 * n_heads * (1 + per_layer * l) + (1 + per_layer * l + n_heads) for l in range(n_layers)) \
        + 1 + n_layers * per_layer
    assert by_formula == n_edges


def test_prune_removes_dangling_nodes_as_eap_ig_does():
    g = ComponentGraph(2, 2)
    keep = np.zeros(g.real_edges.shape, dtype=bool)
    for name in ["input->a0.h0<q>", "a0.h0->m1", "m1->logits", "a0.h1->a1.h0<v>"]:  # a0.h1 has no input: dropped
        keep[g.edge_position(name)] = True
    edges, nodes = g.prune(keep)
    assert set(g.as_dict(edges.astype(float)).keys()) >= {"input->a0.h0<q>", "a0.h0->m1", "m1->logits"}
    assert {name for name, v in g.as_dict(edges.astype(float)).items() if v} == {
        "input->a0.h0<q>", "a0.h0->m1", "m1->logits"}
    assert [g.sources[i] for i in np.flatnonzero(nodes)] == ["input", "a0.h0", "m1"]


def _node_outputs(model, cache, layer):
    w = model.attention_weights(layer)
    heads = torch.einsum("bphe,hed->bphd", cache[hooks.head_outputs(layer)], w.output)
    return heads, w.output_bias


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox", "llama", "toy-induction-2l", "tracr-hist"])
def test_every_node_input_is_the_sum_of_its_upstream_outputs(tiny_models, arch):
    model = load_model(str(tiny_models[arch]) if arch in tiny_models else arch, device="cpu")
    graph = model.component_graph()
    assert graph.has_mlp == (arch != "toy-induction-2l") and graph.parallel_attn_mlp == (arch == "gpt_neox")
    tokens = torch.randint(1, 12, (2, 5))
    n = model.n_layers
    sites = [hooks.resid_pre(0), hooks.resid_post(n - 1)]
    for l in range(n):
        sites += [hooks.resid_pre(l), hooks.head_outputs(l), hooks.projection_input("q", l),
                  hooks.projection_input("k", l), hooks.projection_input("v", l)]
        if graph.has_mlp:
            sites += [hooks.mlp_out(l), hooks.mlp_in(l)]
    _, cache = model.run_with_cache(tokens, sites)
    outputs = {"input": cache[hooks.resid_pre(0)]}
    bias = torch.zeros_like(outputs["input"])  # the b_O of every block so far: part of every later input
    for l in range(n):
        heads, b_O = _node_outputs(model, cache, l)
        resid = sum(outputs.values()) + bias
        assert torch.allclose(resid, cache[hooks.resid_pre(l)], atol=1e-4), f"resid_pre.{l}"
        for kind in "qkv":
            read = model.normalize_attention_input(l, cache[hooks.resid_pre(l)])
            assert torch.allclose(read, cache[hooks.projection_input(kind, l)], atol=1e-5)
        outputs.update({f"a{l}.h{h}": heads[:, :, h] for h in range(model.n_heads)})
        bias = bias + b_O
        if graph.has_mlp:
            upstream = [graph.sources[i] for i in range(graph.n_upstream(f"m{l}"))]
            mlp_read = sum(outputs[u] for u in upstream) + bias - (b_O if graph.parallel_attn_mlp else 0)
            assert torch.allclose(model.normalize_mlp_input(l, mlp_read), cache[hooks.mlp_in(l)], atol=1e-4)
            outputs[f"m{l}"] = cache[hooks.mlp_out(l)]
    assert list(outputs) == graph.sources
    assert torch.allclose(sum(outputs.values()) + bias, cache[hooks.resid_post(n - 1)], atol=1e-4)


def test_grouped_graph_has_key_and_value_inputs_per_group():
    """Llama-3.1-8B's shape (32 layers × 32 query heads over 8 key-value heads): per block 32 query inputs and
    8 key and 8 value inputs, each read by its group's 4 heads; counted here by formula."""
    g = ComponentGraph(32, 32, n_kv_heads=8)
    per_layer = 32 + 1
    by_formula = sum((32 + 2 * 8) * (1 + per_layer * l) + (1 + per_layer * l + 32) for l in range(32)) \
        + 1 + 32 * per_layer
    assert g.n_edges == by_formula == 1_592_881 - 2 * 24 * sum(1 + per_layer * l for l in range(32))
    assert g.destinations[32:34] == ["a0.kv0<k>", "a0.kv1<k>"] and g.destinations[40] == "a0.kv0<v>"
    assert g.destination_nodes("a3.kv2<v>") == ["a3.h8", "a3.h9", "a3.h10", "a3.h11"]
    assert g.edge_position("a0.h5->a1.kv7<k>") == (6, g.destination_index["a1.kv7<k>"])
    with pytest.raises(ValueError, match="no edge"):
        g.edge_position("a1.h0->a1.kv0<k>")
    with pytest.raises(ValueError, match="not an edge name"):
        g.edge_position("a0.h0->a1.kv0<q>")
    assert ComponentGraph.from_config(g.config()) == g and g.config()["n_key_value_heads"] == 8
    assert ComponentGraph.from_config(ComponentGraph(2, 4).config()) == ComponentGraph(2, 4)
    with pytest.raises(ValueError, match="does not divide"):
        ComponentGraph(2, 4, n_kv_heads=3)


def test_prune_keeps_a_key_value_input_while_one_head_of_its_group_lives():
    g = ComponentGraph(2, 4, n_kv_heads=2)  # groups: heads 0, 1 and heads 2, 3
    keep = np.zeros(g.real_edges.shape, dtype=bool)
    for name in ["input->a0.kv0<k>", "input->a0.h1<q>", "a0.h1->logits",  # h1 lives: its group's key stays
                 "input->a0.kv1<v>", "a0.h2->m0"]:  # h2 reaches nothing that reaches the logits: kv1's input goes
        keep[g.edge_position(name)] = True
    edges, nodes = g.prune(keep)
    assert {name for name, v in g.as_dict(edges.astype(float)).items() if v} == {
        "input->a0.kv0<k>", "input->a0.h1<q>", "a0.h1->logits"}
    assert [g.sources[i] for i in np.flatnonzero(nodes)] == ["input", "a0.h1"]
