"""Attention-pattern head detectors: previous-token, duplicate-token and induction (prefix
matching). Defined on any prompt from its own tokens, so they run on every task; on repeated
random tokens `induction` is the standard prefix-matching score."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.methods import METHODS, Method, MethodContext

if TYPE_CHECKING:
    from circuitbench.encoding import EncodedPrompts
    from circuitbench.models import LoadedModel

# target[b, q, k] = True where key k is a position query q "should" attend to.
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


def attention_score(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext, targets: TargetFn) -> np.ndarray:
    """Mean over (prompt, query) of the attention mass a head puts on the target keys, counting
    only queries that have at least one target. Returns [n_layers, n_heads]."""
    n_layers, n_heads = model.n_layers, model.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    count = 0
    hook_names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    for batch in data.batches(ctx.batch_size):
        tgt = targets(batch.tokens, batch.lengths)  # [b, q, k]
        has = tgt.any(-1)  # [b, q]
        count += int(has.sum())
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                batch.tokens.to(model.device), names_filter=lambda n: n in hook_names
            )
        for layer, name in enumerate(hook_names):
            pattern = cache[name].float().cpu()  # [b, head, q, k]
            mass = (pattern * tgt[:, None].float()).sum(-1)  # [b, head, q]
            total[layer] += (mass * has[:, None].float()).sum((0, 2)).double()
        ctx.advance(len(batch))
    total, count = ctx.sum_shards((total, count))
    if count == 0:
        return np.zeros((n_layers, n_heads))
    return (total / count).numpy()


def _detector(targets: TargetFn) -> Callable[["LoadedModel", "EncodedPrompts", MethodContext], np.ndarray]:
    return lambda model, data, ctx: attention_score(model, data, ctx, targets)


METHODS.add("previous_token", Method(_detector(previous_token_targets), "attention to the previous token"))
METHODS.add("duplicate_token", Method(_detector(duplicate_token_targets), "attention to earlier copies of the token"))
METHODS.add("induction", Method(_detector(induction_targets), "prefix matching: attention to the token after an earlier copy"))


class AttentionToOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field("END", description="named position attending (query)")
    target: str = Field("IO", description="named position attended to (key)")


def attention_to(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext) -> np.ndarray:
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
    hook_names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    for batch in data.batches(ctx.batch_size):
        tgt = targets(batch.tokens, batch.lengths, batch.positions).float()
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(batch.tokens.to(model.device), names_filter=lambda n: n in hook_names)
        for layer, name in enumerate(hook_names):
            total[layer] += (cache[name].float().cpu() * tgt[:, None]).sum((0, 2, 3)).double()
        ctx.advance(len(batch))
    total, n = ctx.sum_shards((total, len(data)))
    return (total / n).numpy()


METHODS.add("attention_to", Method(attention_to, "attention from one named position to another (e.g. END -> IO)",
                                   options=AttentionToOptions))
