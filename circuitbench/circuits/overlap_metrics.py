"""Overlap metrics as objects: how much two circuits share, one `OverlapMetric` per metric.

A metric says what it needs (head sets, head scores, a model shape, nodes, edges), whether larger
means more overlap (`higher_is_better`; hypergeometric_p: smaller), and gives `value(a, b)` for two
`Circuit`s. Its permutation null (see circuits/overlap.py) comes from `null_values(a, b, orders)`:
by default `value` on each shuffle of b, one generic path; a metric overrides it with a batched form
only where that is a real speed-up (head sets, head scores), and the tests check the two agree.

Parameters (top_n, rbo_p) live in `OverlapSettings`, with the alignment, the bins and the null:
validated once, passed as one object; `metric.configured(settings)` is the metric with its own
parameters taken from them (nothing is routed by metric name). Built-ins and plugins register the
same way, into `OVERLAP_METRICS`; a plugin's plain `fn(a, b) -> float` becomes a `PluginMetric`
whose every value is checked (one finite number, or an error naming the metric).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import pandas as pd

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap_settings import OverlapSettings
from circuitbench.errors import CircuitbenchError
from circuitbench.registry import Registry

# What a metric reads from a circuit.
Need = Literal["heads", "shape", "head_scores", "nodes", "node_scores", "edges", "edge_scores"]
# Needs of metrics that compare node or edge names: within one model's graph, and without a permutation null.
GRAPH_NEEDS: frozenset[Need] = frozenset({"nodes", "node_scores", "edges", "edge_scores"})


class MissingInput(CircuitbenchError):
    """A metric needs what a circuit does not carry (its model's shape, or head scores)."""


class RelativeDepthCircuit(Circuit):
    """A circuit on relative depth (a [bins, 1] grid, see `overlap.to_relative_depth`). `occupied`
    lists the bins that hold at least one layer of its model; the others are empty (their score 0 is
    no measurement): score metrics compare only bins both models occupy, and `hypergeometric_p` draws
    each circuit's bins from its own model's. (Set metrics need nothing: no head lies in an empty bin.)"""

    occupied: list[int]


# --- what metrics read from circuits -------------------------------------------------------------
def _sets(a: Circuit, b: Circuit) -> tuple[set, set]:
    return set(map(tuple, a.heads)), set(map(tuple, b.heads))


def shape_of(c: Circuit) -> tuple[int, int]:
    """(n_layers, n_heads) of the circuit's model, or MissingInput naming it."""
    if c.n_layers is None or c.n_heads is None:
        raise MissingInput(
            f"Circuit '{c.label or '?'}' has no model shape (n_layers, n_heads): this metric needs it. Use a "
            "RunResult, or add \"n_layers\" and \"n_heads\" to the circuit JSON."
        )
    return c.n_layers, c.n_heads


def same_shape(a: Circuit, b: Circuit) -> tuple[int, int]:
    """The shape both circuits' models have, or an error saying to compare them on relative depth."""
    sa, sb = shape_of(a), shape_of(b)
    if sa != sb:
        raise CircuitbenchError(
            f"Circuits '{a.label}' {sa[0]}×{sa[1]} and '{b.label}' {sb[0]}×{sb[1]} differ in shape: compare them "
            "with alignment 'relative_depth' (or 'auto')."
        )
    return sa


def _cells(c: Circuit, size: int) -> np.ndarray:
    """Which of the circuit's `size` cells (flattened) hold heads of its model: on relative depth the
    occupied bins, otherwise every (layer, head)."""
    if not isinstance(c, RelativeDepthCircuit):
        return np.ones(size, dtype=bool)
    mask = np.zeros(size, dtype=bool)
    mask[c.occupied] = True
    return mask


def _scores(c: Circuit) -> np.ndarray:
    if c.scores is None:
        raise MissingInput(f"Circuit '{c.label or '?'}' carries no head scores: this metric compares scores.")
    return np.asarray(c.scores, dtype=float)


def _flat_scores(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    """Both circuits' scores, flattened, on the cells both models have (on relative depth: the bins
    both occupy; an empty bin's 0 would count as agreement)."""
    x, y = _scores(a), _scores(b)
    if x.shape != y.shape:
        same_shape(a, b)
    keep = _cells(a, x.size) & _cells(b, y.size)
    return x.ravel()[keep], y.ravel()[keep]


def _mask(c: Circuit, size: int, n_heads: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    for l, h in c.heads:
        m[l * n_heads + h] = True
    return m


def shuffled(c: Circuit, order: np.ndarray) -> Circuit:
    """The circuit with its cells permuted by `order` (new position -> old position, see
    `overlap.null_orders`): heads and scores move together."""
    n_layers, n_heads = shape_of(c)
    where = np.empty(len(order), dtype=int)
    where[order] = np.arange(len(order))  # old position -> new position
    heads = sorted((int(where[l * n_heads + h]) // n_heads, int(where[l * n_heads + h]) % n_heads) for l, h in c.heads)
    scores = None if c.scores is None else np.asarray(c.scores, dtype=float).ravel()[order].reshape(
        n_layers, n_heads).tolist()
    return c.model_copy(update={"heads": heads, "scores": scores})


# --- the metric object ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class OverlapMetric:
    """One overlap metric. Subclasses give `value`; `null_values` is the metric between a and each
    shuffle of b (`orders`: [n, cells], new position -> old position), by default `value` on each
    shuffled circuit. `configured(settings)` returns the metric with its parameters from the settings."""

    name: str
    description: str
    needs: frozenset[Need] = frozenset({"heads"})
    higher_is_better: bool = True  # False: a smaller value means more overlap (the null's p counts that tail)

    def value(self, a: Circuit, b: Circuit) -> float:
        raise NotImplementedError

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        """[n] the metric between a and b with b's cells permuted by each row of `orders`."""
        return np.array([self.value(a, shuffled(b, order)) for order in orders], dtype=float)

    def configured(self, settings: OverlapSettings) -> OverlapMetric:
        """This metric with its parameters taken from `settings` (a metric without any: itself)."""
        return self

    @property
    def compares_graph(self) -> bool:
        """Compares node or edge names (within one model's graph; no permutation null)."""
        return bool(self.needs & GRAPH_NEEDS)


# --- head sets -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class HeadSetMetric(OverlapMetric):
    """A function of the shared head count k = |A∩B| (and |A|, |B|): one formula, evaluated for
    the circuits themselves and, at once over all shuffles, for the null."""

    def of_overlap(self, a: Circuit, b: Circuit, k: np.ndarray, na: int, nb: int) -> np.ndarray:
        """[n] the metric had A and B shared k[i] heads (A of na heads, B of nb)."""
        raise NotImplementedError

    def value(self, a: Circuit, b: Circuit) -> float:
        sa, sb = _sets(a, b)
        return float(self.of_overlap(a, b, np.array([len(sa & sb)]), len(sa), len(sb))[0])

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        n_layers, n_heads = shape_of(b)
        size = n_layers * n_heads
        ma, mb = _mask(a, size, n_heads), _mask(b, size, n_heads)
        return self.of_overlap(a, b, (ma[None] & mb[orders]).sum(axis=1), int(ma.sum()), int(mb.sum()))


@dataclass(frozen=True, kw_only=True)
class Jaccard(HeadSetMetric):
    name: str = "jaccard"
    description: str = "|A∩B| / |A∪B| (two empty circuits are identical: 1)."

    def of_overlap(self, a: Circuit, b: Circuit, k: np.ndarray, na: int, nb: int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(na + nb == 0, 1.0, k / np.maximum(na + nb - k, 1))


@dataclass(frozen=True, kw_only=True)
class OverlapCoefficient(HeadSetMetric):
    name: str = "overlap_coefficient"
    description: str = "|A∩B| / min(|A|, |B|) (1 if both are empty, 0 if only one is)."

    def of_overlap(self, a: Circuit, b: Circuit, k: np.ndarray, na: int, nb: int) -> np.ndarray:
        if na == 0 and nb == 0:
            return np.ones(len(k))
        return np.zeros(len(k)) if min(na, nb) == 0 else k / min(na, nb)


@dataclass(frozen=True, kw_only=True)
class Directional(HeadSetMetric):
    name: str = "directional"
    description: str = "|A∩B| / |A|: how much of A lies in B (1 for an empty A: nothing of it is missing)."

    def of_overlap(self, a: Circuit, b: Circuit, k: np.ndarray, na: int, nb: int) -> np.ndarray:
        return np.full(len(k), 1.0) if na == 0 else k / na


def _tail(population: int, big_k: int, n: int, k: int) -> Fraction:
    """P(X ≥ k) for X ~ Hypergeometric(population, big_k marked, n drawn)."""
    hits = range(k, min(big_k, n) + 1)
    return Fraction(sum(math.comb(big_k, i) * math.comb(population - big_k, n - i) for i in hits),
                    math.comb(population, n))


def _landing(population: int, marked: int, drawn: int) -> dict[int, Fraction]:
    """{i: P(exactly i of `drawn` cells picked at random from `population` are among `marked`)}."""
    if marked == population:
        return {drawn: Fraction(1)}
    total = math.comb(population, drawn)
    return {i: Fraction(math.comb(marked, i) * math.comb(population - marked, drawn - i), total)
            for i in range(max(0, drawn - population + marked), min(marked, drawn) + 1)}


def _hypergeometric_tail(a: Circuit, b: Circuit, k: int) -> float:
    """hypergeometric_p of a and b had their overlap been k heads (it depends on nothing else)."""
    n_layers, n_heads = same_shape(a, b)
    cells_a, cells_b = _cells(a, n_layers * n_heads), _cells(b, n_layers * n_heads)
    shared = int((cells_a & cells_b).sum())
    sa, sb = _sets(a, b)
    in_a = _landing(int(cells_a.sum()), shared, len(sa))
    in_b = _landing(int(cells_b.sum()), shared, len(sb))
    return float(sum(pa * pb * _tail(shared, i, j, k) for i, pa in in_a.items() for j, pb in in_b.items()))


@dataclass(frozen=True, kw_only=True)
class HypergeometricP(HeadSetMetric):
    """P(X ≥ |A∩B|) for X the overlap of |A| and |B| heads drawn at random from the heads each model
    has: small means more overlap than chance.

    Same shape: both draw from the model's n_layers · n_heads heads, X hypergeometric. On relative
    depth A draws its bins from the N_A bins its model has a layer in, B from its N_B, and only the C
    bins both have can be shared: P = Σ_{i,j} P(i of A's bins in C) · P(j of B's in C) · P(X ≥ |A∩B|)
    for X ~ Hypergeometric(C, i, j). (Counting all `bins` as the population made a chance overlap of
    shallow models look rare: a 2-layer model can put heads in 2 of 10 bins, not 10.)"""

    name: str = "hypergeometric_p"
    description: str = ("P(X ≥ |A∩B|) for X the overlap of |A| and |B| heads drawn at random from the heads each "
                        "model has: small means more overlap than chance.")
    needs: frozenset[Need] = frozenset({"heads", "shape"})
    higher_is_better: bool = False

    def of_overlap(self, a: Circuit, b: Circuit, k: np.ndarray, na: int, nb: int) -> np.ndarray:
        tails = {kk: _hypergeometric_tail(a, b, int(kk)) for kk in np.unique(k)}
        return np.array([tails[kk] for kk in k])


# --- head scores ---------------------------------------------------------------------------------
def _null_scores(a: Circuit, b: Circuit, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a's scores [kept], b's scores under each shuffle [n, kept], the kept cells [cells]): the cells
    both models have, as `_flat_scores` keeps them."""
    n_layers, n_heads = shape_of(b)
    keep = _cells(a, n_layers * n_heads) & _cells(b, n_layers * n_heads)
    xs = np.asarray(a.scores, dtype=float).ravel()[keep]
    ys = np.asarray(b.scores, dtype=float).ravel()[orders][:, keep]
    return xs, ys, keep


def _has_scores(a: Circuit, b: Circuit) -> bool:
    return a.scores is not None and b.scores is not None


def _weighted_jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Σ min(|x|, |y|) / Σ max(|x|, |y|), each vector scaled to max |value| = 1 (all zeros: 1)."""
    x, y = np.abs(x), np.abs(y)
    x, y = x / max(x.max(), 1e-12), y / max(y.max(), 1e-12)
    denom = np.maximum(x, y).sum()
    return 1.0 if denom == 0 else float(np.minimum(x, y).sum() / denom)


@dataclass(frozen=True, kw_only=True)
class WeightedJaccard(OverlapMetric):
    name: str = "weighted_jaccard"
    description: str = "Σ min(|a|, |b|) / Σ max(|a|, |b|) over heads, each score array scaled to max |score| = 1."
    needs: frozenset[Need] = frozenset({"head_scores"})

    def value(self, a: Circuit, b: Circuit) -> float:
        return _weighted_jaccard(*_flat_scores(a, b))

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        if not _has_scores(a, b):
            return super().null_values(a, b, orders)
        xs, ys, _ = _null_scores(a, b, orders)
        ax_ = np.abs(xs) / max(np.abs(xs).max(initial=0.0), 1e-12)
        ay_ = np.abs(ys) / np.maximum(np.abs(ys).max(axis=1, keepdims=True, initial=0.0), 1e-12)
        denom = np.maximum(ax_[None], ay_).sum(axis=1)
        return np.where(denom == 0, 1.0, np.minimum(ax_[None], ay_).sum(axis=1) / np.where(denom == 0, 1, denom))


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two score arrays of one shape (average ranks for ties; NaN
    when either is constant)."""
    rx = pd.Series(np.ravel(x)).rank().to_numpy()
    ry = pd.Series(np.ravel(y)).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (as rank_correlation takes them)."""
    return pd.DataFrame(np.atleast_2d(values)).rank(axis=1).to_numpy()


@dataclass(frozen=True, kw_only=True)
class Spearman(OverlapMetric):
    name: str = "spearman"
    description: str = "Spearman rank correlation of the two circuits' head scores."
    needs: frozenset[Need] = frozenset({"head_scores"})

    def value(self, a: Circuit, b: Circuit) -> float:
        return rank_correlation(*_flat_scores(a, b))

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        if not _has_scores(a, b):
            return super().null_values(a, b, orders)
        xs, ys, _ = _null_scores(a, b, orders)
        rx, ry = _ranks(xs)[0], _ranks(ys)
        rx, ry = rx - rx.mean(), ry - ry.mean(axis=1, keepdims=True)
        denom = np.sqrt((rx**2).sum() * (ry**2).sum(axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, (ry @ rx) / np.where(denom > 0, denom, 1), np.nan)


@dataclass(frozen=True, kw_only=True)
class Kendall(OverlapMetric):
    name: str = "kendall"
    description: str = "Kendall's tau-b (ties accounted for)."
    needs: frozenset[Need] = frozenset({"head_scores"})

    def value(self, a: Circuit, b: Circuit) -> float:
        x, y = _flat_scores(a, b)
        n = len(x)
        concordant = discordant = ties_x = ties_y = 0
        for i in range(n):
            dx, dy = np.sign(x[i + 1 :] - x[i]), np.sign(y[i + 1 :] - y[i])
            concordant += int(((dx * dy) > 0).sum())
            discordant += int(((dx * dy) < 0).sum())
            ties_x += int(((dx == 0) & (dy != 0)).sum())
            ties_y += int(((dy == 0) & (dx != 0)).sum())
        denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
        return float("nan") if denom == 0 else (concordant - discordant) / denom

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        if not _has_scores(a, b):
            return super().null_values(a, b, orders)
        xs, ys, _ = _null_scores(a, b, orders)
        i, j = np.triu_indices(len(xs), 1)
        dx = np.sign(xs[j] - xs[i])
        out = np.empty(len(ys))
        chunk = max(1, 2_000_000 // max(len(i), 1))  # bounds the [rows, pairs] sign arrays
        for start in range(0, len(ys), chunk):
            dy = np.sign(ys[start:start + chunk, j] - ys[start:start + chunk, i])
            prod = dx[None] * dy
            conc, disc = (prod > 0).sum(1), (prod < 0).sum(1)
            tx, ty = ((dx[None] == 0) & (dy != 0)).sum(1), ((dy == 0) & (dx[None] != 0)).sum(1)
            denom = np.sqrt((conc + disc + tx) * (conc + disc + ty))
            with np.errstate(divide="ignore", invalid="ignore"):
                out[start:start + len(dy)] = np.where(denom == 0, np.nan, (conc - disc) / np.where(denom == 0, 1,
                                                                                                     denom))
        return out


# --- rankings with ties: top-n overlap and rank-biased overlap -----------------------------------
def _tie_spans(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last rank (from 1, largest value first) of each item's tie group: an item tied
    with t − 1 others shares a span of t ranks with them."""
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    group = np.cumsum(new_group) - 1
    first, last = np.empty(len(values)), np.empty(len(values))
    first[order], last[order] = starts[group] + 1, ends[group]
    return first, last


def _ramp(span: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with P(item among the top d) = a + b·d = (d − first + 1) / size while d lies in its tie
    span before the last rank, ties ordered at random (from the last rank on it is 1, before it 0)."""
    first, last = span
    size = last - first + 1
    return (1 - first) / size, 1 / size


def _add_piece(coef: np.ndarray, start: np.ndarray, stop: np.ndarray, *poly: np.ndarray | float) -> None:
    """Add each item's polynomial poly[0] + poly[1]·d + poly[2]·d² on depths start..stop (none when
    start > stop) to the difference arrays `coef` [3, rows, k + 2]; start, stop are [rows, k]."""
    keep = start <= stop
    rows = np.broadcast_to(np.arange(start.shape[0])[:, None], start.shape)[keep]
    for row, c in enumerate(poly):
        c = np.broadcast_to(c, start.shape)[keep]
        np.add.at(coef[row], (rows, start[keep].astype(int)), c)
        np.add.at(coef[row], (rows, stop[keep].astype(int) + 1), -c)


def _expected_overlaps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """X_d for d = 1..len(x): the expected number of items in both top-d sets of the |x| and |y|
    rankings, ties in each ordered uniformly at random (independently): Σ_i P_x(i, d) · P_y(i, d).
    Each product is a piecewise polynomial in d (1 from the later of the two last ranks on, linear
    or quadratic while the item is inside a tie span), summed over items with difference arrays."""
    fy, ly = _tie_spans(np.abs(y))
    return _expected_overlaps_spans(_tie_spans(np.abs(x)), fy[None], ly[None])[0]


def _expected_overlaps_spans(x_span: tuple[np.ndarray, np.ndarray], fy: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """`_expected_overlaps` of one ranking (x's tie spans) against several, given by their tie
    spans fy, ly [rows, k] (a permutation of y's items permutes its spans): [rows, k]."""
    fx, lx = (np.broadcast_to(v, fy.shape) for v in x_span)
    rows, k = fy.shape
    last = np.maximum(lx, ly).astype(int)
    counts = np.zeros((rows, k + 1))
    np.add.at(counts, (np.broadcast_to(np.arange(rows)[:, None], last.shape), last), 1)
    in_both = np.cumsum(counts, axis=1)[:, 1:]
    coef = np.zeros((3, rows, k + 2))
    (ax, bx), (ay, by) = _ramp((fx, lx)), _ramp((fy, ly))
    _add_piece(coef, np.maximum(fx, fy), np.minimum(lx, ly) - 1, ax * ay, ax * by + ay * bx, bx * by)
    _add_piece(coef, np.maximum(fx, ly), lx - 1, ax, bx, 0.0)  # tied in x, already in y's top d
    _add_piece(coef, np.maximum(fy, lx), ly - 1, ay, by, 0.0)  # tied in y, already in x's top d
    c0, c1, c2 = np.cumsum(coef, axis=2)[:, :, 1 : k + 1]
    d = np.arange(1, k + 1)
    return in_both + c0 + c1 * d + c2 * d**2


def _null_overlaps(a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
    """[n, kept] `_expected_overlaps` of a's scores against each shuffle of b's."""
    xs, ys, keep = _null_scores(a, b, orders)
    if keep.all():  # every cell kept: permuting b permutes its tie spans
        fy, ly = _tie_spans(np.abs(np.asarray(b.scores, dtype=float).ravel()))
        fy, ly = fy[orders], ly[orders]
    else:
        spans = [_tie_spans(np.abs(row)) for row in ys]
        fy, ly = np.stack([sp[0] for sp in spans]), np.stack([sp[1] for sp in spans])
    return _expected_overlaps_spans(_tie_spans(np.abs(xs)), fy, ly)


def _rbo_rows(overlaps: np.ndarray, p: float) -> np.ndarray:
    """[rows] extrapolated RBO from expected overlaps X_d [rows, k]."""
    k = overlaps.shape[1]
    depths = np.arange(1, k + 1)
    agreement = overlaps / depths
    return (1 - p) / p * (agreement * p**depths).sum(axis=1) + agreement[:, -1] * p**k


def _rbo(x: np.ndarray, y: np.ndarray, p: float) -> float:
    """Tie-aware extrapolated RBO of the |x| and |y| rankings (see `RankBiasedOverlap`)."""
    return float(_rbo_rows(_expected_overlaps(x, y)[None], p)[0])


@dataclass(frozen=True, kw_only=True)
class TopNOverlap(OverlapMetric):
    """Share of the top-n heads by |score| that both rankings hold, ties counted fractionally.

    X_n / n, X_n as in `RankBiasedOverlap`: a tie group across the n-th place counts each of its
    heads with the share of its span inside the top n (the expected overlap when ties are ordered
    uniformly at random, not by head index)."""

    name: str = "top_n_overlap"
    description: str = "Share of the top-n heads by |score| that both rankings hold, ties counted fractionally."
    needs: frozenset[Need] = frozenset({"head_scores"})
    n: int = 10

    def configured(self, settings: OverlapSettings) -> TopNOverlap:
        return dataclasses.replace(self, n=settings.top_n)

    def _of(self, overlaps: np.ndarray) -> np.ndarray:
        depth = min(self.n, overlaps.shape[1])
        return overlaps[:, depth - 1] / max(1, depth)

    def value(self, a: Circuit, b: Circuit) -> float:
        return float(self._of(_expected_overlaps(*_flat_scores(a, b))[None])[0])

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        return self._of(_null_overlaps(a, b, orders)) if _has_scores(a, b) else super().null_values(a, b, orders)


@dataclass(frozen=True, kw_only=True)
class RankBiasedOverlap(OverlapMetric):
    """Extrapolated rank-biased overlap (Webber et al. 2010) of the |score| rankings, ties at random.

    Top-weighted, p the persistence (the weight of depth d falls as p^(d-1)): RBO_ext = (1 − p)/p ·
    Σ_{d=1..k} A_d p^d + A_k p^k with A_d = X_d / d, X_d the overlap of the two top-d sets. Tied heads
    (equal |score|, e.g. zeros) share a span of ranks; X_d is the expected overlap when each ranking's
    ties are ordered uniformly at random, so a head tied across depth d counts with the share of its
    span above d: RBO^a of Corsi & Urbano 2024 ("The treatment of ties in rank-biased overlap", SIGIR),
    the mean RBO over every way of breaking the ties. Without ties nothing changes. Webber et al.'s own
    treatment (section 4.3: a tie group sits at its first rank, A_d = 2X_d / (|S_:d| + |T_:d|)) counts a
    run of tied zeros as full agreement from its first rank on, so it is not used. A map with ties
    scores below 1 against itself: tied heads agree only as two random orders of them do."""

    name: str = "rbo"
    description: str = ("Extrapolated rank-biased overlap (Webber et al. 2010) of the |score| rankings, ties at "
                        "random.")
    needs: frozenset[Need] = frozenset({"head_scores"})
    p: float = 0.9

    def configured(self, settings: OverlapSettings) -> RankBiasedOverlap:
        return dataclasses.replace(self, p=settings.rbo_p)

    def value(self, a: Circuit, b: Circuit) -> float:
        return _rbo(*_flat_scores(a, b), self.p)

    def null_values(self, a: Circuit, b: Circuit, orders: np.ndarray) -> np.ndarray:
        return _rbo_rows(_null_overlaps(a, b, orders), self.p) if _has_scores(a, b) else \
            super().null_values(a, b, orders)


# --- node and edge sets (graph circuits: MLPs, edges) ---------------------------------------------
def _set_jaccard(x: set, y: set) -> float:
    return 1.0 if not x | y else len(x & y) / len(x | y)


def _edges(c: Circuit) -> set[str]:
    if c.level != "edge":
        raise MissingInput(f"Circuit '{c.label or '?'}' is a {c.level} circuit: it holds no edges.")
    return set(c.edges)


def _named_vectors(a: Circuit, b: Circuit, field: str, missing: str) -> tuple[np.ndarray, np.ndarray]:
    """Both circuits' scores (`edge_scores` or `node_scores`) over the union of the names either
    scored (0 where one did not)."""
    scores = []
    for c in (a, b):
        named: dict[str, float] | None = getattr(c, field)
        if not named:
            raise MissingInput(f"Circuit '{c.label or '?'}' carries no {missing}.")
        scores.append(named)
    names = sorted(set(scores[0]) | set(scores[1]))
    return np.array([scores[0].get(n, 0.0) for n in names]), np.array([scores[1].get(n, 0.0) for n in names])


def _edge_vectors(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    return _named_vectors(a, b, "edge_scores", "edge scores: this metric compares them")


def _node_vectors(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    return _named_vectors(a, b, "node_scores", "node scores (heads and MLPs)")


@dataclass(frozen=True, kw_only=True)
class NodeJaccard(OverlapMetric):
    name: str = "node_jaccard"
    description: str = "|A∩B| / |A∪B| of the circuits' nodes: heads and MLPs."
    needs: frozenset[Need] = frozenset({"nodes"})

    def value(self, a: Circuit, b: Circuit) -> float:
        return _set_jaccard(set(a.nodes), set(b.nodes))


@dataclass(frozen=True, kw_only=True)
class NodeRBO(OverlapMetric):
    name: str = "node_rbo"
    description: str = "Tie-aware rank-biased overlap of the two |node score| rankings (heads and MLPs)."
    needs: frozenset[Need] = frozenset({"node_scores"})
    p: float = 0.9

    def configured(self, settings: OverlapSettings) -> NodeRBO:
        return dataclasses.replace(self, p=settings.rbo_p)

    def value(self, a: Circuit, b: Circuit) -> float:
        return _rbo(*_node_vectors(a, b), self.p)


@dataclass(frozen=True, kw_only=True)
class EdgeJaccard(OverlapMetric):
    name: str = "edge_jaccard"
    description: str = "|A∩B| / |A∪B| of the circuits' edges (after pruning)."
    needs: frozenset[Need] = frozenset({"edges"})

    def value(self, a: Circuit, b: Circuit) -> float:
        return _set_jaccard(_edges(a), _edges(b))


@dataclass(frozen=True, kw_only=True)
class EdgeWeightedJaccard(OverlapMetric):
    name: str = "edge_weighted_jaccard"
    description: str = ("Σ min(|a|, |b|) / Σ max(|a|, |b|) over edges, each circuit's edge scores scaled to max "
                        "|score| = 1.")
    needs: frozenset[Need] = frozenset({"edge_scores"})

    def value(self, a: Circuit, b: Circuit) -> float:
        return _weighted_jaccard(*_edge_vectors(a, b))


@dataclass(frozen=True, kw_only=True)
class EdgeRBO(OverlapMetric):
    name: str = "edge_rbo"
    description: str = ("Tie-aware rank-biased overlap (RBO^a, as `rank_biased_overlap`) of the two |edge score| "
                        "rankings.")
    needs: frozenset[Need] = frozenset({"edge_scores"})
    p: float = 0.9

    def configured(self, settings: OverlapSettings) -> EdgeRBO:
        return dataclasses.replace(self, p=settings.rbo_p)

    def value(self, a: Circuit, b: Circuit) -> float:
        return _rbo(*_edge_vectors(a, b), self.p)


# --- plugins ------------------------------------------------------------------------------------
OverlapFn = Callable[[Circuit, Circuit], float]


@dataclass(frozen=True, kw_only=True)
class PluginMetric(OverlapMetric):
    """A plugin's `fn(a, b) -> float` as an overlap metric; every value it returns is checked: one
    finite number. A plugin that raises, or returns anything else (a string, NaN, an array), is a
    clear error naming the metric, not a traceback or a NaN written into the matrix."""

    fn: OverlapFn

    def value(self, a: Circuit, b: Circuit) -> float:
        fix = "Fix the plugin, or leave the metric out of --metric."
        try:
            value = self.fn(a, b)
        except MissingInput:
            raise
        except CircuitbenchError as e:
            raise CircuitbenchError(f"Overlap metric '{self.name}' (a plugin): {e}") from None
        except Exception as e:  # noqa: BLE001 -- a plugin's bug, reported as such with where it happened
            frames = traceback.extract_tb(e.__traceback__)
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            raise CircuitbenchError(f"Overlap metric '{self.name}' (a plugin) raised {type(e).__name__}{where}: {e}. "
                                    f"{fix}") from None
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            shown = f"an array of shape {list(value.shape)}" if isinstance(value, np.ndarray) else \
                f"a {type(value).__name__} ({value!r:.40})"
            raise CircuitbenchError(f"Overlap metric '{self.name}' (a plugin) returned {shown}, not a number: an "
                                    f"overlap metric returns one finite float for a pair of circuits. {fix}")
        if not math.isfinite(float(value)):
            raise CircuitbenchError(f"Overlap metric '{self.name}' (a plugin) returned {float(value)} for '{a.label}' "
                                    f"and '{b.label}': an overlap metric returns one finite float. {fix}")
        return float(value)


def plugin_metric(name: str, fn: OverlapFn, *, description: str | None = None,
                  needs: Iterable[Need] = ("heads",), higher_is_better: bool = True) -> PluginMetric:
    """`fn(a, b) -> float` as an overlap metric named `name` (its description: the first line of
    fn's docstring unless given)."""
    if not callable(fn):
        raise TypeError(f"register_overlap_metric('{name}'): fn must be callable fn(a, b) -> float, not "
                        f"{type(fn).__name__}")
    return PluginMetric(name=name, fn=fn, needs=frozenset(needs), higher_is_better=higher_is_better,
                        description=description if description is not None else
                        (fn.__doc__ or "").strip().split("\n")[0])


# Overlap metrics by id; plugins add theirs the same way (circuitbench.register_overlap_metric).
BUILT_IN_METRICS: tuple[OverlapMetric, ...] = (
    Jaccard(), OverlapCoefficient(), Directional(), HypergeometricP(), WeightedJaccard(), Spearman(), Kendall(),
    TopNOverlap(), RankBiasedOverlap(), NodeJaccard(), NodeRBO(), EdgeJaccard(), EdgeWeightedJaccard(), EdgeRBO())
OVERLAP_METRICS: Registry[OverlapMetric] = Registry("overlap metric")
for _metric in BUILT_IN_METRICS:
    OVERLAP_METRICS.add(_metric.name, _metric)


# Each metric as a function of two circuits, for notebooks and tests (settings' defaults: top_n 10, rbo_p 0.9).
def jaccard(a: Circuit, b: Circuit) -> float:
    return Jaccard().value(a, b)


def overlap_coefficient(a: Circuit, b: Circuit) -> float:
    return OverlapCoefficient().value(a, b)


def directional(a: Circuit, b: Circuit) -> float:
    return Directional().value(a, b)


def hypergeometric_p(a: Circuit, b: Circuit) -> float:
    return HypergeometricP().value(a, b)


def weighted_jaccard(a: Circuit, b: Circuit) -> float:
    return WeightedJaccard().value(a, b)


def spearman(a: Circuit, b: Circuit) -> float:
    return Spearman().value(a, b)


def kendall(a: Circuit, b: Circuit) -> float:
    return Kendall().value(a, b)


def top_n_overlap(a: Circuit, b: Circuit, n: int = 10) -> float:
    return TopNOverlap(n=n).value(a, b)


def rank_biased_overlap(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    return RankBiasedOverlap(p=p).value(a, b)


def node_jaccard(a: Circuit, b: Circuit) -> float:
    return NodeJaccard().value(a, b)


def node_rbo(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    return NodeRBO(p=p).value(a, b)


def edge_jaccard(a: Circuit, b: Circuit) -> float:
    return EdgeJaccard().value(a, b)


def edge_weighted_jaccard(a: Circuit, b: Circuit) -> float:
    return EdgeWeightedJaccard().value(a, b)


def edge_rbo(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    return EdgeRBO(p=p).value(a, b)
