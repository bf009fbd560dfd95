"""Memory: what a model and its activations need, what the device has free, and refusing
before loading what cannot fit."""
from __future__ import annotations

from pathlib import Path

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import DeviceMap, LoadedModel
from circuitbench.specs.model import BYTES_PER_PARAM, MEMORY_HEADROOM, memory_needed_bytes


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on the device (MemAvailable on CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def device_map_memory_bytes() -> int:
    """Free memory a device map can use: all GPUs together, or the CPU on a machine without CUDA.
    (CPU RAM is not counted next to GPUs: the bridge refuses maps that mix GPUs with CPU/disk.)"""
    if torch.cuda.is_available():
        return sum(available_memory_bytes(torch.device("cuda", i)) for i in range(torch.cuda.device_count()))
    return available_memory_bytes(torch.device("cpu"))


def check_fits(name: str, n_params: int, dtype: str, device: torch.device, device_map: DeviceMap | None = None) -> None:
    """Refuse, before loading, a model whose weights cannot fit, with the estimate and the options."""
    need = memory_needed_bytes(n_params, dtype)
    free = device_map_memory_bytes() if device_map else available_memory_bytes(device)
    if need > free:
        options = []
        if dtype == "float32":
            options.append(f"--dtype bfloat16 (about {memory_needed_bytes(n_params, 'bfloat16') / 2**30:.1f} GB)")
        if device_map is None and device.type == "cuda" and torch.cuda.device_count() > 1:
            options.append(f"--device-map auto (spreads the model over the {torch.cuda.device_count()} GPUs: "
                           f"{device_map_memory_bytes() / 2**30:.1f} GB free together)")
        if device.type == "cuda":
            options.append("--device cpu")
        options.append("a smaller model, or a machine with more memory")
        where = "on all devices together (--device-map auto)" if device_map else f"on {device}"
        raise CircuitbenchError(
            f"Model '{name}' needs about {need / 2**30:.1f} GB in {dtype} ({n_params / 1e9:.2f}B parameters × "
            f"{BYTES_PER_PARAM[dtype]} bytes + {MEMORY_HEADROOM - 1:.0%}), but only {free / 2**30:.1f} GB is free "
            f"{where}. Options: {'; '.join(options)}."
        )


def auto_batch_size(model: LoadedModel, max_len: int, n_prompts: int, cap: int = 256) -> int:
    """Largest batch whose estimated activations (logits, attention patterns of every layer as
    the detectors read them, residual streams) fit in a quarter of the free memory."""
    per_layer = model.n_heads * max_len * max_len + 8 * max_len * model.d_model
    floats = max_len * model.d_vocab + model.n_layers * per_layer
    per_prompt = 4 * floats * 2  # fp32, with head-room for temporaries
    budget = available_memory_bytes(model.device) // 4
    return int(max(1, min(cap, n_prompts, budget // max(per_prompt, 1))))
