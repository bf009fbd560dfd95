"""Noise injection while training (the seeds' "noisy transformers"): Gaussian noise of a fixed
standard deviation added at one site of a native model, drawn from the caller's generator.

The noise is forward hooks that exist only inside `injected_noise(...)` and act only while the
model is in train mode: evaluation forwards, saved checkpoints and loaded models are noise-free.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from circuitbench.models.toy import output_modules
from circuitbench.training.config import NoiseConfig


def _noised(x: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float32, device=gen.device)
    return x + (scale * noise).to(device=x.device, dtype=x.dtype)


@contextmanager
def injected_noise(model: nn.Module, noise: NoiseConfig | None, gen: torch.Generator) -> Iterator[None]:
    """Within the block, train-mode forwards of the native `model` get noise at `noise.site`."""
    if noise is None:
        yield
        return
    def hook(module: nn.Module, _inputs: Any, output: Any, led: bool) -> Any:
        if not module.training:
            return None
        return (_noised(output[0], noise.scale, gen), *output[1:]) if led else _noised(output, noise.scale, gen)

    handles = [module.register_forward_hook(lambda m, i, o, led=led: hook(m, i, o, led))
               for module, led in output_modules(model, noise.site)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
