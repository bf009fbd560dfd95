"""Circuit: a set of heads chosen from head scores by a recorded rule, with JSON in/out."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.methods import MethodContext
from circuitbench.methods.patching import end_only_logits, mean_head_outputs, metric_values, z_hook
from circuitbench.spec import CircuitRule

Head = tuple[int, int]


class Circuit(BaseModel):
    """Heads as [layer, head]; `scores` is the [n_layers, n_heads] array they were chosen from."""

    model_config = ConfigDict(extra="forbid")
    heads: list[Head]
    n_layers: int | None = None
    n_heads: int | None = None
    scores: list[list[float]] | None = None
    method: str | None = None
    rule: dict[str, object] = Field(default_factory=dict)
    label: str | None = None

    @classmethod
    def from_scores(cls, scores: np.ndarray, rule: CircuitRule, method: str) -> "Circuit":
        """Pick heads by top_k / threshold / fraction on |score| or signed score (ties: lower
        layer, then lower head first, for determinism)."""
        values = np.abs(scores) if rule.by == "abs" else scores
        n_layers, n_heads = scores.shape
        order = sorted(np.ndindex(n_layers, n_heads), key=lambda lh: (-values[lh], lh))
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

    @classmethod
    def load(cls, path: Path) -> "Circuit":
        """Any JSON with "heads": [[layer, head], ...] (a RunResult qualifies)."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CircuitbenchError(f"{path}: cannot read circuit JSON ({e}).") from None
        source = raw.get("circuit") if isinstance(raw.get("circuit"), dict) else raw
        if not isinstance(source, dict) or "heads" not in source:
            raise CircuitbenchError(f"{path}: no \"heads\": [[layer, head], ...] field (nor circuit.heads).")
        try:
            heads = [(int(l), int(h)) for l, h in source["heads"]]
        except (TypeError, ValueError):
            raise CircuitbenchError(f"{path}: \"heads\" must be a list of [layer, head] pairs.") from None
        model = raw.get("model", {}) if isinstance(raw.get("model"), dict) else {}
        task = raw.get("task", {}) if isinstance(raw.get("task"), dict) else {}
        method = source.get("method")
        # scores: the circuit's own, or (in a RunResult) the head scores it was chosen from
        scores = source.get("scores") or (raw.get("head_scores") or {}).get(method)
        label = f"{model['name']}/{task['name']}" if model.get("name") and task.get("name") else path.stem
        return cls(heads=heads, n_layers=model.get("n_layers", raw.get("n_layers")),
                   n_heads=model.get("n_heads", raw.get("n_heads")), scores=scores, method=method,
                   rule=source.get("rule") or {}, label=raw.get("label", label))

    def names(self) -> list[str]:
        return [f"{l}.{h}" for l, h in self.heads]


# Faithfulness: the model with every head outside the circuit ablated, as MIB defines it.
# `data` may be one data-parallel process's shard: every mean over prompts goes through
# ctx.sum_shards, so each process computes the one-process numbers.


def ablation_means(model, data, kind: str, ctx: MethodContext) -> list[torch.Tensor] | None:
    """Per-layer [pos, n_heads, d_head] replacement values for ablated heads (None: zeros)."""
    if kind == "zero":
        return None
    return mean_head_outputs(model, data, ctx, corrupted=kind == "mean_counterfactual")


def metric_with_heads(model, data, keep: set[Head], means: list[torch.Tensor] | None, ctx: MethodContext) -> float:
    """Mean (higher-is-better) main metric with every head not in `keep` replaced by `means`."""
    n_layers, n_heads = model.n_layers, model.n_heads
    drop = {l: [h for h in range(n_heads) if (l, h) not in keep] for l in range(n_layers)}
    total = 0.0
    for batch in data.batches(ctx.batch_size):
        hooks = []
        for layer, heads in drop.items():
            if not heads:
                continue

            def ablate(z: torch.Tensor, hook, _l=layer, _heads=heads) -> torch.Tensor:
                z = z.clone()
                fill = torch.zeros_like(z[:, :, _heads]) if means is None else means[_l][: z.shape[1], _heads].to(z.dtype)
                z[:, :, _heads] = fill
                return z

            hooks.append((z_hook(layer), ablate))
        unembed_hooks, scored = end_only_logits(ctx.metric, batch)
        with torch.inference_mode():
            logits = model.bridge.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=hooks + unembed_hooks)
        total += float(metric_values(ctx, logits, scored).double().sum())
    total, n = ctx.sum_shards((total, len(data)))
    return total / n


CURVE_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def curve_sizes(n_total: int) -> list[int]:
    """Every circuit size for small models; MIB's fraction grid for large ones."""
    if n_total <= 64:
        return list(range(n_total + 1))
    return sorted({round(f * n_total) for f in CURVE_FRACTIONS})


class FaithfulnessReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faithfulness: float  # f(C) = (m(C) − m(∅)) / (m(M) − m(∅))
    m_circuit: float
    m_full: float
    m_empty: float
    ablation: str
    curve: list[tuple[int, float, float]] = Field(default_factory=list)  # (n_heads, fraction, f)
    cpr: float | None = None  # area under f over the fraction of heads (higher better)
    cmd: float | None = None  # area under |1 − f| (lower better)


def faithfulness(model, data, circuit: Circuit, scores: np.ndarray, rule: CircuitRule, ctx: MethodContext) -> FaithfulnessReport:
    means = ablation_means(model, data, rule.ablation, ctx)
    n_layers, n_heads = scores.shape
    all_heads = {(l, h) for l in range(n_layers) for h in range(n_heads)}
    m_full = metric_with_heads(model, data, all_heads, means, ctx)
    m_empty = metric_with_heads(model, data, set(), means, ctx)
    gap = m_full - m_empty
    if abs(gap) < 1e-9:
        raise CircuitbenchError(
            f"Faithfulness is undefined on '{model.name}': ablating every head does not change the metric "
            f"({m_full:.4g}). Try another circuit.ablation."
        )
    f = lambda keep: (metric_with_heads(model, data, keep, means, ctx) - m_empty) / gap
    m_circuit = metric_with_heads(model, data, set(circuit.heads), means, ctx)
    report = FaithfulnessReport(faithfulness=(m_circuit - m_empty) / gap, m_circuit=m_circuit, m_full=m_full,
                                m_empty=m_empty, ablation=rule.ablation)
    if rule.curve:
        values = np.abs(scores) if rule.by == "abs" else scores
        order = sorted(np.ndindex(n_layers, n_heads), key=lambda lh: (-values[lh], lh))
        total = n_layers * n_heads
        points = []
        for k in curve_sizes(total):
            fk = 0.0 if k == 0 else 1.0 if k == total else f({(int(l), int(h)) for l, h in order[:k]})
            points.append((k, k / total, fk))
        xs = np.array([p[1] for p in points])
        ys = np.array([p[2] for p in points])
        report.curve = points
        report.cpr = float(np.trapezoid(ys, xs))
        report.cmd = float(np.trapezoid(np.abs(1 - ys), xs))
    return report


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score arrays (average ranks for ties)."""
    import pandas as pd

    ra = pd.Series(np.ravel(a)).rank().to_numpy()
    rb = pd.Series(np.ravel(b)).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
