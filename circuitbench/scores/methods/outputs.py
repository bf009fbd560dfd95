"""What a scoring method may return besides a plain [n_layers, n_heads] array: scores of every
node (heads and MLPs) or of every edge, named as the component graph names them (models/graph.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitbench.models.graph import ComponentGraph, head_node, mlp_node


@dataclass
class NodeScores:
    """Head scores [n_layers, n_heads] and, for models with MLPs, MLP scores [n_layers], in the
    same units (the method's normalisation)."""

    heads: np.ndarray
    mlps: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        """{node: score}: every head ('a{L}.h{H}') and MLP ('m{L}'), in forward order."""
        out: dict[str, float] = {}
        for layer in range(self.heads.shape[0]):
            out.update({head_node(layer, h): float(v) for h, v in enumerate(self.heads[layer])})
            if self.mlps is not None:
                out[mlp_node(layer)] = float(self.mlps[layer])
        return out


@dataclass
class EdgeScores:
    """Scores of every edge of the component graph: `scores` [n_sources, n_destinations] in the
    graph's order (0 where there is no edge), with the settings that ran."""

    graph: ComponentGraph
    scores: np.ndarray
    settings: dict[str, object]

    def as_dict(self) -> dict[str, float]:
        return self.graph.as_dict(self.scores)
