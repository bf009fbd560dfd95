"""Exact activation patching of attention heads and MLPs.

Scores are normalised so that 1 means "this head alone carries the whole clean-vs-corrupted
difference": noising (corrupted head output into the clean run) scores (m_clean − m_patched) /
|m_clean − m_corrupted|; denoising (clean into the corrupted run) scores (m_patched −
m_corrupted) / |m_clean − m_corrupted|. The denominator's absolute value keeps the sign the
effect's own (noising: positive when patching lowers the metric), which is what a signed ranking
ranks (MIB ranks raw effects): dividing by a negative gap, when the clean run scores below the
counterfactual one, would turn that ranking upside down.
"""
from __future__ import annotations

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.interventions import Layout, base_runs, check_positions, patched_node_metrics, position_mask
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import PatchingOptions
from circuitbench.scores.methods.outputs import HEADS_ONLY, MethodOutput


def normalised_effect(patched: torch.Tensor, m_clean: float, m_corr: float, direction: str,
                      model_name: str) -> np.ndarray:
    """Patched metric means as a fraction of the clean-vs-corrupted gap (see the module docstring)."""
    gap = abs(m_clean - m_corr)
    if gap < 1e-9:
        raise CircuitbenchError(
            f"Clean and corrupted prompts give the same metric on '{model_name}' ({m_clean:.4g}): patching "
            "scores are undefined. The model may not do the task at all; check the metrics first."
        )
    if direction == "noising":
        return ((m_clean - patched) / gap).numpy()
    return ((patched - m_corr) / gap).numpy()


def activation_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """Exact patching scores of every head [n_layers, n_heads] and MLP [n_layers] (`mlps: false`:
    heads only, as head scores)."""
    opts = PatchingOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "activation_patching")
    mlps = model.has_mlp and opts.mlps
    total = torch.zeros(model.n_layers, model.n_heads + int(mlps), dtype=torch.float64)
    m_clean = m_corr = 0.0
    # unaligned counterfactuals: the source run re-indexed span to span into the base run's positions
    layout: Layout = "clean" if opts.direction == "noising" else "corrupted"
    for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted"), layout=layout):
        clean_run, corrupt_run = runs["clean"], runs["corrupted"]
        m_clean += float(clean_run.metric.double().sum())
        m_corr += float(corrupt_run.metric.double().sum())
        if opts.direction == "noising":
            base_batch, base, source = batch, clean_run, corrupt_run
        else:
            base_batch, base, source = batch.as_corrupted(), corrupt_run, clean_run
        mask = position_mask(base_batch, opts.positions)  # the base run's positions (the same when aligned)
        mlp = (lambda l, s=source: s.mlp[l]) if source.mlp is not None and mlps else None
        # the two runs agree before the first token they differ in: forwards start there
        total += patched_node_metrics(model, base_batch, base, lambda l, s=source: s.z[l], mlp, mask, ctx,
                                      unchanged_before=batch.first_difference() if batch.corrupted_lengths is None
                                      else None)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    scores = normalised_effect(total / n, m_clean / n, m_corr / n, opts.direction, model.name)
    if model.has_mlp and not opts.mlps:  # the MLPs were not patched: head scores, not node scores
        return MethodOutput(heads=scores, settings={HEADS_ONLY: True})
    return MethodOutput(heads=scores[:, : model.n_heads], mlps=scores[:, -1] if mlps else None, nodes=True)
