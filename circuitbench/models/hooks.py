"""The one hook-name grammar: sites in the forward pass, named by what they hold.

A `Site` is what a method asks for ("head outputs at layer 3"); only this package turns it into
a TransformerLens hook name. Its text form (`z.3`, `resid_pre.0`, `embed`) also keys cached
activations.

    embed          token embeddings               [batch, pos, d_model]
    resid_pre.L    residual stream into block L   [batch, pos, d_model]
    q_in.L         input of the query projection   [batch, pos, d_model] (after the block's first norm;
    k_in.L, v_in.L   key / value projections          replacing one changes only that projection)
    q.L, k.L, v.L  queries / keys / values         [batch, pos, n_heads (k, v: key-value heads), d_head]
                                                   (before rotary positions)
    z.L            attention head outputs          [batch, pos, n_heads, d_head] (before W_O)
    pattern.L      attention patterns              [batch, n_heads, query, key]
    attn_out.L     attention output of block L     [batch, pos, d_model]
    resid_mid.L    residual stream between attention and MLP (blocks that run them in sequence)
    mlp_in.L       input of the MLP                [batch, pos, d_model] (after the block's second norm)
    mlp_out.L      MLP output of block L           [batch, pos, d_model]
    resid_post.L   residual stream out of block L  [batch, pos, d_model]
    unembed_in     input of the unembedding        [batch, pos, d_model]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SiteKind = Literal["embed", "resid_pre", "q_in", "k_in", "v_in", "q", "k", "v", "z", "pattern", "attn_out",
                   "resid_mid", "mlp_in", "mlp_out", "resid_post", "unembed_in"]
# Where a native toy model can take Gaussian noise while training (models/toy.py, output_modules): token
# embeddings, each attention layer's output, the residual stream after each block.
NativeSite = Literal["embed", "attn_out", "resid"]
PER_LAYER: frozenset[str] = frozenset({"resid_pre", "q_in", "k_in", "v_in", "q", "k", "v", "z", "pattern", "attn_out",
                                       "resid_mid", "mlp_in", "mlp_out", "resid_post"})

# TransformerLens 4 bridge compatibility names; the bridge may rename its own hook points, so
# nothing is ever keyed on hook.name.
_TL_NAMES: dict[str, str] = {
    "embed": "hook_embed",
    "resid_pre": "blocks.{layer}.hook_in",
    "q_in": "blocks.{layer}.attn.q.hook_in",
    "k_in": "blocks.{layer}.attn.k.hook_in",
    "v_in": "blocks.{layer}.attn.v.hook_in",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_out": "blocks.{layer}.attn.hook_out",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "mlp_in": "blocks.{layer}.mlp.hook_in",
    "mlp_out": "blocks.{layer}.mlp.hook_out",
    "resid_post": "blocks.{layer}.hook_out",
    "unembed_in": "unembed.hook_in",
}


@dataclass(frozen=True, order=True)
class Site:
    kind: SiteKind
    layer: int | None = None

    def __post_init__(self) -> None:
        if (self.kind in PER_LAYER) != (self.layer is not None):
            raise ValueError(f"site '{self.kind}' {'needs' if self.kind in PER_LAYER else 'takes no'} layer")

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @classmethod
    def parse(cls, text: str) -> "Site":
        kind, _, layer = text.partition(".")
        return cls(kind, int(layer) if layer else None)  # type: ignore[arg-type]


def embed() -> Site:
    return Site("embed")


def resid_pre(layer: int) -> Site:
    return Site("resid_pre", layer)


def head_outputs(layer: int) -> Site:
    return Site("z", layer)


def attention_pattern(layer: int) -> Site:
    return Site("pattern", layer)


def attn_out(layer: int) -> Site:
    return Site("attn_out", layer)


def projection_input(kind: str, layer: int) -> Site:
    """The input of the query, key or value projection (kind "q", "k" or "v") of block `layer`."""
    return Site(f"{kind}_in", layer)  # type: ignore[arg-type]


def projection(kind: str, layer: int) -> Site:
    """Queries, keys or values (kind "q", "k" or "v") of block `layer`, per head."""
    return Site(kind, layer)  # type: ignore[arg-type]


def resid_mid(layer: int) -> Site:
    return Site("resid_mid", layer)


def mlp_in(layer: int) -> Site:
    return Site("mlp_in", layer)


def mlp_out(layer: int) -> Site:
    return Site("mlp_out", layer)


def resid_post(layer: int) -> Site:
    return Site("resid_post", layer)


def unembed_in() -> Site:
    return Site("unembed_in")


def tl_hook_name(site: Site) -> str:
    """The TransformerLens bridge hook point of a site (models/ only)."""
    return _TL_NAMES[site.kind].format(layer=site.layer)
