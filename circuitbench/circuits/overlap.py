"""How much two circuits share: set overlap of their heads and rank agreement of their scores.

Every function takes `Circuit`s (from runs, papers or other tools). Circuits of the same shape are
compared head by head; circuits of models with a different depth or width are compared on
relative depth (layer / n_layers in `bins` bins), and every result says which alignment it used.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit, ranked_heads
from circuitbench.errors import CircuitbenchError
from circuitbench.registry import Registry

Alignment = Literal["auto", "head", "relative_depth"]


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


def hypergeometric_p(a: Circuit, b: Circuit) -> float:
    """P(X ≥ |A∩B|) for X the intersection of |A| and |B| heads drawn at random from the model's
    n_layers · n_heads: small means more overlap than chance."""
    n_layers, n_heads = _same_shape(a, b)
    population = n_layers * n_heads
    sa, sb = _sets(a, b)
    k, big_k, n = len(sa & sb), len(sa), len(sb)
    total = math.comb(population, n)
    tail = sum(math.comb(big_k, i) * math.comb(population - big_k, n - i) for i in range(k, min(big_k, n) + 1))
    return tail / total


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
    x, y = np.abs(_scores(a)), np.abs(_scores(b))
    if x.shape != y.shape:
        _same_shape(a, b)
    x, y = x / max(x.max(), 1e-12), y / max(y.max(), 1e-12)
    denom = np.maximum(x, y).sum()
    return 1.0 if denom == 0 else float(np.minimum(x, y).sum() / denom)


def _flat_scores(a: Circuit, b: Circuit) -> tuple[np.ndarray, np.ndarray]:
    x, y = _scores(a), _scores(b)
    if x.shape != y.shape:
        _same_shape(a, b)
    return x.ravel(), y.ravel()


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


def _ranking(c: Circuit) -> list[tuple[int, int]]:
    return ranked_heads(_scores(c), "abs")


def top_n_overlap(a: Circuit, b: Circuit, n: int = 10) -> float:
    """Share of the top-n heads by |score| that both rankings hold."""
    _flat_scores(a, b)
    ra, rb = _ranking(a)[:n], _ranking(b)[:n]
    return len(set(ra) & set(rb)) / max(1, min(n, len(ra)))


def rank_biased_overlap(a: Circuit, b: Circuit, p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber et al. 2010) of the |score| rankings: top-weighted,
    p the persistence (the weight of depth d falls as p^(d-1))."""
    _flat_scores(a, b)
    ra, rb = _ranking(a), _ranking(b)
    k = len(ra)
    seen_a: set = set()
    seen_b: set = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x, y = ra[d - 1], rb[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += (overlap / d) * p**d
    return float((1 - p) / p * total + (overlap / k) * p**k)


# Overlap metrics by id; plugins add their own (circuitbench.register_overlap_metric).
OverlapFn = Callable[[Circuit, Circuit], float]
OVERLAP_METRICS: Registry[OverlapFn] = Registry("overlap metric")
for _name, _fn in (("jaccard", jaccard), ("overlap_coefficient", overlap_coefficient), ("directional", directional),
                   ("hypergeometric_p", hypergeometric_p), ("weighted_jaccard", weighted_jaccard),
                   ("spearman", spearman), ("kendall", kendall), ("top_n_overlap", top_n_overlap),
                   ("rbo", rank_biased_overlap)):
    OVERLAP_METRICS.add(_name, _fn)


def to_relative_depth(c: Circuit, bins: int) -> Circuit:
    """The circuit on a [bins, 1] grid: a head goes to bin floor(layer / n_layers · bins); a bin's
    score is the mean |score| of its heads."""
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
    return Circuit(heads=heads, n_layers=bins, n_heads=1, scores=scores, method=c.method, rule=c.rule, label=c.label)


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    alignment: str  # "head" or "relative_depth(bins=N)"
    values: dict[str, float]
    skipped: dict[str, str] = Field(default_factory=dict)  # metric -> why it could not be computed


def check_settings(bins: int, top_n: int, rbo_p: float) -> None:
    """Refuse settings under which the metrics mean nothing."""
    if bins < 1:
        raise CircuitbenchError(f"--bins {bins}: relative depth needs at least 1 bin.")
    if top_n < 1:
        raise CircuitbenchError(f"--top-n {top_n}: compare at least the top 1 head.")
    if not 0 < rbo_p < 1:
        raise CircuitbenchError(f"--rbo-p {rbo_p}: rank-biased overlap's persistence p lies strictly between 0 and 1.")


def compare(a: Circuit, b: Circuit, metrics: list[str] | None = None, alignment: Alignment = "auto",
            bins: int = 10, top_n: int = 10, rbo_p: float = 0.9, optional: frozenset[str] = frozenset()) -> Comparison:
    """Every requested overlap metric between two circuits, with the alignment used. A metric in
    `optional` that needs what the circuits do not carry (a shape, scores) is left out, with the
    reason in `skipped`; any other such metric is an error."""
    check_settings(bins, top_n, rbo_p)
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
        fn = fns[name]
        try:
            if name == "top_n_overlap":
                values[name] = top_n_overlap(x, y, top_n)
            elif name == "rbo":
                values[name] = rank_biased_overlap(x, y, rbo_p)
            else:
                values[name] = fn(x, y)
        except MissingInput as e:
            if name not in optional:
                raise
            skipped[name] = str(e)
    return Comparison(a=a.label or "A", b=b.label or "B", alignment=used, values=values, skipped=skipped)


def overlap_matrix(circuits: list[Circuit], metrics: list[str], alignment: Alignment = "auto", bins: int = 10,
                   top_n: int = 10, rbo_p: float = 0.9, optional: frozenset[str] = frozenset()) -> dict[str, object]:
    """{"labels": [...], "alignment": [[...]], "<metric>": [[...]], "skipped": {metric: reason}} over
    every ordered pair; a metric skipped for any pair (see `compare`) is left out of the matrix."""
    labels = [c.label or f"circuit{i}" for i, c in enumerate(circuits)]
    out: dict[str, object] = {"labels": labels}
    grid = [[compare(a, b, metrics, alignment, bins, top_n, rbo_p, optional) for b in circuits] for a in circuits]
    out["alignment"] = [[g.alignment for g in row] for row in grid]
    skipped = {name: reason for row in grid for g in row for name, reason in g.skipped.items()}
    for name in metrics:
        if name not in skipped:
            out[name] = [[g.values[name] for g in row] for row in grid]
    out["skipped"] = skipped
    return out
