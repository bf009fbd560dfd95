"""Edge scores in chunks (scores/chunking.py) equal the unchunked computation on the tiny random-init
GPT-2 (2 layers × 2 heads, 7 sources): prompts in sub-batches, sources a slice at a time (chunk sizes
that do not divide the counts among them), EAP-IG's steps summed or contracted one by one; the
reference is the unchunked run (every source's deltas, all prompts in one batch). The model runs in
float64 here, so that what is compared is the chunking's algebra and not float32's dependence on
the batch's shape (about 5e-6 of the largest score at float32: that is the forward, not the chunks)."""
import numpy as np
import pytest
import torch

from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.chunking import Chunks, patched_edges, source_slices
from circuitbench.scores.edges import (
    DestinationGradients,
    accumulate_edge_scores,
    input_gradients,
    output_deltas,
    patched_edge_metrics,
    valid_positions,
)
from circuitbench.scores.interventions import record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task

N = 7  # prompts: sub-batches of 3 and 4 leave remainders


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    from circuitbench.models.loading import load_model

    model = load_model(str(tiny_gpt2_dir), device="cpu")
    model.bridge.to(torch.float64)
    model.dtype = "float64"
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": N}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-6) -> None:
    scale = float(np.abs(b).max())
    assert scale > 1e-3  # the scores are not all zero
    assert float(np.abs(a - b).max()) <= rel * scale


def _plan(batch: int, source_chunk: int, sum_steps: bool = True):
    """A plan forced to these chunk sizes (the planner's own choices are tested in test_memory_plan.py)."""
    from circuitbench.scores import chunking

    def forced(method, model, data, ctx, steps=1, whole_sources=False):
        plan = real(method, model, data, ctx, steps, whole_sources)
        return plan.model_copy(update={"batch_size": min(batch, ctx.batch_size), "source_chunk": source_chunk,
                                       "sum_steps": sum_steps})
    real = chunking.plan_for
    return forced


def test_source_slices_cover_every_source_once():
    for n, k in [(7, 3), (7, 7), (7, 10), (157, 40), (5, 1)]:
        parts = source_slices(n, k)
        assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
        assert all(p.stop - p.start <= k for p in parts)


def test_output_deltas_of_a_slice_are_those_rows(tiny):
    model, data = tiny
    batch = data.batch(0, N)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    valid = valid_positions(batch, model.device)
    full = output_deltas(model, clean, corrupt, valid)
    for part in source_slices(full.shape[0], 3) + [slice(2, 6), slice(6, 7)]:
        assert torch.equal(output_deltas(model, clean, corrupt, valid, sources=part), full[part])


def _reference_eap(model, data) -> np.ndarray:
    """The one-shot EAP sum Σ Δ·∇m over all prompts in one batch (every source's deltas at once)."""
    graph = model.component_graph()
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    batch = data.batch(0, len(data))
    ctx = MethodContext(batch_size=len(data))
    grads = input_gradients(model, batch, ctx)
    _, corrupt = record_base_run(model, batch.as_corrupted().tokens)
    accumulate_edge_scores(model, graph, output_deltas(model, grads.run, corrupt, valid_positions(batch, model.device)),
                           grads, total)
    return total.numpy()


@pytest.mark.parametrize("batch,source_chunk", [(3, 7), (7, 3), (4, 2), (1, 1)])
def test_eap_chunked_equals_unchunked(tiny, monkeypatch, batch, source_chunk):
    model, data = tiny
    from circuitbench.scores.methods import edges as methods

    graph = model.component_graph()
    whole = run_methods(model, data, ["eap"], MethodRun(N, memory_budget=10**15))["eap"]
    plan = whole.settings["memory"]
    assert plan["batch_size"] == N and plan["source_chunk"] == len(graph.sources)
    monkeypatch.setattr(methods, "plan_for", _plan(batch, source_chunk))
    out = run_methods(model, data, ["eap"], MethodRun(N))["eap"]
    assert out.settings["memory"]["source_chunk"] == source_chunk
    _close(out.edges.scores, whole.edges.scores)
    # the unchunked method is the engine's one-shot sum, normalised: a constant factor −1 / (n · |gap|)
    reference, scores = _reference_eap(model, data)[graph.real_edges], whole.edges.scores[graph.real_edges]
    assert np.allclose(scores, reference * (scores @ reference) / (reference @ reference), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("batch,source_chunk,sum_steps", [(7, 7, False), (3, 3, True), (4, 5, False)])
def test_eap_ig_chunked_equals_unchunked(tiny, monkeypatch, batch, source_chunk, sum_steps):
    model, data = tiny
    from circuitbench.scores.methods import edges as methods

    options = {"eap_ig": {"steps": 2}}
    whole = run_methods(model, data, ["eap_ig"], MethodRun(N, method_options=options, memory_budget=10**15))["eap_ig"]
    assert whole.settings["memory"]["sum_steps"] and whole.settings["memory"]["batch_size"] == N
    monkeypatch.setattr(methods, "plan_for", _plan(batch, source_chunk, sum_steps))
    out = run_methods(model, data, ["eap_ig"], MethodRun(N, method_options=options))["eap_ig"]
    assert out.settings["memory"]["sum_steps"] == sum_steps
    _close(out.edges.scores, whole.edges.scores)


def test_eap_ig_steps_summed_equal_the_engine_sum(tiny):
    """Σ_k w_k Δ·∇m_k contracted step by step = Δ · (Σ_k w_k ∇m_k) (DestinationGradients) on one batch."""
    model, data = tiny
    graph = model.component_graph()
    batch = data.batch(0, N)
    ctx = MethodContext(batch_size=N)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    delta = output_deltas(model, clean, corrupt, valid_positions(batch, model.device))
    passes = [input_gradients(model, batch, ctx), input_gradients(model, batch, ctx, first=None)]
    summed, one_by_one = (torch.zeros(graph.real_edges.shape, dtype=torch.float64) for _ in range(2))
    acc = DestinationGradients.zeros()
    for g, w in zip(passes, (0.25, 0.75)):
        acc.add(model, g, w)
        accumulate_edge_scores(model, graph, delta[:4], g, one_by_one, w)
        accumulate_edge_scores(model, graph, delta[4:], g, one_by_one, w, first_source=4)
    accumulate_edge_scores(model, graph, delta, acc, summed)
    _close(one_by_one.numpy(), summed.numpy())


@pytest.mark.parametrize("source_chunk", [3])
def test_edge_patching_with_source_slices_equals_all_sources(tiny, source_chunk):
    model, data = tiny
    graph = model.component_graph()
    batch = data.batch(0, 4)
    ctx = MethodContext(batch_size=4)
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    edges = [(int(i), int(j)) for j, i in zip(*np.nonzero(graph.real_edges.T))]
    whole = patched_edge_metrics(model, graph, batch, clean,
                                 output_deltas(model, clean, corrupt, valid_positions(batch, model.device)), edges, ctx)
    sliced = patched_edges(model, graph, batch, clean, corrupt, edges, ctx, Chunks(4, source_chunk))
    clean_sum = float(clean.metric.double().sum()) if clean.metric is not None else 0.0
    _close((sliced - clean_sum).numpy(), (whole - clean_sum).numpy())


def test_edge_patching_sub_batches_equal_one_batch(tiny, monkeypatch):
    model, data = tiny
    from circuitbench.scores.methods import edges as methods

    whole = run_methods(model, data, ["edge_patching"], MethodRun(N, memory_budget=10**15))["edge_patching"]
    monkeypatch.setattr(methods, "plan_for", _plan(3, 4))
    out = run_methods(model, data, ["edge_patching"], MethodRun(N))["edge_patching"]
    assert out.settings["memory"]["batch_size"] == 3
    _close(out.edges.scores, whole.edges.scores)
