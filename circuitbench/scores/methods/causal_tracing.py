"""ROME-style causal tracing (Meng et al. 2022): corrupt token embeddings with noise, then
restore one (layer, position) state at a time from the clean run (or, the other direction, patch
one corrupted state into the clean run) and record the effect on the answer.

The map is [n_layers, n_positions] per state kind (residual stream = block output, attention
output, MLP output), averaged over prompts (and noise samples) with its standard deviation over
prompts. Positions are aligned on the right: column j is END − (P−1−j), P the shortest prompt
without BOS; a column that is the same named position (IO, S2, …) in every prompt carries that
name. Effects are changes of the metric oriented so that higher is better (a loss is negated);
the baselines are in the metric's own sign. `preset: rome` applies ROME's settings (see
TracingOptions); the map records the settings that ran.
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
from circuitbench.scores.interventions import SuffixGroup, metric_per_copy, oriented_metric, suffix_groups
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import TraceKind, TracingOptions
from circuitbench.scores.methods.outputs import MethodOutput
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
    noise_std: float | None = None  # the absolute std of the Gaussian noise
    samples: int = 1
    window: int = 1
    corrupt: str | list[str] = "all"
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
        assert opts.noise_scale is not None
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


def _window(layer: int, n_layers: int, size: int) -> list[int]:
    """`size` layers around `layer` (ROME: [layer − size/2, layer + size/2)), clipped to the model."""
    lo = max(0, min(layer - size // 2, n_layers - size))
    return list(range(lo, min(n_layers, lo + size)))


def _noise_std(model: LoadedModel, data: EncodedPrompts, opts: TracingOptions, table: torch.Tensor) -> float:
    """The reference std of the noise: of every token embedding, or of the corrupted tokens' ones."""
    if opts.noise_std_from == "vocabulary":
        return float(table.float().std())
    ids = torch.cat([batch.tokens[_corrupt_mask(batch, opts.corrupt)] for batch in data.batches(len(data) or 1)])
    return float(table[ids.to(table.device)].float().std()) if len(ids) > 1 else float(table.float().std())


def _first_noised(batch: Batch, mask: torch.Tensor) -> torch.Tensor:
    """[batch] each prompt's first noised position (its length when none is): the clean and noised
    runs agree on every position before it (causal attention)."""
    return torch.where(mask.any(1), mask.to(torch.int8).argmax(1), batch.lengths)


def _restore_edit(source: dict[Site, torch.Tensor], group: SuffixGroup, ends: torch.Tensor,
                  width: int) -> Callable[[torch.Tensor, object, Site], None]:
    """metric_per_copy's edit for `group`'s forwards (positions from group.start on): copy `col`
    puts `source`'s state at column `col` (END − (width − 1 − col)) in place. A column before the
    group's start is a no-op: source and base agree there."""
    rows = torch.arange(len(group.rows))
    own_ends = ends[group.rows]

    def edit(x: torch.Tensor, col, at: Site) -> None:  # x: [rows, pos - start, d_model]
        pos = own_ends - (width - 1 - col)
        kept = pos >= group.start
        x[rows[kept], pos[kept] - group.start] = source[at][group.rows[kept], pos[kept]].to(x.dtype)
    return edit


def causal_tracing(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = TracingOptions.model_validate(ctx.options).resolved()
    assert opts.samples is not None and opts.window is not None and opts.noise_scale is not None
    metric = opts.metric or ("answer_prob" if data.has_answer else ctx.metric)
    METRICS.get(metric)
    if opts.preset == "rome" and opts.corrupt == "all":
        raise CircuitbenchError("causal_tracing preset rome corrupts the subject: set method_options.causal_tracing."
                                "corrupt to the subject's named positions (e.g. [S1]).")
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
    std = _noise_std(model, data, opts, table)
    gen = torch.Generator().manual_seed(opts.seed)
    # effects[(kind, direction)] -> list of [batch, n_layers, width] arrays
    effects: dict[tuple[str, str], list[torch.Tensor]] = {(k, d): [] for k in kinds for d in opts.directions}
    base_clean: list[torch.Tensor] = []
    base_corr: list[torch.Tensor] = []
    states = {STATE_SITES[k](l) for k in kinds for l in range(n_layers)}
    states |= {hooks.resid_pre(l) for l in range(n_layers)}  # block inputs, to resume part-way
    for batch in data.batches(ctx.batch_size):
        mask = _corrupt_mask(batch, opts.corrupt)
        # patched forwards start at the first noised position, from the keys and values before it
        groups = suffix_groups(model, batch, torch.ones(batch.tokens.shape, dtype=torch.bool),
                               _first_noised(batch, mask), metric)
        clean_logits, clean_cache = model.run_with_cache(batch.tokens, states | {hooks.embed()})
        m_clean = oriented_metric(metric, clean_logits, batch).cpu()
        ends = batch.end
        totals = {key: torch.zeros(len(batch), n_layers, width) for key in effects}
        m_corr_total = torch.zeros(len(batch))
        for _ in range(opts.samples):
            noised = _noised_embeddings(clean_cache[hooks.embed()], mask, opts, std, table, gen)
            corr_logits, corr_cache = model.run_with_cache(batch.tokens, states,
                                                           hooks=[(hooks.embed(), lambda x, _n=noised: _n.to(x.dtype))])
            m_corr = oriented_metric(metric, corr_logits, batch).cpu()
            m_corr_total += m_corr
            for kind, direction in effects:
                # restore: corrupted run, clean states put back; noise: clean run, corrupted states put in
                source, base = (clean_cache, corr_cache) if direction == "restore" else (corr_cache, clean_cache)
                baseline = m_corr if direction == "restore" else m_clean
                edits = [_restore_edit(source, group, ends, width) for group in groups]
                for layer in range(n_layers):
                    window = _window(layer, n_layers, 1 if kind == "resid" else opts.window)
                    values = torch.zeros(width, len(batch), dtype=torch.float64)
                    for group, edit in zip(groups, edits):
                        values[:, group.rows] = metric_per_copy(
                            model, group.batch, metric, window[0], group.cut(base[hooks.resid_pre(window[0])]),
                            [STATE_SITES[kind](l) for l in window], list(range(width)), edit, prefix=group.prefix)
                    totals[(kind, direction)][:, layer, :] += (values.float() - baseline[None, :]).T
        for key, total in totals.items():
            effects[key].append(total / opts.samples)
        base_clean.append(m_clean)
        base_corr.append(m_corr_total / opts.samples)
        ctx.advance(len(batch))
    sign = 1.0 if METRICS.get(metric).higher_is_better else -1.0
    clean_mean = sign * float(torch.cat(base_clean).mean())
    corr_mean = sign * float(torch.cat(base_corr).mean())
    maps = {}
    for (kind, direction), parts in effects.items():
        stacked = torch.cat(parts).double()
        if not torch.isfinite(stacked).all():
            raise nonfinite_error(f"causal_tracing's {kind}/{direction} map", model, data.tokens[:4])
        maps[f"{kind}/{direction}"] = TraceMap(
            kind=kind, direction=direction, noise=opts.noise, metric=metric,
            noise_std=std * opts.noise_scale if opts.noise == "gaussian" else None, samples=opts.samples,
            window=1 if kind == "resid" else min(opts.window, n_layers), corrupt=opts.corrupt,
            layers=list(range(n_layers)),
            positions=labels, mean=stacked.mean(0).tolist(),
            std=(stacked.std(0, unbiased=True) if len(stacked) > 1 else torch.zeros_like(stacked[0])).tolist(),
            baseline_clean=clean_mean, baseline_corrupted=corr_mean,
        )
    return MethodOutput(traces=maps)
