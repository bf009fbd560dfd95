"""Attribution patching: a gradient approximation of noising activation patching, optionally
with integrated gradients along the path from the corrupted to the clean block-0 input."""
from __future__ import annotations

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.interventions import base_runs, end_only_logits, oriented_metric
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AttributionOptions


def attribution_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> np.ndarray:
    """score ≈ −(z_corr − z_clean) · ∂m/∂z summed over positions and d_head, normalised like
    noising activation patching. With ig_steps > 0 the gradient is averaged along the straight
    path between the corrupted and clean block-0 inputs (EAP-IG style)."""
    opts = AttributionOptions.model_validate(ctx.options)
    n_layers = model.n_layers
    total = torch.zeros(n_layers, model.n_heads, dtype=torch.float64)
    m_clean = m_corr = 0.0
    with model.frozen_weights():
        for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted")):
            clean_run, corrupt_run = runs["clean"], runs["corrupted"]
            m_clean += float(clean_run.metric.double().sum())
            m_corr += float(corrupt_run.metric.double().sum())
            alphas = [1.0] if opts.ig_steps == 0 else [(k + 0.5) / opts.ig_steps for k in range(opts.ig_steps)]
            grads = [torch.zeros_like(z, dtype=torch.float64) for z in clean_run.z]
            for alpha in alphas:
                for l, g in enumerate(_z_gradients(model, batch, clean_run.resid[0], corrupt_run.resid[0], alpha, ctx)):
                    grads[l] += g.double() / len(alphas)
            valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(model.device)
            for l in range(n_layers):
                delta = (corrupt_run.z[l] - clean_run.z[l]).double() * valid[:, :, None, None]
                total[l] += (delta * grads[l]).sum((0, 1, 3)).cpu()
            ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    gap = (m_clean - m_corr) / n
    if abs(gap) < 1e-9:
        raise CircuitbenchError(
            f"Clean and corrupted prompts give the same metric on '{model.name}': attribution scores are undefined.")
    return (-(total / n) / gap).numpy()


def _z_gradients(model: LoadedModel, batch: Batch, resid_clean: torch.Tensor, resid_corr: torch.Tensor,
                 alpha: float, ctx: MethodContext) -> list[torch.Tensor]:
    """∂(sum of the metric)/∂z per layer [batch, pos, n_heads, d_head], on the clean prompts with
    the block-0 input set to corr + alpha·(clean − corr) (alpha = 1: the clean run itself)."""
    kept: list[torch.Tensor] = []

    def start(x: torch.Tensor) -> torch.Tensor:
        mixed = resid_corr + alpha * (resid_clean - resid_corr)
        return mixed.detach().clone().to(x.dtype).requires_grad_(True)

    def keep(z: torch.Tensor) -> torch.Tensor:
        z.retain_grad()
        kept.append(z)
        return z

    edits: list[Hook] = [(hooks.resid_pre(0), start)] + [(hooks.head_outputs(l), keep) for l in range(model.n_layers)]
    unembed, scored = end_only_logits(ctx.metric, batch)  # answer metrics: only END is unembedded
    with torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, edits + unembed, grad=True)
        oriented_metric(ctx.metric, logits, scored).sum().backward()
    return [z.grad.detach() if z.grad is not None else torch.zeros_like(z) for z in kept]
