"""ROME-style causal tracing (Meng et al. 2022): corrupt token embeddings with noise, then
restore one (layer, position) state at a time from the clean run (or, the other direction, patch
one corrupted state into the clean run) and record the effect on the answer.

The map is [n_layers, n_positions] per state kind (residual stream = block output, attention
output, MLP output), averaged over prompts with its standard deviation. Positions are aligned
on the right: column j is END − (P−1−j), P the shortest prompt without BOS; a column that is the
same named position (IO, S2, …) in every prompt carries that name.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.hooks import Site
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.interventions import metric_per_copy, oriented_metric
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import TraceKind, TracingOptions
from circuitbench.specs.registries import METRICS

# The state each trace kind restores: the residual stream out of a block, its attention or MLP output.
STATE_SITES: dict[str, Callable[[int], Site]] = {"resid": hooks.resid_post, "attn": hooks.attn_out,
                                                 "mlp": hooks.mlp_out}


class TraceMap(BaseModel):
    """Indirect effect per (layer, position): mean and std over prompts."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    direction: str
    noise: str
    metric: str
    layers: list[int]
    positions: list[str]
    mean: list[list[float]]
    std: list[list[float]]
    baseline_clean: float
    baseline_corrupted: float


def _corrupt_mask(batch: Batch, corrupt: Literal["all"] | list[str]) -> torch.Tensor:
    b, p = batch.tokens.shape
    if corrupt == "all":
        pos = torch.arange(p)[None, :]
        return (pos >= 1) & (pos < batch.lengths[:, None])
    mask = torch.zeros(b, p, dtype=torch.bool)
    for name in corrupt:
        mask[torch.arange(b), batch.positions[name]] = True
    return mask


def _noised_embeddings(embed: torch.Tensor, mask: torch.Tensor, opts: TracingOptions, scale: float,
                       table: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[batch, pos, d_model] embeddings with the masked positions corrupted."""
    out = embed.clone()
    m = mask.to(embed.device)
    if opts.noise == "gaussian":
        noise = torch.randn(embed.shape, generator=gen).to(embed.device, embed.dtype) * scale * opts.noise_scale
        out = torch.where(m[..., None], embed + noise, embed)
    elif opts.noise == "random_embeddings":
        ids = torch.randint(0, table.shape[0], embed.shape[:2], generator=gen)
        out = torch.where(m[..., None], table[ids].to(embed.device, embed.dtype), embed)
    else:  # shuffled: permute the corrupted positions' embeddings within each prompt
        for row in range(embed.shape[0]):
            idx = m[row].nonzero()[:, 0]
            perm = idx[torch.randperm(len(idx), generator=gen)]
            out[row, idx] = embed[row, perm]
    return out


def _columns(data: EncodedPrompts) -> tuple[int, list[str]]:
    width = int(data.lengths.min()) - 1
    if width < 1:
        raise CircuitbenchError("causal_tracing needs prompts of at least 2 tokens")
    labels = []
    for j in range(width):
        offset = width - 1 - j
        label = "END" if offset == 0 else f"END-{offset}"
        for name, pos in data.positions.items():
            if name != "END" and bool(((data.lengths - 1 - pos) == offset).all()):
                label = name
        labels.append(label)
    return width, labels


def causal_tracing(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> dict[str, TraceMap]:
    opts = TracingOptions.model_validate(ctx.options)
    metric = opts.metric or ("answer_prob" if data.has_answer else ctx.metric)
    METRICS.get(metric)
    if opts.corrupt != "all":
        missing = [p for p in opts.corrupt if p not in data.positions]
        if missing:
            raise CircuitbenchError(
                f"causal_tracing: positions {missing} are not defined by this task ({sorted(data.positions)})")
    kinds: list[TraceKind] = [k for k in opts.kinds if model.has_site(STATE_SITES[k](0))]
    if not kinds:
        raise CircuitbenchError(f"causal_tracing: model '{model.name}' exposes none of the states {opts.kinds}")
    width, labels = _columns(data)
    n_layers = model.n_layers
    table = model.token_embeddings()
    scale = float(table.float().std())
    gen = torch.Generator().manual_seed(opts.seed)
    # effects[(kind, direction)] -> list of [batch, n_layers, width] arrays
    effects: dict[tuple[str, str], list[torch.Tensor]] = {(k, d): [] for k in kinds for d in opts.directions}
    base_clean: list[torch.Tensor] = []
    base_corr: list[torch.Tensor] = []
    states = {STATE_SITES[k](l) for k in kinds for l in range(n_layers)}
    states |= {hooks.resid_pre(l) for l in range(n_layers)}  # block inputs, to resume part-way
    for batch in data.batches(ctx.batch_size):
        mask = _corrupt_mask(batch, opts.corrupt)
        _, embed_cache = model.run_with_cache(batch.tokens, [hooks.embed()])
        noised = _noised_embeddings(embed_cache[hooks.embed()], mask, opts, scale, table, gen)
        noise_hook = (hooks.embed(), lambda x, _n=noised: _n.to(x.dtype))
        clean_logits, clean_cache = model.run_with_cache(batch.tokens, states)
        corr_logits, corr_cache = model.run_with_cache(batch.tokens, states, hooks=[noise_hook])
        m_clean = oriented_metric(metric, clean_logits, batch).cpu()
        m_corr = oriented_metric(metric, corr_logits, batch).cpu()
        base_clean.append(m_clean)
        base_corr.append(m_corr)
        ends = batch.end
        rows = torch.arange(len(batch))
        for kind in kinds:
            for direction in opts.directions:
                # restore: corrupted run, clean state put back; noise: clean run, corrupted state put in
                source = clean_cache if direction == "restore" else corr_cache
                base = corr_cache if direction == "restore" else clean_cache
                baseline = m_corr if direction == "restore" else m_clean
                out = torch.zeros(len(batch), n_layers, width)
                for layer in range(n_layers):
                    site = STATE_SITES[kind](layer)
                    src = source[site]

                    def edit(x: torch.Tensor, col, _src=src) -> None:  # x: [batch, pos, d_model]
                        pos = ends - (width - 1 - col)
                        x[rows, pos] = _src[rows, pos].to(x.dtype)

                    values = metric_per_copy(model, batch, metric, layer, base[hooks.resid_pre(layer)], site,
                                             list(range(width)), edit)
                    out[:, layer, :] = (values.float() - baseline[None, :]).T
                effects[(kind, direction)].append(out)
        ctx.advance(len(batch))
    maps = {}
    clean_mean = float(torch.cat(base_clean).mean())
    corr_mean = float(torch.cat(base_corr).mean())
    for (kind, direction), parts in effects.items():
        stacked = torch.cat(parts).double()
        if not torch.isfinite(stacked).all():
            raise nonfinite_error(f"causal_tracing's {kind}/{direction} map", model, data.tokens[:4])
        maps[f"{kind}/{direction}"] = TraceMap(
            kind=kind, direction=direction, noise=opts.noise, metric=metric, layers=list(range(n_layers)),
            positions=labels, mean=stacked.mean(0).tolist(),
            std=(stacked.std(0, unbiased=True) if len(stacked) > 1 else torch.zeros_like(stacked[0])).tolist(),
            baseline_clean=clean_mean, baseline_corrupted=corr_mean,
        )
    return maps
