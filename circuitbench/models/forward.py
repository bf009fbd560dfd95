"""Forward passes that start part-way: re-enter the residual stream at block `layer` from a cache
and skip blocks 0..layer-1 entirely (the bridge's own start_at_layer still runs them).

Skipping works by temporarily replacing the wrapped HF block's forward with an identity that
returns what the real block returns (a tensor, or a tuple led by the hidden states), recorded
from one real pass. The patching tests check skipped runs against full runs on GPT-2, GPT-Neo,
GPT-NeoX, Llama and the native toy models."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitbench.models.loading import LoadedModel


def _original(block: Any) -> torch.nn.Module:
    return block.original_component


def block_output_formats(model: "LoadedModel", tokens: torch.Tensor) -> list[tuple[str, int]]:
    """('tensor', 0) or ('tuple', n) per block, recorded from one real forward."""
    formats: list[tuple[str, int]] = []
    handles = []
    for block in model.bridge.blocks:
        def record(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
            formats.append(("tuple", len(out)) if isinstance(out, tuple) else ("tensor", 0))
        handles.append(_original(block).register_forward_hook(record))
    try:
        with torch.inference_mode():
            model.bridge(tokens[:1, :2].to(model.device))
    finally:
        for h in handles:
            h.remove()
    return formats


@contextmanager
def skip_blocks_before(model: "LoadedModel", layer: int, formats: list[tuple[str, int]]) -> Iterator[None]:
    """Within the context, blocks 0..layer-1 pass their input through untouched (no compute)."""
    patched = []
    for index in range(layer):
        module = _original(model.bridge.blocks[index])
        kind, size = formats[index]

        def identity(hidden_states: torch.Tensor, *args: Any, _kind: str = kind, _size: int = size, **kwargs: Any) -> Any:
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


def resume_hook(layer: int, resid: torch.Tensor):
    """(hook name, fn) replacing the input of block `layer` with `resid` [batch, pos, d_model]."""

    def inject(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid.to(dtype=x.dtype, device=x.device)

    return f"blocks.{layer}.hook_in", inject
