"""Circuit: a set of heads (and MLPs, or edges) chosen from scores by a recorded rule, with JSON in/out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from circuitbench.errors import CircuitbenchError
from circuitbench.specs.task import CircuitRule

Head = tuple[int, int]


def ranked_nodes(scores: dict[str, float], by: str = "abs") -> list[str]:
    """Node names, largest score first (|score| or signed); ties keep the given (forward) order."""
    order = {name: i for i, name in enumerate(scores)}
    return sorted(scores, key=lambda n: (-(abs(scores[n]) if by == "abs" else scores[n]), order[n]))


def split_nodes(nodes: list[str]) -> tuple[list[Head], list[int]]:
    """Heads [layer, head] and MLP layers from node names ('a0.h1', 'm2'; 'input'/'logits' ignored)."""
    heads, mlps = [], []
    for name in nodes:
        if name.startswith("a"):
            layer, head = name[1:].split(".h")
            heads.append((int(layer), int(head)))
        elif name.startswith("m"):
            mlps.append(int(name[1:]))
    return sorted(heads), sorted(mlps)


def ranked_heads(scores: np.ndarray, by: str = "abs") -> list[Head]:
    """Every (layer, head), largest score first (|score| or signed); ties: lower layer, then lower
    head first, for determinism."""
    values = np.abs(scores) if by == "abs" else scores
    return [(int(l), int(h)) for l, h in sorted(np.ndindex(*scores.shape), key=lambda lh: (-values[lh], lh))]


class Circuit(BaseModel):
    """Heads as [layer, head]; `scores` is the [n_layers, n_heads] array they were chosen from. A
    node-level circuit also holds MLPs (`mlps`: layers), an edge-level one its edges (names as the
    component graph gives them, models/graph.py; `heads` and `mlps` are then the nodes they touch)."""

    model_config = ConfigDict(extra="forbid")
    heads: list[Head]
    mlps: list[int] = Field(default_factory=list)
    edges: list[str] = Field(default_factory=list)
    level: str = "head"
    node_scores: dict[str, float] | None = None  # {node: score} when the method scored nodes
    edge_scores: dict[str, float] | None = None  # {edge: score} when the method scored edges
    n_layers: int | None = None
    n_heads: int | None = None
    scores: list[list[float]] | None = None
    method: str | None = None
    rule: dict[str, object] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="after")
    def _inside_the_model(self) -> "Circuit":
        if self.n_layers is not None and self.n_heads is not None:
            outside = [f"{l}.{h}" for l, h in self.heads if not (0 <= l < self.n_layers and 0 <= h < self.n_heads)]
            if outside:
                raise ValueError(f"heads {', '.join(outside[:5])} lie outside a model of {self.n_layers} layers × "
                                 f"{self.n_heads} heads")
            if self.scores is not None and (len(self.scores) != self.n_layers
                                            or any(len(row) != self.n_heads for row in self.scores)):
                raise ValueError(f"scores are not a [{self.n_layers}][{self.n_heads}] array")
        elif any(l < 0 or h < 0 for l, h in self.heads):
            raise ValueError("heads hold a negative layer or head index")
        return self

    def with_shape(self, n_layers: int, n_heads: int) -> "Circuit":
        """This circuit as one of a model with that shape (for circuits that carry none)."""
        try:
            return Circuit.model_validate({**self.model_dump(), "n_layers": n_layers, "n_heads": n_heads})
        except ValidationError as e:
            reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise CircuitbenchError(f"Circuit '{self.label}': {reasons}.") from None

    @property
    def shape(self) -> tuple[int, int] | None:
        """(n_layers, n_heads) when known (a RunResult carries it; a bare list of heads does not)."""
        return None if self.n_layers is None or self.n_heads is None else (self.n_layers, self.n_heads)

    @classmethod
    def from_scores(cls, scores: np.ndarray, rule: CircuitRule, method: str) -> "Circuit":
        """Pick heads by top_k / threshold / fraction on |score| or signed score (ties: lower
        layer, then lower head first, for determinism). A head whose score is exactly 0 shows no
        measured effect and is never picked by top_k or fraction (filling a circuit with them
        would make recall depend on head numbering)."""
        values = np.abs(scores) if rule.by == "abs" else scores
        n_layers, n_heads = scores.shape
        order = [lh for lh in ranked_heads(scores, rule.by) if scores[lh] != 0]
        if rule.top_k is not None:
            chosen = order[: rule.top_k]
        elif rule.fraction is not None:
            chosen = order[: max(1, round(rule.fraction * scores.size))]
        else:
            assert rule.threshold is not None
            chosen = [lh for lh in order if values[lh] >= rule.threshold]
        return cls(
            heads=sorted((int(l), int(h)) for l, h in chosen),
            n_layers=n_layers,
            n_heads=n_heads,
            scores=scores.tolist(),
            method=method,
            rule=rule.model_dump(exclude_none=True),
        )

    @property
    def nodes(self) -> list[str]:
        """The circuit's heads and MLPs as node names, in forward order."""
        out = []
        for layer in sorted({l for l, _ in self.heads} | set(self.mlps)):
            out += [f"a{layer}.h{h}" for l, h in self.heads if l == layer]
            out += [f"m{layer}"] if layer in self.mlps else []
        return out

    @classmethod
    def from_node_scores(cls, scores: dict[str, float], rule: CircuitRule, method: str,
                         shape: tuple[int, int]) -> "Circuit":
        """Pick nodes (heads and MLPs) by the rule, as from_scores picks heads (a node scoring
        exactly 0 is never picked by top_k or fraction)."""
        order = [n for n in ranked_nodes(scores, rule.by) if scores[n] != 0]
        values = {n: abs(v) if rule.by == "abs" else v for n, v in scores.items()}
        if rule.top_k is not None:
            chosen = order[: rule.top_k]
        elif rule.fraction is not None:
            chosen = order[: max(1, round(rule.fraction * len(scores)))]
        else:
            assert rule.threshold is not None
            chosen = [n for n in order if values[n] >= rule.threshold]
        heads, mlps = split_nodes(chosen)
        return cls(heads=heads, mlps=mlps, n_layers=shape[0], n_heads=shape[1], method=method, level="node",
                   rule=rule.model_dump(exclude_none=True))

    @classmethod
    def load(cls, path: Path) -> "Circuit":
        """Any JSON with "heads": [[layer, head], ...] or "nodes": ["a0.h1", "m2", ...] (a RunResult
        qualifies: node and edge circuits too, edge scores read from its sidecar file), or an
        EAP-IG / MIB graph file (cfg, nodes, edges: the edges and nodes `in_graph`, with scores)."""
        from circuitbench.circuits.graph_files import is_graph_json, read_graph_json

        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CircuitbenchError(f"{path}: cannot read circuit JSON ({e}).") from None
        if not isinstance(raw, dict):
            raise CircuitbenchError(f"{path}: a circuit file is a JSON object with \"heads\": [[layer, head], ...], "
                                    f"not a {type(raw).__name__}.")
        if is_graph_json(raw):
            g = read_graph_json(raw, str(path))
            nodes = g.nodes or sorted({n for e in g.edges for n in (e.split("->")[0], e.split("->")[1].split("<")[0])})
            heads, mlps = split_nodes(nodes)
            meta = g.meta
            return cls(heads=heads, mlps=mlps, edges=g.edges, level="edge" if g.edges else "node",
                       n_layers=g.graph.n_layers, n_heads=g.graph.n_heads, method=meta.get("method"),
                       node_scores=g.node_scores or None, edge_scores=g.scores or None,
                       label=str(meta.get("label") or path.stem))
        source = raw.get("circuit") if isinstance(raw.get("circuit"), dict) else raw
        if not isinstance(source, dict) or not ("heads" in source or "nodes" in source):
            raise CircuitbenchError(f"{path}: no \"heads\": [[layer, head], ...] field (nor \"nodes\", circuit.heads, "
                                    "or an EAP-IG/MIB graph's cfg, nodes and edges).")
        try:
            heads = [(int(l), int(h)) for l, h in source.get("heads", [])]
            named_heads, named_mlps = split_nodes([str(n) for n in source.get("nodes", [])])
            heads = sorted(set(heads) | set(named_heads))
            mlps = sorted({int(m) for m in source.get("mlps", [])} | set(named_mlps))
        except (TypeError, ValueError):
            raise CircuitbenchError(f"{path}: \"heads\" must be a list of [layer, head] pairs.") from None
        model = raw.get("model", {}) if isinstance(raw.get("model"), dict) else {}
        task = raw.get("task", {}) if isinstance(raw.get("task"), dict) else {}
        method = source.get("method")
        # scores: the circuit's own, or (in a RunResult) the head scores it was chosen from
        scores = source.get("scores") or (raw.get("head_scores") or {}).get(method)
        node_scores = (raw.get("node_scores") or {}).get(method) if isinstance(raw.get("node_scores"), dict) else None
        edges = [str(e) for e in source.get("edges", [])]
        edge_scores = None
        sidecar = (raw.get("edge_scores") or {}).get(method) if isinstance(raw.get("edge_scores"), dict) else None
        if isinstance(sidecar, dict) and (path.parent / str(sidecar.get("file"))).is_file():
            edge_scores = read_graph_json(json.loads((path.parent / sidecar["file"]).read_text()), str(path)).scores
        label = f"{model['name']}/{task['name']}" if model.get("name") and task.get("name") else path.stem
        try:
            return cls(heads=heads, mlps=mlps, edges=edges, level=str(source.get("level", "head")),
                       n_layers=model.get("n_layers", raw.get("n_layers")),
                       n_heads=model.get("n_heads", raw.get("n_heads")), scores=scores, method=method,
                       rule=source.get("rule") or {}, label=raw.get("label", label), node_scores=node_scores,
                       edge_scores=edge_scores)
        except ValidationError as e:
            reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise CircuitbenchError(f"{path}: not a usable circuit: {reasons}") from None
