"""Attribution patching of heads and MLPs: a gradient approximation of noising activation
patching, optionally with integrated gradients along the path from the corrupted to the clean
block-0 input (midpoints k + 1/2 of N steps; the edge method `eap_ig` follows the published rule)."""
from __future__ import annotations

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.interventions import base_runs, oriented_metric
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AttributionOptions
from circuitbench.scores.methods.outputs import NodeScores


def attribution_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> NodeScores:
    """score ≈ −(z_corr − z_clean) · ∂m/∂z summed over positions and d_head (an MLP: its output
    and d_model), normalised like noising activation patching. With ig_steps > 0 the gradient is
    averaged along the straight path between the corrupted and clean block-0 inputs."""
    opts = AttributionOptions.model_validate(ctx.options)
    n_layers = model.n_layers
    total = torch.zeros(n_layers, model.n_heads, dtype=torch.float64)
    total_mlp = torch.zeros(n_layers, dtype=torch.float64)
    m_clean = m_corr = 0.0
    with model.frozen_weights():
        for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted")):
            clean_run, corrupt_run = runs["clean"], runs["corrupted"]
            m_clean += float(clean_run.metric.double().sum())
            m_corr += float(corrupt_run.metric.double().sum())
            alphas = [1.0] if opts.ig_steps == 0 else [(k + 0.5) / opts.ig_steps for k in range(opts.ig_steps)]
            grads = [torch.zeros_like(z, dtype=torch.float64) for z in clean_run.z]
            mlp_grads = [torch.zeros_like(m, dtype=torch.float64) for m in clean_run.mlp or []]
            for alpha in alphas:
                z_grads, out_grads = _gradients(model, batch, clean_run.resid[0], corrupt_run.resid[0], alpha, ctx)
                for l, g in enumerate(z_grads):
                    grads[l] += g.double() / len(alphas)
                for l, g in enumerate(out_grads):
                    mlp_grads[l] += g.double() / len(alphas)
            valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(model.device)
            for l in range(n_layers):
                delta = (corrupt_run.z[l] - clean_run.z[l]).double() * valid[:, :, None, None]
                total[l] += (delta * grads[l]).sum((0, 1, 3)).cpu()
            if clean_run.mlp is not None and corrupt_run.mlp is not None:
                for l in range(n_layers):
                    delta = (corrupt_run.mlp[l] - clean_run.mlp[l]).double() * valid[:, :, None]
                    total_mlp[l] += float((delta * mlp_grads[l]).sum())
            ctx.advance(len(batch))
    total, total_mlp, m_clean, m_corr, n = ctx.sum_shards((total, total_mlp, m_clean, m_corr, len(data)))
    gap = (m_clean - m_corr) / n
    if abs(gap) < 1e-9:
        raise CircuitbenchError(
            f"Clean and corrupted prompts give the same metric on '{model.name}': attribution scores are undefined.")
    heads = (-(total / n) / gap).numpy()
    return NodeScores(heads, (-(total_mlp / n) / gap).numpy() if model.has_mlp else None)


def _gradients(model: LoadedModel, batch: Batch, resid_clean: torch.Tensor, resid_corr: torch.Tensor,
               alpha: float, ctx: MethodContext) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """∂(sum of the metric)/∂z per layer [batch, pos, n_heads, d_head] and ∂/∂(MLP output) per
    layer [batch, pos, d_model], on the clean prompts with the block-0 input set to corr +
    alpha·(clean − corr) (alpha = 1: the clean run itself)."""
    kept: list[torch.Tensor] = []
    kept_mlp: list[torch.Tensor] = []

    def start(x: torch.Tensor) -> torch.Tensor:
        mixed = resid_corr + alpha * (resid_clean - resid_corr)
        return mixed.detach().clone().to(x.dtype).requires_grad_(True)

    def keeper(into: list[torch.Tensor]):
        def keep(x: torch.Tensor) -> torch.Tensor:
            x.retain_grad()
            into.append(x)
            return x
        return keep

    edits: list[Hook] = [(hooks.resid_pre(0), start)] + [(hooks.head_outputs(l), keeper(kept))
                                                         for l in range(model.n_layers)]
    if model.has_mlp:
        edits += [(hooks.mlp_out(l), keeper(kept_mlp)) for l in range(model.n_layers)]
    with torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, edits, grad=True)
        oriented_metric(ctx.metric, logits, batch).sum().backward()
    grad = lambda xs: [x.grad.detach() if x.grad is not None else torch.zeros_like(x) for x in xs]  # noqa: E731
    return grad(kept), grad(kept_mlp)
