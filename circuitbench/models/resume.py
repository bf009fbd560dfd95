"""Forward passes that start part-way: re-enter the residual stream at block `layer` from a cache
and skip blocks 0..layer-1 entirely (the bridge's own start_at_layer still runs them).

Skipping works by temporarily replacing the wrapped HF block's forward with an identity that
returns what the real block returns (a tensor, or a tuple led by the hidden states), recorded
from one real pass. The tests check skipped runs against full runs on GPT-2, GPT-Neo,
GPT-NeoX, Llama and the native toy models."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

BlockFormat = tuple[str, int]  # ('tensor', 0) or ('tuple', n): what a wrapped block returns


def _original(block: Any) -> torch.nn.Module:
    return block.original_component


def block_output_formats(bridge: TransformerBridge, device: torch.device) -> list[BlockFormat]:
    """What each block returns, recorded from one real forward of two tokens."""
    formats: list[BlockFormat] = []
    handles = []
    for block in bridge.blocks:
        def record(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
            formats.append(("tuple", len(out)) if isinstance(out, tuple) else ("tensor", 0))
        handles.append(_original(block).register_forward_hook(record))
    try:
        with torch.inference_mode():
            bridge(torch.zeros(1, 2, dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
    return formats


@contextmanager
def skip_blocks_before(bridge: TransformerBridge, layer: int, formats: list[BlockFormat]) -> Iterator[None]:
    """Within the context, blocks 0..layer-1 pass their input through untouched (no compute)."""
    patched = []
    for index in range(layer):
        module = _original(bridge.blocks[index])
        kind, size = formats[index]

        def identity(hidden_states: torch.Tensor, *args: Any, _kind: str = kind, _size: int = size,
                     **kwargs: Any) -> Any:
            return hidden_states if _kind == "tensor" else (hidden_states,) + (None,) * (_size - 1)

        # accelerate's device-map hooks live in an instance `forward` too: keep it to put it back
        patched.append((module, module.__dict__.get("forward")))
        module.forward = identity  # instance attribute shadows the class method
    try:
        yield
    finally:
        for module, own_forward in patched:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward
