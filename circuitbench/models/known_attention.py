"""Forwards that take a block's attention output as given instead of computing it.

Exact head patching resumes each copy at the patched block L; the attention output of that block
is then already known: the base run's head outputs z with head h's replaced, through the output
projection, Σ_h z_h · W_O[h] + b_O. Handing it in skips block L's queries, keys, values and
attention (≈ 1/3 of the block's matrix work). `known_heads_attention` checks once per model, on
random tokens, that a forward with the attention so replaced gives the full forward's logits (at
the first and the last block, from a key/value prefix too when the model takes one); where it does
not (an attention output that is not that sum, a block that reads more of what its attention
returns), methods compute the attention as before."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import torch

from circuitbench.models.hooks import head_outputs, resid_pre
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.replaced_forward import replaced_forward

logger = logging.getLogger(__name__)
_CHECKED: WeakKeyDictionary[torch.nn.Module, bool] = WeakKeyDictionary()  # bridge -> the self-check's verdict
_TUPLE_SIZE: WeakKeyDictionary[torch.nn.Module, int] = WeakKeyDictionary()  # attention module -> len of its tuple


def attention_from_heads(model: LoadedModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model] block `layer`'s attention output from its head outputs z [batch, pos,
    n_heads, d_head]: Σ_h z_h · W_O[h] + b_O."""
    w = model.attention_weights(layer)
    out = torch.einsum("bphe,hed->bpd", z, w.output.to(z.dtype))
    return out + w.output_bias.to(z.dtype)


def _tuple_size(attention: torch.nn.Module, model: LoadedModel) -> int:
    """How many items the attention module returns (0: a bare tensor), from one real forward."""
    if attention not in _TUPLE_SIZE:
        seen: list[int] = []
        handle = attention.register_forward_hook(
            lambda _m, _i, out: seen.append(len(out) if isinstance(out, tuple) else 0))
        try:
            with torch.inference_mode(), model.unmetered():
                model.run_with_hooks(torch.zeros(1, 2, dtype=torch.long))  # not an evaluation forward
        finally:
            handle.remove()
        _TUPLE_SIZE[attention] = seen[0]
    return _TUPLE_SIZE[attention]


@contextmanager
def replaced_attention(model: LoadedModel, layer: int,
                       compute: Callable[..., torch.Tensor]) -> Iterator[list[int]]:
    """Within the context, block `layer`'s attention returns `compute(*args, **kwargs)` [batch, pos
    (or 1), d_model] of the arguments it is called with (the normed block input first) in place of
    its own computation. Yields a list that gets one item per call of the replacement."""
    attention = model.bridge.blocks[layer].attn
    size = _tuple_size(attention, model)
    model.block_formats()  # recorded from a real forward: not under the replacement
    calls: list[int] = []

    def given(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        output = compute(*args, **kwargs)
        return output if size == 0 else (output,) + (None,) * (size - 1)

    with replaced_forward(attention, given):
        yield calls


def known_attention(model: LoadedModel, layer: int, output: torch.Tensor) -> AbstractContextManager[list[int]]:
    """Within the context, block `layer`'s attention returns `output` [batch, pos, d_model] (the
    rows and positions of the forward) without computing anything (see replaced_attention)."""
    return replaced_attention(model, layer, lambda *_args, **_kwargs: output)


def known_heads_attention(model: LoadedModel) -> bool:
    """Whether forwards resumed at a block with its attention output given as attention_from_heads
    of its head outputs reproduce the full forward (checked once per model, see the module docstring)."""
    bridge = model.bridge
    if bridge not in _CHECKED:
        try:
            with model.unmetered():
                _CHECKED[bridge] = all(_reproduces(model, layer) for layer in sorted({0, model.n_layers - 1}))
        except Exception as exc:  # noqa: BLE001 - any failure means: compute the attention
            logger.debug("given attention outputs disabled on %s: %s", model.name, exc)
            _CHECKED[bridge] = False
    return _CHECKED[bridge]


def _reproduces(model: LoadedModel, layer: int) -> bool:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, max(1, min(model.d_vocab, 1000)), (2, 6), generator=generator)
    full, cache = model.run_with_cache(tokens, [resid_pre(layer), head_outputs(layer)])
    scale = 1.0 + float(full.abs().max())
    cases = [(0, None)]
    if model.prefix_forwards():
        cases.append((3, model.key_value_prefix(tokens[:, :3])))
    for cut, prefix in cases:
        given = attention_from_heads(model, layer, cache[head_outputs(layer)][:, cut:])
        with known_attention(model, layer, given) as calls:
            part = model.run_with_hooks(tokens[:, cut:], resume=(layer, cache[resid_pre(layer)][:, cut:]),
                                        prefix=prefix)
        if not (calls and bool(torch.isfinite(full).all()) and part.shape == full[:, cut:].shape
                and float((part - full[:, cut:]).abs().max()) <= 1e-4 * scale):
            return False
    return True
