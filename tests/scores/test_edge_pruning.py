"""edge_pruning (learned hard-concrete edge masks) and the soft-masked circuit forward it trains
through, on a tiny random-init GPT-2 (2 layers × 2 heads, MLPs) and the tracr zoo: the soft mask
meets the exact edge machinery at 0/1 and at a fractional value, its gradient is the finite
difference, a seed fixes the scores, and on tracr-detect-abc the learned circuit holds every
reference node that counterfactual patching can see."""
import json
import math

import numpy as np
import pytest
import torch

from circuitbench.circuits.edge_faithfulness import circuit_of
from circuitbench.models.loading import load_model
from circuitbench.models.toy import ZOO_DIR
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.edges import circuit_metric, masked_logits, node_outputs, patched_edge_metrics
from circuitbench.scores.interventions import oriented_metric, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.edge_pruning import keep_probability, sample_gates
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.scores.visibility import invisible_nodes, visibility
from circuitbench.specs.catalog import load_task


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id, model.n_ctx)
    batch = data.batch(0, 4)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    return model, data, batch, clean, corrupt


CTX = MethodContext(batch_size=4, metric="logit_diff")


def soft_metric(model, batch, mask, replacement):
    logits, scored = masked_logits(model, model.component_graph(), batch, mask, replacement, CTX)
    return oriented_metric("logit_diff", logits, scored)


def test_soft_mask_meets_the_clean_run_the_counterfactual_run_and_edge_circuits(tiny):
    model, _, batch, clean, corrupt = tiny
    graph = model.component_graph()
    replacement = node_outputs(model, corrupt)
    shape = graph.real_edges.shape
    clean_m = oriented_metric("logit_diff", model.run(batch.tokens), batch)
    corrupt_m = oriented_metric("logit_diff", model.run(batch.as_corrupted().tokens), batch)
    assert float((clean_m - corrupt_m).abs().max()) > 1e-2  # the two ends differ
    assert torch.allclose(soft_metric(model, batch, torch.ones(shape), replacement), clean_m, atol=1e-5)
    assert torch.allclose(soft_metric(model, batch, torch.zeros(shape), replacement), corrupt_m, atol=1e-4)
    rng = np.random.default_rng(0)
    for _ in range(3):  # a 0/1 mask is the edge circuit of its ones
        keep = rng.random(shape) < 0.5
        outside = torch.from_numpy(graph.real_edges & ~keep)
        exact = circuit_metric(model, graph, batch, outside, replacement, CTX)
        soft = soft_metric(model, batch, torch.from_numpy(keep).float(), replacement)
        assert float((soft - exact).abs().max()) <= 1e-5
        assert float((exact - clean_m).abs().max()) > 1e-3
    # a fractional mask on one edge: its destination reads x_v + (1 − mask)·(a'_u − a_u), which exact
    # patching of that edge alone with the scaled difference computes by its own route
    delta = (node_outputs(model, corrupt) - node_outputs(model, clean)).permute(2, 0, 1, 3).contiguous()
    valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).float()
    for name in ["input->a0.h1<v>", "a0.h0->m0", "a0.h0->a1.h1<v>", "a1.h0->logits"]:  # edges that matter here
        i, j = graph.edge_position(name)
        mask = torch.ones(shape)
        mask[i, j] = 0.3
        soft = float(soft_metric(model, batch, mask, replacement).double().sum())
        scaled = 0.7 * delta * valid[None, :, :, None]  # padding never reaches END: the edge is the same
        exact = float(patched_edge_metrics(model, graph, batch, clean, scaled, [(i, j)], CTX)[0])
        assert abs(soft - exact) < 1e-5, name
        assert abs(soft - float(clean_m.double().sum())) > 1e-3, name


def test_gradient_of_one_mask_entry_is_the_finite_difference(tiny):
    model, _, batch, _, corrupt = tiny
    graph = model.component_graph()
    replacement = node_outputs(model, corrupt)
    generator = torch.Generator().manual_seed(1)
    base = (0.2 + 0.6 * torch.rand(graph.real_edges.shape, generator=generator)).double()
    # to 0.3 % (the step's own error) plus 2e-6: the metric is float32, whose rounding puts ~1e-6 of noise
    # on a difference quotient at h = 0.05 (the key edge's slope, ~3e-5, is then checked to ~7 %)
    for name in ["input->a0.h1<v>", "a0.h1->m0", "a0.h0->a1.h1<v>", "m0->logits", "input->a0.h1<k>"]:
        i, j = graph.edge_position(name)
        mask = base.float().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(soft_metric(model, batch, mask, replacement).sum(), mask)
        h = 0.05

        def value(x):
            m = base.clone()
            m[i, j] = x
            return float(soft_metric(model, batch, m.float(), replacement).double().sum())

        fd = (value(base[i, j] + h) - value(base[i, j] - h)) / (2 * h)
        assert abs(float(grad[i, j]) - fd) <= 3e-3 * abs(fd) + 2e-6, (name, float(grad[i, j]), fd)
        assert abs(fd) > 1e-5, name  # the edge moves the metric
    # entries off the graph's edges are ignored
    mask = base.float().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(soft_metric(model, batch, mask, replacement).sum(), mask)
    assert float(grad[~torch.from_numpy(graph.real_edges)].abs().max()) == 0.0


def test_hard_concrete_gates_follow_their_distribution():
    log_alpha = torch.tensor([-2.0, 0.0, 1.5])
    gates = sample_gates(log_alpha.expand(200_000, 3), torch.Generator().manual_seed(0))
    assert float(gates.min()) == 0.0 and float(gates.max()) == 1.0
    # P(z > 0) = σ(log α − β log(−l/r)), β = 2/3, (l, r) = (−0.1, 1.1): the expected L0 of each gate
    by_formula = torch.sigmoid(log_alpha - 2 / 3 * math.log(0.1 / 1.1))
    assert torch.allclose(keep_probability(log_alpha), by_formula)
    assert torch.allclose((gates > 0).double().mean(0), by_formula.double(), atol=0.0045)  # 4 standard errors


def test_same_seed_same_scores_and_settings_say_what_ran(tiny):
    model, data = tiny[0], tiny[1]

    def run(seed):
        options = {"edge_pruning": {"steps": 12, "seed": seed}}
        return run_methods(model, data, ["edge_pruning"], MethodRun(4, metric="logit_diff",
                                                                    method_options=options))["edge_pruning"]
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a.edges.scores, b.edges.scores) and a.settings == b.settings
    assert not np.array_equal(a.edges.scores, c.edges.scores)
    graph = model.component_graph()
    scores = a.edges.scores
    inside = scores[graph.real_edges]
    assert (scores[~graph.real_edges] == 0).all() and ((inside > 0) & (inside < 1)).all()
    s = a.settings
    # setup: the counterfactual run, the full and the all-ablated circuit forwards; one batch of 4 prompts
    assert s["steps"] == 12 and s["forwards"]["train"] == 12 and s["forwards"]["setup"] == 3
    assert s["final_expected_edges"] == pytest.approx(float(scores.sum()))
    assert s["learned_edges"] == round(s["final_expected_edges"]) and np.isfinite(s["final_loss"])


def test_learned_circuit_on_tracr_detect_abc_holds_every_visible_reference_node():
    """tracr detect_pattern(abc): m0 token tests -> a1.h0, a1.h1 (shift by 2, by 1) -> m1, m2. Every
    reference node changes under the task's counterfactuals, so the learned circuit (Edge Pruning's:
    the round(E[L0]) edges of largest log α, dangling nodes pruned) must hold them all."""
    model = load_model("tracr-detect-abc", device="cpu")
    spec = load_task("tracr_detect_abc")
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    reference = set(json.loads((ZOO_DIR / "tracr-detect-abc" / "circuit.json").read_text())["nodes"])
    visible = reference - set(invisible_nodes(visibility(model, data, MethodContext(batch_size=32))))
    assert visible == reference
    output = run_methods(model, data, ["edge_pruning"], MethodRun(32, metric=spec.metric,
                                                                  method_options={"edge_pruning": {"steps": 200}}))
    result = output["edge_pruning"]
    graph = model.component_graph()
    order = sorted(graph.edges, key=lambda e: -result.edges.scores[graph.edge_position(e)])
    learned = circuit_of(graph, order[: result.settings["learned_edges"]], "edge_pruning", {})
    nodes = {f"a{l}.h{h}" for l, h in learned.heads} | {f"m{l}" for l in learned.mlps}
    assert visible <= nodes
    assert len(learned.edges) <= 0.2 * graph.n_edges and result.settings["learned_loss"] < 0.05


def test_lagrangian_brings_the_expected_edge_count_to_the_target(tiny):
    """Edge Pruning's Lagrangian: with target sparsity t the expected L0 ends at about (1 − t)·N."""
    model, data = tiny[0], tiny[1]
    n = model.component_graph().n_edges
    for target in (0.5, 0.8):
        options = {"edge_pruning": {"steps": 200, "target_sparsity": target}}
        s = run_methods(model, data, ["edge_pruning"], MethodRun(4, metric="logit_diff",
                                                                 method_options=options))["edge_pruning"].settings
        assert abs(s["final_expected_edges"] - (1 - target) * n) <= 0.05 * n, (target, s["final_expected_edges"])
        assert s["target_sparsity"] == target and "l0_lambda" not in s


def test_learned_loss_is_the_learned_circuits_distance_from_the_model(tiny):
    """objective task: learned_loss = |m(M) − m(C)| / |m(M) − m(∅)| = |1 − f(C)| of the learned circuit
    (its top learned_edges edges), here under zero ablation, as edge faithfulness computes it."""
    from circuitbench.circuits.edge_faithfulness import EdgeBaseline
    from circuitbench.scores.ablations import Zero

    model, data = tiny[0], tiny[1]
    options = {"edge_pruning": {"steps": 20, "objective": "task", "ablation": "zero", "l0_lambda": 20.0}}
    out = run_methods(model, data, ["edge_pruning"], MethodRun(4, metric="logit_diff",
                                                               method_options=options))["edge_pruning"]
    graph = model.component_graph()
    k = out.settings["learned_edges"]
    assert 0 < k < graph.n_edges
    order = np.argsort(-out.edges.scores[graph.real_edges], kind="stable")[:k]
    keep = np.zeros(graph.real_edges.shape, dtype=bool)
    keep[tuple(a[order] for a in np.nonzero(graph.real_edges))] = True
    baseline = EdgeBaseline(model, data, Zero(), MethodContext(batch_size=4, metric="logit_diff"))
    distance = abs(baseline.m_full - baseline.metric(keep)) / abs(baseline.m_full - baseline.m_empty)
    assert out.settings["learned_loss"] == pytest.approx(distance, rel=1e-4, abs=1e-6)
    assert distance > 1e-3


def test_an_ablation_the_task_cannot_feed_is_refused_naming_the_option(tiny):
    from dataclasses import replace

    from circuitbench.errors import CircuitbenchError
    from circuitbench.scores.methods.edge_pruning import edge_pruning

    model, data = tiny[0], tiny[1]
    without = replace(data, corrupted=None)
    for ablation in ("counterfactual", "mean_counterfactual"):
        with pytest.raises(CircuitbenchError, match=f"method_options.edge_pruning.ablation = {ablation} needs"):
            edge_pruning(model, without, MethodContext(batch_size=4, options={"ablation": ablation}))
    unaligned = replace(data, corrupted_lengths=data.lengths.clone())
    with pytest.raises(CircuitbenchError, match="another token length"):
        edge_pruning(model, unaligned, MethodContext(batch_size=4, options={"steps": 1}))
    # zero ablation needs no counterfactual: it trains
    out = edge_pruning(model, without, MethodContext(batch_size=4, options={"ablation": "zero", "steps": 2}))
    assert out.settings["ablation"] == "zero" and out.settings["forwards"]["setup"] == 2
