"""Noise injection while training (the seeds' "noisy transformers"): Gaussian noise of a fixed
standard deviation added at one site of a native model, drawn from the caller's generator.

The noise is forward hooks that exist only inside `injected_noise(...)` and act only while the
model is in train mode: evaluation forwards, saved checkpoints and loaded models are noise-free.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

NoiseSite = Literal["embed", "attn_out", "resid"]


class NoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site: NoiseSite = Field(description="embed: token embeddings; attn_out: each attention layer's output; "
                                        "resid: the residual stream after each block")
    scale: float = Field(gt=0, le=100, description="standard deviation of the Gaussian noise")


def _noised(x: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32, device=gen.device)
    return x + (scale * noise).to(device=x.device, dtype=x.dtype)


# site -> (modules to hook, how to add noise to that module's output)
_SITES: dict[str, tuple[Callable[[nn.Module], list[nn.Module]], Callable[[Any, float, torch.Generator], Any]]] = {
    "embed": (lambda model: [model.tok_embed], _noised),
    # NativeAttention returns (output, pattern): the pattern stays as it is
    "attn_out": (lambda model: [block.attn for block in model.layers],
                 lambda out, scale, gen: (_noised(out[0], scale, gen), *out[1:])),
    # NativeBlock returns (hidden_states,)
    "resid": (lambda model: list(model.layers), lambda out, scale, gen: (_noised(out[0], scale, gen), *out[1:])),
}


@contextmanager
def injected_noise(model: nn.Module, noise: NoiseConfig | None, gen: torch.Generator) -> Iterator[None]:
    """Within the block, train-mode forwards of the native `model` get noise at `noise.site`."""
    if noise is None:
        yield
        return
    modules_at, add = _SITES[noise.site]

    def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
        return add(output, noise.scale, gen) if module.training else None

    handles = [module.register_forward_hook(hook) for module in modules_at(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
