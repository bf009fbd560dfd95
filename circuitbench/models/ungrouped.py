"""Grouped-query attention computed per query head: TransformerLens 2.x's
`ungroup_grouped_query_attention`, which EAP-IG and MIB run Llama and Qwen with.

Every key and value head is repeated for the query heads of its group right at the projection's
output, and the attention no longer repeats them itself, so `hook_k` / `hook_v` hold one key and
value per query head and a hook may change one head's copy without touching its group's other
heads. The forward computes the same numbers (the copies are equal until a hook changes one),
the keys and values just take r = n_heads / n_kv_heads times the memory. After this the bridge's
config says n_key_value_heads = n_heads, so the component graph gives each query head its own k
and v input (models/graph.py).
"""
from __future__ import annotations

from typing import Any

import torch

from circuitbench.errors import CircuitbenchError


def ungroup_key_values(bridge: Any, name: str) -> None:
    """Make `bridge` (a fresh TransformerBridge; it is changed in place) compute keys and values
    per query head (see the module docstring). A model without grouped-query attention is left as it is."""
    cfg = bridge.cfg
    n_heads, n_kv = int(cfg.n_heads), int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    if n_kv == n_heads:
        return
    repeat, d_head = n_heads // n_kv, int(cfg.d_head)

    def expand(_module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        # [batch, pos, n_kv·d_head] -> [batch, pos, n_heads·d_head], each group's head repeated for its queries
        heads = out.view(*out.shape[:-1], n_kv, d_head).repeat_interleave(repeat, dim=-2)
        return heads.reshape(*out.shape[:-1], n_heads * d_head)

    for layer, block in enumerate(bridge.blocks):
        attn = block.attn
        hf_attn = attn.original_component
        if getattr(hf_attn, "num_key_value_groups", None) != repeat:
            raise CircuitbenchError(
                f"--kv-graph ungrouped cannot run on '{name}': block {layer}'s attention "
                f"({type(hf_attn).__name__}) does not repeat its {n_kv} key-value heads itself; use the grouped "
                "graph (--kv-graph grouped, the default).")
        for projection in (attn.k, attn.v):
            projection.original_component.register_forward_hook(expand)
            conversion = getattr(projection.hook_out, "hook_conversion", None)
            if conversion is not None and hasattr(conversion, "n_heads"):
                conversion.n_heads = n_heads  # hook_k / hook_v: [batch, pos, n_heads, d_head]
        hf_attn.num_key_value_groups = 1
    cfg.n_key_value_heads = n_heads
