"""The edge engine: node outputs, gradients at every node input, exact edge patching and the
forward of an edge circuit, over the component graph (models/graph.py).

What an edge is, exactly. A node's output enters the residual stream as one term: the input
embedding (`resid_pre.0`), a head's z_h times its slice of the output projection (the blocks'
output biases belong to no node: a constant in every later input), an MLP's output. A node
input is the residual stream at the point it reads it, pre-norm: block L's input for its heads'
queries, keys and values (each head has its own three copies), the stream after attention for a
sequential MLP (the block input for a parallel one), the last block's output for the logits.
Patching the edge u -> v replaces u's term in v's input only, (x_v − a_u + a_u'), and v then
reads norm(x_v − a_u + a_u') — the norm is recomputed on the patched input, which is what makes
edges non-linear.

- Gradients (`input_gradients`): one forward and backward gives ∂m/∂x_v for every node input v:
  per head from the gradient at its queries / keys / values through that head's projection
  weights and the vector-Jacobian product of the block's norm at x_v; for an MLP through its
  norm; for the logits directly. EAP's score of u -> v is then Σ (a_u' − a_u) · ∂m/∂x_v over
  prompts and positions.
- Exact patching (`patched_edge_metrics`): the batch re-run from the destination's block once per
  edge (copies stacked on the batch axis): the patched input goes into the head's query, key or
  value projection (the block's norm applied to it), and every other head of that block keeps its
  unpatched output, so only the input's readers see it: head h, or under grouped-query attention
  every head of the key-value group whose key or value input it is.
- Circuit forward (`circuit_metric`): every edge outside a circuit carries the counterfactual
  (or mean, or zero) output of its source, every edge inside it the source's output in this very
  run: each head's queries, and each key-value group's keys and values (each head's, in an
  ungrouped graph), are rebuilt from its own input with the block's norm and its projection
  weights (as split q/k/v inputs do in TransformerLens). `masked_logits`
  runs it under a soft mask in [0, 1] per edge, differentiably (edge_pruning trains one).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.hooks import Site
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import Batch
from circuitbench.scores.interventions import (
    BaseRun,
    changed_suffix_groups,
    end_only_logits,
    metric_per_copy,
    oriented_metric,
)
from circuitbench.scores.methods.context import MethodContext

QKV = ("q", "k", "v")


def check_edges(model: LoadedModel, what: str) -> None:
    """Refuse edge computations this model cannot run (before any compute)."""
    reason = model.edge_support()
    if reason is not None:
        raise CircuitbenchError(f"{what} cannot run on '{model.name}': {reason}.")


def valid_positions(batch: Batch, device: torch.device) -> torch.Tensor:
    """[batch, pos] 1.0 at real tokens, 0.0 at padding."""
    return (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(device)


def node_outputs(model: LoadedModel, run: BaseRun) -> torch.Tensor:
    """[batch, pos, n_sources, d_model] every source node's output in a run, in the graph's order."""
    parts = [run.resid[0][:, :, None]]
    for layer in range(model.n_layers):
        parts.append(model.attention_weights(layer).head_results(run.z[layer]))
        if run.mlp is not None:
            parts.append(run.mlp[layer][:, :, None])
    return torch.cat(parts, 2)


def output_deltas(model: LoadedModel, clean: BaseRun, corrupt: BaseRun, valid: torch.Tensor,
                  sources: slice | None = None) -> torch.Tensor:
    """[n_sources, batch, pos, d_model] every source's counterfactual minus clean output, 0 where
    `valid` [batch, pos] is 0 (padding). Source-major, so each source's slice is contiguous: the
    edge-score contraction is then one matrix product per block with no copy of this (large:
    ~280 MB for GPT-2 small at 32 × 18 tokens) tensor, and exact patching reads one slice per edge.
    `sources` (a step-1 slice of the graph's sources): only those rows, [len, batch, pos, d_model]
    (scores/chunking.py bounds memory with it)."""
    first = clean.resid[0]
    start, stop, _ = (sources or slice(None)).indices(len(model.component_graph().sources))
    out = first.new_empty((max(stop - start, 0), *first.shape))
    mask = valid[:, :, None].to(out.dtype)

    def put(row: int, count: int, value: Callable[[], torch.Tensor]) -> None:
        """Rows row..row+count of the full layout, those inside the slice, computed only when needed."""
        lo, hi = max(row, start), min(row + count, stop)
        if lo < hi:
            out[lo - start:hi - start] = value()[lo - row:hi - row]

    put(0, 1, lambda: ((corrupt.resid[0] - clean.resid[0]) * mask)[None])
    row = 1
    for layer in range(model.n_layers):
        # a head's output is linear in z (no bias), so the difference of outputs is the output of the difference
        put(row, model.n_heads, lambda _l=layer: (model.attention_weights(_l).head_results(
            corrupt.z[_l] - clean.z[_l]) * mask[:, :, None]).permute(2, 0, 1, 3))
        row += model.n_heads
        if clean.mlp is not None and corrupt.mlp is not None:
            put(row, 1, lambda _l=layer: ((corrupt.mlp[_l] - clean.mlp[_l]) * mask)[None])
            row += 1
    return out


# --- gradients at node inputs -------------------------------------------------------------------
@dataclass
class InputGradients:
    """One forward/backward's gradients at every node input, kept in the small pieces they come in
    (per-head gradients at queries, keys, values; at the MLP's normed input; at the final stream)
    with the residual streams the norms read; `of_layer` assembles ∂m/∂x_v per destination."""

    q: list[torch.Tensor]  # [n_layers] x [batch, pos, n_heads, d_head]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mlp: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] at the MLP's (normed) input
    resid: list[torch.Tensor]  # block inputs
    mid: list[torch.Tensor]  # what each MLP's norm reads (block input or the stream after attention)
    final: torch.Tensor  # [batch, pos, d_model] at the last block's output (the logits' input)
    metric: torch.Tensor  # [batch] the metric of this run (higher is better)
    run: BaseRun  # the run's block inputs, head and MLP outputs (its source nodes' outputs)


def input_gradients(model: LoadedModel, batch: Batch, ctx: MethodContext, first: Hook | None = None,
                    extra: list[Hook] | None = None) -> InputGradients:
    """∂(Σ metric)/∂(node inputs) on the batch's clean prompts, with `first` (a hook on the block-0
    input, e.g. an interpolated embedding) and `extra` hooks applied."""
    probes: dict[str, torch.Tensor] = {}
    saved: dict[str, torch.Tensor] = {}

    def probe(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def add(x: torch.Tensor) -> torch.Tensor:  # x + 0: the gradient at the probe is ∂m/∂x
            p = torch.zeros_like(x, requires_grad=True)
            probes[key] = p
            return x + p
        return add

    def save(key: str) -> Callable[[torch.Tensor], None]:
        def keep(x: torch.Tensor) -> None:
            saved[key] = x.detach()
        return keep

    n, seq = model.n_layers, model.has_mlp and not model.parallel_attn_mlp
    edits: list[Hook] = [first] if first is not None else []
    edits += list(extra or [])
    for l in range(n):
        edits.append((hooks.resid_pre(l), save(f"resid{l}")))
        edits += [(hooks.projection(x, l), probe(f"{x}{l}")) for x in QKV]
        edits.append((hooks.head_outputs(l), save(f"z{l}")))
        if model.has_mlp:
            if seq:
                edits.append((hooks.resid_mid(l), save(f"mid{l}")))
            edits += [(hooks.mlp_in(l), probe(f"mlp{l}")), (hooks.mlp_out(l), save(f"out{l}"))]
    edits.append((hooks.resid_post(n - 1), probe("final")))
    unembed, scored = end_only_logits(ctx.metric, batch)
    with model.frozen_weights(), torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, edits + unembed, grad=True)
        metric = oriented_metric(ctx.metric, logits, scored)
        keys = list(probes)
        grads = torch.autograd.grad(metric.sum(), [probes[k] for k in keys], allow_unused=True)
    g = {k: torch.zeros_like(probes[k]) if gr is None else gr.detach() for k, gr in zip(keys, grads)}
    resid = [saved[f"resid{l}"] for l in range(n)]
    return InputGradients(
        q=[g[f"q{l}"] for l in range(n)], k=[g[f"k{l}"] for l in range(n)], v=[g[f"v{l}"] for l in range(n)],
        mlp=[g[f"mlp{l}"] for l in range(n)] if model.has_mlp else [],
        resid=resid, mid=[saved[f"mid{l}"] if seq else resid[l] for l in range(n)] if model.has_mlp else [],
        final=g["final"], metric=metric.detach(),
        run=BaseRun(resid=resid, z=[saved[f"z{l}"] for l in range(n)], metric=metric.detach(),
                    mlp=[saved[f"out{l}"] for l in range(n)] if model.has_mlp else None))


def _norm_vjp(norm: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """∂/∂x of <norm(x), grad_out> for x [batch, pos, d] broadcast over grad_out's [k, batch, pos, d]."""
    with torch.enable_grad():
        xs = x.detach()[None].expand_as(grad_out).clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(norm(xs), xs, grad_outputs=grad_out.to(xs.dtype))
    return gx


def layer_input_gradients(model: LoadedModel, grads: InputGradients, layer: int) -> torch.Tensor:
    """[per_block, batch, pos, d_model] ∂m/∂x_v for block `layer`'s destinations, in the graph's
    order (every head's q input, then k, then v — per key-value group under grouped-query attention,
    whose keys and values come per group — then the MLP's input). Destination-major,
    so `accumulate_edge_scores` contracts it against the source-major deltas without a copy."""
    w = model.attention_weights(layer)
    post = torch.cat([w.project_back(kind, g[layer]).permute(2, 0, 1, 3)
                      for kind, g in zip(QKV, (grads.q, grads.k, grads.v))], 0)
    parts = [_norm_vjp(lambda x: model.normalize_attention_input(layer, x), grads.resid[layer], post)]
    if model.has_mlp:
        parts.append(_norm_vjp(lambda x: model.normalize_mlp_input(layer, x), grads.mid[layer],
                               grads.mlp[layer][None]))
    return torch.cat(parts, 0)


@dataclass
class DestinationGradients:
    """∂m/∂x_v of every node input, assembled: per block [3·n_heads (+1), batch, pos, d_model]
    (layer_input_gradients' layout) and at the logits' input [batch, pos, d_model]; a weighted
    sum over several gradient passes (EAP-IG's steps) when built with `add`."""

    per_layer: list[torch.Tensor]
    final: torch.Tensor

    @classmethod
    def zeros(cls) -> DestinationGradients:
        return cls([], torch.zeros(()))

    def add(self, model: LoadedModel, grads: InputGradients, weight: float = 1.0) -> None:
        """self += weight · (grads assembled per destination). The scores are linear in ∂m/∂x_v,
        so summing these first lets the steps share one contraction with the source outputs."""
        if not self.per_layer:
            self.per_layer = [weight * layer_input_gradients(model, grads, l) for l in range(model.n_layers)]
            self.final = weight * grads.final
            return
        for l, acc in enumerate(self.per_layer):  # one block's assembly alive at a time (bounded memory)
            acc += weight * layer_input_gradients(model, grads, l)
        self.final = self.final + weight * grads.final


def accumulate_edge_scores(model: LoadedModel, graph: ComponentGraph, delta: torch.Tensor,
                           grads: InputGradients | DestinationGradients, scores: torch.Tensor,
                           weight: float = 1.0, first_source: int = 0) -> None:
    """scores[u, v] += weight · Σ_{batch, pos} delta[u] · ∂m/∂x_v, block by block (only the sources
    upstream of each block are multiplied). `delta` is source-major (`output_deltas`): each block is
    one [upstream, batch·pos·d] × [batch·pos·d, destinations] product in the model's dtype (EAP-IG's
    einsum precision; the sum over batches is kept in float64). `delta` may hold a slice of the
    sources, from `first_source` on (output_deltas(sources=...)); blocks no source of it reaches are skipped."""
    per_layer = graph.per_block
    flat = delta.reshape(delta.shape[0], -1)  # a view: delta is contiguous
    last = first_source + flat.shape[0]
    for layer in range(model.n_layers):
        upstream = max(graph.n_upstream(dst) for dst in graph.destinations[layer * per_layer:(layer + 1) * per_layer])
        if min(upstream, last) <= first_source:
            continue
        g = grads.per_layer[layer] if isinstance(grads, DestinationGradients) else \
            layer_input_gradients(model, grads, layer)
        g = g.reshape(g.shape[0], -1).to(flat.dtype)  # [dst, batch·pos·d], a view
        block = flat[:min(upstream, last) - first_source] @ g.T
        scores[first_source:min(upstream, last), layer * per_layer:(layer + 1) * per_layer] += \
            weight * block.double().cpu()
    scores[first_source:last, -1] += weight * (flat @ grads.final.reshape(-1).to(flat.dtype)).double().cpu()


# --- exact edge patching ------------------------------------------------------------------------
def edge_layer(graph: ComponentGraph, j: int, n_layers: int) -> int:
    """The block a destination input belongs to (the logits: the last block, whose output they read)."""
    dst = graph.destinations[j]
    return n_layers - 1 if dst == "logits" else int(dst[1:].split(".")[0].split("<")[0])


def patched_edge_metrics(model: LoadedModel, graph: ComponentGraph, batch: Batch, base: BaseRun,
                         delta: torch.Tensor, edges: list[tuple[int, int]], ctx: MethodContext,
                         first_source: int = 0) -> torch.Tensor:
    """[len(edges)] sum over the batch's prompts of the metric when only the edge (source index,
    destination index) carries `delta[source]` (`output_deltas`: the source's counterfactual minus
    its output) on top of the unpatched run `base`. Edges into one block share forwards that start at that block.
    `delta` may hold a slice of the sources from `first_source` on (every edge's source inside it)."""
    out = torch.zeros(len(edges), dtype=torch.float64)
    by_layer: dict[int, list[tuple[int, int, int]]] = {}
    for k, (i, j) in enumerate(edges):
        by_layer.setdefault(edge_layer(graph, j, model.n_layers), []).append((k, i, j))
    parallel = model.parallel_attn_mlp
    # forwards start where the first of these edges' deltas is not zero (a counterfactual's shared prefix)
    parts = changed_suffix_groups(model, batch, (delta[i - first_source] for i in {i for i, _ in edges}), ctx.metric)
    for layer, items in sorted(by_layer.items()):
        for part in parts:
            resid, z_base = part.cut(base.resid[layer]), part.cut(base.z[layer])
            mids: dict[int, torch.Tensor] = {}

            def edit(x: torch.Tensor, item, site: Site, _layer=layer, _resid=resid, _z=z_base, _mids=mids,
                     _cut=part.cut) -> None:
                k, i, j = item
                i -= first_source
                dst = graph.destinations[j]
                d = _cut(delta[i])
                if dst == "logits":
                    if site.kind == "resid_post":
                        x += d.to(x.dtype)
                elif dst.startswith("a"):
                    kind = dst[-2]
                    if site.kind == f"{kind}_in":
                        x[:] = model.normalize_attention_input(_layer, _resid + d).to(x.dtype)
                    elif site.kind == "z":  # only its readers (head h, or a key-value group's heads) read it
                        readers = graph.destination_heads[j]
                        mine = x[:, :, readers].clone()
                        x[:] = _z.to(x.dtype)
                        x[:, :, readers] = mine
                elif site.kind == "resid_mid":
                    _mids[k] = x.clone()
                elif site.kind == "mlp_in":
                    pre = _resid if parallel else _mids.pop(k)  # popped: one copy alive per edge in flight
                    x[:] = model.normalize_mlp_input(_layer, pre + d.to(pre.dtype)).to(x.dtype)

            sites = [hooks.projection_input(x, layer) for x in QKV] + [hooks.head_outputs(layer)]
            if model.has_mlp:
                sites += ([] if parallel else [hooks.resid_mid(layer)]) + [hooks.mlp_in(layer)]
            if layer == model.n_layers - 1:
                sites.append(hooks.resid_post(layer))
            values = metric_per_copy(model, part.batch, ctx.metric, layer, resid, sites, items, edit,
                                     prefix=part.prefix)
            for row, (k, _, _) in enumerate(items):
                out[k] += values[row].sum()
    return out


# --- the forward of an edge circuit -------------------------------------------------------------
def circuit_metric(model: LoadedModel, graph: ComponentGraph, batch: Batch, outside: torch.Tensor,
                   replacement: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
    """[batch] the metric with every edge marked in `outside` ([n_src, n_dst] bool) carrying its
    source's `replacement` output ([batch, pos, n_src, d_model]: the counterfactual run's, a mean,
    zeros) and every other edge its source's output in this run."""
    logits, scored = circuit_logits(model, graph, batch, outside, replacement, ctx)
    return oriented_metric(ctx.metric, logits, scored)


def masked_logits(model: LoadedModel, graph: ComponentGraph, batch: Batch, mask: torch.Tensor,
                  replacement: torch.Tensor, ctx: MethodContext) -> tuple[torch.Tensor, Batch]:
    """The circuit forward under a soft edge mask ([n_src, n_dst] floats in [0, 1], entries off the
    graph's edges ignored): destination v reads Σ_u mask_uv·a_u + (1 − mask_uv)·a'_u, a_u the
    source's output in this run, a'_u its `replacement`; differentiable in `mask` when it requires a
    gradient (the weights get none). A 0/1 mask is the edge circuit of its ones (circuit_metric). Returns (logits, the
    batch they are scored on), as `circuit_logits`."""
    real = torch.from_numpy(graph.real_edges).to(mask.device, mask.dtype)
    with model.frozen_weights(), torch.enable_grad():
        return circuit_logits(model, graph, batch, real * (1 - mask), replacement, ctx, grad=True)


def circuit_logits(model: LoadedModel, graph: ComponentGraph, batch: Batch, outside: torch.Tensor,
                   replacement: torch.Tensor, ctx: MethodContext, grad: bool = False,
                   spans: torch.Tensor | None = None) -> tuple[torch.Tensor, Batch]:
    """(logits, the batch they are scored on) of the circuit forward (circuit_metric): for answer
    metrics only END is unembedded ([batch, 1, d_vocab], the batch re-indexed: end_only_logits).
    `outside` may hold weights w in [0, 1] instead of bools: destination v then reads x_v +
    Σ_u w_uv·(replacement_u − live_u) (masked_logits); `grad`: the differentiable path, which keeps
    the autograd graph when `outside` requires a gradient. With `spans` ([batch, pos] span index of
    every token, −1 at padding) `outside` is [n_spans, n_src, n_dst]: a destination at a position of
    span s reads outside[s] (per-span edge circuits, circuits/span_circuits.py)."""
    assert spans is None or not grad, "per-span circuits have no differentiable path"
    n = model.n_layers
    per_layer = graph.per_block
    out_mask = outside.to(model.device)
    live: list[torch.Tensor] = []  # this run's source outputs so far, [batch, pos, d_model] each
    resid_in: dict[int, torch.Tensor] = {}
    dtype = replacement.dtype

    diffs: dict[int, torch.Tensor] = {}  # replacement − live over the sources so far: a block's q, k, v share it
    # With `grad` the differences are kept source-major, one piece per block as its outputs appear, and
    # contracted piece by piece: re-stacking every source at every block (and that stack's backward)
    # was ~90 % of a trained-mask step on GPT-2 small.
    pieces: list[torch.Tensor] = []  # [k, batch·pos·d_model] replacement − live of the next k sources
    blocks: dict[int, torch.Tensor | None] = {}  # grad: a block's q, k, v shifts, [batch, pos, 3·n_heads, d]

    def add(outputs: torch.Tensor) -> None:
        """The next sources' outputs in this run, [batch, pos, k, d_model]."""
        start = len(live)
        live.extend(outputs[:, :, i] for i in range(outputs.shape[2]))
        if grad:
            new = replacement[:, :, start:len(live)] - outputs.to(dtype)
            pieces.append(new.permute(2, 0, 1, 3).reshape(len(live) - start, -1))

    def shift(j0: int, j1: int) -> torch.Tensor | None:
        """Σ_u outside[u, j] · (replacement_u − live_u) for destinations j0..j1: [batch, pos, j1 − j0, d]."""
        mask = out_mask[..., : len(live), j0:j1].to(dtype)
        if not mask.requires_grad and not bool(mask.any()):  # a trained mask keeps its gradient at 1
            return None
        if grad:
            b, p, _, d = replacement.shape
            moved, start = mask[: len(pieces[0])].T @ pieces[0], len(pieces[0])
            for piece in pieces[1:]:
                moved = torch.addmm(moved, mask[start:start + len(piece)].T, piece)
                start += len(piece)
            return moved.view(j1 - j0, b, p, d).permute(1, 2, 0, 3)
        if len(live) not in diffs:
            diffs.clear()
            diffs[len(live)] = replacement[:, :, : len(live)] - torch.stack(live, 2).to(dtype)
        if spans is not None:  # each position reads its own span's mask
            return sum(torch.einsum("bpud,uj->bpjd", diffs[len(live)], mask[s])
                       * (spans == s).to(mask.device, dtype)[:, :, None, None] for s in range(mask.shape[0]))
        return torch.einsum("bpud,uj->bpjd", diffs[len(live)], mask)

    def on_resid_pre(layer: int) -> Callable[[torch.Tensor], None]:
        def record(x: torch.Tensor) -> None:
            resid_in[layer] = x
            if layer == 0:
                add(x[:, :, None])
        return record

    def on_projection(layer: int, kind: str) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def rebuild(q: torch.Tensor) -> torch.Tensor | None:  # q: [batch, pos, n_heads, d_head]
            mine = graph.block_destinations(layer, kind)  # each head's (grouped keys, values: each group's) input
            if grad:  # one contraction for the block's queries, keys and values, read by all three
                if layer not in blocks:
                    blocks.clear()
                    block = graph.block_destinations(layer)
                    blocks[layer] = shift(block.start, graph.block_destinations(layer, "v").stop)
                moved = blocks[layer]
                offset = mine.start - layer * per_layer
                moved = None if moved is None else moved[:, :, offset:offset + mine.stop - mine.start]
            else:
                moved = shift(mine.start, mine.stop)
            if moved is None:
                return None
            x = resid_in[layer][:, :, None].to(dtype) + moved
            normed = model.normalize_attention_input(layer, x)
            return model.attention_weights(layer).project(kind, normed).to(q.dtype)
        return rebuild

    def on_z(layer: int) -> Callable[[torch.Tensor], None]:
        def record(z: torch.Tensor) -> None:
            add(model.attention_weights(layer).head_results(z))
        return record

    def on_mlp_read(layer: int) -> Callable[[torch.Tensor], None]:
        def record(x: torch.Tensor) -> None:
            resid_in[-1 - layer] = x
        return record

    def on_mlp_in(layer: int) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def rebuild(y: torch.Tensor) -> torch.Tensor | None:
            j = graph.block_destinations(layer, "mlp").start
            upstream = graph.n_upstream(graph.destinations[j])
            moved = shift(j, j + 1) if len(live) >= upstream else None
            if moved is None:
                return None
            pre = resid_in[layer] if model.parallel_attn_mlp else resid_in[-1 - layer]
            return model.normalize_mlp_input(layer, pre.to(dtype) + moved[:, :, 0]).to(y.dtype)
        return rebuild

    def on_mlp_out(x: torch.Tensor) -> None:
        add(x[:, :, None])

    def on_final(x: torch.Tensor) -> torch.Tensor | None:
        moved = shift(out_mask.shape[-1] - 1, out_mask.shape[-1])
        return None if moved is None else x + moved[:, :, 0].to(x.dtype)

    edits: list[Hook] = []
    for l in range(n):
        edits.append((hooks.resid_pre(l), on_resid_pre(l)))
        edits += [(hooks.projection(x, l), on_projection(l, x)) for x in QKV]
        edits.append((hooks.head_outputs(l), on_z(l)))
        if model.has_mlp:
            if not model.parallel_attn_mlp:
                edits.append((hooks.resid_mid(l), on_mlp_read(l)))
            edits += [(hooks.mlp_in(l), on_mlp_in(l)), (hooks.mlp_out(l), on_mlp_out)]
    edits.append((hooks.resid_post(n - 1), on_final))
    unembed, scored = end_only_logits(ctx.metric, batch)
    return model.run_with_hooks(batch.tokens, edits + unembed, grad=grad and out_mask.requires_grad), scored
