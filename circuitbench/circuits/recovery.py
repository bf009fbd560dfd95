"""Recovery: how well a method finds a known circuit (a reference: tracr ground truth, a planted
toy, a published circuit). Per method: precision, recall and F1 of the circuit its rule picked,
and AUROC and average precision of its |score| ranking over every component.

Components are named as EAP-IG and MIB name nodes (`a{L}.h{H}` heads, `m{L}` MLPs). `recovery`
scores a method's heads against the reference's heads; `node_recovery` its node scores (heads and
MLPs) against the reference's nodes, the circuit being its top |reference| nodes by |score|
(R-precision: the recall of a circuit of the reference's size)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circuitbench.circuits.circuit import Head, head_label
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import EDGE, INPUT, ComponentGraph

HEAD_NODE = re.compile(r"^a(\d+)\.h(\d+)$")
MLP_NODE = re.compile(r"^m(\d+)$")


class Reference(BaseModel):
    """A known circuit: its heads (and MLPs), and where it came from."""

    model_config = ConfigDict(extra="forbid")
    heads: list[Head] = Field(description="[layer, head] pairs of the known circuit")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the known circuit")
    edges: list[str] = Field(default_factory=list, description="edges of the known circuit, when it names them")
    source: str = Field(description="where the reference came from (file, spec, model directory)")

    @property
    def nodes(self) -> list[str]:
        return [f"a{l}.h{h}" for l, h in self.heads] + [f"m{l}" for l in self.mlps]


def parse_components(items: object, where: str) -> tuple[list[Head], list[int]]:
    """Heads and MLP layers from [layer, head] pairs and/or node names ("a0.h1", "m2"); indices are
    whole numbers ≥ 0 (not true, not 1.5)."""
    if not isinstance(items, (list, tuple)):
        raise CircuitbenchError(f"{where}: a list of [layer, head] pairs or node names like 'a0.h1', 'm2', not "
                                f"{items!r:.40}.")
    heads: list[Head] = []
    mlps: list[int] = []
    for item in items:
        if isinstance(item, str) and (m := HEAD_NODE.match(item)):
            heads.append((int(m.group(1)), int(m.group(2))))
        elif isinstance(item, str) and (m := MLP_NODE.match(item)):
            mlps.append(int(m.group(1)))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_index(v) for v in item):
            heads.append((int(item[0]), int(item[1])))
        else:
            raise CircuitbenchError(f"{where}: {item!r} is neither a [layer, head] pair of whole numbers ≥ 0 nor a "
                                    "node name like 'a0.h1' or 'm2'.")
    return sorted(set(heads)), sorted(set(mlps))


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_reference(path: Path) -> Reference:
    """A reference circuit file: {"heads": [[l, h], ...], "mlps": [l, ...]} or {"nodes": ["a0.h1", "m0", ...]}
    (and "edges": ["a0.h1->a1.h0<q>", ...]); the model directory's circuit.json, or any circuit file
    with heads (a RunResult's circuit). Each field is checked, naming the file and the field."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: cannot read the reference circuit ({e}).") from None
    if not isinstance(raw, dict) or not any(k in raw for k in ("heads", "nodes", "circuit")):
        raise CircuitbenchError(f"{path}: a reference circuit is a JSON object with \"heads\" (and \"mlps\") or "
                                "\"nodes\".")
    source = raw["circuit"] if isinstance(raw.get("circuit"), dict) else raw
    heads, mlps = parse_components(source.get("heads", []), f"{path}: heads")
    named_heads, named_mlps = parse_components(source.get("nodes", []), f"{path}: nodes")
    layers = source.get("mlps", [])
    if not isinstance(layers, list) or not all(_is_index(v) for v in layers):
        raise CircuitbenchError(f"{path}: mlps: {layers!r:.60} is not a list of layers (whole numbers ≥ 0).")
    edges = source.get("edges", [])
    if not isinstance(edges, list) or not all(isinstance(e, str) and EDGE.match(e) for e in edges):
        bad = next((e for e in edges if not (isinstance(e, str) and EDGE.match(e))), edges) \
            if isinstance(edges, list) else edges
        raise CircuitbenchError(f"{path}: edges: {bad!r:.60} is not an edge name like 'a0.h1->a1.h0<q>' or "
                                "'m0->logits'.")
    try:
        return Reference(heads=sorted(set(heads) | set(named_heads)), mlps=sorted(set(mlps) | set(named_mlps)
                                                                                 | set(layers)),
                         edges=edges, source=str(path))
    except ValidationError as e:
        raise CircuitbenchError(f"{path}: not a reference circuit ({e.errors()[0]['msg']}).") from None


def find_reference(reference_file: str | None, reference_circuits: dict, task: str, model_keys: tuple[str, str],
                   model_dir: str) -> Reference | None:
    """The known circuit a run scores recovery against: --reference FILE, else the task's
    reference_circuits for the model's name or path (`model_keys`), else circuit.json in the model
    directory; None when there is none. Known before the model loads, so --resume can compare it."""
    if reference_file is not None:
        return load_reference(Path(reference_file))
    for key in model_keys:
        if key in reference_circuits:
            heads, mlps = parse_components(list(reference_circuits[key]), f"task '{task}' reference_circuits")
            return Reference(heads=heads, mlps=mlps, source=f"task '{task}' reference_circuits[{key}]")
    path = Path(model_dir) / "circuit.json"
    return load_reference(path) if path.is_file() else None


def check_reference(reference: Reference, model: str, n_layers: int, n_heads: int, has_mlp: bool = True,
                    parallel_attn_mlp: bool = False) -> None:
    """Every component of the reference is one of the model's (checked before any method runs: a
    reference for another model fails here, not after the compute)."""
    shape = f"{n_layers} layers × {n_heads} heads" + ("" if has_mlp else ", attention-only")
    fix = "Give a reference of this model's components, or run without it."
    outside = [head_label(l, h) for l, h in reference.heads if not (l < n_layers and h < n_heads)]
    if outside:
        raise CircuitbenchError(f"{reference.source}: heads: {', '.join(outside[:5])} lie outside {model} ({shape}: "
                                f"a0.h0 … a{n_layers - 1}.h{n_heads - 1}). {fix}")
    bad_mlps = [f"m{l}" for l in reference.mlps if not has_mlp or l >= n_layers]
    if bad_mlps:
        raise CircuitbenchError(f"{reference.source}: mlps: {', '.join(bad_mlps[:5])} are not MLPs of {model} "
                                f"({shape}{'' if has_mlp else ': it has none'}). {fix}")
    if reference.edges:
        graph = ComponentGraph(n_layers, n_heads, has_mlp=has_mlp, parallel_attn_mlp=parallel_attn_mlp)
        for name in reference.edges:
            try:
                graph.edge_position(name)
            except ValueError as e:
                raise CircuitbenchError(f"{reference.source}: edges: {e}. {fix}") from None


class RecoveryScores(BaseModel):
    """One method against the reference."""

    model_config = ConfigDict(extra="forbid")
    precision: float | None = Field(description="share of the method's circuit in the reference (None: empty circuit)")
    recall: float = Field(description="share of the reference in the method's circuit")
    f1: float = Field(description="harmonic mean of precision and recall (0 when either is 0)")
    auroc: float | None = Field(description="area under the ROC curve of |score| over all heads (None: one class)")
    average_precision: float | None = Field(description="average precision of the |score| ranking (None: no positives)")
    n_reference: int = Field(description="reference heads")
    n_circuit: int = Field(description="heads in the method's circuit")


Interval = tuple[float, float]
QUANTITIES = ("precision", "recall", "f1", "auroc", "average_precision")


class RecoveryInterval(BaseModel):
    """95 % bootstrap intervals over prompts of one method's recovery scores (None: the quantity was
    undefined on every resample); computed by recovery_intervals.py."""

    model_config = ConfigDict(extra="forbid")
    precision: Interval | None = Field(description="interval of the precision of the rule's circuit")
    recall: Interval | None = Field(description="interval of its recall")
    f1: Interval | None = Field(description="interval of its F1")
    auroc: Interval | None = Field(description="interval of the AUROC of the |score| ranking")
    average_precision: Interval | None = Field(description="interval of the average precision of the ranking")
    n_resamples: int = Field(description="resamples of the prompts (each a full run of the method)")
    seed: int = Field(description="seed of the resample draws")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a random positive outscores a random negative (ties count one half)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Σ over score thresholds of (recall gained) × precision at that threshold, tied scores
    entering together (as scikit-learn computes it)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    total, found, seen = 0.0, 0, 0
    for value in np.unique(scores)[::-1]:
        at = scores == value
        found_here = int(positive[at].sum())
        seen += int(at.sum())
        found += found_here
        total += (found_here / n_pos) * (found / seen)
    return float(total)


def node_recovery(scores: dict[str, float], reference: Reference) -> RecoveryScores:
    """A method's {node: score} (heads and MLPs) against the reference's nodes; its circuit is the
    top |reference| nodes by |score| (a node scoring exactly 0 is never picked). The input
    embedding's score (nap) is left out: a reference names heads and MLPs only."""
    return ranked_recovery({n: v for n, v in scores.items() if n != INPUT}, reference.nodes, "nodes",
                           reference.source)


def ranked_recovery(scores: dict[str, float], positives: list[str], what: str, source: str) -> RecoveryScores:
    """{name: score} against the reference's names: its circuit the top |reference| by |score|."""
    names = list(scores)
    unknown = [n for n in positives if n not in scores]
    if unknown:
        raise CircuitbenchError(f"Reference {source}: {what} {', '.join(unknown[:5])} are not {what} of this model "
                                f"(it has {names[0]} … {names[-1]}).")
    ref = set(positives)
    ranked = sorted((n for n in names if scores[n] != 0), key=lambda n: (-abs(scores[n]), names.index(n)))
    chosen = set(ranked[: len(ref)])
    hit = len(chosen & ref)
    precision = hit / len(chosen) if chosen else None
    recall = hit / len(ref) if ref else 1.0
    f1 = 0.0 if not precision or not recall else 2 * precision * recall / (precision + recall)
    flat = np.abs(np.array([scores[n] for n in names]))
    pos = np.array([n in ref for n in names])
    return RecoveryScores(precision=precision, recall=recall, f1=f1, auroc=auroc(flat, pos),
                          average_precision=average_precision(flat, pos), n_reference=len(ref), n_circuit=len(chosen))


def recovery(scores: np.ndarray, circuit: list[Head], reference: Reference) -> RecoveryScores:
    """A method's [n_layers, n_heads] scores and the circuit its rule picked, against the reference."""
    n_layers, n_heads = scores.shape
    positive = np.zeros(scores.shape, dtype=bool)
    for l, h in reference.heads:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise CircuitbenchError(f"Reference {reference.source}: head {l}.{h} lies outside a model of {n_layers} "
                                    f"layers × {n_heads} heads.")
        positive[l, h] = True
    chosen, ref = set(map(tuple, circuit)), set(reference.heads)
    hit = len(chosen & ref)
    precision = hit / len(chosen) if chosen else None
    recall = hit / len(ref) if ref else 1.0
    f1 = 0.0 if not precision or not recall else 2 * precision * recall / (precision + recall)
    flat, pos = np.abs(scores).ravel(), positive.ravel()
    return RecoveryScores(precision=precision, recall=recall, f1=f1, auroc=auroc(flat, pos),
                          average_precision=average_precision(flat, pos), n_reference=len(ref), n_circuit=len(chosen))
