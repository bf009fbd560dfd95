"""Edge circuits and their faithfulness, as MIB evaluates them.

An edge circuit is a set of edges of the component graph, pruned of dangling nodes (EAP-IG's
prune). Its metric m(C) is the model run with every edge outside it carrying its source's
counterfactual output on the same prompt (`ablation: counterfactual`, MIB's patching; or the
position-wise mean of the source's output over the counterfactual / clean prompts, or zero) and
every edge inside it the source's output in that very run (scores/edges.py). f(C) = (m(C) −
m(∅)) / (m(M) − m(∅)), m(∅) with every edge outside (under counterfactual patching: the
counterfactual run), m(M) the clean model. The curve is MIB's: the top 0.1 … 100 % of edges, CPR
on the signed ranking, CMD on |score| (circuits/faithfulness.py)."""
from __future__ import annotations

import numpy as np
import torch

from circuitbench.circuits.circuit import Circuit, CircuitCandidate, Faithfulness, fraction_count, split_nodes
from circuitbench.circuits.faithfulness import (
    ALSO_UNDER,
    CurveValues,
    assemble_report,
    curves,
    paired_gap,
    undefined_reason,
)
from circuitbench.circuits.selection import greedy_edges, optimal_edges
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.ablations import Ablation, parse_ablation
from circuitbench.scores.edges import check_edges, circuit_metric, node_outputs
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import BaseRun, ablated_batches
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import EdgeScores
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule


def edge_circuit(scores: EdgeScores, rule: CircuitRule, method: str) -> Circuit:
    """The edges the rule picks from an edge method's scores (|score| or signed; an edge scoring
    exactly 0 is never picked by top_k or fraction), pruned of dangling nodes; heads and MLPs are
    the nodes left."""
    graph = scores.graph
    if rule.selection != "top":
        budget = rule.top_k if rule.top_k is not None else fraction_count(float(rule.fraction or 0), graph.n_edges)
        picked = greedy_edges(graph, scores.scores, budget, rule.by) if rule.selection == "greedy" else \
            optimal_edges(graph, scores.scores, budget, rule.by)
        return circuit_of(graph, picked, method, rule.model_dump(exclude_none=True))
    values = scores.scores if rule.by == "signed" else np.abs(scores.scores)
    names = graph.edges
    flat = np.array([values[graph.edge_position(e)] for e in names])
    raw = np.array([scores.scores[graph.edge_position(e)] for e in names])
    order = [k for k in np.argsort(-flat, kind="stable") if raw[k] != 0]
    if rule.top_k is not None:
        chosen = order[: rule.top_k]
    elif rule.fraction is not None:
        chosen = order[: fraction_count(rule.fraction, len(names))]
    else:
        chosen = [k for k in order if flat[k] >= rule.threshold]
    return circuit_of(graph, [names[k] for k in chosen], method, rule.model_dump(exclude_none=True))


def circuit_of(graph: ComponentGraph, edges: list[str], method: str | None, rule: dict[str, object]) -> Circuit:
    """An edge circuit of `edges`, pruned as MIB prunes."""
    keep = np.zeros(graph.real_edges.shape, dtype=bool)
    for name in edges:
        keep[graph.edge_position(name)] = True
    pruned, nodes = graph.prune(keep)
    kept = [f"{graph.sources[i]}->{graph.destinations[j]}" for j, i in zip(*np.nonzero(pruned.T))]
    heads, mlps = split_nodes([graph.sources[i] for i in np.flatnonzero(nodes)])
    return Circuit(heads=heads, mlps=mlps, edges=kept, level="edge", n_layers=graph.n_layers, n_heads=graph.n_heads,
                   method=method, rule=rule)


class EdgeBaseline:
    """m(M) and m(∅) of edge circuits under one ablation, and f(C) for any set of edges. The
    replacement outputs of every batch are computed once and kept. Under Resample only the prompts
    with a partner count."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, ablation: Ablation, ctx: MethodContext) -> None:
        check_edges(model, "an edge circuit's faithfulness")
        self.model, self.data, self.ablation, self.ctx = model, data, ablation, ctx
        self.graph = model.component_graph()

        def sources(run: BaseRun) -> list[torch.Tensor]:  # [batch, pos, n_sources, d_model]: what edges carry
            return [node_outputs(model, run)]

        self.batches: list[tuple[Batch, torch.Tensor]] = []
        clean_values = []
        for ablated in ablated_batches(ablation, model, data, ctx, view=sources, clean=True):
            if not len(ablated.batch):
                continue
            assert ablated.clean is not None and ablated.clean.metric is not None
            clean_values.append(ablated.clean.metric.double().cpu())
            self.batches.append((ablated.batch, ablated.values[0]))
        full = torch.cat(clean_values).numpy() if clean_values else np.zeros(0)
        empty = self.values(np.zeros(self.graph.real_edges.shape, dtype=bool), "m(∅), the metric with every edge "
                            "patched")
        self.full_values, self.empty_values = full, empty  # this process's prompts (the panel's bootstrap)
        self.m_full, self.m_empty, self.gap_stderr, self.n = paired_gap(full, empty, ctx)

    def values(self, keep: np.ndarray, quantity: str) -> np.ndarray:
        """Per-prompt metric (this process's prompts) with every edge outside `keep` patched."""
        outside = torch.from_numpy(self.graph.real_edges & ~keep)
        values = [circuit_metric(self.model, self.graph, batch, outside, replacement, self.ctx).double().cpu()
                  for batch, replacement in self.batches]
        out = torch.cat(values).numpy() if values else np.zeros(0)
        if not np.isfinite(out).all():
            raise nonfinite_error(f"Edge faithfulness ({self.ablation.name}): {quantity}", self.model,
                                  self.data.tokens[:4])
        return out

    def metric(self, keep: np.ndarray, quantity: str = "m(C), the circuit's metric") -> float:
        values = self.values(keep, quantity)
        total, n = self.ctx.sum_shards((float(values.sum()), len(values)))
        return total / n

    @property
    def undefined_reason(self) -> str | None:
        return undefined_reason(self.m_full, self.m_empty, self.gap_stderr, self.n,
                                f"patching every edge ({self.ablation.name})", self.ctx.metric,
                                self.own_sign(self.m_full))

    @property
    def defined(self) -> bool:
        return self.undefined_reason is None

    def members_mask(self, edges: list[str]) -> np.ndarray:
        """[n_src, n_dst] the edges named, as they are (not pruned)."""
        keep = np.zeros(self.graph.real_edges.shape, dtype=bool)
        for name in edges:
            keep[self.graph.edge_position(name)] = True
        return keep

    def keep_of(self, edges: list[str]) -> np.ndarray:
        """The circuit of `edges`: pruned of dangling edges, as EAP-IG prunes."""
        return self.graph.prune(self.members_mask(edges))[0]

    def f(self, edges: list[str]) -> float | None:
        """f of the edge circuit; None when f is undefined (see undefined_reason)."""
        if not self.defined:
            return None
        return (self.metric(self.keep_of(edges)) - self.m_empty) / (self.m_full - self.m_empty)

    def curve_values(self) -> CurveValues:
        """f of edge lists for the curve, keeping their per-prompt values (CPR / CMD intervals)."""
        return CurveValues(lambda edges: self.values(self.keep_of(edges), "m(C) of a point of the faithfulness curve"),
                           self, self.ctx)

    def own_sign(self, value: float) -> float:
        return value if METRICS.get(self.ctx.metric).higher_is_better else -value


def edge_order(scores: EdgeScores, by: str, selection: str = "top") -> list[str]:
    """Every edge, largest first (ties: the graph's order); under greedy selection in the order
    greedy adds them (its first k are its circuit of k edges, as MIB's curve with apply_greedy), the
    edges it never reaches after them in score order."""
    names = scores.graph.edges
    values = np.array([scores.scores[scores.graph.edge_position(e)] for e in names])
    key = np.abs(values) if by == "abs" else values
    ranked = [names[k] for k in np.argsort(-key, kind="stable")]
    if selection != "greedy":
        return ranked
    grown = greedy_edges(scores.graph, scores.scores, len(names), by)  # type: ignore[arg-type]
    reached = set(grown)
    return grown + [e for e in ranked if e not in reached]


def edge_faithfulness(model: LoadedModel, data: EncodedPrompts, circuit: Circuit, scores: EdgeScores,
                      rule: CircuitRule, ctx: MethodContext,
                      baseline: EdgeBaseline | None = None) -> Faithfulness:
    """The edge circuit's faithfulness under the rule's ablation (and zero ablation), with MIB's
    curve over edge fractions (or every size, integration: sizes)."""
    baseline = baseline or EdgeBaseline(model, data, parse_ablation(rule.ablation), ctx)
    return assemble_report(
        baseline, baseline.metric(baseline.keep_of(circuit.edges)), rule, ctx.metric,
        also=lambda: EdgeBaseline(model, data, ALSO_UNDER, ctx).f(circuit.edges),
        curve=lambda: curves(edge_order(scores, "abs", rule.selection), edge_order(scores, "signed", rule.selection),
                             rule.effective_integration,
                             baseline.curve_values(), rule.by))


def most_faithful_edges(model: LoadedModel, data: EncodedPrompts, edge_scores: dict[str, EdgeScores],
                        rule: CircuitRule, ctx: MethodContext) -> tuple[Circuit, list[CircuitCandidate], EdgeBaseline]:
    """Each edge method's circuit by the rule, and the one whose faithfulness is closest to 1 (ties:
    fewer edges, then the method listed first)."""
    methods = list(edge_scores) if rule.method in (None, "auto") else [rule.method]
    missing = [m for m in methods if m not in edge_scores]
    if missing or not methods:
        named = ", ".join(missing or methods) or "no method"
        raise CircuitbenchError(f"circuit: {{level: edge}} needs an edge method's scores ({named} gave none): add eap, "
                                "eap_ig or edge_patching to methods.")
    baseline = EdgeBaseline(model, data, parse_ablation(rule.ablation), ctx)
    circuits = {m: edge_circuit(edge_scores[m], rule, m) for m in methods}
    best, candidates = closest_to_one(circuits, baseline)
    return circuits[best], candidates, baseline


def closest_to_one(circuits: dict[str, Circuit], baseline: EdgeBaseline) -> tuple[str, list[CircuitCandidate]]:
    """(the method whose edge circuit's f under `baseline` is closest to 1 — ties: fewer edges, then
    the method listed first —, every method's candidate); circuits with the same edges are measured once."""
    seen: dict[tuple[str, ...], float | None] = {}
    candidates = []
    for method, c in circuits.items():
        key = tuple(sorted(c.edges))
        if key not in seen:
            seen[key] = baseline.f(list(key))
        candidates.append(CircuitCandidate(method=method, heads=c.heads, mlps=c.mlps, n_edges=len(c.edges),
                                           faithfulness=seen[key]))
    order = list(circuits)
    best = min(candidates, key=lambda c: (0.0 if c.faithfulness is None else abs(1 - c.faithfulness),
                                          0 if c.faithfulness is None else c.n_edges or 0, order.index(c.method)))
    return best.method, candidates
