"""Logits of a few vocabulary columns at one position per row.

The logit difference reads two logits per prompt (the answer's and the distractor's at END);
projecting END onto the whole vocabulary (d_model × d_vocab multiply-adds per row, ≈ 7 % of exact
head patching's work on GPT-2 small) computes 25,000 times more than it reads. Within
`answer_columns` the unembedding returns x[row, position] · W_U[:, columns] + b_U[columns],
[batch, 1, len(columns)]; what the model does after its unembedding (e.g. Gemma-2's soft-capping)
is elementwise and still applies. `answer_columns_reproduce` checks once per model, on random
tokens, that these equal the full forward's logits at those columns.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import torch

from circuitbench.models.loaded import LoadedModel
from circuitbench.models.replaced_forward import replaced_forward

logger = logging.getLogger(__name__)
_CHECKED: WeakKeyDictionary[torch.nn.Module, bool] = WeakKeyDictionary()  # bridge -> the self-check's verdict


@contextmanager
def answer_columns(model: LoadedModel, positions: torch.Tensor, columns: torch.Tensor) -> Iterator[list[int]]:
    """Within the context the unembedding returns only the logits of `columns` [k] at `positions`
    [batch] (one per row of the forward): [batch, 1, k]. Yields a list that gets one item per call."""
    unembed = model.bridge.unembed
    weight = unembed.W_U.detach()[:, columns.to(unembed.W_U.device)]  # [d_model, k]
    bias = getattr(unembed, "b_U", None)
    bias = torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device) if bias is None \
        else bias.detach()[columns.to(bias.device)]
    model.block_formats()  # recorded from a real forward: not under the replacement
    calls: list[int] = []

    def given(x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:  # x: [batch, pos, d_model], normed
        calls.append(1)
        rows = torch.arange(x.shape[0], device=x.device)
        picked = x[rows, positions.to(x.device)]
        return torch.addmm(bias.to(x.dtype), picked, weight.to(x.dtype))[:, None]

    with replaced_forward(unembed, given):
        yield calls


def answer_columns_reproduce(model: LoadedModel) -> bool:
    """Whether answer_columns gives the full forward's logits at its columns (checked once per model)."""
    bridge = model.bridge
    if bridge not in _CHECKED:
        try:
            with model.unmetered():
                _CHECKED[bridge] = _reproduces(model)
        except Exception as exc:  # noqa: BLE001 - any failure means: the whole vocabulary
            logger.debug("answer-column logits disabled on %s: %s", model.name, exc)
            _CHECKED[bridge] = False
    return _CHECKED[bridge]


def _reproduces(model: LoadedModel) -> bool:
    generator = torch.Generator().manual_seed(3)
    vocab = max(1, min(model.d_vocab, 1000))
    tokens = torch.randint(0, vocab, (2, 5), generator=generator)
    columns = torch.tensor(sorted({0, vocab // 3, vocab - 1}))
    positions = torch.tensor([4, 2])
    full = model.run_with_hooks(tokens)  # a self-check: no evaluation forward (LoadedModel.run)
    with answer_columns(model, positions, columns) as calls:
        part = model.run_with_hooks(tokens)
    expected = full[torch.arange(2), positions][:, columns]
    return bool(calls) and part.shape == (2, 1, len(columns)) and bool(torch.isfinite(full).all()) and \
        float((part[:, 0] - expected).abs().max()) <= 1e-4 * (1.0 + float(full.abs().max()))
