"""Circuit: a set of heads (and MLPs, or edges) chosen from scores by a recorded rule, with JSON in/out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from circuitbench.errors import CircuitbenchError
from circuitbench.specs.task import CircuitRule

Head = tuple[int, int]
RANDOM_INIT = "@random-init"  # the mark of a random-init model's name wherever it is shown (and its folder)


def head_label(layer: int, head: int) -> str:
    """A head in text: L1H3 (layer 1, head 3); '1.3' reads like a decimal."""
    return f"L{layer}H{head}"


def heads_text(heads: list[Head] | list[tuple[int, int]]) -> str:
    return " ".join(head_label(l, h) for l, h in heads) or "(none)"


def model_label(name: str, init: str | None) -> str:
    """A model's name as shown: random-init weights carry the @random-init mark."""
    return name + RANDOM_INIT if init == "random" and not name.endswith(RANDOM_INIT) else name


def describe_rule(rule: dict[str, object], n_total: int | None = None) -> str:
    """A circuit rule in words: 'the top 10 heads by |score|', 'nodes (heads and MLPs) with score ≥
    0.1', ...; `n_total`: how many components the rule picks from (shown with a fraction)."""
    by = "|score|" if rule.get("by", "abs") == "abs" else "signed score"
    unit = {"node": "nodes (heads and MLPs)", "edge": "edges"}.get(str(rule.get("level", "head")), "heads")
    if rule.get("top_k") is not None:
        text = f"the top {rule['top_k']} {unit} by {by}"
    elif rule.get("fraction") is not None:
        fraction = float(rule["fraction"])  # type: ignore[arg-type]
        count = f" ({max(1, round(fraction * n_total))} of {n_total})" if n_total else ""
        text = f"the top {fraction:.0%} of {unit} by {by}{count}"
    else:
        text = f"every one of the {unit} with {by} ≥ {rule.get('threshold')}"
    return text


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
            outside = [head_label(l, h) for l, h in self.heads
                       if not (0 <= l < self.n_layers and 0 <= h < self.n_heads)]
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
        EAP-IG / MIB graph file (cfg, nodes, edges: the edges and nodes `in_graph`, with scores).
        Every field is checked: a shape beyond any real model, a non-finite score or a file of the
        wrong form is an error naming the file and the field."""
        from circuitbench.circuits.graph_files import check_head_bounds, is_graph_json, load_sidecar, read_graph_json

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
            heads = [(_index(l), _index(h)) for l, h in source.get("heads", [])]
            named_heads, named_mlps = split_nodes([str(n) for n in source.get("nodes", [])])
            heads = sorted(set(heads) | set(named_heads))
            mlps = sorted({_index(m) for m in source.get("mlps", [])} | set(named_mlps))
        except (TypeError, ValueError):
            raise CircuitbenchError(f"{path}: \"heads\" must be a list of [layer, head] pairs.") from None
        model = raw.get("model", {}) if isinstance(raw.get("model"), dict) else {}
        task = raw.get("task", {}) if isinstance(raw.get("task"), dict) else {}
        shape = {}
        for field in ("n_layers", "n_heads"):
            where, value = (f"model.{field}", model[field]) if field in model else (field, raw.get(field))
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise CircuitbenchError(f"{path}: {where}: {value!r} is not a positive whole number. Give the model's "
                                        "shape as integers, or leave it out.")
            shape[field] = value
        if shape["n_layers"] is not None and shape["n_heads"] is not None:
            check_head_bounds(shape["n_layers"], shape["n_heads"], str(path))
        method = source.get("method")
        # scores: the circuit's own, or (in a RunResult) the head scores it was chosen from
        scores = source.get("scores") or (raw.get("head_scores") or {}).get(method)
        node_scores = (raw.get("node_scores") or {}).get(method) if isinstance(raw.get("node_scores"), dict) else None
        _check_finite(path, "scores" if source.get("scores") else f"head_scores.{method}", scores)
        _check_finite(path, f"node_scores.{method}", node_scores)
        edges = [str(e) for e in source.get("edges", [])]
        edge_scores = None
        sidecar = (raw.get("edge_scores") or {}).get(method) if isinstance(raw.get("edge_scores"), dict) else None
        if isinstance(sidecar, dict) and (path.parent / str(sidecar.get("file"))).is_file():
            edge_scores = load_sidecar(path.parent / str(sidecar["file"]), shape["n_layers"], shape["n_heads"],
                                       str(method)).scores
        name = model_label(str(model["name"]), model.get("init")) if model.get("name") else None
        label = f"{name}/{task['name']}" if name and task.get("name") else path.stem
        try:
            return cls(heads=heads, mlps=mlps, edges=edges, level=str(source.get("level", "head")),
                       n_layers=shape["n_layers"], n_heads=shape["n_heads"], scores=scores, method=method,
                       rule=source.get("rule") or {}, label=raw.get("label", label), node_scores=node_scores,
                       edge_scores=edge_scores)
        except ValidationError as e:
            reasons = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                                if err["loc"] else err["msg"].removeprefix("Value error, ") for err in e.errors()[:3])
            raise CircuitbenchError(f"{path}: not a usable circuit: {reasons}") from None


def _index(value: object) -> int:
    """A layer or head index as written in a circuit file: a whole number (not 1.5, not true)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(value)
    return int(value)  # type: ignore[arg-type]


def _check_finite(path: Path, field: str, values: object) -> None:
    """Scores read from a file hold numbers only, every one finite (Python's json reads NaN and Infinity)."""
    flat = list(values.values()) if isinstance(values, dict) else values
    if flat is None:
        return
    cells = [v for row in flat for v in (row if isinstance(row, list) else [row])] if isinstance(flat, list) else [flat]
    for v in cells:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not np.isfinite(v):
            raise CircuitbenchError(f"{path}: {field}: holds {v!r}, not a finite number. Scores must be numbers; "
                                    "rerun the unit, or fix the file.")
