"""Edge methods on a tiny random-init GPT-2 (2 layers × 2 heads, MLPs) built here: exact edge
patching against a naive loop (one full forward per edge), EAP against the gradient formula
computed destination by destination, and the forward of an edge circuit against both."""
import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from circuitbench.models import hooks
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.edges import circuit_metric, node_outputs, output_deltas, patched_edge_metrics
from circuitbench.scores.interventions import oriented_metric, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task

from helpers import destination_gradient, naive_edge_metrics


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    batch = data.batch(0, 4)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)) * valid[:, :, None, None]
    return model, data, batch, clean, corrupt, delta


def source_major(delta):
    """[batch, pos, n_src, d] -> [n_src, batch, pos, d], the layout the engine takes."""
    return delta.permute(2, 0, 1, 3).contiguous()


def test_output_deltas_are_the_difference_of_node_outputs(tiny):
    model, _, batch, clean, corrupt, delta = tiny
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    assert torch.allclose(output_deltas(model, clean, corrupt, valid), source_major(delta), atol=1e-6)


def test_graph_of_the_tiny_model(tiny):
    model = tiny[0]
    graph = model.component_graph()
    assert graph.sources == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert graph.n_edges == 6 + 3 + 24 + 6 + 7


def test_exact_edge_patching_equals_one_forward_per_edge(tiny):
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    edges = [(int(i), int(j)) for j, i in zip(*np.nonzero(graph.real_edges.T))]
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    fast = patched_edge_metrics(model, graph, batch, clean, source_major(delta), edges, ctx)
    naive = naive_edge_metrics(model, graph, batch, clean, delta, edges)
    base = float(clean.metric.double().sum()) if clean.metric is not None else float(
        oriented_metric("logit_diff", model.run(batch.tokens), batch).double().sum())
    assert float((fast - naive).abs().max()) <= 1e-5
    assert float((naive - base).abs().max()) > 1e-3  # the edges do move the metric


def test_eap_equals_the_gradient_formula_destination_by_destination(tiny):
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    output = run_methods(model, data, ["eap"], MethodRun(4, metric="logit_diff"))["eap"]
    assert output.heads is None and output.mlps is None and output.traces is None  # edge scores only
    settings = {k: v for k, v in output.settings.items() if k != "memory"}  # memory: the plan (test_chunking.py)
    assert settings == {"method": "eap", "ablation": "counterfactual"}
    eap = output.edges.scores
    m_clean = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().mean())
    m_corr = float(oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch).double().mean())
    by_hand = np.zeros_like(eap)
    for j, dst in enumerate(graph.destinations):
        grad = destination_gradient(model, clean, batch, dst)
        for i in range(graph.n_upstream(dst)):  # EAP: Σ (a_u' − a_u) · ∂m/∂x_v, normalised like noising
            by_hand[i, j] = -float((delta[:, :, i] * grad).sum()) / len(batch) / (m_clean - m_corr)
    assert np.abs(eap - by_hand).max() <= 1e-5 * max(1.0, np.abs(by_hand).max())
    assert np.abs(by_hand).max() > 1e-3 and (eap[~graph.real_edges] == 0).all()


def test_eap_into_the_logits_is_the_closed_form_layernorm_gradient(tiny, tiny_gpt2_dir):
    """The u -> logits column of EAP against a formula derived by hand, with weights read from the
    HF checkpoint (not through the bridge): logit_diff = LN_f(x)·w at END, w = W_U[answer] −
    W_U[distractor], so ∂m/∂x = (g − mean g − x̂·mean(g ⊙ x̂)) / σ with g = γ ⊙ w, σ = √(var x + ε),
    x̂ = (x − mean x) / σ; the score is −Σ_prompts Δ_u(END)·∂m/∂x / n / (m_clean − m_corrupted)."""
    model, data, batch, clean, corrupt, delta = tiny
    hf = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    seen = {}
    hf.transformer.ln_f.register_forward_hook(lambda module, args, out: seen.__setitem__("x", args[0].detach()))
    rows, end = torch.arange(len(batch)), batch.end

    def logit_diff(tokens):
        with torch.no_grad():
            last = hf(tokens).logits[rows, end].double()
        return last[rows, batch.answer] - last[rows, batch.distractor]

    gap = float(logit_diff(batch.tokens).mean() - logit_diff(batch.as_corrupted().tokens).mean())
    logit_diff(batch.tokens)  # x: the clean run's final stream, the point EAP takes its gradient at
    x = seen["x"][rows, end].double()  # [batch, d_model]
    gamma, eps = hf.transformer.ln_f.weight.detach().double(), hf.config.layer_norm_epsilon
    unembed = hf.lm_head.weight.detach().double()
    g = gamma * (unembed[batch.answer] - unembed[batch.distractor])
    sigma = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    x_hat = (x - x.mean(-1, keepdim=True)) / sigma
    grad = (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True)) / sigma
    by_hand = -(delta[rows, end].double() * grad[:, None]).sum((0, 2)) / len(batch) / gap  # [n_src]
    column = run_methods(model, data, ["eap"], MethodRun(4, metric="logit_diff"))["eap"].edges.scores[:, -1]
    assert np.abs(column - by_hand.numpy()).max() <= 1e-5 * np.abs(by_hand.numpy()).max()
    assert (by_hand[1:] != 0).all()  # every head and MLP reaches the logits (END is the same token in both)


def test_circuit_forward_patches_exactly_the_edges_outside(tiny):
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    replacement = node_outputs(model, corrupt)
    nothing = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
    everything = torch.from_numpy(graph.real_edges)
    clean_m = oriented_metric("logit_diff", model.run(batch.tokens), batch)
    corrupt_m = oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch)
    assert torch.allclose(circuit_metric(model, graph, batch, nothing, replacement, ctx), clean_m, atol=1e-5)
    assert torch.allclose(circuit_metric(model, graph, batch, everything, replacement, ctx), corrupt_m, atol=1e-4)
    for name in ["input->a1.h0<k>", "a0.h1->m0", "m0->a1.h1<v>", "a1.h0->logits"]:
        i, j = graph.edge_position(name)
        one = nothing.clone()
        one[i, j] = True
        alone = patched_edge_metrics(model, graph, batch, clean, source_major(delta), [(i, j)], ctx)
        assert abs(float(circuit_metric(model, graph, batch, one, replacement, ctx).double().sum()) - float(
            alone[0])) < 1e-5


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt_neox", "llama", "toy-induction-2l"])
def test_edges_on_every_architecture(tiny_models, arch):
    """The circuit forward meets both ends (nothing patched: clean; everything: the counterfactual) and
    agrees with exact patching of single edges (grouped-query attention: edges into key-value groups)."""
    model = load_model(str(tiny_models[arch]) if arch in tiny_models else arch, device="cpu")
    task = "induction" if arch.startswith("toy") else "ioi"
    metric = "induction_loss" if arch.startswith("toy") else "logit_diff"
    data = encode_task(load_task(task).model_copy(update={"n_prompts": 3}), model.vocab, model.unk_id, model.n_ctx)
    batch = data.batch(0, 3)
    ctx = MethodContext(batch_size=3, metric=metric)
    graph = model.component_graph()
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)) * valid[:, :, None, None]
    names = [e for e in graph.edges if "a1." in e and "<k>" in e][:2] + [graph.edges[-1]]
    if graph.has_mlp:
        names.append(next(e for e in graph.edges if e.endswith("->m1")))
    edges = [graph.edge_position(e) for e in names]
    alone = patched_edge_metrics(model, graph, batch, clean, source_major(delta), edges, ctx)
    unpatched = float(oriented_metric(metric, model.run(batch.tokens), batch).double().sum())
    assert float((alone - unpatched).abs().max()) > 0
    replacement = node_outputs(model, corrupt)
    nothing = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
    clean_m = oriented_metric(metric, model.run(batch.tokens), batch)
    corrupt_m = oriented_metric(metric, model.run(batch.as_corrupted().tokens), batch)
    assert torch.allclose(circuit_metric(model, graph, batch, nothing, replacement, ctx), clean_m, atol=1e-4)
    assert torch.allclose(circuit_metric(model, graph, batch, torch.from_numpy(graph.real_edges), replacement, ctx),
                          corrupt_m, atol=1e-3)
    for (i, j), value in zip(edges, alone):
        one = nothing.clone()
        one[i, j] = True
        patched = float(circuit_metric(model, graph, batch, one, replacement, ctx).double().sum())
        assert abs(patched - float(value)) < 1e-4


def test_eap_ig_step_points_and_variants(tiny):
    from circuitbench.scores.methods.edges import _alphas
    from circuitbench.scores.methods.options import EapIgOptions

    assert _alphas(EapIgOptions(steps=5)) == [0.0, 0.2, 0.4, 0.6, 0.8]  # EAP-IG: k/m, k = 0…m−1
    assert _alphas(EapIgOptions(steps=4, variant="activations")) == [0.25, 0.5, 0.75, 1.0]  # k = 1…m
    assert _alphas(EapIgOptions(steps=2, points="midpoint")) == [0.25, 0.75]
    model, data = tiny[0], tiny[1]
    runs = {}
    for name, opts in {"published": {"steps": 3}, "midpoint": {"steps": 3, "points": "midpoint"},
                       "activations": {"steps": 2, "variant": "activations"}}.items():
        runs[name] = run_methods(model, data, ["eap_ig"], MethodRun(4, metric="logit_diff",
                                                                    method_options={"eap_ig": opts}))["eap_ig"]
        assert np.isfinite(runs[name].edges.scores).all() and runs[name].settings["steps"] == opts["steps"]
    assert runs["midpoint"].settings["alphas"] == [1 / 6, 0.5, 5 / 6]
    assert not np.allclose(runs["published"].edges.scores, runs["midpoint"].edges.scores)
    # one step of the inputs variant at α = 0 is EAP with the gradient taken on the counterfactual input
    from circuitbench.scores.edges import accumulate_edge_scores, input_gradients

    _, _, batch, clean, corrupt, delta = tiny
    outputs = run_methods(model, data, ["eap_ig", "eap"], MethodRun(4, metric="logit_diff",
                                                                     method_options={"eap_ig": {"steps": 1}}))
    graph = model.component_graph()
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    grads = input_gradients(model, batch, MethodContext(batch_size=4, metric="logit_diff"),
                            first=(hooks.resid_pre(0), lambda x: corrupt.resid[0].clone()))
    accumulate_edge_scores(model, graph, source_major(delta), grads, total)
    m_clean = float(oriented_metric("logit_diff", model.run(batch.tokens), batch).double().mean())
    m_corr = float(oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch).double().mean())
    expected = (-(total / 4) / (m_clean - m_corr)).numpy() * graph.real_edges
    assert np.abs(outputs["eap_ig"].edges.scores - expected).max() < 1e-6
    assert not np.allclose(outputs["eap_ig"].edges.scores, outputs["eap"].edges.scores)


class _NoRoomCache:
    """An activation cache entry without room: base runs are computed batch by batch, as with no
    cache, but eap_ig cannot share its α = 0 step (the corrupted run is expected from the cache)."""

    def read(self, *_):
        return None

    def room_for(self, _):
        return False


def test_eap_ig_inputs_shares_the_alpha_zero_step_with_the_corrupted_run(tiny):
    """α = 0 runs the counterfactual input itself: m steps cost m + 1 forwards per batch (the clean
    base run and the steps), not m + 2, and give the scores of a separate corrupted run."""
    from circuitbench.scores.methods.edges import eap_ig

    model, data = tiny[0], tiny[1]
    calls = []
    handle = model.bridge.blocks[-1].original_component.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        shared = eap_ig(model, data, MethodContext(batch_size=4, metric="logit_diff", options={"steps": 3}))
        shared_forwards, calls[:] = len(calls), []
        separate = eap_ig(model, data, MethodContext(batch_size=4, metric="logit_diff", options={"steps": 3},
                                                     cache_entry=_NoRoomCache()))
        separate_forwards = len(calls)
    finally:
        handle.remove()
    assert (shared_forwards, separate_forwards) == (3 + 1, 3 + 2)
    assert np.abs(shared.edges.scores - separate.edges.scores).max() < 1e-6
    assert np.abs(shared.edges.scores).max() > 1e-3


def test_edge_patching_from_the_first_difference_equals_every_position(tiny, monkeypatch):
    """Forwards that start where the deltas stop being zero (the counterfactual's shared prefix),
    from the keys and values before it, give the numbers of forwards over every position."""
    model, data, batch, clean, corrupt, delta = tiny
    graph = model.component_graph()
    edges = [(int(i), int(j)) for j, i in zip(*np.nonzero(graph.real_edges.T))]
    ctx = MethodContext(batch_size=4, metric="logit_diff")
    starts = []
    assert model.prefix_forwards()  # its self-check first: its own prefixes are not the ones counted here
    record = model.key_value_prefix
    monkeypatch.setattr(model, "key_value_prefix", lambda tokens: starts.append(tokens.shape[1]) or record(tokens))
    from_prefix = patched_edge_metrics(model, graph, batch, clean, source_major(delta), edges, ctx)
    assert starts and min(starts) > 0 and sorted(set(starts)) == sorted(set(batch.first_difference().tolist()))
    monkeypatch.setattr(model, "prefix_forwards", lambda: False)
    everywhere = patched_edge_metrics(model, graph, batch, clean, source_major(delta), edges, ctx)
    assert float((from_prefix - everywhere).abs().max()) <= 1e-5
    assert float(everywhere.abs().max()) > 0
