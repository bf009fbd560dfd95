"""Smeared keys (Olsson et al. 2022, "In-context learning and induction heads"): each key is a
learned per-head mix of its own and the previous position's key,

    k'_t = σ(α_h)·k_t + (1 − σ(α_h))·k_{t−1},   k'_0 = k_0,

so a key carries the previous token and a single attention layer can do prefix matching (an
induction head) without a previous-token head below it.

The smearing lives in the key projection module itself (`layers.{l}.attn.k`), not in a patched
attention forward: the bridge wraps that module in a LinearBridge that calls it, so the smeared
model runs unchanged through `TransformerBridge` (every hook, patching and detector included),
`hook_k` shows the smeared keys attention really uses, and the mixing weights are ordinary
state-dict entries (`layers.{l}.attn.k.smear_logit`) saved with the checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn


class SmearedKeyProjection(nn.Linear):
    """An attention layer's key projection followed by per-head smearing over positions.

    Full-sequence forwards only: a KV-cached decoding step sees one position and cannot smear.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, bias: bool = True) -> None:
        super().__init__(d_model, n_heads * d_head, bias=bias)
        self.n_heads, self.d_head = n_heads, d_head
        # σ(0) = ½: start halfway, so gradient can move each head either way
        self.smear_logit = nn.Parameter(torch.zeros(n_heads))

    @classmethod
    def replacing(cls, linear: nn.Linear, n_heads: int) -> "SmearedKeyProjection":
        """A smeared projection carrying `linear`'s weights (same init as the plain model)."""
        module = cls(linear.in_features, n_heads, linear.out_features // n_heads, bias=linear.bias is not None)
        module.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            module.weight.copy_(linear.weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def smear_weight(self) -> torch.Tensor:
        """σ(α) per head: the weight of a position's own key (1 = no smearing)."""
        return torch.sigmoid(self.smear_logit)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        keys = super().forward(hidden_states)  # [..., pos, n_heads * d_head]
        *lead, n_pos, width = keys.shape
        keys = keys.view(*lead, n_pos, self.n_heads, self.d_head)
        previous = torch.cat([keys[..., :1, :, :], keys[..., :-1, :, :]], dim=-3)  # position 0: its own
        own = self.smear_weight().to(keys.dtype)[:, None]  # [n_heads, 1]
        return (own * keys + (1 - own) * previous).reshape(*lead, n_pos, width)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_heads={self.n_heads}, smeared"


def smear_keys(model: nn.Module) -> None:
    """Swap every attention layer's key projection of a native model for a smeared one, in place."""
    for block in model.layers:
        attn = block.attn
        if attn.n_kv_heads != attn.n_heads:
            raise ValueError("smeared keys are per attention head; grouped-query attention is not supported")
        if not isinstance(attn.k, SmearedKeyProjection):
            attn.k = SmearedKeyProjection.replacing(attn.k, attn.n_heads)
