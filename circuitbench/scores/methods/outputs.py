"""What a scoring method may return besides a plain [n_layers, n_heads] array: scores of every
node (heads and MLPs), named as the component graph names them (models/graph.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitbench.models.graph import head_node, mlp_node


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
