"""Faithfulness of a circuit: the model with every component outside it ablated, as MIB defines it,
f(C) = (m(C) − m(∅)) / (m(M) − m(∅)), and the curve of f over circuit sizes (CPR, CMD).

Head circuits ablate heads only (MLPs always run), node circuits heads and MLPs (m(∅): every head
and MLP ablated, as MIB's empty circuit). The curve is MIB's by default for node circuits (and
for edge circuits, circuits/edge_faithfulness.py): the top 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and
100 % of the components, CPR the trapezoid area under f on the signed ranking and CMD the area
under |1 − f| on the |score| ranking, between those points (x = the fraction of components);
`integration: sizes` keeps the earlier curve (every size from 0, one ranking, trapezoid from 0),
the default for head circuits.

One ablation can hide a missing component (a head whose clean and counterfactual outputs agree
looks unnecessary under mean-counterfactual ablation), so f is reported under the task's ablation
and under zero ablation. `data` may be one data-parallel process's shard: every mean over prompts
goes through ctx.sum_shards, so each process computes the one-process numbers."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit, Head, ranked_heads, ranked_nodes, split_nodes
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import COUNTERFACTUAL, ablated_nodes_metric, mean_node_outputs
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule

CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ALSO_UNDER = "zero"  # the second ablation every circuit is reported under
CurvePoint = tuple[int, float, float]  # (components kept, fraction, f)


def curve_sizes(n_total: int) -> list[int]:
    """Every circuit size for small models; MIB's fraction grid for large ones (integration: sizes)."""
    if n_total <= 64:
        return list(range(n_total + 1))
    return sorted({round(f * n_total) for f in CURVE_FRACTIONS})


def mib_sizes(n_total: int) -> list[int]:
    """How many components MIB keeps at each of its fractions: int(fraction × n), as MIB rounds."""
    return [int(f * n_total) for f in MIB_FRACTIONS]


def trapezoid_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Σ (x₂ − x₁)·(y₁ + y₂)/2 over consecutive points (MIB's integration)."""
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def mib_cpr_cmd(f_signed: Sequence[float], f_abs: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD) as MIB integrates them: the area under f of the signed-ranking curve, and under
    |1 − f| of the |score|-ranking curve, both over MIB_FRACTIONS."""
    return trapezoid_area(MIB_FRACTIONS, f_signed), trapezoid_area(MIB_FRACTIONS, [abs(1 - f) for f in f_abs])


def curve(order: list[str], sizes: list[int], f_of: Callable[[list[str]], float],
          fractions: Sequence[float] | None = None) -> list[CurvePoint]:
    """f of the top-k components of `order` for each k of `sizes` (k = 0: 0, all of them: 1, by
    definition), with x the fraction of components (MIB's own fractions when given)."""
    total = len(order)
    points = []
    for i, k in enumerate(sizes):
        f = 0.0 if k == 0 else 1.0 if k >= total else f_of(order[:k])
        points.append((k, fractions[i] if fractions is not None else k / total, f))
    return points


class Baseline:
    """m(M) and m(∅) under one ablation, and f(C) for any set of kept heads (and, at node level,
    MLPs). Metrics are oriented so higher is better inside; `own_sign` turns them back into the
    metric's own values."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, kind: str, ctx: MethodContext,
                 level: str = "head") -> None:
        self.model, self.data, self.kind, self.ctx, self.level = model, data, kind, ctx, level
        self.fill: object
        if kind == "zero":
            self.fill = None
        elif data.corrupted is None and kind in ("mean_counterfactual", COUNTERFACTUAL):
            raise CircuitbenchError(f"circuit.ablation {kind} needs corrupted prompts; this task has none. "
                                    "Use mean_clean or zero.")
        elif kind == COUNTERFACTUAL:
            if not data.aligned:
                raise CircuitbenchError("circuit.ablation counterfactual patches each prompt's counterfactual position "
                                        "by position; this task's counterfactuals may have another token length. Use "
                                        "mean_counterfactual.")
            self.fill = COUNTERFACTUAL
        else:
            self.fill = mean_node_outputs(model, data, ctx, corrupted=kind == "mean_counterfactual")
        heads = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
        self.m_full = self.metric(heads, set(range(model.n_layers)), "m(M), the full model's metric")
        everything = "every head and MLP" if level == "node" and model.has_mlp else "every head"
        self.m_empty = self.metric(set(), set(), f"m(∅), the metric with {everything} ablated")

    def metric(self, keep: set[Head], keep_mlps: set[int] | None = None,
               quantity: str = "m(C), the circuit's metric") -> float:
        mlps = None if self.level == "head" else (keep_mlps or set())
        value = ablated_nodes_metric(self.model, self.data, keep, mlps, self.fill, self.ctx)  # type: ignore[arg-type]
        if not np.isfinite(value):
            raise nonfinite_error(f"Faithfulness ({self.kind} ablation): {quantity}", self.model, self.data.tokens[:4])
        return value

    @property
    def defined(self) -> bool:
        return abs(self.m_full - self.m_empty) >= 1e-9

    def f(self, keep: set[Head], keep_mlps: set[int] | None = None) -> float:
        if not self.defined:
            raise CircuitbenchError(
                f"Faithfulness is undefined on '{self.model.name}': ablating every component ({self.kind}) does not "
                f"change the metric ({self.own_sign(self.m_full):.4g}). Try another circuit.ablation.")
        return (self.metric(keep, keep_mlps) - self.m_empty) / (self.m_full - self.m_empty)

    def f_nodes(self, nodes: list[str]) -> float:
        heads, mlps = split_nodes(nodes)
        return self.f(set(heads), set(mlps))

    def own_sign(self, value: float) -> float:
        return value if METRICS.get(self.ctx.metric).higher_is_better else -value


class FaithfulnessReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faithfulness: float = Field(description="f(C) = (m(C) − m(∅)) / (m(M) − m(∅))")
    metric: str = Field(description="the metric m, whose own values m_circuit / m_full / m_empty are")
    m_circuit: float = Field(description="the metric with only the circuit's components kept")
    m_full: float = Field(description="the metric of the full model, m(M)")
    m_empty: float = Field(description="the metric with every component ablated, m(∅)")
    ablation: str = Field(description="how components outside the circuit were removed")
    by_ablation: dict[str, float | None] = Field(
        default_factory=dict, description="f(C) under each ablation computed (None: undefined under it)")
    integration: str | None = Field(None, description="the curve: mib (MIB's sizes and integration) or sizes")
    curve: list[tuple[int, float, float]] = Field(
        default_factory=list, description="(components kept, fraction, f) per size; mib: on the |score| ranking")
    curve_signed: list[tuple[int, float, float]] = Field(
        default_factory=list, description="mib: the same on the signed ranking (CPR's curve)")
    cpr: float | None = Field(None, description="area under f over the fraction of components kept (higher better)")
    cmd: float | None = Field(None, description="area under |1 − f| (lower better)")


def curves(order_abs: list[str], order_signed: list[str], integration: str, f_of: Callable[[list[str]], float],
           by: str) -> dict[str, object]:
    """The curve fields of a FaithfulnessReport: MIB's two curves, or every size on the rule's ranking."""
    if integration == "mib":
        sizes = mib_sizes(len(order_abs))
        seen: dict[tuple[str, ...], float] = {}

        def cached(items: list[str]) -> float:
            key = tuple(sorted(items))
            if key not in seen:
                seen[key] = f_of(items)
            return seen[key]

        by_abs = curve(order_abs, sizes, cached, MIB_FRACTIONS)
        signed = curve(order_signed, sizes, cached, MIB_FRACTIONS)
        cpr, cmd = mib_cpr_cmd([p[2] for p in signed], [p[2] for p in by_abs])
        return {"integration": "mib", "curve": by_abs, "curve_signed": signed, "cpr": cpr, "cmd": cmd}
    order = order_abs if by == "abs" else order_signed
    points = curve(order, curve_sizes(len(order)), f_of)
    xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
    return {"integration": "sizes", "curve": points, "cpr": float(np.trapezoid(ys, xs)),
            "cmd": float(np.trapezoid(np.abs(1 - ys), xs))}


def head_node_scores(scores: np.ndarray) -> dict[str, float]:
    """{a{L}.h{H}: score} of a [n_layers, n_heads] array, in forward order."""
    return {f"a{l}.h{h}": float(scores[l, h]) for l, h in np.ndindex(*scores.shape)}


def ranked_names(scores: np.ndarray | dict[str, float], by: str) -> list[str]:
    if isinstance(scores, np.ndarray):  # head scores: ranked as heads always were (ties: lower layer, head)
        return [f"a{l}.h{h}" for l, h in ranked_heads(scores, by)]
    return ranked_nodes(scores, by)


def faithfulness(model: LoadedModel, data: EncodedPrompts, circuit: Circuit, scores: np.ndarray | dict[str, float],
                 rule: CircuitRule, ctx: MethodContext, baseline: Baseline | None = None) -> FaithfulnessReport:
    """The circuit's faithfulness under the rule's ablation (and zero ablation), with the curve of
    the top components by `scores` ([n_layers, n_heads] head scores, or {node: score}) when the
    rule asks for it."""
    level = "node" if rule.level == "node" else "head"
    baseline = baseline or Baseline(model, data, rule.ablation, ctx, level)
    keep, keep_mlps = set(map(tuple, circuit.heads)), set(circuit.mlps)
    m_circuit = baseline.metric(keep, keep_mlps)
    f = baseline.f(keep, keep_mlps)
    by_ablation: dict[str, float | None] = {rule.ablation: f}
    if ALSO_UNDER != rule.ablation:
        other = Baseline(model, data, ALSO_UNDER, ctx, level)
        by_ablation[ALSO_UNDER] = other.f(keep, keep_mlps) if other.defined else None
    report = FaithfulnessReport(faithfulness=f, metric=ctx.metric, m_circuit=baseline.own_sign(m_circuit),
                                m_full=baseline.own_sign(baseline.m_full), m_empty=baseline.own_sign(baseline.m_empty),
                                ablation=rule.ablation, by_ablation=by_ablation)
    if rule.curve:
        fields = curves(ranked_names(scores, "abs"), ranked_names(scores, "signed"), rule.effective_integration,
                        baseline.f_nodes, rule.by)
        report = report.model_copy(update=fields)
    return report


class Candidate(BaseModel):
    """One method's circuit under the rule, and its faithfulness."""

    model_config = ConfigDict(extra="forbid")
    method: str
    heads: list[Head]
    mlps: list[int] = Field(default_factory=list)
    n_edges: int | None = None
    faithfulness: float


def most_faithful(model: LoadedModel, data: EncodedPrompts, scores: dict[str, np.ndarray] | dict[str, dict[str, float]],
                  rule: CircuitRule, ctx: MethodContext) -> tuple[Circuit, list[Candidate], Baseline]:
    """Each method's circuit by the rule (from head score arrays, or at node level from {node:
    score}), and the one whose faithfulness is closest to 1 (ties: the smaller circuit, then the
    method listed first). The baseline is shared by all candidates."""
    methods = list(scores) if rule.method in (None, "auto") else [rule.method]
    level = "node" if rule.level == "node" else "head"
    baseline = Baseline(model, data, rule.ablation, ctx, level)
    shape = (model.n_layers, model.n_heads)
    circuits = {m: Circuit.from_scores(s, rule, m) if isinstance(s := scores[m], np.ndarray)
                else Circuit.from_node_scores(s, rule, m, shape) for m in methods}
    seen: dict[tuple, float] = {}
    candidates = []
    for method, c in circuits.items():
        key = (tuple(sorted(map(tuple, c.heads))), tuple(c.mlps))
        if key not in seen:
            seen[key] = baseline.f(set(key[0]), set(key[1]))
        candidates.append(Candidate(method=method, heads=c.heads, mlps=c.mlps, faithfulness=seen[key]))
    best = min(candidates, key=lambda c: (abs(1 - c.faithfulness), len(c.heads) + len(c.mlps),
                                          methods.index(c.method)))
    return circuits[best.method], candidates, baseline


def missing_from_ablations(report: FaithfulnessReport, missing: list[Head], missing_mlps: list[int] = ()) -> list[str]:
    """Warnings for a circuit missing reference heads (or, at node level, MLPs): its faithfulness
    under each ablation, so a high f under one ablation cannot pass for a complete circuit."""
    if not missing and not missing_mlps:
        return []
    figures = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} undefined" for k, v in report.by_ablation.items())
    what = [f"reference heads {', '.join(f'{l}.{h}' for l, h in missing)}"] if missing else []
    what += [f"reference MLPs {', '.join(f'm{l}' for l in missing_mlps)}"] if missing_mlps else []
    return [f"the circuit misses {' and '.join(what)} (faithfulness {figures})"]

