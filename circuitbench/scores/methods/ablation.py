"""Head ablation: the drop of the (higher-is-better) main metric when one head's output is
replaced by zeros, its mean over the task's prompts, or another prompt's output (resample)."""
from __future__ import annotations

import numpy as np
import torch

from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.interventions import (
    BaseRun,
    ZSource,
    base_runs,
    check_positions,
    mean_head_outputs,
    patched_head_metrics,
    position_mask,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AblationOptions


def _ablation_source(kind: str, run: BaseRun, mean_z: list[torch.Tensor] | None) -> ZSource:
    if kind == "zero":
        return lambda l: torch.zeros_like(run.z[l])
    if kind == "mean":
        assert mean_z is not None
        return lambda l: mean_z[l][: run.z[l].shape[1]].unsqueeze(0).expand_as(run.z[l])
    # resample: each prompt takes the head output of the next prompt in the batch
    return lambda l: run.z[l].roll(1, dims=0)


def ablation(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> np.ndarray:
    """[n_layers, n_heads] metric drop when the head is ablated."""
    opts = AblationOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "ablation")
    mean_z = mean_head_outputs(model, data, ctx) if opts.kind == "mean" else None
    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    m_clean = 0.0
    for batch, runs in base_runs(model, data, ctx, ("clean",)):
        run = runs["clean"]
        m_clean += float(run.metric.double().sum())
        source = _ablation_source(opts.kind, run, mean_z)
        total += patched_head_metrics(model, batch, run, source, position_mask(batch, opts.positions), ctx)
        ctx.advance(len(batch))
    total, m_clean, n = ctx.sum_shards((total, m_clean, len(data)))
    return (m_clean / n - total / n).numpy()
