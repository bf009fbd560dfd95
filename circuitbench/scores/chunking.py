"""Edge scores in chunks, so that a method's peak memory is bounded (scores/memory_plan.py plans the
sizes): prompts in sub-batches (each batch of the run cut into `Chunks.batch_size` prompts), sources
a slice at a time (output_deltas(..., sources=slice): [slice, batch, pos, d_model] instead of every
source's), destinations one block at a time (accumulate_edge_scores assembles one block's input
gradients, contracts them and lets them go), and for EAP-IG the steps either summed before one
contraction (DestinationGradients, as EAP-IG's get_scores_eap_ig sums its gradients) or each
contracted as it comes. Scores are linear in the deltas and in the gradients, so every chunking gives
the unchunked sums (float rounding apart); the running sums stay in float64 as in scores/edges.py.

With one chunk of everything (the plan when all fits) each function here runs exactly the unchunked
computation."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.edges import (
    DestinationGradients,
    InputGradients,
    accumulate_edge_scores,
    output_deltas,
    patched_edge_metrics,
    valid_positions,
)
from circuitbench.scores.interventions import BaseRun, rows_per_forward
from circuitbench.scores.memory_plan import MemoryPlan, ModelShape, Workload, default_budget, plan_memory
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.registries import METRICS


@dataclass(frozen=True)
class Chunks:
    """How an edge method cuts its work: prompts per sub-batch, sources per delta slice, and whether
    EAP-IG sums its steps' destination gradients (True) or contracts each step as it comes."""

    batch_size: int
    source_chunk: int
    sum_steps: bool = True

    @classmethod
    def of(cls, plan: MemoryPlan) -> Chunks:
        return cls(plan.batch_size, plan.source_chunk, plan.sum_steps)


def source_slices(n_sources: int, chunk: int) -> list[slice]:
    """[0, chunk), [chunk, 2·chunk), … covering every source (the last one shorter)."""
    step = max(1, chunk)
    return [slice(start, min(start + step, n_sources)) for start in range(0, n_sources, step)]


def plan_for(method: str, model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, steps: int = 1,
             whole_sources: bool = False) -> MemoryPlan:
    """The memory plan of an edge method on these prompts: ctx.memory_budget (bytes), or the default
    (the weights plus half the free memory); sub-batches at most ctx.batch_size (`whole_sources`: no
    source slices, as per-span scores read every source's deltas)."""
    width = int(data.lengths.max()) if len(data) else 1
    if data.corrupted_lengths is not None and len(data):
        width = max(width, int(data.corrupted_lengths.max()))
    batch = min(ctx.batch_size, max(len(data), 1))
    work = Workload(seq_len=width, answer_metric=METRICS.get(ctx.metric).needs_answer, steps=steps,
                    copy_rows=rows_per_forward(ctx.metric, model.device, width),
                    cached_prompts=len(data) if ctx.cache_entry is not None else 0)
    given = ctx.memory_budget
    budget = given if given is not None else default_budget(model)
    return plan_memory(method, ModelShape.of(model), work, batch, budget,
                       "max_memory" if given is not None else "free_memory", n_prompts=len(data), model_name=model.name,
                       whole_sources=whole_sources)


def sub_batched(ctx: MethodContext, chunks: Chunks) -> MethodContext:
    """The context with the plan's sub-batch size (base_runs then yields batches of it)."""
    return ctx if chunks.batch_size >= ctx.batch_size else replace(ctx, batch_size=chunks.batch_size)


def add_attribution(model: LoadedModel, graph: ComponentGraph, batch: Batch, clean: BaseRun, corrupt: BaseRun,
                    grads: InputGradients | DestinationGradients, scores: torch.Tensor, chunks: Chunks,
                    weight: float = 1.0, delta: torch.Tensor | None = None) -> None:
    """scores[u, v] += weight · Σ_{batch, pos} (a_u' − a_u) · ∂m/∂x_v, the deltas a slice of sources
    at a time (`delta`: every source's, computed already)."""
    n = len(graph.sources)
    if delta is not None:
        accumulate_edge_scores(model, graph, delta, grads, scores, weight)
        return
    valid = valid_positions(batch, model.device)
    for part in source_slices(n, chunks.source_chunk):
        accumulate_edge_scores(model, graph, output_deltas(model, clean, corrupt, valid, sources=part), grads, scores,
                               weight, first_source=part.start)


class StepSum:
    """EAP-IG's Σ_k w_k · Δ · ∇m(α_k) over one batch's steps, under `chunks`: the steps' destination
    gradients summed, then contracted once per source slice (sum_steps), or each step contracted as it
    comes (the deltas kept when one slice holds every source, else recomputed per slice and step)."""

    def __init__(self, model: LoadedModel, graph: ComponentGraph, batch: Batch, clean: BaseRun, corrupt: BaseRun,
                 scores: torch.Tensor, chunks: Chunks) -> None:
        self.model, self.graph, self.batch, self.clean, self.corrupt = model, graph, batch, clean, corrupt
        self.scores, self.chunks = scores, chunks
        self.summed = DestinationGradients.zeros() if chunks.sum_steps else None
        self.delta: torch.Tensor | None = None

    def add(self, grads: InputGradients, weight: float) -> None:
        if self.summed is not None:
            self.summed.add(self.model, grads, weight)
            return
        if self.chunks.source_chunk >= len(self.graph.sources) and self.delta is None:
            self.delta = output_deltas(self.model, self.clean, self.corrupt, valid_positions(self.batch,
                                                                                            self.model.device))
        add_attribution(self.model, self.graph, self.batch, self.clean, self.corrupt, grads, self.scores,
                        self.chunks, weight, self.delta)

    def finish(self, delta: torch.Tensor | None = None) -> None:
        """Contract the summed steps (`delta`: every source's deltas, when the caller holds them already)."""
        if self.summed is not None:
            add_attribution(self.model, self.graph, self.batch, self.clean, self.corrupt, self.summed, self.scores,
                            self.chunks, 1.0, delta)
        self.summed = self.delta = None


def patched_edges(model: LoadedModel, graph: ComponentGraph, batch: Batch, clean: BaseRun, corrupt: BaseRun,
                  edges: list[tuple[int, int]], ctx: MethodContext, chunks: Chunks) -> torch.Tensor:
    """[len(edges)] patched_edge_metrics, the deltas a slice of sources at a time (each slice's edges
    patched while its deltas are held)."""
    valid = valid_positions(batch, model.device)
    parts = source_slices(len(graph.sources), chunks.source_chunk)
    if len(parts) == 1:
        return patched_edge_metrics(model, graph, batch, clean, output_deltas(model, clean, corrupt, valid), edges, ctx)
    out = torch.zeros(len(edges), dtype=torch.float64)
    for part in parts:
        mine = [k for k, (i, _) in enumerate(edges) if part.start <= i < part.stop]
        if not mine:
            continue
        delta = output_deltas(model, clean, corrupt, valid, sources=part)
        out[mine] = patched_edge_metrics(model, graph, batch, clean, delta, [edges[k] for k in mine], ctx,
                                         first_source=part.start)
    return out
