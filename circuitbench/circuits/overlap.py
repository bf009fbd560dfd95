"""How much circuits share: the overlap matrix of several circuits, each figure beside its
permutation null. The metrics themselves are objects in circuits/overlap_metrics.py.

Circuits of the same shape are compared head by head; circuits of models with a different depth or
width are compared on relative depth (layer / n_layers in `bins` bins; scores only on the bins that
hold a layer of both models), and every result says which alignment it used.

Every figure comes with a permutation null (`permutation_null`): the same metric between the first
circuit and the second with its head scores (and heads) shuffled, by default within each layer, so
the null keeps how much of each circuit sits in each layer. Two unrelated circuits that both live in
layers 0–1 (as random-init models' do) overlap far beyond a uniform draw over all heads
(hypergeometric p ~ 1e-4) but not beyond this null; the null's mean and a one-sided p-value sit
beside every raw number.

`overlap_matrix` decides what both the `overlap` and the `compare` verbs show: the default metrics
(DEFAULT_METRICS, plus the node and edge metrics when the circuits carry nodes or edges; a default
metric the circuits cannot feed is skipped, with the reason) and the labels (circuits with equal
labels are told apart by their sources).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap_metrics import (
    OVERLAP_METRICS,
    MissingInput,
    OverlapMetric,
    RelativeDepthCircuit,
    same_shape,
    shape_of,
)
from circuitbench.circuits.overlap_settings import DEFAULT_PERMUTATIONS, NullKind, OverlapSettings
from circuitbench.errors import CircuitbenchError

# What overlap shows when no metric is named: these, plus NODE_METRICS for circuits with MLPs or node
# scores and EDGE_METRICS for edge circuits; each skipped (with the reason) where the circuits lack its input.
DEFAULT_METRICS = ("jaccard", "overlap_coefficient", "hypergeometric_p", "spearman")
NODE_METRICS = ("node_jaccard", "node_rbo")
EDGE_METRICS = ("edge_jaccard", "edge_weighted_jaccard", "edge_rbo")
MAX_NULL_BYTES = 2 * 10**9  # what the permutation null may hold in memory at once
DEFAULT_SETTINGS = OverlapSettings()  # frozen: safe to share as a default argument


def default_metrics(circuits: Sequence[Circuit]) -> list[str]:
    """The metrics shown when none is named: DEFAULT_METRICS, plus the node metrics when a circuit
    has MLPs or node scores and the edge metrics when one is an edge circuit."""
    names = list(DEFAULT_METRICS)
    if any(c.mlps or c.node_scores for c in circuits):
        names += NODE_METRICS
    if any(c.level == "edge" for c in circuits):
        names += EDGE_METRICS
    return names


def distinct_labels(circuits: Sequence[Circuit], sources: Sequence[str | Path] | None = None) -> list[Circuit]:
    """The circuits, those whose labels coincide (e.g. two seeds' runs of one model and task)
    relabelled by their source path without suffix (without sources: `label[i]`)."""
    labels = [c.label for c in circuits]
    if sources is not None and len(sources) != len(circuits):
        raise ValueError(f"{len(sources)} sources for {len(circuits)} circuits")

    def label(i: int, c: Circuit) -> str:
        if sources is not None:
            return str(Path(sources[i]).with_suffix(""))
        return f"{c.label}[{i}]" if c.label else f"circuit{i}"

    return [c.model_copy(update={"label": label(i, c)}) if labels.count(c.label) > 1 else c
            for i, c in enumerate(circuits)]


def to_relative_depth(c: Circuit, bins: int) -> RelativeDepthCircuit:
    """The circuit on a [bins, 1] grid: a head goes to bin floor(layer / n_layers · bins); a bin's
    score is the mean |score| of its heads (0 for a bin without a layer: not in `occupied`)."""
    n_layers, n_heads = shape_of(c)

    def bin_of(layer: int) -> int:
        return min(bins - 1, int(layer * bins / n_layers))

    heads = sorted({(bin_of(l), 0) for l, _ in c.heads})
    scores = None
    if c.scores is not None:
        s = np.abs(np.asarray(c.scores, dtype=float))
        per_bin: list[list[float]] = [[] for _ in range(bins)]
        for layer in range(n_layers):
            per_bin[bin_of(layer)].extend(s[layer].tolist())
        scores = [[float(np.mean(v)) if v else 0.0] for v in per_bin]
    return RelativeDepthCircuit(heads=heads, n_layers=bins, n_heads=1, scores=scores, method=c.method, rule=c.rule,
                                label=c.label, occupied=sorted({bin_of(layer) for layer in range(n_layers)}))


def check_null_size(permutations: int, c: Circuit) -> None:
    """Refuse a permutation null too big to hold (its shuffles are drawn at once), with the estimate."""
    if c.n_layers is None or c.n_heads is None:
        return
    cells = c.n_layers * c.n_heads
    need = permutations * cells * 24  # random keys, their argsort, the shuffled scores
    if need > MAX_NULL_BYTES:
        raise CircuitbenchError(
            f"--permutations {permutations}: {permutations:,} shuffles of the {cells:,} heads of '{c.label}' would "
            f"need about {need / 1e9:,.1f} GB; at most {MAX_NULL_BYTES // 10**9} GB is used. Give fewer permutations "
            f"(at most {MAX_NULL_BYTES // (24 * cells):,} here; {DEFAULT_PERMUTATIONS} is the default).")


def null_orders(c: Circuit, n: int, rng: np.random.Generator, kind: NullKind = "within_layer") -> np.ndarray:
    """[n, n_layers · n_heads] permutations of the circuit's cells (new position -> old position):
    within each layer (`within_layer`, the layer profile kept) or across the whole model (`all`);
    on relative depth (`RelativeDepthCircuit`) over the bins its model occupies."""
    n_layers, n_heads = shape_of(c)
    size = n_layers * n_heads
    if isinstance(c, RelativeDepthCircuit):
        cells = np.array(c.occupied, dtype=int)
        orders = np.tile(np.arange(size), (n, 1))
        orders[:, cells] = cells[rng.random((n, len(cells))).argsort(axis=1)]
        return orders
    if kind == "all":
        return rng.random((n, size)).argsort(axis=1)
    within = rng.random((n, n_layers, n_heads)).argsort(axis=2) + (np.arange(n_layers) * n_heads)[None, :, None]
    return within.reshape(n, size)


def permutation_null(x: Circuit, y: Circuit, metrics: Sequence[OverlapMetric], values: dict[str, float],
                     settings: OverlapSettings) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """({metric: null mean}, {metric: one-sided p-value}) of each metric between x and
    `settings.permutations` shuffles of y (see `null_orders`; seeded, so the same pair gives the
    same null), `values` the observed figures. The p-value is (1 + #null draws at least as extreme) /
    (1 + permutations): towards more overlap, i.e. larger, or smaller for a metric that is not
    `higher_is_better`. A metric that is NaN has no null (None)."""
    orders = null_orders(y, settings.permutations, np.random.default_rng(settings.seed), settings.null)
    means: dict[str, float | None] = {}
    pvalues: dict[str, float | None] = {}
    for metric in metrics:
        observed = values[metric.name]
        null = metric.null_values(x, y, orders)
        null = null[np.isfinite(null)]
        if not np.isfinite(observed) or not len(null):
            means[metric.name] = pvalues[metric.name] = None
            continue
        tol = 1e-9 * max(1.0, abs(observed))
        extreme = null >= observed - tol if metric.higher_is_better else null <= observed + tol
        means[metric.name] = float(null.mean())
        pvalues[metric.name] = float((1 + extreme.sum()) / (1 + len(null)))
    return means, pvalues


def null_description(permutations: int, kind: NullKind, alignment: str) -> str:
    if alignment != "head":
        return f"{permutations} shuffles of the second circuit over the depth bins its model occupies"
    where = "within each layer" if kind == "within_layer" else "across all heads"
    return f"{permutations} shuffles of the second circuit's head scores {where}"


class Comparison(BaseModel):
    """Every metric between two circuits (the first against the second), with its null."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    a: str = Field(description="The first circuit's label.")
    b: str = Field(description="The second circuit's label.")
    alignment: str = Field(description="\"head\" or \"relative_depth(bins=N)\".")
    values: dict[str, float] = Field(description="Metric -> value.")
    skipped: dict[str, str] = Field(default_factory=dict, description="Metric -> why it could not be computed.")
    null: str | None = Field(None, description="How the permutation null was drawn (None: no null).")
    null_mean: dict[str, float | None] = Field(default_factory=dict, description="Metric -> mean over the null "
                                               "(None: no null).")
    p_value: dict[str, float | None] = Field(default_factory=dict, description="Metric -> one-sided permutation "
                                             "p-value (towards more overlap).")


def resolve_metrics(metrics: Sequence[str | OverlapMetric] | None, circuits: Sequence[Circuit],
                    settings: OverlapSettings) -> tuple[list[OverlapMetric], bool]:
    """(the metric objects, whether they are optional): names looked up in OVERLAP_METRICS and
    configured by `settings` (an OverlapMetric is used as given); none named: `default_metrics`,
    optional (skipped where the circuits lack their input instead of an error)."""
    optional = not metrics
    names = default_metrics(circuits) if not metrics else metrics
    return [OVERLAP_METRICS.get(m).configured(settings) if isinstance(m, str) else m for m in names], optional


def _compare(a: Circuit, b: Circuit, metrics: Sequence[OverlapMetric], settings: OverlapSettings,
             optional: bool) -> Comparison:
    for c in (a, b):
        check_null_size(settings.permutations, c)
    same = (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads)
    if settings.alignment == "head" or (settings.alignment == "auto" and same):
        if not same and (a.n_layers is not None and b.n_layers is not None):
            same_shape(a, b)
        used, x, y = "head", a, b
    else:
        used = f"relative_depth(bins={settings.bins})"
        x, y = to_relative_depth(a, settings.bins), to_relative_depth(b, settings.bins)
    values, skipped = {}, {}
    for metric in metrics:
        try:
            if metric.compares_graph:  # nodes and edges are compared by name: within one model's graph
                if used != "head":
                    raise MissingInput("circuits of models of different shapes: their node and edge names do not "
                                       "correspond")
                values[metric.name] = metric.value(a, b)
            else:
                values[metric.name] = metric.value(x, y)
        except MissingInput as e:
            if not optional:
                raise
            skipped[metric.name] = str(e)
    null, means, pvalues = None, {}, {}
    if settings.permutations and values and y.shape is not None:
        null = null_description(settings.permutations, settings.null, "head" if used == "head" else used)
        # shuffling head scores leaves node/edge names where they are: graph metrics have no such null
        head_metrics = [m for m in metrics if m.name in values and not m.compares_graph]
        means, pvalues = permutation_null(x, y, head_metrics, values, settings)
        for name in values.keys() - means.keys():
            means[name] = pvalues[name] = None
    return Comparison(a=a.label or "A", b=b.label or "B", alignment=used, values=values, skipped=skipped, null=null,
                      null_mean=means, p_value=pvalues)


def compare(a: Circuit, b: Circuit, metrics: Sequence[str | OverlapMetric] | None = None,
            settings: OverlapSettings = DEFAULT_SETTINGS) -> Comparison:
    """Every metric (names or OverlapMetric objects; none: the defaults) between two circuits, with
    the alignment used and a permutation null (`settings.permutations` shuffles of b, see
    `permutation_null`; 0: none). A named metric that needs what the circuits do not carry (a
    shape, scores) is an error; a default one is left out, with the reason in `skipped`. On relative
    depth every metric gets the two `RelativeDepthCircuit`s, whose `occupied` says which bins hold a
    layer."""
    resolved, optional = resolve_metrics(metrics, (a, b), settings)
    return _compare(a, b, resolved, settings, optional)


Matrix = list[list[float]]
OptionalMatrix = list[list[float | None]]


class OverlapMatrix(BaseModel):
    """Overlap between every ordered pair of circuits (rows: the first circuit), per metric, with
    the permutation null (None on the diagonal and where a metric has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: list[str] = Field(description="The circuits' labels, in order (distinct where sources were given).")
    metrics: list[str] = Field(description="The metrics computed, in the order asked (skipped ones left out).")
    alignment: list[list[str]] = Field(description="Per pair: \"head\" or \"relative_depth(bins=N)\".")
    values: dict[str, Matrix] = Field(description="Metric -> [n][n] values (NaN where undefined, e.g. Spearman "
                                      "of a constant map).")
    null: str | None = Field(description="How the permutation null was drawn (None: no null).")
    null_mean: dict[str, OptionalMatrix] = Field(description="Metric -> [n][n] mean over the null.")
    p_value: dict[str, OptionalMatrix] = Field(description="Metric -> [n][n] one-sided permutation p-value "
                                               "(towards more overlap).")
    skipped: dict[str, str] = Field(description="Default metrics the circuits could not feed -> why.")
    settings: OverlapSettings = Field(description="The settings the matrix was computed with.")

    def index(self, label: str | int) -> int:
        """A circuit's row (an index is returned as is)."""
        if isinstance(label, int):
            return label
        if label not in self.labels:
            raise CircuitbenchError(f"No circuit labelled '{label}' in this matrix: its labels are "
                                    f"{', '.join(self.labels)}.")
        return self.labels.index(label)

    def array(self, metric: str, field: Literal["values", "null_mean", "p_value"] = "values") -> np.ndarray:
        """[n, n] float array of one metric's values, null means or p-values (None as NaN)."""
        table = getattr(self, field)
        if metric not in table:
            raise CircuitbenchError(f"Metric '{metric}' is not in this matrix: it holds {', '.join(self.metrics)}"
                                    + (f" ({metric} was skipped: {self.skipped[metric]})" if metric in self.skipped
                                       else "") + ".")
        return np.array([[np.nan if v is None else v for v in row] for row in table[metric]], dtype=float)

    def frame(self, metric: str, field: Literal["values", "null_mean", "p_value"] = "values") -> pd.DataFrame:
        """`array` as a DataFrame indexed by the labels (rows: the first circuit)."""
        return pd.DataFrame(self.array(metric, field), index=self.labels, columns=self.labels)

    def value(self, metric: str, a: str | int, b: str | int) -> float:
        """One figure: the metric between circuit a and circuit b (labels or indices)."""
        return float(self.array(metric)[self.index(a), self.index(b)])

    def to_json(self) -> dict[str, object]:
        """The `overlap --json` layout: {"labels", "alignment", "<metric>": [[...]] per metric, "null",
        "null_mean": {metric: [[...]]}, "p_value": {metric: [[...]]}, "skipped": {metric: reason}}."""
        clash = {"labels", "alignment", "null", "null_mean", "p_value", "skipped"} & set(self.metrics)
        if clash:
            raise CircuitbenchError(f"Overlap metric '{clash.pop()}' has the name of a field of the JSON layout: "
                                    "register it under another name.")
        return {"labels": self.labels, "alignment": self.alignment, **{m: self.values[m] for m in self.metrics},
                "null": self.null, "null_mean": self.null_mean, "p_value": self.p_value, "skipped": self.skipped}


def overlap_matrix(circuits: Sequence[Circuit], metrics: Sequence[str | OverlapMetric] | None = None,
                   settings: OverlapSettings = DEFAULT_SETTINGS,
                   sources: Sequence[str | Path] | None = None) -> OverlapMatrix:
    """Every metric over every ordered pair of circuits (see `compare`; no null on the diagonal).
    `metrics`: names or OverlapMetric objects; none: `default_metrics`, each left out (with the reason
    in `skipped`) where any pair lacks its input. `sources` (e.g. the files the circuits were read
    from) tell apart circuits with equal labels (see `distinct_labels`)."""
    circuits = distinct_labels(circuits, sources)
    resolved, optional = resolve_metrics(metrics, circuits, settings)
    on_diagonal = settings.model_copy(update={"permutations": 0})
    grid = [[_compare(a, b, resolved, on_diagonal if i == j else settings, optional) for j, b in enumerate(circuits)]
            for i, a in enumerate(circuits)]
    skipped = {name: reason for row in grid for g in row for name, reason in g.skipped.items()}
    kept = [m.name for m in resolved if m.name not in skipped]
    return OverlapMatrix(
        labels=[c.label or f"circuit{i}" for i, c in enumerate(circuits)], metrics=kept,
        alignment=[[g.alignment for g in row] for row in grid],
        values={name: [[g.values[name] for g in row] for row in grid] for name in kept},
        null=next((g.null for row in grid for g in row if g.null), None),
        null_mean={name: [[g.null_mean.get(name) for g in row] for row in grid] for name in kept},
        p_value={name: [[g.p_value.get(name) for g in row] for row in grid] for name in kept},
        skipped=skipped, settings=settings)
