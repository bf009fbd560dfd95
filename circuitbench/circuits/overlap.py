"""How much two circuits share: set overlap of their heads (nodes, edges) and rank agreement of their
scores.

Every function takes `Circuit`s (from runs, papers or other tools). Circuits of the same shape are
compared head by head; circuits of models with a different depth or width are compared on
relative depth (layer / n_layers in `bins` bins; scores only on the bins that hold a layer of both
models), and every result says which alignment it used.

Every figure comes with a permutation null (`permutation_null`): the same metric between the first
circuit and the second with its head scores (and heads) shuffled, by default within each layer, so
the null keeps how much of each circuit sits in each layer. Two unrelated circuits that both live in
layers 0–1 (as random-init models' do) overlap far beyond a uniform draw over all heads
(hypergeometric p ~ 1e-4) but not beyond this null; the null's mean and a one-sided p-value sit
beside every raw number.
"""
from __future__ import annotations

import math
import numbers
import traceback
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit
from circuitbench.errors import CircuitbenchError
from circuitbench.registry import Registry

Alignment = Literal["auto", "head", "relative_depth"]
NullKind = Literal["within_layer", "all"]
# Metrics where a smaller value means more overlap (the permutation p-value counts the other tail).
SMALLER_MEANS_MORE = {"hypergeometric_p"}
DEFAULT_PERMUTATIONS = 200


def _sets(a: Circuit, b: Circuit) -> tuple[set, set]:
    return set(map(tuple, a.heads)), set(map(tuple, b.heads))


def jaccard(a: Circuit, b: Circuit) -> float:
    """|A∩B| / |A∪B| (two empty circuits are identical: 1)."""
    sa, sb = _sets(a, b)
    return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)


def overlap_coefficient(a: Circuit, b: Circuit) -> float:
    """|A∩B| / min(|A|, |B|) (1 if both are empty, 0 if only one is)."""
    sa, sb = _sets(a, b)
    if not sa and not sb:
        return 1.0
    return 0.0 if not sa or not sb else len(sa & sb) / min(len(sa), len(sb))


def directional(a: Circuit, b: Circuit) -> float:
    """|A∩B| / |A|: how much of A lies in B (1 for an empty A: nothing of it is missing)."""
    sa, sb = _sets(a, b)
    return 1.0 if not sa else len(sa & sb) / len(sa)


class MissingInput(CircuitbenchError):
    """A metric needs what a circuit does not carry (its model's shape, or head scores)."""


def _shape(c: Circuit) -> tuple[int, int]:
    if c.n_layers is None or c.n_heads is None:
        raise MissingInput(
            f"Circuit '{c.label or '?'}' has no model shape (n_layers, n_heads): this metric needs it. Use a "
            "RunResult, or add \"n_layers\" and \"n_heads\" to the circuit JSON."
        )
    return c.n_layers, c.n_heads


class RelativeDepthCircuit(Circuit):
    """A circuit on relative depth (a [bins, 1] grid, see `to_relative_depth`). `occupied` lists the
    bins that hold at least one layer of its model; the others are empty (their score 0 is no
    measurement): score metrics compare only bins both models occupy, and `hypergeometric_p` draws
    each circuit's bins from its own model's. (Set metrics need nothing: no head lies in an empty bin.)"""

    occupied: list[int]


def _cells(c: Circuit, size: int) -> np.ndarray:
    """Which of the circuit's `size` cells (flattened) hold heads of its model: on relative depth the
    occupied bins, otherwise every (layer, head)."""
    if not isinstance(c, RelativeDepthCircuit):
        return np.ones(size, dtype=bool)
    mask = np.zeros(size, dtype=bool)
    mask[c.occupied] = True
    return mask


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


def hypergeometric_p(a: Circuit, b: Circuit) -> float:
    """P(X ≥ |A∩B|) for X the overlap of |A| and |B| heads drawn at random from the heads each model
    has: small means more overlap than chance.

    Same shape: both draw from the model's n_layers · n_heads heads, X hypergeometric. On relative
    depth A draws its bins from the N_A bins its model has a layer in, B from its N_B, and only the C
    bins both have can be shared: P = Σ_{i,j} P(i of A's bins in C) · P(j of B's in C) · P(X ≥ |A∩B|)
    for X ~ Hypergeometric(C, i, j). (Counting all `bins` as the population made a chance overlap of
    shallow models look rare: a 2-layer model can put heads in 2 of 10 bins, not 10.)"""
    sa, sb = _sets(a, b)
    return _hypergeometric_tail(a, b, len(sa & sb))


def _hypergeometric_tail(a: Circuit, b: Circuit, k: int) -> float:
    """hypergeometric_p of a and b had their overlap been k heads (it depends on nothing else)."""
    n_layers, n_heads = _same_shape(a, b)
    cells_a, cells_b = _cells(a, n_layers * n_heads), _cells(b, n_layers * n_heads)
    shared = int((cells_a & cells_b).sum())
    sa, sb = _sets(a, b)
    in_a = _landing(int(cells_a.sum()), shared, len(sa))
    in_b = _landing(int(cells_b.sum()), shared, len(sb))
    return float(sum(pa * pb * _tail(shared, i, j, k) for i, pa in in_a.items() for j, pb in in_b.items()))


def _scores(c: Circuit) -> np.ndarray:
    if c.scores is None:
        raise MissingInput(f"Circuit '{c.label or '?'}' carries no head scores: this metric compares scores.")
    return np.asarray(c.scores, dtype=float)


def _same_shape(a: Circuit, b: Circuit) -> tuple[int, int]:
    sa, sb = _shape(a), _shape(b)
    if sa != sb:
        raise CircuitbenchError(
            f"Circuits '{a.label}' {sa[0]}×{sa[1]} and '{b.label}' {sb[0]}×{sb[1]} differ in shape: compare them "
            "with alignment 'relative_depth' (or 'auto')."
        )
    return sa


def weighted_jaccard(a: Circuit, b: Circuit) -> float:
    """Σ min(|a|, |b|) / Σ max(|a|, |b|) over heads, each score array scaled to max |score| = 1."""
    x, y = map(np.abs, _flat_scores(a, b))
    x, y = x / max(x.max(), 1e-12), y / max(y.max(), 1e-12)
    denom = np.maximum(x, y).sum()
    return 1.0 if denom == 0 else float(np.minimum(x, y).sum() / denom)


def _flat_scores(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    """Both circuits' scores, flattened, on the cells both models have (on relative depth: the bins
    both occupy; an empty bin's 0 would count as agreement)."""
    x, y = _scores(a), _scores(b)
    if x.shape != y.shape:
        _same_shape(a, b)
    keep = _cells(a, x.size) & _cells(b, y.size)
    return x.ravel()[keep], y.ravel()[keep]


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two score arrays of one shape (average ranks for ties; NaN
    when either is constant)."""
    rx = pd.Series(np.ravel(x)).rank().to_numpy()
    ry = pd.Series(np.ravel(y)).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman(a: Circuit, b: Circuit) -> float:
    """Spearman rank correlation of the two circuits' head scores."""
    x, y = _flat_scores(a, b)
    return rank_correlation(x, y)


def kendall(a: Circuit, b: Circuit) -> float:
    """Kendall's tau-b (ties accounted for)."""
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


def top_n_overlap(a: Circuit, b: Circuit, n: int = 10) -> float:
    """Share of the top-n heads by |score| that both rankings hold, ties counted fractionally.

    X_n / n, X_n as in `rank_biased_overlap`: a tie group across the n-th place counts each of its
    heads with the share of its span inside the top n (the expected overlap when ties are ordered
    uniformly at random, not by head index)."""
    x, y = _flat_scores(a, b)
    depth = min(n, len(x))
    return float(_expected_overlaps(x, y)[depth - 1]) / max(1, depth)


def rank_biased_overlap(a: Circuit, b: Circuit, p: float = 0.9) -> float:
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
    x, y = _flat_scores(a, b)
    k = len(x)
    depths = np.arange(1, k + 1)
    agreement = _expected_overlaps(x, y) / depths
    return float((1 - p) / p * np.sum(agreement * p**depths) + agreement[-1] * p**k)


# --- node and edge sets (graph circuits: MLPs, edges) ------------------------------------------
def _set_jaccard(x: set, y: set) -> float:
    return 1.0 if not x | y else len(x & y) / len(x | y)


def node_jaccard(a: Circuit, b: Circuit) -> float:
    """|A∩B| / |A∪B| of the circuits' nodes: heads and MLPs."""
    return _set_jaccard(set(a.nodes), set(b.nodes))


def _edges(c: Circuit) -> set[str]:
    if c.level != "edge":
        raise MissingInput(f"Circuit '{c.label or '?'}' is a {c.level} circuit: it holds no edges.")
    return set(c.edges)


def edge_jaccard(a: Circuit, b: Circuit) -> float:
    """|A∩B| / |A∪B| of the circuits' edges (after pruning)."""
    return _set_jaccard(_edges(a), _edges(b))


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


def edge_weighted_jaccard(a: Circuit, b: Circuit) -> float:
    """Σ min(|a|, |b|) / Σ max(|a|, |b|) over edges, each circuit's edge scores scaled to max |score| = 1."""
    x, y = map(np.abs, _edge_vectors(a, b))
    x, y = x / max(x.max(), 1e-12), y / max(y.max(), 1e-12)
    denom = np.maximum(x, y).sum()
    return 1.0 if denom == 0 else float(np.minimum(x, y).sum() / denom)


def _rbo(x: np.ndarray, y: np.ndarray, p: float) -> float:
    k = len(x)
    depths = np.arange(1, k + 1)
    agreement = _expected_overlaps(x, y) / depths
    return float((1 - p) / p * np.sum(agreement * p**depths) + agreement[-1] * p**k)


def edge_rbo(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    """Tie-aware rank-biased overlap (RBO^a, as `rank_biased_overlap`) of the two |edge score| rankings."""
    return _rbo(*_edge_vectors(a, b), p)


def _node_vectors(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    return _named_vectors(a, b, "node_scores", "node scores (heads and MLPs)")


def node_rbo(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    """Tie-aware rank-biased overlap of the two |node score| rankings (heads and MLPs)."""
    return _rbo(*_node_vectors(a, b), p)


GRAPH_METRICS = ("node_jaccard", "node_rbo", "edge_jaccard", "edge_weighted_jaccard", "edge_rbo")


# Overlap metrics by id; plugins add their own (circuitbench.register_overlap_metric).
OverlapFn = Callable[[Circuit, Circuit], float]
OVERLAP_METRICS: Registry[OverlapFn] = Registry("overlap metric")
for _name, _fn in (("jaccard", jaccard), ("overlap_coefficient", overlap_coefficient), ("directional", directional),
                   ("hypergeometric_p", hypergeometric_p), ("weighted_jaccard", weighted_jaccard),
                   ("spearman", spearman), ("kendall", kendall), ("top_n_overlap", top_n_overlap),
                   ("rbo", rank_biased_overlap), ("node_jaccard", node_jaccard), ("node_rbo", node_rbo),
                   ("edge_jaccard", edge_jaccard), ("edge_weighted_jaccard", edge_weighted_jaccard),
                   ("edge_rbo", edge_rbo)):
    OVERLAP_METRICS.add(_name, _fn)
BUILT_IN = frozenset(OVERLAP_METRICS.names())  # the others are plugins': their values are checked


def to_relative_depth(c: Circuit, bins: int) -> RelativeDepthCircuit:
    """The circuit on a [bins, 1] grid: a head goes to bin floor(layer / n_layers · bins); a bin's
    score is the mean |score| of its heads (0 for a bin without a layer: not in `occupied`)."""
    n_layers, n_heads = _shape(c)
    def bin_of(layer):
        return min(bins - 1, int(layer * bins / n_layers))
    heads = sorted({(bin_of(l), 0) for l, _ in c.heads})
    scores = None
    if c.scores is not None:
        s = np.abs(np.asarray(c.scores, dtype=float))
        per_bin = [[] for _ in range(bins)]
        for layer in range(n_layers):
            per_bin[bin_of(layer)].extend(s[layer].tolist())
        scores = [[float(np.mean(v)) if v else 0.0] for v in per_bin]
    return RelativeDepthCircuit(heads=heads, n_layers=bins, n_heads=1, scores=scores, method=c.method, rule=c.rule,
                                label=c.label, occupied=sorted({bin_of(layer) for layer in range(n_layers)}))


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    alignment: str  # "head" or "relative_depth(bins=N)"
    values: dict[str, float]
    skipped: dict[str, str] = Field(default_factory=dict)  # metric -> why it could not be computed
    null: str | None = None  # how the permutation null was drawn, e.g. "200 within-layer shuffles of b"
    null_mean: dict[str, float | None] = Field(default_factory=dict)  # metric -> mean over the null (None: no null)
    p_value: dict[str, float | None] = Field(default_factory=dict)  # metric -> one-sided permutation p-value


MAX_NULL_BYTES = 2 * 10**9  # what the permutation null may hold in memory at once


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


def check_settings(bins: int, top_n: int, rbo_p: float) -> None:
    """Refuse settings under which the metrics mean nothing."""
    if bins < 1:
        raise CircuitbenchError(f"--bins {bins}: relative depth needs at least 1 bin.")
    if top_n < 1:
        raise CircuitbenchError(f"--top-n {top_n}: compare at least the top 1 head.")
    if not 0 < rbo_p < 1:
        raise CircuitbenchError(f"--rbo-p {rbo_p}: rank-biased overlap's persistence p lies strictly between 0 and 1.")


def null_orders(c: Circuit, n: int, rng: np.random.Generator, kind: NullKind = "within_layer") -> np.ndarray:
    """[n, n_layers · n_heads] permutations of the circuit's cells (new position -> old position):
    within each layer (`within_layer`, the layer profile kept) or across the whole model (`all`);
    on relative depth (`RelativeDepthCircuit`) over the bins its model occupies."""
    n_layers, n_heads = _shape(c)
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


def shuffled(c: Circuit, order: np.ndarray) -> Circuit:
    """The circuit with its cells permuted by `order` (new position -> old position, see
    `null_orders`): heads and scores move together."""
    n_layers, n_heads = _shape(c)
    where = np.empty(len(order), dtype=int)
    where[order] = np.arange(len(order))  # old position -> new position
    heads = sorted((int(where[l * n_heads + h]) // n_heads, int(where[l * n_heads + h]) % n_heads) for l, h in c.heads)
    scores = None if c.scores is None else np.asarray(c.scores, dtype=float).ravel()[order].reshape(
        n_layers, n_heads).tolist()
    return c.model_copy(update={"heads": heads, "scores": scores})


def _metric_value(name: str, fn: OverlapFn, x: Circuit, y: Circuit, top_n: int, rbo_p: float) -> float:
    if name == "top_n_overlap":
        return top_n_overlap(x, y, top_n)
    if name == "rbo":
        return rank_biased_overlap(x, y, rbo_p)
    if name in BUILT_IN:
        return fn(x, y)
    return plugin_value(name, fn, x, y)


def plugin_value(name: str, fn: OverlapFn, x: Circuit, y: Circuit) -> float:
    """A plugin metric's value, checked: one finite number. A plugin that raises, or returns anything
    else (a string, NaN, an array), is a clear error naming the metric, not a traceback or a NaN
    written into the matrix."""
    fix = "Fix the plugin, or leave the metric out of --metric."
    try:
        value = fn(x, y)
    except MissingInput:
        raise
    except CircuitbenchError as e:
        raise CircuitbenchError(f"Overlap metric '{name}' (a plugin): {e}") from None
    except Exception as e:  # noqa: BLE001 -- a plugin's bug, reported as such with where it happened
        frames = traceback.extract_tb(e.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise CircuitbenchError(f"Overlap metric '{name}' (a plugin) raised {type(e).__name__}{where}: {e}. "
                                f"{fix}") from None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        shown = f"an array of shape {list(value.shape)}" if isinstance(value, np.ndarray) else \
            f"a {type(value).__name__} ({value!r:.40})"
        raise CircuitbenchError(f"Overlap metric '{name}' (a plugin) returned {shown}, not a number: an overlap metric "
                                f"returns one finite float for a pair of circuits. {fix}")
    if not math.isfinite(float(value)):
        raise CircuitbenchError(f"Overlap metric '{name}' (a plugin) returned {float(value)} for '{x.label}' and "
                                f"'{y.label}': an overlap metric returns one finite float. {fix}")
    return float(value)


def _mask(c: Circuit, size: int, n_heads: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    for l, h in c.heads:
        m[l * n_heads + h] = True
    return m


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (as rank_correlation takes them)."""
    return pd.DataFrame(np.atleast_2d(values)).rank(axis=1).to_numpy()


def _null_draws(name: str, x: Circuit, y: Circuit, orders: np.ndarray, top_n: int, rbo_p: float) -> np.ndarray:
    """[n] the metric between x and y with y's cells permuted by each row of `orders`; the built-in
    metrics at once over all rows, any other (a plugin's) one shuffle at a time."""
    n_layers, n_heads = _shape(y)
    size = n_layers * n_heads
    if name in ("jaccard", "overlap_coefficient", "directional", "hypergeometric_p"):
        a, b = _mask(x, size, n_heads), _mask(y, size, n_heads)
        k = (a[None] & b[orders]).sum(axis=1)
        na, nb = int(a.sum()), int(b.sum())
        if name == "hypergeometric_p":
            tails = {kk: _hypergeometric_tail(x, y, int(kk)) for kk in np.unique(k)}
            return np.array([tails[kk] for kk in k])
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "jaccard":
                return np.where(na + nb == 0, 1.0, k / np.maximum(na + nb - k, 1))
            if name == "directional":
                return np.full(len(k), 1.0) if na == 0 else k / na
            if na == 0 and nb == 0:
                return np.ones(len(k))
            return np.zeros(len(k)) if min(na, nb) == 0 else k / min(na, nb)
    if name in ("spearman", "kendall", "weighted_jaccard", "top_n_overlap", "rbo") and x.scores is not None \
            and y.scores is not None:
        keep = _cells(x, size) & _cells(y, size)
        xs = np.asarray(x.scores, dtype=float).ravel()[keep]
        ys = np.asarray(y.scores, dtype=float).ravel()[orders][:, keep]  # [n, kept]
        if name == "spearman":
            rx, ry = _ranks(xs)[0], _ranks(ys)
            rx, ry = rx - rx.mean(), ry - ry.mean(axis=1, keepdims=True)
            denom = np.sqrt((rx**2).sum() * (ry**2).sum(axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(denom > 0, (ry @ rx) / np.where(denom > 0, denom, 1), np.nan)
        if name == "weighted_jaccard":
            ax_ = np.abs(xs) / max(np.abs(xs).max(initial=0.0), 1e-12)
            ay_ = np.abs(ys) / np.maximum(np.abs(ys).max(axis=1, keepdims=True, initial=0.0), 1e-12)
            denom = np.maximum(ax_[None], ay_).sum(axis=1)
            return np.where(denom == 0, 1.0, np.minimum(ax_[None], ay_).sum(axis=1) / np.where(denom == 0, 1, denom))
        if name == "kendall":
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
        fy, ly = _tie_spans(np.abs(np.asarray(y.scores, dtype=float).ravel()[keep])) if keep.all() else (None, None)
        if fy is not None:  # every cell kept: permuting y permutes its tie spans
            fy, ly = fy[orders], ly[orders]
        else:
            spans = [_tie_spans(np.abs(row)) for row in ys]
            fy, ly = np.stack([sp[0] for sp in spans]), np.stack([sp[1] for sp in spans])
        overlaps = _expected_overlaps_spans(_tie_spans(np.abs(xs)), fy, ly)
        depths = np.arange(1, len(xs) + 1)
        if name == "top_n_overlap":
            depth = min(top_n, len(xs))
            return overlaps[:, depth - 1] / max(1, depth)
        agreement = overlaps / depths
        return (1 - rbo_p) / rbo_p * (agreement * rbo_p**depths).sum(axis=1) + agreement[:, -1] * rbo_p ** len(xs)
    fn = OVERLAP_METRICS.get(name)
    return np.array([_metric_value(name, fn, x, shuffled(y, order), top_n, rbo_p) for order in orders])


def permutation_null(x: Circuit, y: Circuit, values: dict[str, float], permutations: int, kind: NullKind,
                     top_n: int = 10, rbo_p: float = 0.9, seed: int = 0) -> tuple[dict[str, float | None],
                                                                                   dict[str, float | None]]:
    """({metric: null mean}, {metric: one-sided p-value}) of each metric in `values` between x and
    `permutations` shuffles of y (see `null_orders`; seeded, so the same pair gives the same null).
    The p-value is (1 + #null draws at least as extreme) / (1 + permutations): towards more overlap,
    i.e. larger, except for metrics in SMALLER_MEANS_MORE. A metric that is NaN has no null (None)."""
    orders = null_orders(y, permutations, np.random.default_rng(seed), kind)
    means: dict[str, float | None] = {}
    pvalues: dict[str, float | None] = {}
    for name, observed in values.items():
        null = _null_draws(name, x, y, orders, top_n, rbo_p)
        null = null[np.isfinite(null)]
        if not np.isfinite(observed) or not len(null):
            means[name] = pvalues[name] = None
            continue
        tol = 1e-9 * max(1.0, abs(observed))
        extreme = null <= observed + tol if name in SMALLER_MEANS_MORE else null >= observed - tol
        means[name] = float(null.mean())
        pvalues[name] = float((1 + extreme.sum()) / (1 + len(null)))
    return means, pvalues


def null_description(permutations: int, kind: NullKind, alignment: str) -> str:
    if alignment != "head":
        return f"{permutations} shuffles of the second circuit over the depth bins its model occupies"
    where = "within each layer" if kind == "within_layer" else "across all heads"
    return f"{permutations} shuffles of the second circuit's head scores {where}"


def compare(a: Circuit, b: Circuit, metrics: list[str] | None = None, alignment: Alignment = "auto",
            bins: int = 10, top_n: int = 10, rbo_p: float = 0.9, optional: frozenset[str] = frozenset(),
            permutations: int = DEFAULT_PERMUTATIONS, null: NullKind = "within_layer", seed: int = 0) -> Comparison:
    """Every requested overlap metric between two circuits, with the alignment used and a
    permutation null (`permutations` shuffles of b, see `permutation_null`; 0: none). A metric in
    `optional` that needs what the circuits do not carry (a shape, scores) is left out, with the
    reason in `skipped`; any other such metric is an error. On relative depth every metric gets the
    two `RelativeDepthCircuit`s, whose `occupied` says which bins hold a layer."""
    check_settings(bins, top_n, rbo_p)
    if permutations < 0:
        raise CircuitbenchError(f"--permutations {permutations}: give 0 (no null) or more.")
    for c in (a, b):
        check_null_size(permutations, c)
    names = metrics or OVERLAP_METRICS.names()
    fns = {name: OVERLAP_METRICS.get(name) for name in names}  # unknown names: one clear error
    same = (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads)
    if alignment == "head" or (alignment == "auto" and same):
        if not same and (a.n_layers is not None and b.n_layers is not None):
            _same_shape(a, b)
        used, x, y = "head", a, b
    else:
        used, x, y = f"relative_depth(bins={bins})", to_relative_depth(a, bins), to_relative_depth(b, bins)
    values, skipped = {}, {}
    for name in names:
        try:
            if name in GRAPH_METRICS:  # nodes and edges are compared by name: within one model's graph
                if used != "head":
                    raise MissingInput("circuits of models of different shapes: their node and edge names do not "
                                       "correspond")
                fn = fns[name]
                values[name] = fn(a, b) if name.endswith("jaccard") else fn(a, b, rbo_p)  # type: ignore[call-arg]
            else:
                values[name] = _metric_value(name, fns[name], x, y, top_n, rbo_p)
        except MissingInput as e:
            if name not in optional:
                raise
            skipped[name] = str(e)
    out = Comparison(a=a.label or "A", b=b.label or "B", alignment=used, values=values, skipped=skipped)
    if permutations and values and y.shape is not None:
        out.null = null_description(permutations, null, "head" if used == "head" else used)
        # shuffling head scores leaves node/edge names where they are: graph metrics have no such null
        head_values = {k: v for k, v in values.items() if k not in GRAPH_METRICS}
        out.null_mean, out.p_value = permutation_null(x, y, head_values, permutations, null, top_n, rbo_p, seed)
        for name in values.keys() - head_values.keys():
            out.null_mean[name] = out.p_value[name] = None
    return out


def overlap_matrix(circuits: list[Circuit], metrics: list[str], alignment: Alignment = "auto", bins: int = 10,
                   top_n: int = 10, rbo_p: float = 0.9, optional: frozenset[str] = frozenset(),
                   permutations: int = DEFAULT_PERMUTATIONS, null: NullKind = "within_layer",
                   seed: int = 0) -> dict[str, object]:
    """{"labels": [...], "alignment": [[...]], "<metric>": [[...]], "null_mean": {metric: [[...]]},
    "p_value": {metric: [[...]]}, "null": how it was drawn, "skipped": {metric: reason}} over every
    ordered pair (the null is None on the diagonal); a metric skipped for any pair (see `compare`) is
    left out of the matrix."""
    labels = [c.label or f"circuit{i}" for i, c in enumerate(circuits)]
    out: dict[str, object] = {"labels": labels}
    grid = [[compare(a, b, metrics, alignment, bins, top_n, rbo_p, optional, 0 if i == j else permutations, null,
                     seed) for j, b in enumerate(circuits)] for i, a in enumerate(circuits)]
    out["alignment"] = [[g.alignment for g in row] for row in grid]
    skipped = {name: reason for row in grid for g in row for name, reason in g.skipped.items()}
    kept = [name for name in metrics if name not in skipped]
    for name in kept:
        out[name] = [[g.values[name] for g in row] for row in grid]
    out["null"] = next((g.null for row in grid for g in row if g.null), None)
    out["null_mean"] = {name: [[g.null_mean.get(name) for g in row] for row in grid] for name in kept}
    out["p_value"] = {name: [[g.p_value.get(name) for g in row] for row in grid] for name in kept}
    out["skipped"] = skipped
    return out
