"""Attention-pattern head detectors: previous-token, duplicate-token and induction (prefix
matching). Defined on any prompt from its own tokens, so they run on every task; on repeated
random tokens `induction` is the standard prefix-matching score."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AttentionToOptions
from circuitbench.scores.methods.outputs import MethodOutput

# target[b, q, k] = True where key k is a position query q "should" attend to.
# Detectors read attention patterns only: unembed one position, not the whole vocabulary at every one.
NO_LOGITS: list[Hook] = [(hooks.unembed_in(), lambda x: x[:, :1])]
TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _valid(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True for real (unpadded) positions."""
    return torch.arange(tokens.shape[1])[None, :] < lengths[:, None]


def previous_token_targets(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    b, p = tokens.shape
    eye = torch.zeros(p, p, dtype=torch.bool)
    idx = torch.arange(1, p)
    eye[idx, idx - 1] = True
    return eye[None].expand(b, p, p) & _valid(tokens, lengths)[:, :, None]


def duplicate_token_targets(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Earlier positions holding the same token as the query."""
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.tril(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), diagonal=-1)
    valid = _valid(tokens, lengths)
    return same & earlier[None] & valid[:, :, None] & valid[:, None, :]


def induction_targets(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The position right after each earlier occurrence of the query's token (prefix matching)."""
    dup = duplicate_token_targets(tokens, lengths)
    shifted = torch.zeros_like(dup)
    shifted[:, :, 1:] = dup[:, :, :-1]  # key k+1 for every duplicate at key k
    causal = torch.tril(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool))
    return shifted & causal[None]


def attention_score(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, targets: TargetFn) -> np.ndarray:
    """Mean over (prompt, query) of the attention mass a head puts on the target keys, counting
    only queries that have at least one target. Returns [n_layers, n_heads]."""
    n_layers, n_heads = model.n_layers, model.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    count = 0
    sites = [hooks.attention_pattern(layer) for layer in range(n_layers)]
    for batch in data.batches(ctx.batch_size):
        tgt = targets(batch.tokens, batch.lengths)  # [b, q, k]
        has = tgt.any(-1)  # [b, q]
        count += int(has.sum())
        _, cache = model.run_with_cache(batch.tokens, sites, NO_LOGITS)
        for layer, site in enumerate(sites):
            pattern = cache[site].float().cpu()  # [b, head, q, k]
            mass = (pattern * tgt[:, None].float()).sum(-1)  # [b, head, q]
            total[layer] += (mass * has[:, None].float()).sum((0, 2)).double()
        ctx.advance(len(batch))
    total, count = ctx.sum_shards((total, count))
    if count == 0:
        return np.zeros((n_layers, n_heads))
    return (total / count).numpy()


def previous_token(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(heads=attention_score(model, data, ctx, previous_token_targets))


def duplicate_token(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(heads=attention_score(model, data, ctx, duplicate_token_targets))


def induction(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    return MethodOutput(heads=attention_score(model, data, ctx, induction_targets))


def attention_to(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """Mean attention from one named position to another, e.g. END -> IO (name movers)."""
    opts = AttentionToOptions.model_validate(ctx.options)
    missing = [p for p in (opts.source, opts.target) if p not in data.positions]
    if missing:
        raise CircuitbenchError(
            f"Method 'attention_to' needs positions {missing}, which this task does not define "
            f"(it has {sorted(data.positions)}). Set method_options.attention_to.source/target."
        )

    def targets(tokens: torch.Tensor, lengths: torch.Tensor, _batch_positions: dict) -> torch.Tensor:
        b, p = tokens.shape
        t = torch.zeros(b, p, p, dtype=torch.bool)
        rows = torch.arange(b)
        t[rows, _batch_positions[opts.source], _batch_positions[opts.target]] = True
        return t

    n_layers, n_heads = model.n_layers, model.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    sites = [hooks.attention_pattern(layer) for layer in range(n_layers)]
    for batch in data.batches(ctx.batch_size):
        tgt = targets(batch.tokens, batch.lengths, batch.positions).float()
        _, cache = model.run_with_cache(batch.tokens, sites, NO_LOGITS)
        for layer, site in enumerate(sites):
            total[layer] += (cache[site].float().cpu() * tgt[:, None]).sum((0, 2, 3)).double()
        ctx.advance(len(batch))
    total, n = ctx.sum_shards((total, len(data)))
    return MethodOutput(heads=(total / n).numpy())

