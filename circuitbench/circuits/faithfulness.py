"""Faithfulness of a circuit: the model with every component outside it ablated, as MIB defines it,
f(C) = (m(C) − m(∅)) / (m(M) − m(∅)), and the curve of f over circuit sizes (CPR, CMD).

Faithfulness is a ratio, and its denominator m(M) − m(∅) can be noise: when ablating every
component changes the metric by less than twice the standard error of that change over prompts (a
paired test: the per-prompt differences m_i(M) − m_i(∅), their mean against their standard error),
f is undefined, stored as None with the reason, never as a number (a random-init model's
0.0003 / 0.0003 would otherwise read as "faithfulness 118").

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
from typing import Protocol

import numpy as np

from circuitbench.circuits.circuit import (
    Circuit,
    CircuitCandidate,
    CurvePoint,
    Faithfulness,
    Head,
    head_label,
    ranked_heads,
    ranked_nodes,
    split_nodes,
)
from circuitbench.models.graph import INPUT
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.ablations import Ablation, Zero, parse_ablation
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import ablated_nodes_metric, ablated_nodes_values
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule

CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ALSO_UNDER: Ablation = Zero()  # the second ablation every circuit is reported under
NOISE_Z = 2.0  # |m(M) − m(∅)| below NOISE_Z standard errors of the paired difference: f is undefined


def paired_gap(full: np.ndarray, empty: np.ndarray, ctx: MethodContext) -> tuple[float, float, float | None, int]:
    """(m(M), m(∅), standard error of m(M) − m(∅), n) from per-prompt values on this process's
    prompts, summed over processes: the standard error is of the paired differences, so the
    prompt-to-prompt spread both runs share cancels. One prompt has no spread: the standard error
    is None (undefined), never 0, which would make any gap "beyond noise"."""
    diff = full - empty
    s_full, s_empty, s_diff, s_diff2, n = ctx.sum_shards(
        (float(full.sum()), float(empty.sum()), float(diff.sum()), float((diff**2).sum()), len(full)))
    if n == 0:  # resample: no prompt had a partner (undefined_reason says so)
        return 0.0, 0.0, None, 0
    if n < 2:
        return s_full / n, s_empty / n, None, int(n)
    variance = max(0.0, (s_diff2 - s_diff**2 / n) / (n - 1))
    return s_full / n, s_empty / n, float(np.sqrt(variance / n)), int(n)


def undefined_reason(m_full: float, m_empty: float, gap_stderr: float | None, n: int, what: str, metric: str,
                     shown_full: float) -> str | None:
    """Why f is undefined (None: it is defined): `what` (e.g. "ablating every head (zero)") changes
    the metric by nothing, or by less than NOISE_Z standard errors of that change, or there is a
    single prompt, whose change cannot be told from noise."""
    gap = abs(m_full - m_empty)
    if n == 0:
        return f"no prompt could be measured with {what} (resample: no prompt has a partner of its template)"
    if gap < 1e-9:
        return f"{what} does not change {metric} ({shown_full:.4g})"
    if gap_stderr is None:
        return (f"{what} changes {metric} by {gap:.3g}, but with {n} prompt there is no spread over prompts: the "
                "standard error of that change is undefined, so no effect can be told from noise; run 2 or more "
                "prompts (--n)")
    if gap < NOISE_Z * gap_stderr:
        return (f"|m(M) − m(∅)| = {gap:.3g} is within noise: less than {NOISE_Z:g} × its standard error over "
                f"{n} prompts ({gap_stderr:.3g}; {what}): the components have no measurable effect on the metric")
    return None


def curve_sizes(n_total: int) -> list[int]:
    """Every circuit size for small models; MIB's fraction grid for large ones (integration: sizes)."""
    if n_total <= 64:
        return list(range(n_total + 1))
    return sorted({round(f * n_total) for f in CURVE_FRACTIONS})


def mib_sizes(n_total: int) -> list[int]:
    """How many components MIB keeps at each of its fractions: int(fraction × n), as MIB rounds."""
    return [int(f * n_total) for f in MIB_FRACTIONS]


def trapezoid_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Σ (x₂ − x₁)·(y₁ + y₂)/2 over consecutive points (MIB's integration, summed in its order)."""
    return float(trapezoid_areas(xs, np.asarray(ys, dtype=np.float64)[None, :])[0])


def trapezoid_areas(xs: Sequence[float], ys: np.ndarray) -> np.ndarray:
    """[rows] trapezoid_area of each row of ys [rows, points], summed left to right as MIB sums, so a
    curve's interval endpoints are computed exactly as its own area (no last-digit disagreement)."""
    total = np.zeros(ys.shape[0])
    for i in range(len(xs) - 1):
        total = total + (xs[i + 1] - xs[i]) * (ys[:, i] + ys[:, i + 1]) / 2
    return total


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
    metric's own values. Under Resample only the prompts with a partner count."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, ablation: Ablation, ctx: MethodContext,
                 level: str = "head") -> None:
        self.model, self.data, self.ablation, self.ctx, self.level = model, data, ablation, ctx, level
        heads = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
        everything = ("the input, every head and MLP" if model.has_mlp else "the input and every head") \
            if level == "node" else "every head"
        self.everything = everything
        full = self.values(heads, set(range(model.n_layers)), "m(M), the full model's metric")
        # node level: MIB's empty circuit has no node at all, the input embedding's node included
        empty = self.values(set(), set(), f"m(∅), the metric with {everything} ablated", keep_input=level != "node")
        self.full_values, self.empty_values = full, empty  # this process's prompts (the panel's bootstrap)
        self.m_full, self.m_empty, self.gap_stderr, self.n = paired_gap(full, empty, ctx)

    def _mlps(self, keep_mlps: set[int] | None) -> set[int] | None:
        return None if self.level == "head" else (keep_mlps or set())

    def values(self, keep: set[Head], keep_mlps: set[int] | None, quantity: str, keep_input: bool = True) -> np.ndarray:
        """Per-prompt metric (this process's prompts) with everything outside the kept set ablated
        (the input embedding too unless `keep_input`)."""
        values = ablated_nodes_values(self.model, self.data, keep, self._mlps(keep_mlps), self.ablation,
                                      self.ctx, keep_input).numpy()
        if not np.isfinite(values).all():
            raise nonfinite_error(f"Faithfulness ({self.ablation.name} ablation): {quantity}", self.model,
                                  self.data.tokens[:4])
        return values

    def metric(self, keep: set[Head], keep_mlps: set[int] | None = None,
               quantity: str = "m(C), the circuit's metric", keep_input: bool = True) -> float:
        value = ablated_nodes_metric(self.model, self.data, keep, self._mlps(keep_mlps), self.ablation, self.ctx,
                                     keep_input)
        if not np.isfinite(value):
            raise nonfinite_error(f"Faithfulness ({self.ablation.name} ablation): {quantity}", self.model,
                                  self.data.tokens[:4])
        return value

    @property
    def undefined_reason(self) -> str | None:
        """Why f is undefined under this ablation (None: it is defined): ablating every head changes
        the metric by nothing, or by less than NOISE_Z standard errors of that change."""
        return undefined_reason(self.m_full, self.m_empty, self.gap_stderr, self.n,
                                f"ablating {self.everything} ({self.ablation.name})", self.ctx.metric,
                                self.own_sign(self.m_full))

    @property
    def defined(self) -> bool:
        return self.undefined_reason is None

    def f(self, keep: set[Head], keep_mlps: set[int] | None = None, keep_input: bool = True) -> float | None:
        """f(C) of the circuit keeping `keep` (and `keep_mlps`, and the input unless `keep_input` is
        False); None when f is undefined (see undefined_reason)."""
        if not self.defined:
            return None
        return (self.metric(keep, keep_mlps, keep_input=keep_input) - self.m_empty) / (self.m_full - self.m_empty)

    def curve_values(self, input_scored: bool = False) -> CurveValues:
        """f of node lists for the curve, keeping their per-prompt values (CPR / CMD intervals); the
        input is kept when listed, or always when the method did not score it (`input_scored`)."""
        def values_of(nodes: list[str]) -> np.ndarray:
            heads, mlps = split_nodes(nodes)
            return self.values(set(heads), set(mlps), "m(C) of a point of the faithfulness curve",
                               keep_input=not input_scored or INPUT in nodes)
        return CurveValues(values_of, self, self.ctx)

    def own_sign(self, value: float) -> float:
        return value if METRICS.get(self.ctx.metric).higher_is_better else -value


class CurveValues:
    """f of a set of components for the curve (`values_of(items)`: this process's per-prompt metric
    with only them kept), computed as the baseline computes f, keeping every point's per-prompt
    values of all prompts: the bootstrap intervals of CPR and CMD resample them."""

    def __init__(self, values_of: Callable[[list[str]], np.ndarray], baseline: ReportBaseline,
                 ctx: MethodContext) -> None:
        self.values_of, self.baseline, self.ctx = values_of, baseline, ctx
        self.kept: dict[tuple[str, ...], np.ndarray] = {}

    def __call__(self, items: list[str]) -> float:
        shard = self.values_of(items)
        total, n = self.ctx.sum_shards((float(shard.sum()), len(shard)))
        self.kept[tuple(sorted(items))] = self.ctx.gather_shards(shard)
        b = self.baseline
        return (total / n - b.m_empty) / (b.m_full - b.m_empty)

    def resampled(self, order: list[str], sizes: list[int], rows: np.ndarray) -> np.ndarray:
        """[resamples, sizes] f of the top-k of `order` for each k, on each resample of the prompts
        (rows: [resamples, n] prompt indices); NaN where a resample has no effect to divide by."""
        full = self.ctx.gather_shards(self.baseline.full_values)[rows].mean(axis=1)
        empty = self.ctx.gather_shards(self.baseline.empty_values)[rows].mean(axis=1)
        gap = np.where(np.abs(full - empty) > 1e-12, full - empty, np.nan)
        columns = []
        for k in sizes:
            if k == 0 or k >= len(order):
                columns.append(np.full(len(rows), 0.0 if k == 0 else 1.0))
            else:
                columns.append((self.kept[tuple(sorted(order[:k]))][rows].mean(axis=1) - empty) / gap)
        return np.stack(columns, axis=1)


CURVE_RESAMPLES = 1000


def _interval(samples: np.ndarray) -> tuple[float, float] | None:
    """The 95 % percentile interval of finite samples (None when over 5 % are not finite)."""
    finite = samples[np.isfinite(samples)]
    if len(samples) == 0 or len(finite) < 0.95 * len(samples):
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def curves(order_abs: list[str], order_signed: list[str], integration: str, f_of: Callable[[list[str]], float],
           by: str, seed: int = 0) -> dict[str, object]:
    """The curve fields of a Faithfulness record: MIB's two curves, or every size on the rule's
    ranking; with `f_of` a CurveValues, also CPR's and CMD's 95 % bootstrap intervals (the prompts
    resampled with replacement, every point of the curve recomputed from the same resample)."""
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
        fields: dict[str, object] = {"integration": "mib", "curve": by_abs, "curve_signed": signed, "cpr": cpr,
                                     "cmd": cmd}
        if isinstance(f_of, CurveValues) and (rows := _rows(f_of, seed)) is not None:
            f_signed, f_abs = f_of.resampled(order_signed, sizes, rows), f_of.resampled(order_abs, sizes, rows)
            fields["cpr_ci"] = _interval(trapezoid_areas(MIB_FRACTIONS, f_signed))
            fields["cmd_ci"] = _interval(trapezoid_areas(MIB_FRACTIONS, np.abs(1 - f_abs)))
        return fields
    order = order_abs if by == "abs" else order_signed
    sizes = curve_sizes(len(order))
    points = curve(order, sizes, f_of)
    xs, ys = np.array([p[1] for p in points]), np.array([p[2] for p in points])
    fields = {"integration": "sizes", "curve": points, "cpr": trapezoid_area(list(xs), ys),
              "cmd": trapezoid_area(list(xs), np.abs(1 - ys))}
    if isinstance(f_of, CurveValues) and (rows := _rows(f_of, seed)) is not None:
        f = f_of.resampled(order, sizes, rows)
        fields["cpr_ci"] = _interval(trapezoid_areas(list(xs), f))
        fields["cmd_ci"] = _interval(trapezoid_areas(list(xs), np.abs(1 - f)))
    return fields


def _rows(values: CurveValues, seed: int) -> np.ndarray | None:
    """[CURVE_RESAMPLES, n] seeded resamples of the prompt indices (None under 2 prompts)."""
    n = len(values.ctx.gather_shards(values.baseline.full_values))
    return None if n < 2 else np.random.default_rng(seed).integers(0, n, size=(CURVE_RESAMPLES, n))


def ranked_names(scores: np.ndarray | dict[str, float], by: str) -> list[str]:
    if isinstance(scores, np.ndarray):  # head scores: ranked as heads always were (ties: lower layer, head)
        return [f"a{l}.h{h}" for l, h in ranked_heads(scores, by)]
    return ranked_nodes(scores, by)


def faithfulness(model: LoadedModel, data: EncodedPrompts, circuit: Circuit, scores: np.ndarray | dict[str, float],
                 rule: CircuitRule, ctx: MethodContext, baseline: Baseline | None = None) -> Faithfulness:
    """The circuit's faithfulness under the rule's ablation (and zero ablation), with the curve of
    the top components by `scores` ([n_layers, n_heads] head scores, or {node: score}) when the
    rule asks for it and f is defined."""
    level = "node" if rule.level == "node" else "head"
    baseline = baseline or Baseline(model, data, parse_ablation(rule.ablation), ctx, level)
    keep, keep_mlps = set(map(tuple, circuit.heads)), set(circuit.mlps)
    return assemble_report(
        baseline, baseline.metric(keep, keep_mlps, keep_input=circuit.input), rule, ctx.metric,
        also=lambda: Baseline(model, data, ALSO_UNDER, ctx, level).f(keep, keep_mlps, circuit.input),
        curve=lambda: curves(ranked_names(scores, "abs"), ranked_names(scores, "signed"), rule.effective_integration,
                             baseline.curve_values(input_scored(scores)), rule.by))


def input_scored(scores: np.ndarray | dict[str, float]) -> bool:
    """Whether a method's scores rank the input embedding as a node (node methods like nap)."""
    return isinstance(scores, dict) and INPUT in scores


class ReportBaseline(Protocol):
    """What a report needs of a node (`Baseline`) or edge (`EdgeBaseline`) baseline."""

    m_full: float
    m_empty: float
    gap_stderr: float | None
    full_values: np.ndarray  # [prompts] this process's
    empty_values: np.ndarray  # [prompts] this process's

    @property
    def defined(self) -> bool: ...

    @property
    def undefined_reason(self) -> str | None: ...

    def own_sign(self, value: float) -> float: ...


def assemble_report(baseline: ReportBaseline, m_circuit: float, rule: CircuitRule, metric: str,
                    also: Callable[[], float | None], curve: Callable[[], dict]) -> Faithfulness:
    """The report of a circuit scoring m_circuit against a node or edge baseline: f under the rule's
    ablation, `also()` under ALSO_UNDER, and the curve's fields (`curve()`) when the rule asks for
    them and f is defined."""
    f = None if not baseline.defined else (m_circuit - baseline.m_empty) / (baseline.m_full - baseline.m_empty)
    by_ablation: dict[str, float | None] = {rule.ablation: f}
    if ALSO_UNDER != parse_ablation(rule.ablation):
        by_ablation[ALSO_UNDER.name] = also()
    report = Faithfulness(value=f, metric=metric, m_circuit=baseline.own_sign(m_circuit),
                                m_full=baseline.own_sign(baseline.m_full), m_empty=baseline.own_sign(baseline.m_empty),
                                ablation=rule.ablation, by_ablation=by_ablation,
                                undefined=baseline.undefined_reason, gap_stderr=baseline.gap_stderr)
    return report.model_copy(update=curve()) if rule.curve and f is not None else report


def most_faithful(model: LoadedModel, data: EncodedPrompts, scores: dict[str, np.ndarray] | dict[str, dict[str, float]],
                  rule: CircuitRule, ctx: MethodContext) -> tuple[Circuit, list[CircuitCandidate], Baseline]:
    """Each method's circuit by the rule (from head score arrays, or at node level from {node:
    score}), and the one whose faithfulness is closest to 1 (ties: the smaller circuit, then the
    method listed first; when f is undefined, the first method's). The baseline is shared by all
    candidates."""
    methods = list(scores) if rule.method in (None, "auto") else [rule.method]
    level = "node" if rule.level == "node" else "head"
    baseline = Baseline(model, data, parse_ablation(rule.ablation), ctx, level)
    shape = (model.n_layers, model.n_heads)
    circuits = {m: Circuit.from_scores(s, rule, m) if isinstance(s := scores[m], np.ndarray)
                else Circuit.from_node_scores(s, rule, m, shape) for m in methods}
    seen: dict[tuple, float | None] = {}
    candidates = []
    for method, c in circuits.items():
        key = (tuple(sorted(map(tuple, c.heads))), tuple(c.mlps), c.input)
        if key not in seen:
            seen[key] = baseline.f(set(key[0]), set(key[1]), c.input)
        candidates.append(CircuitCandidate(method=method, heads=c.heads, mlps=c.mlps, faithfulness=seen[key]))
    best = min(candidates, key=lambda c: (0.0 if c.faithfulness is None else abs(1 - c.faithfulness),
                                          0 if c.faithfulness is None else len(c.heads) + len(c.mlps),
                                          methods.index(c.method)))
    return circuits[best.method], candidates, baseline


def missing_from_ablations(report: Faithfulness, missing: list[Head], missing_mlps: list[int] = ()) -> list[str]:
    """Warnings for a circuit missing reference heads (or, at node level, MLPs): its faithfulness
    under each ablation, so a high f under one ablation cannot pass for a complete circuit."""
    if not missing and not missing_mlps:
        return []
    figures = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} undefined" for k, v in report.by_ablation.items())
    what = [f"reference heads {', '.join(head_label(l, h) for l, h in missing)}"] if missing else []
    what += [f"reference MLPs {', '.join(f'm{l}' for l in missing_mlps)}"] if missing_mlps else []
    return [f"the circuit misses {' and '.join(what)} (faithfulness {figures})"]

