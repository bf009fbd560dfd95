"""Faithfulness of a circuit: the model with every head outside it ablated, as MIB defines it,
f(C) = (m(C) − m(∅)) / (m(M) − m(∅)), and the curve of f over circuit sizes (CPR, CMD).

`data` may be one data-parallel process's shard: every mean over prompts goes through
ctx.sum_shards, so each process computes the one-process numbers."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.circuits.circuit import Circuit, Head, ranked_heads
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import ablated_heads_metric, mean_head_outputs
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.task import CircuitRule

CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def ablation_means(model: LoadedModel, data: EncodedPrompts, kind: str,
                   ctx: MethodContext) -> list[torch.Tensor] | None:
    """Per-layer [pos, n_heads, d_head] replacement values for ablated heads (None: zeros)."""
    if kind == "zero":
        return None
    return mean_head_outputs(model, data, ctx, corrupted=kind == "mean_counterfactual")


def curve_sizes(n_total: int) -> list[int]:
    """Every circuit size for small models; MIB's fraction grid for large ones."""
    if n_total <= 64:
        return list(range(n_total + 1))
    return sorted({round(f * n_total) for f in CURVE_FRACTIONS})


class FaithfulnessReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faithfulness: float = Field(description="f(C) = (m(C) − m(∅)) / (m(M) − m(∅))")
    m_circuit: float = Field(description="main metric (higher = better) with only the circuit's heads kept")
    m_full: float = Field(description="main metric of the full model, m(M)")
    m_empty: float = Field(description="main metric with every head ablated, m(∅)")
    ablation: str = Field(description="how heads outside the circuit were removed")
    curve: list[tuple[int, float, float]] = Field(default_factory=list, description="(n_heads, fraction, f) per size")
    cpr: float | None = Field(None, description="area under f over the fraction of heads kept (higher better)")
    cmd: float | None = Field(None, description="area under |1 − f| (lower better)")


def faithfulness(model: LoadedModel, data: EncodedPrompts, circuit: Circuit, scores: np.ndarray, rule: CircuitRule,
                 ctx: MethodContext) -> FaithfulnessReport:
    means = ablation_means(model, data, rule.ablation, ctx)
    n_layers, n_heads = scores.shape
    all_heads = {(l, h) for l in range(n_layers) for h in range(n_heads)}
    m_full = ablated_heads_metric(model, data, all_heads, means, ctx)
    m_empty = ablated_heads_metric(model, data, set(), means, ctx)
    for quantity, value in (("m(M), the full model's metric", m_full), ("m(∅), the metric with every head ablated",
                                                                        m_empty)):
        if not np.isfinite(value):
            raise nonfinite_error(f"Faithfulness: {quantity}", model, data.tokens[:4])
    gap = m_full - m_empty
    if abs(gap) < 1e-9:
        raise CircuitbenchError(
            f"Faithfulness is undefined on '{model.name}': ablating every head does not change the metric "
            f"({m_full:.4g}). Try another circuit.ablation."
        )

    def f(keep: set[Head]) -> float:
        return (ablated_heads_metric(model, data, keep, means, ctx) - m_empty) / gap

    m_circuit = ablated_heads_metric(model, data, set(circuit.heads), means, ctx)
    if not np.isfinite(m_circuit):
        raise nonfinite_error("Faithfulness: m(C), the circuit's metric", model, data.tokens[:4])
    report = FaithfulnessReport(faithfulness=(m_circuit - m_empty) / gap, m_circuit=m_circuit, m_full=m_full,
                                m_empty=m_empty, ablation=rule.ablation)
    if rule.curve:
        order = ranked_heads(scores, rule.by)
        total = n_layers * n_heads
        points = []
        for k in curve_sizes(total):
            fk = 0.0 if k == 0 else 1.0 if k == total else f(set(order[:k]))
            points.append((k, k / total, fk))
        if not all(np.isfinite(p[2]) for p in points):
            raise nonfinite_error("Faithfulness curve", model, data.tokens[:4])
        xs = np.array([p[1] for p in points])
        ys = np.array([p[2] for p in points])
        report.curve = points
        report.cpr = float(np.trapezoid(ys, xs))
        report.cmd = float(np.trapezoid(np.abs(1 - ys), xs))
    return report
