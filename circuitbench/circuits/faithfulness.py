"""Faithfulness of a circuit: the model with every head outside it ablated, as MIB defines it,
f(C) = (m(C) − m(∅)) / (m(M) − m(∅)), and the curve of f over circuit sizes (CPR, CMD).

One ablation can hide a missing component (a head whose clean and counterfactual outputs agree
looks unnecessary under mean-counterfactual ablation), so f is reported under the task's ablation
and under zero ablation. `data` may be one data-parallel process's shard: every mean over prompts
goes through ctx.sum_shards, so each process computes the one-process numbers."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit, Head, ranked_heads
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import ablated_heads_metric, mean_head_outputs
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule

CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ALSO_UNDER = "zero"  # the second ablation every circuit is reported under


def curve_sizes(n_total: int) -> list[int]:
    """Every circuit size for small models; MIB's fraction grid for large ones."""
    if n_total <= 64:
        return list(range(n_total + 1))
    return sorted({round(f * n_total) for f in CURVE_FRACTIONS})


class Baseline:
    """m(M) and m(∅) under one ablation, and f(C) for any set of kept heads. Metrics are oriented
    so higher is better inside; `own_sign` turns them back into the metric's own values."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, kind: str, ctx: MethodContext) -> None:
        self.model, self.data, self.kind, self.ctx = model, data, kind, ctx
        if kind == "zero":
            self.means = None
        elif data.corrupted is None and kind == "mean_counterfactual":
            raise CircuitbenchError("circuit.ablation mean_counterfactual needs corrupted prompts; this task has none. "
                                    "Use mean_clean or zero.")
        else:
            self.means = mean_head_outputs(model, data, ctx, corrupted=kind == "mean_counterfactual")
        heads = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
        self.m_full = self.metric(heads, "m(M), the full model's metric")
        self.m_empty = self.metric(set(), "m(∅), the metric with every head ablated")

    def metric(self, keep: set[Head], quantity: str = "m(C), the circuit's metric") -> float:
        value = ablated_heads_metric(self.model, self.data, keep, self.means, self.ctx)
        if not np.isfinite(value):
            raise nonfinite_error(f"Faithfulness ({self.kind} ablation): {quantity}", self.model, self.data.tokens[:4])
        return value

    @property
    def defined(self) -> bool:
        return abs(self.m_full - self.m_empty) >= 1e-9

    def f(self, keep: set[Head]) -> float:
        if not self.defined:
            raise CircuitbenchError(
                f"Faithfulness is undefined on '{self.model.name}': ablating every head ({self.kind}) does not change "
                f"the metric ({self.own_sign(self.m_full):.4g}). Try another circuit.ablation.")
        return (self.metric(keep) - self.m_empty) / (self.m_full - self.m_empty)

    def own_sign(self, value: float) -> float:
        return value if METRICS.get(self.ctx.metric).higher_is_better else -value


class FaithfulnessReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faithfulness: float = Field(description="f(C) = (m(C) − m(∅)) / (m(M) − m(∅))")
    metric: str = Field(description="the metric m, whose own values m_circuit / m_full / m_empty are")
    m_circuit: float = Field(description="the metric with only the circuit's heads kept")
    m_full: float = Field(description="the metric of the full model, m(M)")
    m_empty: float = Field(description="the metric with every head ablated, m(∅)")
    ablation: str = Field(description="how heads outside the circuit were removed")
    by_ablation: dict[str, float | None] = Field(
        default_factory=dict, description="f(C) under each ablation computed (None: undefined under it)")
    curve: list[tuple[int, float, float]] = Field(default_factory=list, description="(n_heads, fraction, f) per size")
    cpr: float | None = Field(None, description="area under f over the fraction of heads kept (higher better)")
    cmd: float | None = Field(None, description="area under |1 − f| (lower better)")


def faithfulness(model: LoadedModel, data: EncodedPrompts, circuit: Circuit, scores: np.ndarray, rule: CircuitRule,
                 ctx: MethodContext, baseline: Baseline | None = None) -> FaithfulnessReport:
    """The circuit's faithfulness under the rule's ablation (and zero ablation), with the curve of
    the top-k heads by `scores` when the rule asks for it."""
    baseline = baseline or Baseline(model, data, rule.ablation, ctx)
    keep = set(map(tuple, circuit.heads))
    m_circuit = baseline.metric(keep)
    f = baseline.f(keep)
    by_ablation: dict[str, float | None] = {rule.ablation: f}
    if ALSO_UNDER != rule.ablation:
        other = Baseline(model, data, ALSO_UNDER, ctx)
        by_ablation[ALSO_UNDER] = other.f(keep) if other.defined else None
    report = FaithfulnessReport(faithfulness=f, metric=ctx.metric, m_circuit=baseline.own_sign(m_circuit),
                                m_full=baseline.own_sign(baseline.m_full), m_empty=baseline.own_sign(baseline.m_empty),
                                ablation=rule.ablation, by_ablation=by_ablation)
    if rule.curve:
        order = ranked_heads(scores, rule.by)
        total = len(order)
        points = [(k, k / total, 0.0 if k == 0 else 1.0 if k == total else baseline.f(set(order[:k])))
                  for k in curve_sizes(total)]
        xs = np.array([p[1] for p in points])
        ys = np.array([p[2] for p in points])
        report.curve = points
        report.cpr = float(np.trapezoid(ys, xs))
        report.cmd = float(np.trapezoid(np.abs(1 - ys), xs))
    return report


class Candidate(BaseModel):
    """One method's circuit under the rule, and its faithfulness."""

    model_config = ConfigDict(extra="forbid")
    method: str
    heads: list[Head]
    faithfulness: float


def most_faithful(model: LoadedModel, data: EncodedPrompts, head_scores: dict[str, np.ndarray], rule: CircuitRule,
                  ctx: MethodContext) -> tuple[Circuit, list[Candidate], Baseline]:
    """Each method's circuit by the rule, and the one whose faithfulness is closest to 1 (ties: the
    smaller circuit, then the method listed first). The baseline is shared by all candidates."""
    methods = list(head_scores) if rule.method in (None, "auto") else [rule.method]
    baseline = Baseline(model, data, rule.ablation, ctx)
    circuits = {m: Circuit.from_scores(head_scores[m], rule, m) for m in methods}
    seen: dict[tuple[Head, ...], float] = {}
    candidates = []
    for method, c in circuits.items():
        key = tuple(sorted(map(tuple, c.heads)))
        if key not in seen:
            seen[key] = baseline.f(set(key))
        candidates.append(Candidate(method=method, heads=c.heads, faithfulness=seen[key]))
    best = min(candidates, key=lambda c: (abs(1 - c.faithfulness), len(c.heads), methods.index(c.method)))
    return circuits[best.method], candidates, baseline


def missing_from_ablations(report: FaithfulnessReport, missing: list[Head]) -> list[str]:
    """Warnings for a circuit missing reference heads: its faithfulness under each ablation, so
    a high f under one ablation cannot pass for a complete circuit."""
    if not missing:
        return []
    figures = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} undefined" for k, v in report.by_ablation.items())
    return [f"the circuit misses reference heads {', '.join(f'{l}.{h}' for l, h in missing)} "
            f"(faithfulness {figures})"]

