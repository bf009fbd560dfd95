"""Position-aware edge scores: every edge of the component graph scored per span of positions, as
PEAP scores its edges within a position (Haklay et al. 2025, "Position-aware Automatic Circuit
Discovery", arXiv:2502.04577; technion-cs-nlp/PEAP, `position_aware_edge_attribution_patching`:
the "non-crossing" edges, their `sum` aggregation).

Spans. A task whose prompts carry named spans (prompts/spans.py: IOI's IO, S1, S2, END and the
unlabelled text between them) is scored on those: `EncodedPrompts.span_names` and `Batch.spans`
([batch, pos], the span index of every token, −1 at padding). A task without spans falls back to
its named positions: each named position (`Batch.positions`, END among them) is a span of one
token, every other token the span `other` ("per named position" in PEAP's terms). Either way the
spans partition every prompt's tokens.

What a span's score is. The residual stream is per position: edge u -> v at position p carries
a_u[p] into v's input x_v[p]. The edge's score at span s holds the positions p of span s *of the
destination's input*, which is also where the source writes (an edge never crosses positions):

- `eap` / `eap_ig`: Σ_{p ∈ s} (a_u'[p] − a_u[p]) · ∂m/∂x_v[p], normalised as the edge's score
  (scores/methods/edges.py). The spans partition the positions, so the scores of an edge over its
  spans sum to its position-blind score (the same contraction, split by position).
- `edge_patching`: m with x_v[p] ← x_v[p] − a_u[p] + a_u'[p] at the positions of span s only, every
  other position and every other edge as in the clean run: one forward per (edge, span). Patching
  is not additive, so these do not sum to the position-blind score (which is computed as well).

An edge into a head's key or value input at span s is the key/value *at the positions of span s*,
read by the head's queries at those and later positions. PEAP adds "crossing" edges inside each
head, from its keys/values (and queries) at one span to its output at a later span, scored by
re-running the attention pattern per key position. Those are not scored here: our graph's nodes
are residual readers and writers, and a head is one node whose q/k/v inputs are already split by
position; splitting the head itself by (key span, query span) needs an attention forward with a
pattern patched per pair of spans, in the scores and in the circuit forward alike. A per-span
circuit therefore keeps or patches the key/value at a span for every query that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.edges import (
    DestinationGradients,
    InputGradients,
    accumulate_edge_scores,
    circuit_logits,
    patched_edge_metrics,
)
from circuitbench.scores.interventions import BaseRun, oriented_metric
from circuitbench.scores.methods.context import MethodContext

OTHER = "other"  # the span of every token at no named position (tasks without spans)


@dataclass(frozen=True)
class SpanLayout:
    """The spans edges are scored per (module docstring): their names, and whether they are the
    task's own (Batch.spans) or the named positions' fallback."""

    names: tuple[str, ...]
    from_task: bool

    @classmethod
    def of(cls, data: EncodedPrompts) -> SpanLayout:
        """The task's spans or, without them, each named position (ordered by where it lies on
        average, END last) and then `other`."""
        if data.span_names and data.spans is not None:
            return cls(tuple(data.span_names), True)
        valid = [name for name in data.positions if bool((data.positions[name] >= 0).any())]
        where = {name: float(data.positions[name][data.positions[name] >= 0].double().mean()) for name in valid}
        return cls((*sorted(valid, key=lambda name: (name == "END", where[name], name)), OTHER), False)

    def __len__(self) -> int:
        return len(self.names)

    def spans(self, batch: Batch) -> torch.Tensor:
        """[batch, pos] int64 the span index of every token of the batch, −1 at padding."""
        if self.from_task:
            assert batch.spans is not None, "a batch of a task with spans carries them"
            return batch.spans
        width = batch.tokens.shape[1]
        valid = torch.arange(width)[None, :] < batch.lengths[:, None]
        out = torch.where(valid, len(self.names) - 1, -1).to(torch.int64)
        rows = torch.arange(len(batch))
        for index in reversed(range(len(self.names) - 1)):  # the first name listed wins a token two names share
            pos = batch.positions[self.names[index]]
            ok = (pos >= 0) & (pos < batch.lengths)
            out[rows[ok], pos[ok]] = index
        return out


def span_masks(spans: torch.Tensor, n_spans: int, device: torch.device) -> list[torch.Tensor]:
    """[n_spans] x [batch, pos] float 1.0 where a token is in that span."""
    return [(spans == s).to(device, torch.float32) for s in range(n_spans)]


def accumulate_span_edge_scores(model: LoadedModel, graph: ComponentGraph, delta: torch.Tensor,
                                grads: InputGradients | DestinationGradients, spans: torch.Tensor,
                                scores: torch.Tensor, weight: float = 1.0) -> None:
    """scores[s, u, v] += weight · Σ_{batch, p ∈ span s} delta[u, b, p] · ∂m/∂x_v[b, p]: the
    position-blind contraction (scores/edges.py accumulate_edge_scores) of the deltas masked to one
    span at a time. `delta` [n_src, batch, pos, d_model] (output_deltas); `scores` [n_spans, n_src, n_dst]."""
    if isinstance(grads, InputGradients):  # assembled once, read by every span
        grads = assembled(model, grads)
    for s, mask in enumerate(span_masks(spans, scores.shape[0], delta.device)):
        if bool(mask.any()):
            accumulate_edge_scores(model, graph, delta * mask.to(delta.dtype)[None, :, :, None], grads, scores[s],
                                   weight)


def patched_span_edge_metrics(model: LoadedModel, graph: ComponentGraph, batch: Batch, base: BaseRun,
                              delta: torch.Tensor, edges: list[tuple[int, int]], spans: torch.Tensor,
                              n_spans: int, ctx: MethodContext) -> torch.Tensor:
    """[n_spans, len(edges)] the metric summed over the batch's prompts when only edge (source,
    destination) carries delta[source] at the destination's positions in span s (exact patching,
    scores/edges.py patched_edge_metrics, with the delta masked to the span). A span without a token
    in this batch leaves the run as it is: its rows are the unpatched metric."""
    out = torch.zeros((n_spans, len(edges)), dtype=torch.float64)
    for s, mask in enumerate(span_masks(spans, n_spans, delta.device)):
        if bool(mask.any()):
            out[s] = patched_edge_metrics(model, graph, batch, base, delta * mask.to(delta.dtype)[None, :, :, None],
                                          edges, ctx)
        else:
            metric = base.metric if base.metric is not None else \
                oriented_metric(ctx.metric, model.run(batch.tokens), batch)
            out[s] = float(metric.double().sum())
    return out


def span_circuit_metric(model: LoadedModel, graph: ComponentGraph, batch: Batch, outside: torch.Tensor,
                        replacement: torch.Tensor, spans: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
    """[batch] the metric of a per-span edge circuit: edge u -> v marked in `outside` [n_spans, n_src,
    n_dst] at span s carries its source's `replacement` output at the destination's positions in
    span s only (scores/edges.py circuit_logits with spans)."""
    logits, scored = circuit_logits(model, graph, batch, outside, replacement, ctx, spans=spans)
    return oriented_metric(ctx.metric, logits, scored)


@dataclass
class SpanTotals:
    """An edge method's per-span sums over prompts (`positions: per_span`): [n_spans, n_src, n_dst]
    float64, normalised like the method's position-blind scores at the end."""

    layout: SpanLayout
    total: torch.Tensor

    @classmethod
    def start(cls, data: EncodedPrompts, graph: ComponentGraph, positions: str) -> SpanTotals | None:
        """None for `positions: all`; the layout of the whole prompt set (every shard the same)."""
        if positions != "per_span":
            return None
        layout = SpanLayout.of(data.full_set)
        return cls(layout, torch.zeros((len(layout), *graph.real_edges.shape), dtype=torch.float64))

    def add_attribution(self, model: LoadedModel, graph: ComponentGraph, batch: Batch, delta: torch.Tensor,
                        grads: DestinationGradients, weight: float = 1.0) -> None:
        accumulate_span_edge_scores(model, graph, delta, grads, self.layout.spans(batch), self.total, weight)

    def add_patching(self, model: LoadedModel, graph: ComponentGraph, batch: Batch, base: BaseRun,
                     delta: torch.Tensor, edges: list[tuple[int, int]], ctx: MethodContext) -> None:
        values = patched_span_edge_metrics(model, graph, batch, base, delta, edges, self.layout.spans(batch),
                                           len(self.layout), ctx)
        rows, cols = (torch.tensor([e[k] for e in edges]) for k in (0, 1))
        self.total[:, rows, cols] += values

    def settings(self) -> dict[str, object]:
        return {"positions": "per_span", "spans": list(self.layout.names),
                "span_source": "task" if self.layout.from_task else "named positions"}


def assembled(model: LoadedModel, grads: InputGradients) -> DestinationGradients:
    """The gradients at every destination, assembled once (the position-blind and per-span
    contractions then read the same tensors)."""
    out = DestinationGradients.zeros()
    out.add(model, grads)
    return out
