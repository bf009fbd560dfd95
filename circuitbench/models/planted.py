"""Planted-circuit networks: a tracr-compiled TL-format checkpoint whose weights stay frozen (its
true circuit), widened to more heads and layers, with *distractors* — heads and MLPs in the slots
the program leaves empty — whose weights are trainable (training/planted.py trains them to be
active but causally irrelevant).

`PlantedNetwork` computes the checkpoint's forward in plain torch exactly as the bridge does for a
no-norm, standard-position TL checkpoint (tl_format.py): embeddings + positions, per block the
heads (scores / attn_scale, softmax, bidirectional unless the config says causal), their outputs
z·W_O summed with b_O, then a ReLU MLP, then the unembedding. Any node's output (a head's z·W_O,
an MLP's output with its bias) can be replaced in the forward (zero, a mean, another prompt's), as
circuitbench's ablations replace it. `tl_state()` gives the TL-named state to save (the build
checks the saved checkpoint, loaded through the bridge, against this forward).

Distractor heads get tracr_import's pad mask (query bias 1 and key PAD_KEY on the compiler-pad
direction, on the extra head dimension), frozen, so a right-padded batch computes at every real
position what the unpadded prompt does."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from circuitbench.models.tracr_import import PAD_KEY

HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
MLP = re.compile(r"^m(\d+)$")
HEAD_PARTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


@dataclass(frozen=True)
class Slot:
    """One distractor slot: a head (`head` set) or a block's MLP (`head` None)."""

    name: str
    layer: int
    head: int | None

    @classmethod
    def parse(cls, name: str) -> "Slot":
        if m := HEAD.match(name):
            return cls(name, int(m.group(1)), int(m.group(2)))
        if m := MLP.match(name):
            return cls(name, int(m.group(1)), None)
        raise ValueError(f"{name!r} is neither a head a{{L}}.h{{H}} nor an MLP m{{L}}")


def widen(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], n_layers: int,
          n_heads: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint with `n_heads` heads per block (new heads all-zero) and `n_layers` blocks (new
    blocks all-zero: heads, b_O and MLP), every existing weight kept where it was."""
    old_layers, old_heads = int(config["n_layers"]), int(config["n_heads"])
    if n_layers < old_layers or n_heads < old_heads:
        raise ValueError(f"cannot narrow {old_layers}x{old_heads} to {n_layers}x{n_heads}")
    out = {k: v.detach().clone().float() for k, v in state.items()}
    for layer in range(n_layers):
        block = f"blocks.{layer}"
        for part in HEAD_PARTS:
            key = f"{block}.attn.{part}"
            like = out[f"blocks.0.attn.{part}"]
            old = out.get(key, torch.zeros((0, *like.shape[1:])))
            extra = torch.zeros((n_heads - old.shape[0], *like.shape[1:]))
            out[key] = torch.cat([old, extra])
        for key in ("attn.b_O", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out"):
            out.setdefault(f"{block}.{key}", torch.zeros_like(out[f"blocks.0.{key}"]))
    widened = {**config, "n_layers": n_layers, "n_heads": n_heads}
    return out, widened


def used_slots(state: Mapping[str, torch.Tensor], n_layers: int, n_heads: int) -> set[str]:
    """Node names of the heads and MLPs with any non-zero weight."""
    used = set()
    for layer in range(n_layers):
        block = f"blocks.{layer}"
        for h in range(n_heads):
            if any(bool(state[f"{block}.attn.{p}"][h].any()) for p in HEAD_PARTS):
                used.add(f"a{layer}.h{h}")
        if any(bool(state[f"{block}.mlp.{p}"].any()) for p in ("W_in", "b_in", "W_out", "b_out")):
            used.add(f"m{layer}")
    return used


class PlantedNetwork(nn.Module):
    """The forward pass of a widened no-norm TL checkpoint with trainable distractor slots.

    `state` is TL-named (already widened); `distractors` names empty slots (node names). Each
    distractor head's tracr key dimensions (all but the last, the pad mask's) and each distractor
    MLP's weights start random (`generator`, scale `init_scale` / sqrt(fan-in)); everything else is
    a frozen buffer."""

    def __init__(self, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], distractors: Sequence[str],
                 pad_dim: int, generator: torch.Generator, init_scale: float = 1.0) -> None:
        super().__init__()
        self.config = dict(config)
        self.n_layers, self.n_heads = int(config["n_layers"]), int(config["n_heads"])
        self.d_model, self.d_head, self.d_mlp = int(config["d_model"]), int(config["d_head"]), int(config["d_mlp"])
        self.key_size = self.d_head - 1  # the last head dimension is the pad mask (bidirectional tracr models)
        self.scale = float(config.get("attn_scale") or math.sqrt(self.d_head))
        self.causal = config.get("attention_dir") == "causal"
        self.slots = [Slot.parse(n) for n in distractors]
        occupied = used_slots(state, self.n_layers, self.n_heads)
        taken = [s.name for s in self.slots if s.name in occupied]
        if taken:
            raise ValueError(f"distractor slots {taken} hold compiled weights")
        self.frozen = {k: v.detach().clone().float() for k, v in state.items()}
        for key, value in self.frozen.items():
            self.register_buffer("frozen_" + key.replace(".", "_"), value, persistent=False)
        self.weights = nn.ParameterDict()
        d, k, m = self.d_model, self.key_size, self.d_mlp

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) * init_scale / math.sqrt(fan_in))

        for slot in self.slots:
            key = slot.name.replace(".", "_")
            if slot.head is None:
                self.weights[key + "_W_in"] = init(d, m, fan_in=d)
                self.weights[key + "_b_in"] = nn.Parameter(torch.zeros(m))
                self.weights[key + "_W_out"] = init(m, d, fan_in=m)
                self.weights[key + "_b_out"] = nn.Parameter(torch.zeros(d))
            else:
                for part in ("W_Q", "W_K", "W_V"):
                    self.weights[f"{key}_{part}"] = init(d, k, fan_in=d)
                self.weights[f"{key}_W_O"] = init(k, d, fan_in=k)
                mask_bq = self.frozen[f"blocks.{slot.layer}.attn.b_Q"]
                mask_wk = self.frozen[f"blocks.{slot.layer}.attn.W_K"]
                mask_bq[slot.head, k] = 1.0  # the pad mask, as tracr_import gives every head with weights
                mask_wk[slot.head, pad_dim, k] = PAD_KEY

    # --- weights ---------------------------------------------------------------------------
    def _head_weight(self, layer: int, part: str) -> torch.Tensor:
        """[n_heads, ...] the block's `part` with the distractor heads' trainable values in place."""
        base = self.frozen[f"blocks.{layer}.attn.{part}"]
        rows = []
        for h in range(self.n_heads):
            key = f"a{layer}_h{h}_{part}"
            if key in self.weights:
                value = self.weights[key]
                pad = (0, 1) if part != "W_O" else (0, 0, 0, 1)  # the pad-mask dimension stays frozen
                rows.append(base[h] + nn.functional.pad(value, pad))
            else:
                rows.append(base[h])
        return torch.stack(rows)

    def _mlp_weight(self, layer: int, part: str) -> torch.Tensor:
        key = f"m{layer}_{part}"
        return self.weights[key] if key in self.weights else self.frozen[f"blocks.{layer}.mlp.{part}"]

    def tl_state(self) -> dict[str, torch.Tensor]:
        """The TL-named state dict with the distractors' current weights (detached copies)."""
        out = {k: v.clone() for k, v in self.frozen.items()}
        with torch.no_grad():
            for layer in range(self.n_layers):
                for part in ("W_Q", "W_K", "W_V", "W_O"):
                    out[f"blocks.{layer}.attn.{part}"] = self._head_weight(layer, part).detach().clone()
                for part in ("W_in", "b_in", "W_out", "b_out"):
                    out[f"blocks.{layer}.mlp.{part}"] = self._mlp_weight(layer, part).detach().clone()
        return out

    def write_parameters(self, name: str) -> list[nn.Parameter]:
        """The trainable parameters whose rows a distractor writes to the residual stream with."""
        key = name.replace(".", "_")
        return [self.weights[key + "_W_out"], self.weights[key + "_b_out"]] if name.startswith("m") \
            else [self.weights[key + "_W_O"]]

    # --- forward ---------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, replace: Mapping[str, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """tokens [batch, pos] -> (logits [batch, pos, d_vocab], every node's output [batch, pos,
        d_model] (`a{L}.h{H}`: z·W_O; `m{L}`: the MLP's output) as computed before any replacement,
        every head's attention pattern [batch, query, key]). `replace` maps node names to the
        [batch, pos, d_model] output that takes the place of theirs."""
        replace = replace or {}
        f = self.frozen
        n_pos = tokens.shape[1]
        resid = f["embed.W_E"][tokens] + f["pos_embed.W_pos"][:n_pos][None]
        outputs: dict[str, torch.Tensor] = {}
        patterns: dict[str, torch.Tensor] = {}
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril() if self.causal else None
        for layer in range(self.n_layers):
            w = {p: self._head_weight(layer, p) for p in ("W_Q", "W_K", "W_V", "W_O")}
            b = {p: f[f"blocks.{layer}.attn.{p}"] for p in ("b_Q", "b_K", "b_V")}
            q = torch.einsum("bpd,hde->bphe", resid, w["W_Q"]) + b["b_Q"]
            k = torch.einsum("bpd,hde->bphe", resid, w["W_K"]) + b["b_K"]
            v = torch.einsum("bpd,hde->bphe", resid, w["W_V"]) + b["b_V"]
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.scale
            if causal is not None:
                scores = scores.masked_fill(~causal, float("-inf"))
            pattern = scores.softmax(-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            per_head = list(torch.einsum("bqhe,hed->bqhd", z, w["W_O"]).unbind(2))
            for h in range(self.n_heads):
                name = f"a{layer}.h{h}"
                outputs[name], patterns[name] = per_head[h], pattern[:, h]
                per_head[h] = replace.get(name, per_head[h])
            resid = resid + torch.stack(per_head, 2).sum(2) + f[f"blocks.{layer}.attn.b_O"]
            if not self.config.get("attn_only"):
                pre = resid @ self._mlp_weight(layer, "W_in") + self._mlp_weight(layer, "b_in")
                name = f"m{layer}"
                outputs[name] = pre.relu() @ self._mlp_weight(layer, "W_out") + self._mlp_weight(layer, "b_out")
                resid = resid + replace.get(name, outputs[name])
        logits = resid @ f["unembed.W_U"] + f.get("unembed.b_U", torch.zeros(f["unembed.W_U"].shape[1]))
        return logits, outputs, patterns


def read_matrices(state: Mapping[str, torch.Tensor], n_layers: int, n_heads: int, compiled: set[str],
                  output_ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per node slot (`a{L}.h{H}` / `m{L}`), the [d_model, r] matrix of every residual direction a
    compiled component after it reads (queries, keys, values and MLP inputs of `compiled` nodes in
    later blocks; the MLP of the same block for a head) and the unembedding's output-token columns:
    what a distractor in that slot must not write to."""
    reads: list[tuple[int, int, torch.Tensor]] = []  # (block, 0 attention / 1 MLP, [d_model, r])
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn"
        for h in range(n_heads):
            if f"a{layer}.h{h}" in compiled:
                reads.append((layer, 0, torch.cat([state[f"{a}.{p}"][h, :, :-1] for p in ("W_Q", "W_K", "W_V")], 1)))
        if f"m{layer}" in compiled:
            reads.append((layer, 1, state[f"blocks.{layer}.mlp.W_in"]))
    unembed = state["unembed.W_U"][:, list(output_ids)]
    out = {}
    for layer in range(n_layers):
        for part, names in ((0, [f"a{layer}.h{h}" for h in range(n_heads)]), (1, [f"m{layer}"])):
            later = [m for (l, p, m) in reads if (l, p) > (layer, part)]
            for name in names:
                out[name] = torch.cat([*later, unembed], 1)
    return out
