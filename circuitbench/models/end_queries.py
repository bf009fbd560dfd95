"""The last block's queries at the last position only.

Answer metrics read the logits at END alone, and nothing after the last block's attention mixes
positions: that block's queries, attention and output projection (and its MLP, the unembedding)
are needed at END only, while its keys and values still come from every position. When END is
the last position of every row, `end_attention` computes the last block's attention so: keys and
values of every position (with the key/value prefix's, when the forward has one), the one query
of the last position attending to all of them, softmax(q·k / √d_head) · v · W_O + b_O. Its
[batch, 1, d_model] output broadcasts over the residual add, exact at END (the other positions of
the last block's output are never read).

`end_queries_reproduce` checks once per model, on random tokens, that the logits at the last
position are unchanged (from position 0, and resumed at the last block from a key/value prefix
when the model takes one). Attention of another form (rotary positions, other scales, soft-capping,
ALiBi) fails the check and computes every query as before.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any
from weakref import WeakKeyDictionary

import torch

from circuitbench.models.hooks import Site, resid_pre
from circuitbench.models.known_attention import replaced_attention
from circuitbench.models.loaded import LoadedModel

logger = logging.getLogger(__name__)
_CHECKED: WeakKeyDictionary[torch.nn.Module, bool] = WeakKeyDictionary()  # bridge -> the self-check's verdict


def last_attention_sites(model: LoadedModel) -> set[Site]:
    """Sites inside the last block's attention: an edit there needs the block's own attention."""
    last = model.n_layers - 1
    return {Site(kind, last) for kind in ("q_in", "k_in", "v_in", "q", "k", "v", "z", "pattern", "attn_out")}


def end_attention(model: LoadedModel) -> AbstractContextManager[list[int]]:
    """Within the context the last block's attention computes its last position's query only (see
    the module docstring); use it where END is the last position of every row."""
    last = model.n_layers - 1
    w = model.attention_weights(last)
    n_heads, d_model, d_head = w.query.shape
    # [d_model, n_heads * d_head]: every head's key (value) projection in one product
    key = w.key.permute(1, 0, 2).reshape(d_model, -1)
    value = w.value.permute(1, 0, 2).reshape(d_model, -1)
    output = w.output.reshape(-1, w.output.shape[-1])  # [n_heads * d_head, d_model]

    def compute(*args: Any, **kwargs: Any) -> torch.Tensor:
        x = args[0] if args else kwargs["hidden_states"]  # [batch, pos, d_model], normed
        b, p, _ = x.shape
        k = torch.addmm(w.key_bias.reshape(-1).to(x.dtype), x.reshape(b * p, -1), key.to(x.dtype))
        v = torch.addmm(w.value_bias.reshape(-1).to(x.dtype), x.reshape(b * p, -1), value.to(x.dtype))
        k = k.view(b, p, n_heads, d_head).transpose(1, 2)  # [batch, heads, pos, d_head]
        v = v.view(b, p, n_heads, d_head).transpose(1, 2)
        cache = kwargs.get("past_key_values") if kwargs.get("past_key_values") is not None else kwargs.get("cache")
        layers = getattr(cache, "layers", None)
        if layers is not None and len(layers) > last and getattr(layers[last], "keys", None) is not None \
                and layers[last].keys.numel():
            per_group = n_heads // layers[last].keys.shape[1]
            k = torch.cat([layers[last].keys.repeat_interleave(per_group, dim=1).to(x.dtype), k], dim=2)
            v = torch.cat([layers[last].values.repeat_interleave(per_group, dim=1).to(x.dtype), v], dim=2)
        q = torch.einsum("bd,hde->bhe", x[:, -1], w.query.to(x.dtype)) + w.query_bias.to(x.dtype)
        pattern = torch.softmax(torch.einsum("bhe,bhke->bhk", q, k) / d_head ** 0.5, dim=-1)
        z = torch.einsum("bhk,bhke->bhe", pattern, v).reshape(b, -1)
        return torch.addmm(w.output_bias.to(x.dtype), z, output.to(x.dtype))[:, None]

    return replaced_attention(model, last, compute)


def end_queries_reproduce(model: LoadedModel) -> bool:
    """Whether end_attention leaves the last position's logits as they are (checked once per
    model, see the module docstring)."""
    bridge = model.bridge
    if bridge not in _CHECKED:
        try:
            with model.unmetered():
                _CHECKED[bridge] = _reproduces(model)
        except Exception as exc:  # noqa: BLE001 - any failure means: every query
            logger.debug("last-position queries disabled on %s: %s", model.name, exc)
            _CHECKED[bridge] = False
    return _CHECKED[bridge]


def _reproduces(model: LoadedModel) -> bool:
    generator = torch.Generator().manual_seed(2)
    last = model.n_layers - 1
    length = max(2, min(7, model.n_ctx or 7))
    cut = length // 2
    tokens = torch.randint(0, max(1, min(model.d_vocab, 1000)), (2, length), generator=generator)
    full, cache = model.run_with_cache(tokens, [resid_pre(last)])
    scale = 1.0 + float(full.abs().max())
    parts, called = [], []
    with end_attention(model) as calls:
        parts.append(model.run_with_hooks(tokens))
    called.append(bool(calls))
    if model.prefix_forwards():
        prefix = model.key_value_prefix(tokens[:, :cut])
        with end_attention(model) as calls:
            parts.append(model.run_with_hooks(tokens[:, cut:], resume=(last, cache[resid_pre(last)][:, cut:]),
                                              prefix=prefix))
        called.append(bool(calls))
    return all(called) and bool(torch.isfinite(full).all()) and all(
        float((part[:, -1] - full[:, -1]).abs().max()) <= 1e-4 * scale for part in parts)
