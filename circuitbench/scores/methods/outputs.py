"""What a scoring method returns: one MethodOutput holding whichever scores it produces — head
scores [n_layers, n_heads], node scores (heads and MLPs), edge scores over the component graph,
or named maps (causal tracing) — checked in one place against what the method declares
(`produces`, specs/registries.py) and against the model."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import INPUT, ComponentGraph, head_node, mlp_node

if TYPE_CHECKING:
    from circuitbench.models.loaded import LoadedModel
    from circuitbench.scores.cost import MethodCost
    from circuitbench.specs.registries import Produces


@dataclass(frozen=True, eq=False)
class EdgeScores:
    """Scores of every edge of the component graph: `scores` [n_sources, n_destinations] in the
    graph's order (0 where there is no edge)."""

    graph: ComponentGraph
    scores: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """{edge: score} for every edge of the graph, named 'u->v'."""
        return self.graph.as_dict(self.scores)


@dataclass(frozen=True, eq=False)
class SpanEdgeScores:
    """Position-aware edge scores (PEAP's edges within a position, Haklay et al. 2025): `scores`
    [n_spans, n_sources, n_destinations], span s holding the edge's effect through the destination's
    positions in span `span_names[s]` (scores/span_edges.py)."""

    graph: ComponentGraph
    span_names: tuple[str, ...]
    scores: np.ndarray

    def as_dict(self) -> dict[str, float]:
        """{edge@span: score} for every (edge, span) pair, named 'u->v@SPAN', span by span."""
        return {f"{edge}@{span}": value for span, matrix in zip(self.span_names, self.scores)
                for edge, value in self.graph.as_dict(matrix).items()}


class NonFiniteScores(CircuitbenchError):
    """Scores holding NaN or inf; `quantity` names them (scoring.run_methods says where the model's
    activations first go non-finite)."""

    def __init__(self, quantity: str) -> None:
        super().__init__(f"{quantity} is not finite")
        self.quantity = quantity


# What each declaration (Method.produces) promises, in words for error messages.
PRODUCES_WORDS: dict[str, str] = {
    "head_scores": "head scores [n_layers, n_heads]",
    "node_scores": "node scores (heads [n_layers, n_heads] and, on a model with MLPs, MLPs [n_layers])",
    "edge_scores": "edge scores over the component graph",
    "traces": "named maps (traces)",
}
# settings key of a node method's output told to score heads only (activation_patching `mlps: false`):
# head scores then fulfil its node_scores declaration
HEADS_ONLY = "heads_only"


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What a scoring method produced, in the units of its own normalisation.

    - `heads` [n_layers, n_heads]: head scores (head and node methods);
    - `mlps` [n_layers]: MLP scores of a node method on a model with MLPs (None otherwise);
    - `nodes`: True for a node method (it scores every node, heads and MLPs: recorded as node
      scores even on an attention-only model, where `mlps` is None);
    - `input`: the input embedding's score, for node methods that score it as a node (MIB's input
      node: nap, nap_ig); None otherwise, and node circuits then always keep the input;
    - `edges`: scores of every edge of the component graph (edge methods);
    - `span_edges`: with `positions: per_span`, the same edges' scores per span (SpanEdgeScores);
    - `traces`: named maps, pydantic models (causal tracing's TraceMap per kind/direction);
    - `settings`: what ran beyond the task's method options (an edge method's integration
      points, its estimated forwards), recorded with the scores.
    """

    heads: np.ndarray | None = None
    mlps: np.ndarray | None = None
    nodes: bool = False
    input: float | None = None
    edges: EdgeScores | None = None
    span_edges: SpanEdgeScores | None = None
    traces: dict[str, BaseModel] | None = None
    settings: Mapping[str, object] = field(default_factory=dict)
    cost: MethodCost | None = None  # filled by scoring.run_methods (seconds, forward-equivalents), not the method

    def __post_init__(self) -> None:  # scores as float64, whatever float type the method summed in
        for name in ("heads", "mlps"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiu" and value.dtype != np.float64:
                object.__setattr__(self, name, value.astype(np.float64))

    def produced(self) -> str:
        """Which declaration this output fulfils: head_scores, node_scores, edge_scores or traces
        (or, for a mix no method may return, the kinds joined by 'and'; 'nothing')."""
        kinds = []
        if self.heads is not None or self.mlps is not None or self.nodes:
            kinds.append("node_scores" if self.nodes else "head_scores")
        if self.edges is not None:
            kinds.append("edge_scores")
        if self.traces is not None:
            kinds.append("traces")
        return " and ".join(kinds) or "nothing"

    def node_scores(self) -> dict[str, float]:
        """{node: score}: the input when scored, every head ('a{L}.h{H}') and MLP ('m{L}'), in forward
        order."""
        if self.heads is None:
            return {}
        out: dict[str, float] = {} if self.input is None else {INPUT: float(self.input)}
        for layer in range(self.heads.shape[0]):
            out.update({head_node(layer, h): float(v) for h, v in enumerate(self.heads[layer])})
            if self.mlps is not None:
                out[mlp_node(layer)] = float(self.mlps[layer])
        return out

    def check(self, method: str, declared: Produces, model: LoadedModel) -> None:
        """Raise CircuitbenchError naming `method` unless this output is what it declares
        (`declared`), with the shapes of `model`; NonFiniteScores if a score is NaN or infinite."""
        got = self.produced()
        if got == "head_scores" and declared == "node_scores" and self.settings.get(HEADS_ONLY):
            declared = "head_scores"
        if got != declared:
            raise CircuitbenchError(
                f"Method '{method}' is declared to produce {PRODUCES_WORDS[declared]} (produces={declared!r}) but "
                f"returned {PRODUCES_WORDS.get(got, got)}. Return a MethodOutput with "
                f"{_FIELDS[declared]}, or declare what it returns.")
        if got in ("head_scores", "node_scores"):
            if self.heads is None:
                raise CircuitbenchError(f"Method '{method}' returned no head scores: set heads [n_layers, n_heads].")
            if self.mlps is not None and not self.nodes:
                raise CircuitbenchError(f"Method '{method}' returned MLP scores as head scores: MLP scores are node "
                                        "scores (set nodes=True and declare produces='node_scores').")
            _check_array(method, "head scores", self.heads, (model.n_layers, model.n_heads),
                         f"[n_layers, n_heads] of model '{model.name}'")
            if not np.isfinite(self.heads).all():
                bad = [f"{l}.{h}" for l, h in zip(*np.nonzero(~np.isfinite(self.heads)))][:5]
                raise NonFiniteScores(f"Method '{method}' head scores (heads {', '.join(bad)})")
        if self.nodes and model.has_mlp and self.mlps is None:
            raise CircuitbenchError(f"Method '{method}' scores nodes but returned no MLP scores for model "
                                    f"'{model.name}', which has MLPs: set mlps [n_layers].")
        if self.mlps is not None:
            if not model.has_mlp:
                raise CircuitbenchError(f"Method '{method}' returned MLP scores for model '{model.name}', which has "
                                        "no MLPs (attention only): leave mlps None.")
            _check_array(method, "MLP scores", self.mlps, (model.n_layers,), f"[n_layers] of model '{model.name}'")
            if not np.isfinite(self.mlps).all():
                raise NonFiniteScores(f"Method '{method}' MLP scores")
        if self.input is not None and (not self.nodes or not np.isfinite(self.input)):
            raise (NonFiniteScores(f"Method '{method}' input score") if self.nodes else CircuitbenchError(
                f"Method '{method}' returned an input score without node scores: set nodes=True."))
        if self.edges is not None:
            graph = model.component_graph()
            if self.edges.graph != graph or np.shape(self.edges.scores) != graph.real_edges.shape:
                raise CircuitbenchError(
                    f"Method '{method}' returned edge scores of shape {list(np.shape(self.edges.scores))} over another "
                    f"graph; expected the component graph of model '{model.name}' (model.component_graph()), "
                    f"scores of shape {list(graph.real_edges.shape)}.")
            if not np.isfinite(self.edges.scores).all():
                raise NonFiniteScores(f"Method '{method}' edge scores")
        if self.span_edges is not None:
            spans = self.span_edges
            if self.edges is None or spans.scores.shape != (len(spans.span_names), *self.edges.scores.shape):
                raise CircuitbenchError(f"Method '{method}' returned per-span edge scores of shape "
                                        f"{list(spans.scores.shape)}; expected [n_spans, n_sources, n_destinations] "
                                        "beside its edge scores (edges=).")
            if not np.isfinite(spans.scores).all():
                raise NonFiniteScores(f"Method '{method}' per-span edge scores")


# How a MethodOutput holds each declaration, for error messages.
_FIELDS = {"head_scores": "heads=", "node_scores": "heads=, mlps= and nodes=True", "edge_scores": "edges=",
           "traces": "traces="}


def _check_array(method: str, what: str, values: object, shape: tuple[int, ...], meaning: str) -> None:
    if not isinstance(values, np.ndarray) or values.shape != shape or values.dtype.kind not in "fiu":
        got = (f"shape {list(values.shape)} ({values.dtype})" if isinstance(values, np.ndarray)
               else f"a {type(values).__name__}")
        raise CircuitbenchError(f"Method '{method}' returned {what} of {got}, expected a float array of shape "
                                f"{list(shape)} ({meaning}).")


def as_output(method: str, returned: object) -> MethodOutput:
    """What a method returned, as a MethodOutput. A built-in returns one; a plugin method may
    still return a bare [n_layers, n_heads] array (anything numpy reads as numbers: head scores)
    or a dict of pydantic maps (traces), as the plugin API allowed before MethodOutput."""
    if isinstance(returned, MethodOutput):
        return returned
    if isinstance(returned, dict) and all(isinstance(v, BaseModel) for v in returned.values()):
        return MethodOutput(traces=returned)
    try:
        array = np.asarray(returned, dtype=float)
    except (TypeError, ValueError):
        raise CircuitbenchError(f"Method '{method}' returned a {type(returned).__name__}, expected a MethodOutput "
                                "(circuitbench.scores.methods.outputs) or head scores [n_layers, n_heads].") from None
    return MethodOutput(heads=array)
