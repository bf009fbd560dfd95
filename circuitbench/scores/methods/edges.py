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
from circuitbench.scores.edges import (
    DestinationGradients,
    accumulate_edge_scores,
    check_edges,
    edge_layer,
    input_gradients,
    output_deltas,
    patched_edge_metrics,
    valid_positions,
)
from circuitbench.scores.interventions import BaseRun, base_runs
from circuitbench.scores.methods.attribution import alphas_of
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import EapIgOptions, EdgePatchingOptions
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput


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
    check_edges(model, "eap", per_head_inputs=True)
    graph = model.component_graph()
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    m_clean = m_corr = 0.0
    for batch, runs in base_runs(model, data, ctx, ("corrupted",)):
        corrupt = runs["corrupted"]
        grads = input_gradients(model, batch, ctx)  # the clean run, with gradients: its outputs are a_u
        m_clean += float(grads.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        accumulate_edge_scores(model, graph, _delta(model, batch, grads.run, corrupt), grads, total)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, True)),
                        settings={"method": "eap", "ablation": "counterfactual"})


def _alphas(opts: EapIgOptions) -> list[float]:
    return alphas_of(opts.steps, opts.points, first=0 if opts.variant == "inputs" else 1)


def _interpolate(site, clean: torch.Tensor, corrupt: torch.Tensor, alpha: float) -> Hook:
    mixed = corrupt + alpha * (clean - corrupt)
    return site, lambda x: mixed.to(x.dtype)


def _replace(site, value: torch.Tensor) -> Hook:
    return site, lambda x: value.to(x.dtype)


def eap_ig(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = EapIgOptions.model_validate(ctx.options)
    check_edges(model, "eap_ig", per_head_inputs=True)
    graph = model.component_graph()
    alphas = _alphas(opts)
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    m_clean = m_corr = 0.0
    # The inputs variant's α = 0 step runs the counterfactual input itself: its forward is the
    # corrupted base run, so that run is not made separately (one forward fewer per batch), unless
    # the activation cache holds it already or the counterfactual has its own lengths.
    shared = opts.variant == "inputs" and alphas[0] == 0.0 and ctx.cache_entry is None \
        and data.corrupted_lengths is None
    for batch, runs in base_runs(model, data, ctx, ("clean",) if shared else ("clean", "corrupted")):
        clean = runs["clean"]
        summed = DestinationGradients.zeros()  # the steps' gradients, contracted with delta once
        if shared:
            assert batch.corrupted is not None
            step = input_gradients(model, batch, ctx, first=_replace(hooks.resid_pre(0),
                                                                     model.embeddings(batch.corrupted)))
            summed.add(model, step, 1.0 / len(alphas))
            corrupt, alphas_left = step.run, alphas[1:]
        else:
            corrupt, alphas_left = runs["corrupted"], alphas
        m_clean += float(clean.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        delta = _delta(model, batch, clean, corrupt)
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
            summed.add(model, input_gradients(model, batch, ctx, first=first, extra=extra),
                       1.0 / (len(plans) + int(shared)))
        accumulate_edge_scores(model, graph, delta, summed, total)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, True)),
                        settings={"method": "eap_ig", "variant": opts.variant, "steps": opts.steps,
                                  "points": opts.points, "alphas": alphas, "ablation": "counterfactual"})


def edge_patching_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int) -> float:
    """Batch forwards exact edge patching takes: per edge, the share of the blocks its forward runs
    (from the destination's block on), times the number of batches."""
    graph = model.component_graph()
    n = model.n_layers
    share = sum((n - edge_layer(graph, j, n)) / n for j in np.nonzero(graph.real_edges)[1])
    return share * -(-len(data) // max(batch_size, 1))


def edge_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = EdgePatchingOptions.model_validate(ctx.options)
    check_edges(model, "edge_patching", per_head_inputs=False)
    graph = model.component_graph()
    cost = edge_patching_cost(model, data, ctx.batch_size)
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
    for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted")):
        clean, corrupt = runs["clean"], runs["corrupted"]
        m_clean += float(clean.metric.double().sum())
        m_corr += float(corrupt.metric.double().sum())
        values = patched_edge_metrics(model, graph, batch, clean, _delta(model, batch, clean, corrupt), edges, ctx)
        total[rows, cols] += values
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return MethodOutput(edges=EdgeScores(graph, _normalised(model, total, m_clean, m_corr, n, False)),
                        settings={"method": "edge_patching", "ablation": "counterfactual",
                                  "batch_forwards": round(cost, 1)})
