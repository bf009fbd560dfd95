"""Edge methods: scores of every edge of the component graph (models/graph.py), normalised like
noising patching, (m_clean − m_patched) / |m_clean − m_corrupted|, averaged over prompts.

- `eap`: edge attribution patching (Syed et al. 2023, as EAP-IG computes it): −Σ (a_u' − a_u) ·
  ∂m/∂x_v over positions, a_u the source's clean output, a_u' its counterfactual one, the gradient
  at the destination's input on the clean run.
- `eap_ig`: EAP with integrated gradients (Hanna et al. 2024). `variant: inputs` averages the
  gradients over m forwards whose input embedding is corr + α·(clean − corr), α = k/m for
  k = 0…m−1 (EAP-IG's get_scores_eap_ig); `variant: activations` interpolates one layer's outputs
  at a time (the input, each attention layer, each MLP), α = k/m for k = 1…m, and averages over
  all those forwards (get_scores_ig_activations). `points: midpoint` uses α = (k + ½)/m instead.
- `edge_patching`: exact; each edge patched alone (scores/edges.py), the reference the two
  approximations are checked against. One forward per edge from its destination's block, so it is
  refused (with the estimate) above `max_forwards`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.chunking import Chunks, StepSum, add_attribution, patched_edges, plan_for, sub_batched
from circuitbench.scores.edges import (
    accumulate_edge_scores,
    check_edges,
    edge_layer,
    input_gradients,
    output_deltas,
    patched_edge_metrics,
    valid_positions,
)
from circuitbench.scores.interventions import BaseRun, Input, base_runs
from circuitbench.scores.methods.attribution import alphas_of
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import EapIgOptions, EapOptions, EdgePatchingOptions
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput, SpanEdgeScores
from circuitbench.scores.span_edges import SpanTotals, assembled


def _normalised(model: LoadedModel, total: torch.Tensor, m_clean: float, m_corr: float, n: int,
                attribution: bool) -> np.ndarray:
    """Per-edge (m_clean − m_patched) / |m_clean − m_corr|: from the attribution sum −Σ Δ·∇m, or
    from the patched metric sums. The denominator's absolute value keeps each score's sign the
    effect's own (positive: patching the edge lowers the metric), so a signed ranking is MIB's even
    when the clean run scores below the counterfactual one."""
    gap = abs(m_clean - m_corr) / n
    if abs(gap) < 1e-9:
        raise CircuitbenchError(f"Clean and corrupted prompts give the same metric on '{model.name}': edge scores "
                                "are undefined.")
    mask = torch.from_numpy(model.component_graph().real_edges)
    values = -(total / n) / gap if attribution else (m_clean / n - total / n) / gap
    return (values * mask).numpy()


def _delta(model: LoadedModel, batch, clean: BaseRun, corrupt: BaseRun) -> torch.Tensor:
    """[n_src, batch, pos, d_model] counterfactual minus clean output of every source node (0 at padding)."""
    return output_deltas(model, clean, corrupt, valid_positions(batch, model.device))


def eap(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    check_edges(model, "eap")
    graph = model.component_graph()
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    spans = SpanTotals.start(data, graph, EapOptions.model_validate(ctx.options).positions)
    plan = plan_for("eap", model, data, ctx, whole_sources=spans is not None)  # bounded memory (scores/chunking.py)
    chunks = Chunks.of(plan)
    m_clean = m_corr = 0.0
    for batch, runs in base_runs(model, data, sub_batched(ctx, chunks), ("corrupted",)):
        corrupt = runs["corrupted"]
        grads = input_gradients(model, batch, ctx)  # the clean run, with gradients: its outputs are a_u
        m_clean += float(grads.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        if spans is not None:  # positions: per_span (scores/span_edges.py)
            delta = _delta(model, batch, grads.run, corrupt)
            grads = assembled(model, grads)
            spans.add_attribution(model, graph, batch, delta, grads)
            accumulate_edge_scores(model, graph, delta, grads, total)
        else:
            add_attribution(model, graph, batch, grads.run, corrupt, grads, total, chunks)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, True)),
                        span_edges=_span_scores(model, graph, spans, ctx, m_clean, m_corr, n, True),
                        settings={"method": "eap", "ablation": "counterfactual", **_span_settings(spans),
                                  "memory": plan.model_dump()})


def _span_scores(model: LoadedModel, graph, spans: SpanTotals | None, ctx: MethodContext, m_clean: float,
                 m_corr: float, n: int, attribution: bool) -> SpanEdgeScores | None:
    """Per-span scores normalised span by span as the position-blind ones (None: positions all)."""
    if spans is None:
        return None
    total = ctx.sum_shards(spans.total)
    values = [_normalised(model, total[s], m_clean, m_corr, n, attribution) for s in range(len(total))]
    return SpanEdgeScores(graph, spans.layout.names, np.stack(values))


def _span_settings(spans: SpanTotals | None) -> dict[str, object]:
    return {} if spans is None else spans.settings()


def _alphas(opts: EapIgOptions) -> list[float]:
    return alphas_of(opts.steps, opts.points, first=0 if opts.variant == "inputs" else 1)


def _interpolate(site, clean: torch.Tensor, corrupt: torch.Tensor, alpha: float) -> Hook:
    mixed = corrupt + alpha * (clean - corrupt)
    return site, lambda x: mixed.to(x.dtype)


def _replace(site, value: torch.Tensor) -> Hook:
    return site, lambda x: value.to(x.dtype)


def eap_ig(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = EapIgOptions.model_validate(ctx.options)
    check_edges(model, "eap_ig")
    graph = model.component_graph()
    alphas = _alphas(opts)
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    spans = SpanTotals.start(data, graph, opts.positions)
    memory = plan_for("eap_ig", model, data, ctx, steps=len(alphas), whole_sources=spans is not None)
    chunks = Chunks.of(memory) if spans is None else Chunks(memory.batch_size, memory.source_chunk, sum_steps=True)
    m_clean = m_corr = 0.0
    # The inputs variant's α = 0 step runs the counterfactual input itself: its forward is the
    # corrupted base run, so that run is not made separately (one forward fewer per batch), unless
    # the activation cache holds it already or the counterfactual has its own lengths.
    shared = opts.variant == "inputs" and alphas[0] == 0.0 and ctx.cache_entry is None \
        and data.corrupted_lengths is None
    inputs: tuple[Input, ...] = ("clean",) if shared else ("clean", "corrupted")
    for batch, runs in base_runs(model, data, sub_batched(ctx, chunks), inputs):
        clean = runs["clean"]
        if shared:
            assert batch.corrupted is not None
            step = input_gradients(model, batch, ctx, first=_replace(hooks.resid_pre(0),
                                                                     model.embeddings(batch.corrupted)))
            corrupt, alphas_left = step.run, alphas[1:]
        else:
            corrupt, alphas_left = runs["corrupted"], alphas
        # the steps' gradients, summed and contracted with the deltas once (or step by step: scores/chunking.py)
        summed = StepSum(model, graph, batch, clean, corrupt, total, chunks)
        if shared:
            summed.add(step, 1.0 / len(alphas))
            del step
        m_clean += float(clean.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        if opts.variant == "inputs":
            plans = [[_interpolate(hooks.resid_pre(0), clean.resid[0], corrupt.resid[0], a)] for a in alphas_left]
        else:
            groups = [[(hooks.resid_pre(0), clean.resid[0], corrupt.resid[0])]]
            for l in range(model.n_layers):
                groups.append([(hooks.head_outputs(l), clean.z[l], corrupt.z[l])])
                if clean.mlp is not None and corrupt.mlp is not None:
                    groups.append([(hooks.mlp_out(l), clean.mlp[l], corrupt.mlp[l])])
            plans = [[_interpolate(site, c, k, a) for site, c, k in group] for group in groups for a in alphas]
        for plan in plans:
            first, extra = (plan[0], plan[1:]) if opts.variant == "inputs" else (None, plan)
            summed.add(input_gradients(model, batch, ctx, first=first, extra=extra), 1.0 / (len(plans) + int(shared)))
        delta = None
        if spans is not None and summed.summed is not None:  # positions: per_span (scores/span_edges.py)
            delta = _delta(model, batch, clean, corrupt)
            spans.add_attribution(model, graph, batch, delta, summed.summed)
        summed.finish(delta)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, True)),
                        span_edges=_span_scores(model, graph, spans, ctx, m_clean, m_corr, n, True),
                        settings={"method": "eap_ig", "variant": opts.variant, "steps": opts.steps,
                                  "points": opts.points, "alphas": alphas, "ablation": "counterfactual",
                                  **_span_settings(spans), "memory": memory.model_dump()})


def edge_patching_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int) -> float:
    """Batch forwards exact edge patching takes: per edge, the share of the blocks its forward runs
    (from the destination's block on), times the number of batches."""
    graph = model.component_graph()
    n = model.n_layers
    share = sum((n - edge_layer(graph, j, n)) / n for j in np.nonzero(graph.real_edges)[1])
    return share * -(-len(data) // max(batch_size, 1))


def edge_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = EdgePatchingOptions.model_validate(ctx.options)
    check_edges(model, "edge_patching")
    graph = model.component_graph()
    spans = SpanTotals.start(data, graph, opts.positions)
    cost = edge_patching_cost(model, data, ctx.batch_size) * (1 + (0 if spans is None else len(spans.layout)))
    if cost > opts.max_forwards:
        first = data.batch(0, min(len(data), ctx.batch_size))
        started = time.perf_counter()
        model.run(first.tokens)
        hours = cost * (time.perf_counter() - started) / 3600
        raise CircuitbenchError(
            f"edge_patching on '{model.name}': {graph.n_edges:,} edges × {len(data)} prompts ≈ {cost:,.0f} batch "
            f"forwards (≈ {hours:.1f} h here at {time.perf_counter() - started:.2f} s per forward), above "
            f"method_options.edge_patching.max_forwards = {opts.max_forwards:,}. Use eap or eap_ig (a few forwards), "
            "fewer prompts, or raise max_forwards.")
    edges = [(int(i), int(j)) for j, i in zip(*np.nonzero(graph.real_edges.T))]
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    m_clean = m_corr = 0.0
    rows, cols = (torch.tensor([e[k] for e in edges]) for k in (0, 1))
    memory = plan_for("edge_patching", model, data, ctx, whole_sources=spans is not None)
    chunks = Chunks.of(memory)
    for batch, runs in base_runs(model, data, sub_batched(ctx, chunks), ("clean", "corrupted")):
        clean, corrupt = runs["clean"], runs["corrupted"]
        m_clean += float(clean.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        if spans is not None:  # positions: per_span, one forward per (edge, span) (scores/span_edges.py)
            delta = _delta(model, batch, clean, corrupt)
            total[rows, cols] += patched_edge_metrics(model, graph, batch, clean, delta, edges, ctx)
            spans.add_patching(model, graph, batch, clean, delta, edges, ctx)
        else:  # a slice of sources at a time under the memory plan (scores/chunking.py)
            total[rows, cols] += patched_edges(model, graph, batch, clean, corrupt, edges, ctx, chunks)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, False)),
                        span_edges=_span_scores(model, graph, spans, ctx, m_clean, m_corr, n, False),
                        settings={"method": "edge_patching", "ablation": "counterfactual",
                                  "batch_forwards": round(cost, 1), **_span_settings(spans),
                                  "memory": memory.model_dump()})
