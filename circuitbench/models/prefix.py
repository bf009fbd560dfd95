"""Forwards that compute only the positions after a prefix. The prefix's keys and values in every
block, recorded once, stand in for its positions (the bridge's KV cache): under causal attention
nothing after a position changes it, so a patch that leaves the prefix alone need not recompute it.
`LoadedModel.prefix_forwards` checks each model once against its full forward before methods use
this; models where it does not reproduce the full forward (bidirectional attention, a bridge that
ignores the cache) compute every position as before."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache


@dataclass(frozen=True)
class KeyValuePrefix:
    """Every block's keys and values over the first `length` positions of a batch of prompts."""

    keys: tuple[torch.Tensor, ...]  # per block [batch, kv_heads, length, d_head]
    values: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[0])

    def cache(self, copies: int) -> DynamicCache:
        """A fresh cache (a forward extends it in place) holding the prefix `copies` times along the
        batch axis, copy-major like Batch.repeated."""
        return DynamicCache(ddp_cache_data=[(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1))
                                            for k, v in zip(self.keys, self.values)])


@contextmanager
def cache_reaches_attention(bridge: TransformerBridge) -> Iterator[None]:
    """transformers 5 hands each block's attention the cache as `cache=`, while TransformerLens 4.3's
    attention reads `past_key_values` (and otherwise ignores the cache): pass it under both names.
    transformers' deprecation warning for the bridge's `past_key_values` argument is silenced here."""
    def both_names(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return args, kwargs

    handles = [block.attn.register_forward_pre_hook(both_names, with_kwargs=True) for block in bridge.blocks]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
            yield
    finally:
        for handle in handles:
            handle.remove()


def record_prefix(bridge: TransformerBridge, tokens: torch.Tensor) -> KeyValuePrefix:
    """The keys and values of every block on `tokens` [batch, length] (one forward of those positions)."""
    cache = DynamicCache()
    with torch.inference_mode(), cache_reaches_attention(bridge):
        bridge(tokens, past_key_values=cache)
    if cache.get_seq_length() != tokens.shape[1]:
        raise RuntimeError("the bridge did not fill the key/value cache")
    return KeyValuePrefix(tuple(layer.keys for layer in cache.layers), tuple(layer.values for layer in cache.layers))
