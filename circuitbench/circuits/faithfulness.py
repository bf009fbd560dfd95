"""Faithfulness of a circuit: the model with every head outside it ablated, as MIB defines it,
f(C) = (m(C) − m(∅)) / (m(M) − m(∅)), and the curve of f over circuit sizes (CPR, CMD).

Faithfulness is a ratio, and its denominator m(M) − m(∅) can be noise: when ablating every head
changes the metric by less than twice the standard error of that change over prompts (a paired
test: the per-prompt differences m_i(M) − m_i(∅), their mean against their standard error), f is
undefined, stored as None with the reason, never as a number (a random-init model's
0.0003 / 0.0003 would otherwise read as "faithfulness 118").

One ablation can hide a missing component (a head whose clean and counterfactual outputs agree
looks unnecessary under mean-counterfactual ablation), so f is reported under the task's ablation
and under zero ablation. `data` may be one data-parallel process's shard: every mean over prompts
goes through ctx.sum_shards, so each process computes the one-process numbers."""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit, Head, head_label, ranked_heads
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import ablated_heads_metric, ablated_heads_values, mean_head_outputs
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule

CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ALSO_UNDER = "zero"  # the second ablation every circuit is reported under
NOISE_Z = 2.0  # |m(M) − m(∅)| below NOISE_Z standard errors of the paired difference: f is undefined


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
        full = self.values(heads, "m(M), the full model's metric")
        empty = self.values(set(), "m(∅), the metric with every head ablated")
        diff = full - empty
        s_full, s_empty, s_diff, s_diff2, n = ctx.sum_shards(
            (float(full.sum()), float(empty.sum()), float(diff.sum()), float((diff**2).sum()), len(full)))
        self.n = int(n)
        self.m_full, self.m_empty = s_full / n, s_empty / n
        variance = max(0.0, (s_diff2 - s_diff**2 / n) / (n - 1)) if n > 1 else 0.0
        self.gap_stderr = float(np.sqrt(variance / n))  # standard error of m(M) − m(∅) over prompts (paired)

    def values(self, keep: set[Head], quantity: str) -> "np.ndarray":
        values = ablated_heads_values(self.model, self.data, keep, self.means, self.ctx).numpy()
        if not np.isfinite(values).all():
            raise nonfinite_error(f"Faithfulness ({self.kind} ablation): {quantity}", self.model, self.data.tokens[:4])
        return values

    def metric(self, keep: set[Head], quantity: str = "m(C), the circuit's metric") -> float:
        value = ablated_heads_metric(self.model, self.data, keep, self.means, self.ctx)
        if not np.isfinite(value):
            raise nonfinite_error(f"Faithfulness ({self.kind} ablation): {quantity}", self.model, self.data.tokens[:4])
        return value

    @property
    def undefined_reason(self) -> str | None:
        """Why f is undefined under this ablation (None: it is defined): ablating every head changes
        the metric by nothing, or by less than NOISE_Z standard errors of that change."""
        gap = abs(self.m_full - self.m_empty)
        if gap < 1e-9:
            return (f"ablating every head ({self.kind}) does not change {self.ctx.metric} "
                    f"({self.own_sign(self.m_full):.4g})")
        if gap < NOISE_Z * self.gap_stderr:
            return (f"|m(M) − m(∅)| = {gap:.3g} is within noise: less than {NOISE_Z:g} × its standard error over "
                    f"{self.n} prompts ({self.gap_stderr:.3g}, {self.kind} ablation): the heads have no measurable "
                    "effect on the metric")
        return None

    @property
    def defined(self) -> bool:
        return self.undefined_reason is None

    def f(self, keep: set[Head]) -> float | None:
        """f(C) of the circuit keeping `keep`; None when f is undefined (see undefined_reason)."""
        if not self.defined:
            return None
        return (self.metric(keep) - self.m_empty) / (self.m_full - self.m_empty)

    def own_sign(self, value: float) -> float:
        return value if METRICS.get(self.ctx.metric).higher_is_better else -value


class FaithfulnessReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faithfulness: float | None = Field(description="f(C) = (m(C) − m(∅)) / (m(M) − m(∅)); None: undefined")
    faithfulness_undefined: str | None = Field(None, description="why f is undefined (None: it is defined)")
    gap_stderr: float | None = Field(None, description="standard error of m(M) − m(∅) over prompts (paired)")
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
    f = None if not baseline.defined else (m_circuit - baseline.m_empty) / (baseline.m_full - baseline.m_empty)
    by_ablation: dict[str, float | None] = {rule.ablation: f}
    if ALSO_UNDER != rule.ablation:
        by_ablation[ALSO_UNDER] = Baseline(model, data, ALSO_UNDER, ctx).f(keep)
    report = FaithfulnessReport(faithfulness=f, metric=ctx.metric, m_circuit=baseline.own_sign(m_circuit),
                                m_full=baseline.own_sign(baseline.m_full), m_empty=baseline.own_sign(baseline.m_empty),
                                ablation=rule.ablation, by_ablation=by_ablation,
                                faithfulness_undefined=baseline.undefined_reason, gap_stderr=baseline.gap_stderr)
    if rule.curve and f is not None:
        order = ranked_heads(scores, rule.by)
        total = len(order)
        points = [(k, k / total, 0.0 if k == 0 else 1.0 if k == total else float(baseline.f(set(order[:k]))))
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
    faithfulness: float | None  # None: undefined (the baseline's gap is within noise)


def most_faithful(model: LoadedModel, data: EncodedPrompts, head_scores: dict[str, np.ndarray], rule: CircuitRule,
                  ctx: MethodContext) -> tuple[Circuit, list[Candidate], Baseline]:
    """Each method's circuit by the rule, and the one whose faithfulness is closest to 1 (ties: the
    smaller circuit, then the method listed first; when f is undefined, the first method's). The
    baseline is shared by all candidates."""
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
    best = min(candidates, key=lambda c: (0.0 if c.faithfulness is None else abs(1 - c.faithfulness),
                                          0 if c.faithfulness is None else len(c.heads), methods.index(c.method)))
    return circuits[best.method], candidates, baseline


def missing_from_ablations(report: FaithfulnessReport, missing: list[Head]) -> list[str]:
    """Warnings for a circuit missing reference heads: its faithfulness under each ablation, so
    a high f under one ablation cannot pass for a complete circuit."""
    if not missing:
        return []
    figures = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} undefined" for k, v in report.by_ablation.items())
    return [f"the circuit misses reference heads {', '.join(head_label(l, h) for l, h in missing)} "
            f"(faithfulness {figures})"]

