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

from circuitbench.circuits.circuit import Head
from circuitbench.errors import CircuitbenchError

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


def parse_components(items: list, where: str) -> tuple[list[Head], list[int]]:
    """Heads and MLP layers from [layer, head] pairs and/or node names ("a0.h1", "m2")."""
    heads: list[Head] = []
    mlps: list[int] = []
    for item in items:
        if isinstance(item, str) and (m := HEAD_NODE.match(item)):
            heads.append((int(m.group(1)), int(m.group(2))))
        elif isinstance(item, str) and (m := MLP_NODE.match(item)):
            mlps.append(int(m.group(1)))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item):
            heads.append((int(item[0]), int(item[1])))
        else:
            raise CircuitbenchError(f"{where}: {item!r} is neither a [layer, head] pair nor a node name like "
                                    "'a0.h1' or 'm2'.")
    return sorted(set(heads)), sorted(set(mlps))


def load_reference(path: Path) -> Reference:
    """A reference circuit file: {"heads": [[l, h], ...], "mlps": [l, ...]} or {"nodes": ["a0.h1", "m0", ...]}
    (the model directory's circuit.json, or any circuit file with heads)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: cannot read the reference circuit ({e}).") from None
    if not isinstance(raw, dict) or not any(k in raw for k in ("heads", "nodes", "circuit")):
        raise CircuitbenchError(f"{path}: a reference circuit is a JSON object with \"heads\" (and \"mlps\") or "
                                "\"nodes\".")
    source = raw["circuit"] if isinstance(raw.get("circuit"), dict) else raw
    items = list(source.get("heads", [])) + list(source.get("nodes", [])) + [f"m{l}" for l in source.get("mlps", [])]
    heads, mlps = parse_components(items, str(path))
    edges = [str(e) for e in source.get("edges", []) if isinstance(e, str)]
    try:
        return Reference(heads=heads, mlps=mlps, edges=edges, source=str(path))
    except ValidationError as e:
        raise CircuitbenchError(f"{path}: not a reference circuit ({e.errors()[0]['msg']}).") from None


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
    top |reference| nodes by |score| (a node scoring exactly 0 is never picked)."""
    return ranked_recovery(scores, reference.nodes, "nodes", reference.source)


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
