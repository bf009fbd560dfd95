"""Several counterfactuals, one score per component: each method's outputs under every
counterfactual combined into the scores a circuit is built from.

A counterfactual only shows what it changes: one that keeps positions and lengths never moves a
head that reads them, one that keeps the items' order never moves an order reader. So a component
is ranked by the counterfactual under which it matters most: per component, the score of largest
magnitude over the counterfactuals, its sign kept (scores are fractions of each counterfactual's
own clean − counterfactual effect, so they share a scale)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput

COMBINATION = ("per component, the score of largest magnitude over the counterfactuals, sign kept (a component "
               "that any counterfactual shows to matter is ranked by it)")


def largest_magnitude(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """[*shape] the entry of largest |value| across `arrays` (each [*shape]); ties: the earliest."""
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])  # [n_counterfactuals, *shape]
    pick = np.abs(stacked).argmax(axis=0)
    return np.take_along_axis(stacked, pick[None], axis=0)[0]


def combine_outputs(outputs: Sequence[MethodOutput]) -> MethodOutput:
    """One method's output under every counterfactual (the primary first) as one: heads, MLPs and
    edges by largest magnitude; traces and settings are the primary's."""
    first = outputs[0]
    if len(outputs) == 1:
        return first
    heads = None if first.heads is None else largest_magnitude([o.heads for o in outputs])  # type: ignore[misc]
    mlps = None if first.mlps is None else largest_magnitude([o.mlps for o in outputs])  # type: ignore[misc]
    edges = None if first.edges is None else EdgeScores(
        first.edges.graph, largest_magnitude([o.edges.scores for o in outputs]))  # type: ignore[union-attr]
    scored_input = None if first.input is None else float(largest_magnitude([np.array(o.input) for o in outputs]))
    return MethodOutput(heads=heads, mlps=mlps, nodes=first.nodes, input=scored_input, edges=edges,
                        traces=first.traces, settings=first.settings)


def combine_visibility(shares: Sequence[dict[str, float]]) -> dict[str, float]:
    """{node: the largest share of prompts on which any counterfactual changes it}: a component is
    invisible to patching only if every counterfactual leaves it unchanged."""
    combined: dict[str, float] = {}
    for one in shares:
        for node, share in one.items():
            combined[node] = max(share, combined.get(node, 0.0))
    return combined


def jaccard(a: set, b: set) -> float | None:
    """|a ∩ b| / |a ∪ b|; None for two empty sets (nothing to compare)."""
    union = a | b
    return len(a & b) / len(union) if union else None
