"""Position-aware edge circuits (`circuit: {level: edge, positions: per_span}`): circuits of (edge,
span) pairs chosen from per-span edge scores (scores/span_edges.py), as PEAP builds circuits over
edges at spans (Haklay et al. 2025, "Position-aware Automatic Circuit Discovery", §3-4).

Members are named 'u->v@SPAN' ('a1.h0->logits@END'). The rule's top_k / fraction / threshold run
over every (edge, span) pair (a fraction of n_edges × n_spans); greedy and optimal selection are
refused for now (CircuitRule).

Pruning, per span: a node at span s is in the circuit when it writes into a kept pair at s and
reads one — its query or MLP input at s, or its key or value input at *any* span (a head's query at
s reads the keys and values of every earlier position, and prompts of one task may order their
spans differently, so any span is the conservative reading of PEAP's crossing edges); the logits
always stay, the input always reads. A pair survives while its source is in the circuit at its
span and a reader of its destination is (for a key or value input: at any span). Holding every span
of each edge, this is the position-blind prune (models/graph.py ComponentGraph.prune).

Faithfulness is MIB's f(C) = (m(C) − m(∅)) / (m(M) − m(∅)) with m(C) the circuit forward in which
edge u -> v outside the circuit at span s carries its source's replacement output at the
destination's positions in span s only (scores/edges.py circuit_logits with spans); m(M) and m(∅)
are the position-blind ones (every span of every edge in, or out). The circuit also records the f
of the position-blind circuit of the same edges (every span of each), which bounds how much the
positions bought. No curve (CPR/CMD) yet.
"""
from __future__ import annotations

import numpy as np
import torch

from circuitbench.circuits.circuit import Circuit, fraction_count, split_nodes
from circuitbench.circuits.edge_faithfulness import EdgeBaseline, closest_to_one
from circuitbench.circuits.faithfulness import ALSO_UNDER, assemble_report
from circuitbench.circuits.panel import PanelBaselines, assess
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.ablations import Ablation, parse_ablation
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import SpanEdgeScores
from circuitbench.scores.span_edges import SpanLayout, span_circuit_metric
from circuitbench.specs.task import CircuitRule

SEP = "@"  # 'u->v@SPAN'


def member_name(edge: str, span: str) -> str:
    return f"{edge}{SEP}{span}"


def split_member(name: str) -> tuple[str, str]:
    """'u->v@SPAN' -> ('u->v', 'SPAN')."""
    edge, sep, span = name.partition(SEP)
    if not sep:
        raise ValueError(f"'{name}' is not a per-span edge name ('u->v@SPAN', e.g. 'a1.h0->logits@END')")
    return edge, span


def _key_value_inputs(graph: ComponentGraph) -> np.ndarray:
    """[n_dst] True for a head's (or key-value group's) key and value inputs."""
    return np.array([d.endswith(("<k>", "<v>")) for d in graph.destinations])


def prune_spans(graph: ComponentGraph, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [n_spans, n_src, n_dst], nodes [n_spans, n_src]) left of `keep` when dangling (node,
    span)s are removed (module docstring)."""
    pairs = keep & graph.real_edges[None]
    readers = graph.destination_readers.astype(np.int64)  # [n_dst, n_src]
    kv = _key_value_inputs(graph)
    logits = readers.sum(1) == 0
    while True:
        outgoing = pairs.any(2)  # [S, n_src]
        into = pairs.any(1)  # [S, n_dst]
        incoming = (into & ~kv[None]).astype(np.int64) @ readers > 0
        incoming |= (into[:, kv].any(0).astype(np.int64) @ readers[kv] > 0)[None]
        incoming[:, 0] = True
        nodes = outgoing & incoming
        here = nodes.astype(np.int64) @ readers.T > 0  # [S, n_dst]: a reader of the input is in at s
        alive = np.where(kv[None], here.any(0)[None], here) | logits[None]
        pruned = pairs & nodes[:, :, None] & alive[:, None, :]
        if (pruned == pairs).all():
            return pruned, nodes
        pairs = pruned


def members_of(graph: ComponentGraph, span_names: tuple[str, ...], keep: np.ndarray) -> list[str]:
    """'u->v@SPAN' of every kept pair, span by span in prompt order, edges in graph order."""
    return [member_name(f"{graph.sources[i]}->{graph.destinations[j]}", span_names[s])
            for s in range(len(span_names)) for j, i in zip(*np.nonzero(keep[s].T))]


def keep_of(graph: ComponentGraph, span_names: tuple[str, ...], members: list[str], prune: bool = True) -> np.ndarray:
    """[n_spans, n_src, n_dst] the pairs named, pruned (unless `prune` is false)."""
    keep = np.zeros((len(span_names), *graph.real_edges.shape), dtype=bool)
    index = {name: s for s, name in enumerate(span_names)}
    for name in members:
        edge, span = split_member(name)
        if span not in index:
            raise ValueError(f"'{name}' names span '{span}', not one of {', '.join(span_names)}")
        keep[(index[span], *graph.edge_position(edge))] = True
    return prune_spans(graph, keep)[0] if prune else keep


def span_edge_circuit(scores: SpanEdgeScores, rule: CircuitRule, method: str) -> Circuit:
    """The (edge, span) pairs the rule picks (|score| or signed; a pair scoring exactly 0 is never
    picked by top_k or fraction), pruned; heads and MLPs are the nodes left at any span."""
    graph, names = scores.graph, scores.span_names
    real = np.broadcast_to(graph.real_edges[None], scores.scores.shape)
    flat_index = np.flatnonzero(real)  # every (span, edge) pair, span-major, in array order
    raw = scores.scores.reshape(-1)[flat_index]
    values = raw if rule.by == "signed" else np.abs(raw)
    order = [k for k in np.argsort(-values, kind="stable") if raw[k] != 0]
    if rule.top_k is not None:
        chosen = order[: rule.top_k]
    elif rule.fraction is not None:
        chosen = order[: fraction_count(rule.fraction, len(flat_index))]
    else:
        chosen = [k for k in order if values[k] >= rule.threshold]
    keep = np.zeros(scores.scores.shape, dtype=bool)
    keep.reshape(-1)[flat_index[chosen]] = True
    pruned, nodes = prune_spans(graph, keep)
    heads, mlps = split_nodes([graph.sources[i] for i in np.flatnonzero(nodes.any(0))])
    return Circuit(heads=heads, mlps=mlps, edges=members_of(graph, names, pruned), level="edge",
                   n_layers=graph.n_layers, n_heads=graph.n_heads, method=method,
                   rule=rule.model_dump(exclude_none=True))


def position_blind_edges(members: list[str]) -> list[str]:
    """The edges of per-span members, each once, in the order first named."""
    return list(dict.fromkeys(split_member(m)[0] for m in members))


class SpanEdgeBaseline(EdgeBaseline):
    """EdgeBaseline (m(M), m(∅), the replacement outputs of every batch) whose circuits are sets of
    (edge, span) pairs: `keep` [n_spans, n_src, n_dst] (an [n_src, n_dst] keep is position-blind)."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, ablation: Ablation, ctx: MethodContext,
                 layout: SpanLayout) -> None:
        self.layout = layout
        super().__init__(model, data, ablation, ctx)

    def values(self, keep: np.ndarray, quantity: str) -> np.ndarray:
        if keep.ndim == 2:
            return super().values(keep, quantity)
        outside = torch.from_numpy(self.graph.real_edges[None] & ~keep)
        values = [span_circuit_metric(self.model, self.graph, batch, outside, replacement, self.layout.spans(batch),
                                      self.ctx).double().cpu() for batch, replacement in self.batches]
        out = torch.cat(values).numpy() if values else np.zeros(0)
        if not np.isfinite(out).all():
            raise nonfinite_error(f"Per-span edge faithfulness ({self.ablation.name}): {quantity}", self.model,
                                  self.data.tokens[:4])
        return out

    def members_mask(self, edges: list[str]) -> np.ndarray:
        return keep_of(self.graph, self.layout.names, edges, prune=False)

    def keep_of(self, edges: list[str]) -> np.ndarray:
        return keep_of(self.graph, self.layout.names, edges)

    def blind_f(self, edges: list[str]) -> float | None:
        """f of the position-blind circuit of `edges` ('u->v'); None when f is undefined."""
        if not self.defined:
            return None
        blind = self.graph.prune(EdgeBaseline.members_mask(self, edges))[0]
        return (self.metric(blind) - self.m_empty) / (self.m_full - self.m_empty)


def per_span_circuit(model: LoadedModel, data: EncodedPrompts, span_scores: dict[str, SpanEdgeScores],
                     rule: CircuitRule, ctx: MethodContext, shares: dict[str, float], seed: int) -> Circuit:
    """The per-span edge circuit of the rule (method auto: each method's, the one whose f under the
    rule's ablation is closest to 1, then the smaller, then the method listed first), with its
    faithfulness under the rule's ablation and zero ablation, the candidates, the f of the
    position-blind circuit of the same edges, and (unless `panel: false`) the ablation panel and
    verdict every circuit carries (circuits/panel.py), each ablation's circuit kept per span.
    `shares`: each node's visibility (scores/visibility.py)."""
    methods = list(span_scores) if rule.method in (None, "auto") else [rule.method]
    if not methods or any(m not in span_scores for m in methods):
        raise CircuitbenchError("circuit: {level: edge, positions: per_span} needs per-span edge scores: add eap, "
                                "eap_ig or edge_patching to methods (each then scores per span).")
    layout = SpanLayout.of(data.full_set)
    for method in methods:
        if span_scores[method].span_names != layout.names:
            raise CircuitbenchError(f"{method}'s per-span scores are over spans {span_scores[method].span_names}, "
                                    f"these prompts have {layout.names}.")
    baseline = SpanEdgeBaseline(model, data, parse_ablation(rule.ablation), ctx, layout)
    circuits = {m: span_edge_circuit(span_scores[m], rule, m) for m in methods}
    best, candidates = closest_to_one(circuits, baseline)
    chosen = circuits[best]
    faith = assemble_report(baseline, baseline.metric(baseline.keep_of(chosen.edges)), rule, ctx.metric,
                            also=lambda: SpanEdgeBaseline(model, data, ALSO_UNDER, ctx, layout).f(chosen.edges),
                            curve=lambda: {})
    edges = position_blind_edges(chosen.edges)
    blind = baseline.blind_f(edges)
    shown = ", ".join(chosen.edges[:12]) + (" …" if len(chosen.edges) > 12 else "")
    source = "the task's spans" if layout.from_task else "each named position and the other tokens"
    notes = [f"{len(chosen.edges)} (edge, span) pairs over {len(edges)} edges, spans {', '.join(layout.names)} "
             f"({source}): {shown or '(none)'}",
             "the position-blind circuit of the same edges (every span of each): f = "
             + ("undefined" if blind is None else f"{blind:.2f}")]
    warnings = [] if chosen.edges else [
        "the (edge, span) pairs the rule picks form no path from the input to the logits, so pruning leaves an empty "
        "circuit: faithfulness is 0 by construction (pick more pairs)"]
    circuit = chosen.model_copy(update={"faithfulness": faith, "candidates": candidates, "notes": notes,
                                        "warnings": warnings})
    baselines = PanelBaselines(model, data, ctx, baseline, level="edge",
                               edge_baseline=lambda ablation: SpanEdgeBaseline(model, data, ablation, ctx, layout))
    return circuit.model_copy(update=assess(model, data, ctx, circuit, rule, baselines, shares, seed))


def span_scores_info(scores: SpanEdgeScores | None, n: int = 20) -> dict[str, object]:
    """The per-span fields of a method's edge-score entry in a result (results/schema.py
    EdgeScoresInfo): its spans and its `n` (edge, span) pairs of largest |score|."""
    if scores is None:
        return {}
    values = scores.as_dict()
    top = sorted(values, key=lambda e: -abs(values[e]))[:n]
    return {"spans": list(scores.span_names), "top_spans": [(e, values[e]) for e in top]}
