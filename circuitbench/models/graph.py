"""The component graph of a model, named as EAP-IG and MIB name it (no torch: circuits and files
use it too).

Nodes, in forward order: `input` (the residual stream entering block 0: token + position
embeddings), `a{L}.h{H}` (one attention head's output, z_h · W_O[h]), `m{L}` (an MLP's output),
`logits` (reads the final residual stream). A node reads the sum of the outputs of every node
before it in the residual stream; an edge `u->v` is one such term. Attention heads have three
inputs (the residual copies their query, key and value projections read), so edges into a head
carry the input: `a0.h1->a2.h3<q>`, `<k>`, `<v>`.

Source indices follow EAP-IG's forward index (input, then per layer its heads then its MLP),
destination indices its backward index (per layer the heads' q, then k, then v inputs, then the
MLP; `logits` last), so an [n_src, n_dst] score matrix has EAP-IG's layout. Two things the
architecture decides: attention-only models have no `m` nodes, and in parallel-attention blocks
(GPT-NeoX, Pythia, GPT-J) the MLP reads the block input, so `a{L}.h*->m{L}` edges do not exist.

Attention output biases (b_O) belong to no node: they are the same in every run, part of every
later input, and never patched.

Grouped-query attention (Llama-3, Qwen2, Mistral, Gemma-2: the query heads of a group share one key
and one value head). The model computes one key and one value per group, so the graph's key and
value inputs are per group (`n_kv_heads` given): `a{L}.kv{G}<k>`, `a{L}.kv{G}<v>`, read by every
query head of group G (heads G·r … G·r + r − 1, r = n_heads / n_kv_heads); queries stay per head.
Per block: n_heads query inputs, then n_kv_heads key inputs, then n_kv_heads value inputs, then
the MLP. The "ungrouped" graph (`n_kv_heads` None) gives each query head its own k and v input:
EAP-IG's count on TransformerLens's `ungroup_grouped_query_attention` (MIB's Llama and Qwen
numbers), which the model then computes with per-query-head copies of its keys and values
(LoadedModel, `kv_graph="ungrouped"`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

QKV = ("q", "k", "v")
INPUT = "input"  # the input embedding's node
HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
KV_GROUP = re.compile(r"^a(\d+)\.kv(\d+)$")  # a key-value group's inputs under grouped-query attention
MLP = re.compile(r"^m(\d+)$")
DESTINATION = re.compile(r"^(a\d+\.h\d+)<([qkv])>$|^(a\d+\.kv\d+)<([kv])>$|^(m\d+|logits)$")
EDGE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+<[qkv]>|a\d+\.kv\d+<[kv]>|m\d+|logits)$")


@dataclass(frozen=True)
class ComponentGraph:
    """Nodes and edges of a transformer's residual computation (see the module docstring)."""

    n_layers: int
    n_heads: int
    has_mlp: bool = True
    parallel_attn_mlp: bool = False
    d_model: int | None = None
    n_kv_heads: int | None = None  # grouped-query attention: key and value inputs per group (module docstring)

    def __post_init__(self) -> None:
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")

    @classmethod
    def from_config(cls, cfg: dict[str, object] | object) -> ComponentGraph:
        """The graph of a `config()` dict (or an object with those attributes: a graph file's cfg)."""
        get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
        kv = get("n_key_value_heads", None)
        return cls(int(get("n_layers")), int(get("n_heads")), has_mlp=not get("attn_only", False),
                   parallel_attn_mlp=bool(get("parallel_attn_mlp", False)), d_model=get("d_model", None),
                   n_kv_heads=None if kv is None else int(kv))

    @property
    def grouped(self) -> bool:
        """Whether key and value inputs are per key-value group (fewer groups than heads)."""
        return self.n_kv_heads is not None and self.n_kv_heads != self.n_heads

    @property
    def kv_inputs(self) -> int:
        """Key (and value) inputs per block: one per group, or one per head."""
        return self.n_kv_heads if self.grouped else self.n_heads  # type: ignore[return-value]

    @property
    def per_block(self) -> int:
        """Destinations per block: query, key and value inputs, then the MLP."""
        return self.n_heads + 2 * self.kv_inputs + int(self.has_mlp)

    def block_destinations(self, layer: int, kind: str | None = None) -> slice:
        """The destination indices of block `layer` (kind "q", "k" or "v": of those inputs only; "mlp")."""
        start = layer * self.per_block
        if kind is None:
            return slice(start, start + self.per_block)
        offsets = {"q": (0, self.n_heads), "k": (self.n_heads, self.kv_inputs),
                   "v": (self.n_heads + self.kv_inputs, self.kv_inputs),
                   "mlp": (self.n_heads + 2 * self.kv_inputs, int(self.has_mlp))}
        first, count = offsets[kind]
        return slice(start + first, start + first + count)

    def group_heads(self, group: int) -> range:
        """The query heads that read key-value group `group`'s keys and values."""
        per = self.n_heads // self.kv_inputs
        return range(group * per, (group + 1) * per)

    # --- nodes ---------------------------------------------------------------------------
    @cached_property
    def sources(self) -> list[str]:
        """Nodes whose output enters the residual stream, in forward order (EAP-IG's forward index)."""
        out = [INPUT]
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return out

    @property
    def nodes(self) -> list[str]:
        return [*self.sources, "logits"]

    @cached_property
    def destinations(self) -> list[str]:
        """Node inputs, in EAP-IG's backward order: `a{L}.h{H}<q|k|v>` (grouped: `a{L}.h{H}<q>`,
        `a{L}.kv{G}<k|v>`), `m{L}`, `logits`."""
        out = []
        for layer in range(self.n_layers):
            out += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            if self.grouped:
                out += [f"a{layer}.kv{g}<{x}>" for x in "kv" for g in range(self.kv_inputs)]
            else:
                out += [f"a{layer}.h{h}<{x}>" for x in "kv" for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"m{layer}")
        return [*out, "logits"]

    @cached_property
    def source_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.sources)}

    @cached_property
    def destination_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.destinations)}

    def n_upstream(self, destination: str) -> int:
        """How many sources (a prefix of `sources`) feed this node input."""
        if destination == "logits":
            return len(self.sources)
        per_layer = self.n_heads + int(self.has_mlp)
        layer = destination_layer(destination)
        start = 1 + layer * per_layer
        if destination.startswith("a") or self.parallel_attn_mlp:
            return start
        return start + self.n_heads  # a sequential MLP reads its own layer's heads too

    # --- edges ---------------------------------------------------------------------------
    @cached_property
    def real_edges(self) -> np.ndarray:
        """[n_src, n_dst] bool: which (source, destination) pairs are edges."""
        mask = np.zeros((len(self.sources), len(self.destinations)), dtype=bool)
        for j, dst in enumerate(self.destinations):
            mask[: self.n_upstream(dst), j] = True
        return mask

    @cached_property
    def edges(self) -> list[str]:
        """Every edge name, destination by destination (then source in forward order)."""
        return [f"{self.sources[i]}->{self.destinations[j]}" for j, i in zip(*np.nonzero(self.real_edges.T))]

    @property
    def n_edges(self) -> int:
        return int(self.real_edges.sum())

    def edge_position(self, name: str) -> tuple[int, int]:
        """(source index, destination index) of an edge name; a name that is no edge of this graph
        raises ValueError."""
        m = EDGE.match(name)
        if not m:
            raise ValueError(f"'{name}' is not an edge name (e.g. 'input->a0.h1<q>', 'a0.h1->m2', 'm3->logits')")
        src, dst = m.groups()
        if src not in self.source_index or dst not in self.destination_index:
            raise ValueError(f"edge '{name}' names a node this model ({self.describe()}) does not have")
        i, j = self.source_index[src], self.destination_index[dst]
        if not self.real_edges[i, j]:
            raise ValueError(f"'{name}' is no edge of this model ({self.describe()}): {src} does not feed {dst}")
        return i, j

    def as_dict(self, matrix: np.ndarray) -> dict[str, float]:
        """{edge name: value} of every real edge of an [n_src, n_dst] matrix."""
        return {f"{self.sources[i]}->{self.destinations[j]}": float(matrix[i, j])
                for j, i in zip(*np.nonzero(self.real_edges.T))}

    # --- circuits --------------------------------------------------------------------------
    def prune(self, in_graph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(edges, source nodes) left when dangling components are removed, as EAP-IG and MIB prune:
        repeatedly drop nodes without an incoming edge (the input always has one) or without an
        outgoing one, and edges whose source or destination node was dropped (logits always stay)."""
        edges = in_graph & self.real_edges
        readers = self.destination_readers  # [n_dst, n_src]
        logits = ~readers.any(1)
        while True:
            outgoing = edges.any(1)
            incoming = (edges.any(0)[:, None] & readers).any(0)  # a key-value group's input feeds its heads
            incoming[0] = True
            nodes = outgoing & incoming
            dst_alive = logits | (readers & nodes[None, :]).any(1)  # alive while one of its readers is
            pruned = edges & nodes[:, None] & dst_alive[None, :]
            if (pruned == edges).all():
                return pruned, nodes
            edges = pruned

    @cached_property
    def destination_readers(self) -> np.ndarray:
        """[n_dst, n_src] bool: the nodes that read each input (one head or MLP; every query head of
        a key-value group for the group's inputs; none for the logits)."""
        readers = np.zeros((len(self.destinations), len(self.sources)), dtype=bool)
        for j, dst in enumerate(self.destinations):
            for node in self.destination_nodes(dst):
                readers[j, self.source_index[node]] = True
        return readers

    @cached_property
    def destination_heads(self) -> list[list[int]]:
        """Per destination, the heads (numbers within their block) that read it: one for a head's
        input, a group's heads for a key-value group's, none for an MLP or the logits."""
        return [[int(m.group(2)) for m in map(HEAD.match, self.destination_nodes(dst)) if m]
                for dst in self.destinations]

    def destination_nodes(self, destination: str) -> list[str]:
        """The nodes that read an input: 'a1.h2<k>' -> ['a1.h2'], 'a1.kv0<k>' -> its group's heads
        ['a1.h0', 'a1.h1'], 'm3' -> ['m3'], 'logits' -> []."""
        if destination == "logits":
            return []
        node = node_of(destination)
        group = KV_GROUP.match(node)
        if group:
            layer, g = int(group.group(1)), int(group.group(2))
            return [head_node(layer, h) for h in self.group_heads(g)]
        return [node]

    def describe(self) -> str:
        kind = "attention-only" if not self.has_mlp else "parallel attention+MLP" if self.parallel_attn_mlp else \
            "attention then MLP"
        grouped = f" ({self.n_kv_heads} key-value groups)" if self.grouped else ""
        return f"{self.n_layers} layers × {self.n_heads} heads{grouped}, {kind}"

    def config(self) -> dict[str, object]:
        """The `cfg` EAP-IG's Graph.from_json reads (n_layers, n_heads, parallel_attn_mlp, d_model)."""
        cfg: dict[str, object] = {"n_layers": self.n_layers, "n_heads": self.n_heads,
                                  "parallel_attn_mlp": self.parallel_attn_mlp, "d_model": self.d_model}
        if not self.has_mlp:
            cfg["attn_only"] = True
        if self.grouped:
            cfg["n_key_value_heads"] = self.n_kv_heads
        return cfg


def node_of(destination: str) -> str:
    """'a1.h2<k>' -> 'a1.h2'; 'm3' and 'logits' are their own node."""
    return destination.split("<", 1)[0]


def destination_layer(destination: str) -> int:
    node = node_of(destination)
    m = HEAD.match(node) or KV_GROUP.match(node) or MLP.match(node)
    if not m:
        raise ValueError(f"'{destination}' is not a head or MLP input")
    return int(m.group(1))


def head_node(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_node(layer: int) -> str:
    return f"m{layer}"
