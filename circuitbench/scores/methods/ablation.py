"""Head and MLP ablation: the drop of the (higher-is-better) main metric when one head's (or
MLP's) output is replaced by zeros, its mean over the task's prompts, or another prompt's output
(resample).

Resample ablation pairs every prompt with a partner drawn by a seeded derangement over the whole
prompt set, within prompts of the same token length and named positions (the same template), so
positions align, no pad activation leaks in, and the scores do not depend on the batch size or on
how a data-parallel launch shards the prompts. A prompt with no such partner is left out (logged)."""
from __future__ import annotations

import logging

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.interventions import (
    BaseRun,
    MlpSource,
    NodeMeans,
    ZSource,
    base_runs,
    check_positions,
    mean_node_outputs,
    patched_node_metrics,
    position_mask,
    record_base_run,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AblationOptions
from circuitbench.scores.methods.outputs import NodeScores

log = logging.getLogger(__name__)


def resample_partners(data: EncodedPrompts, seed: int) -> torch.Tensor:
    """[n] for each prompt of the whole set, the prompt whose head outputs replace its own (-1: none):
    a seeded derangement within each group of prompts with the same length and named positions."""
    whole = data.full_set
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(whole)):
        key = (int(whole.lengths[i]), *(int(v[i]) for _, v in sorted(whole.positions.items())))
        groups.setdefault(key, []).append(i)
    gen = torch.Generator().manual_seed(seed)
    partners = torch.full((len(whole),), -1, dtype=torch.long)
    for members in groups.values():  # in order of first appearance: deterministic
        if len(members) > 1:
            cycle = torch.tensor(members)[torch.randperm(len(members), generator=gen)]
            partners[cycle] = cycle.roll(-1)  # one cycle through the group: nobody is their own partner
    return partners


def _fixed_source(kind: str, run: BaseRun, means: NodeMeans | None) -> tuple[ZSource, MlpSource | None]:
    if kind == "zero":
        mlp = (lambda l: torch.zeros_like(run.mlp[l])) if run.mlp is not None else None
        return (lambda l: torch.zeros_like(run.z[l])), mlp
    assert means is not None
    mlp_means = means.mlp
    mlp = (lambda l: mlp_means[l][: run.mlp[l].shape[1]].unsqueeze(0).expand_as(run.mlp[l])) \
        if run.mlp is not None and mlp_means is not None else None
    return (lambda l: means.z[l][: run.z[l].shape[1]].unsqueeze(0).expand_as(run.z[l])), mlp


def _rows(run: BaseRun, keep: torch.Tensor, width: int) -> BaseRun:
    """The base run of the kept prompts, trimmed to their width."""
    assert run.metric is not None
    keep_dev = keep.to(run.z[0].device)
    return BaseRun(resid=[r[keep_dev][:, :width] for r in run.resid], z=[z[keep_dev][:, :width] for z in run.z],
                   metric=run.metric[keep.to(run.metric.device)],
                   mlp=None if run.mlp is None else [m[keep_dev][:, :width] for m in run.mlp])


def ablation(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> NodeScores:
    """Metric drop when the head [n_layers, n_heads] (or the MLP [n_layers]) is ablated."""
    opts = AblationOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "ablation")
    means = mean_node_outputs(model, data, ctx) if opts.kind == "mean" else None
    partners = resample_partners(data, opts.seed)[data.offset: data.offset + len(data)] if opts.kind == "resample" \
        else None
    total = torch.zeros(model.n_layers, model.n_heads + int(model.has_mlp), dtype=torch.float64)
    m_clean, used, start = 0.0, 0, 0
    for batch, runs in base_runs(model, data, ctx, ("clean",)):
        run, stop = runs["clean"], start + len(batch)
        if partners is None:
            source, source_mlp = _fixed_source(opts.kind, run, means)
        else:
            own = partners[start:stop]
            keep = own >= 0
            start = stop
            if not keep.any():
                ctx.advance(len(batch))
                continue
            batch = batch.select(keep)
            run = _rows(run, keep, batch.tokens.shape[1])
            _, partner = record_base_run(model, data.full_set.tokens[own[keep]][:, : batch.tokens.shape[1]])
            source = lambda l, _p=partner: _p.z[l]  # noqa: E731
            source_mlp = (lambda l, _p=partner: _p.mlp[l]) if partner.mlp is not None else None
        start = stop
        assert run.metric is not None
        m_clean += float(run.metric.double().sum())
        used += len(batch)
        total += patched_node_metrics(model, batch, run, source, source_mlp, position_mask(batch, opts.positions), ctx)
        ctx.advance(len(batch))
    total, m_clean, n = ctx.sum_shards((total, m_clean, used))
    if n == 0:
        raise CircuitbenchError("Resample ablation needs prompts that share a token length and named positions "
                                "with another prompt; this task has none. Use ablation kind: mean or zero.")
    if partners is not None and n < len(data.full_set):
        log.info("resample ablation: %d of %d prompts have a partner of the same length and positions; the others "
                 "are left out", n, len(data.full_set))
    drop = (m_clean / n - total / n).numpy()
    return NodeScores(drop[:, : model.n_heads], drop[:, -1] if model.has_mlp else None)
