"""Head and MLP ablation: the drop of the (higher-is-better) main metric when one head's (or
MLP's) output is replaced by zeros, its mean over the task's prompts, or another prompt's output
(resample).

Resample ablation pairs every prompt with a partner drawn by a seeded derangement over the whole
prompt set, within prompts of the same token length and named positions (the same template), so
positions align, no pad activation leaks in, and the scores do not depend on the batch size or on
how a data-parallel launch shards the prompts (interventions.resample_partners). A prompt with no
such partner is left out (logged)."""
from __future__ import annotations

import torch

from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.ablations import parse_ablation
from circuitbench.scores.interventions import (
    ablated_batches,
    check_positions,
    node_parts,
    patched_node_metrics,
    position_mask,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AblationOptions
from circuitbench.scores.methods.outputs import MethodOutput


def ablation(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """Metric drop when the head [n_layers, n_heads] (or the MLP [n_layers]) is ablated."""
    opts = AblationOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "ablation")
    total = torch.zeros(model.n_layers, model.n_heads + int(model.has_mlp), dtype=torch.float64)
    m_clean, used = 0.0, 0
    for ablated in ablated_batches(parse_ablation(opts.kind, opts.seed), model, data, ctx, clean=True):
        batch, run = ablated.batch, ablated.clean
        if not len(batch):  # (resample: no prompt of this batch has a partner, no head to patch)
            ctx.advance(ablated.skipped)
            ctx.advance_heads(model.n_layers * model.n_heads)
            continue
        assert run is not None and run.metric is not None
        m_clean += float(run.metric.double().sum())
        used += len(batch)
        z, mlp = node_parts(model, ablated.values)
        total += patched_node_metrics(model, batch, run, lambda l, _z=z: _z[l],
                                      (lambda l, _m=mlp: _m[l]) if mlp is not None else None,
                                      position_mask(batch, opts.positions), ctx)
        ctx.advance(len(batch) + ablated.skipped)
    total, m_clean, n = ctx.sum_shards((total, m_clean, used))
    drop = (m_clean / n - total / n).numpy()
    return MethodOutput(heads=drop[:, : model.n_heads], mlps=drop[:, -1] if model.has_mlp else None, nodes=True)
