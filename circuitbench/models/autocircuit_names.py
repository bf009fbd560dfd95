"""auto-circuit's names for the inputs of the component graph (UFO-101/auto-circuit): its
`PruneScores` are keyed by the module name of each destination, which is a HookedTransformer hook
point (`model_utils/transformer_lens_utils.py`, `factorized_dest_nodes` with separate_qkv=True):

    a{L}.h{H}<q|k|v>  ->  blocks.{L}.hook_{q|k|v}_input   (one row per head H)
    m{L}              ->  blocks.{L}.hook_mlp_in
    logits            ->  blocks.{n_layers - 1}.hook_resid_post   ("Resid End")

The names are TransformerLens's, so they live here (models/ is the one place that knows them);
circuits/autocircuit_files.py turns score matrices into that layout and back.
"""
from __future__ import annotations

import re
from typing import Literal

ModuleKind = Literal["q", "k", "v", "mlp", "resid_post", "attn_in", "resid_mid"]

_MODULE = re.compile(r"^blocks\.(\d+)\.hook_(q_input|k_input|v_input|mlp_in|resid_post|attn_in|resid_mid)$")
_KIND: dict[str, ModuleKind] = {"q_input": "q", "k_input": "k", "v_input": "v", "mlp_in": "mlp",
                                "resid_post": "resid_post", "attn_in": "attn_in", "resid_mid": "resid_mid"}


def head_input_module(qkv: str, layer: int) -> str:
    """The module whose patch mask holds the edges into one of the heads' q, k or v inputs."""
    return f"blocks.{layer}.hook_{qkv}_input"


def mlp_input_module(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_in"


def resid_post_module(layer: int) -> str:
    """The residual stream after block `layer` (a destination only of auto-circuit's unfactorized graph,
    except after the last block)."""
    return f"blocks.{layer}.hook_resid_post"


def logits_module(n_layers: int) -> str:
    """auto-circuit's "Resid End": the residual stream after the last block, read by the unembedding."""
    return resid_post_module(n_layers - 1)


LAYOUT = ("auto-circuit's PruneScores: {'blocks.L.hook_q_input' (and k, v): [n_heads, n_sources], "
          "'blocks.L.hook_mlp_in': [n_sources], 'blocks.<last>.hook_resid_post': [n_sources]}")


def parse_module(name: str) -> tuple[ModuleKind, int] | None:
    """(kind, layer) of an auto-circuit destination module name; None for any other name. `attn_in`
    (separate_qkv=False) and `resid_mid` (the unfactorized graph) are recognised so that callers can
    say why they do not map."""
    m = _MODULE.match(name)
    return (_KIND[m.group(2)], int(m.group(1))) if m else None
