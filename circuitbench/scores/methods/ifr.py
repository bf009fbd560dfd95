"""`ifr`: information flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically
Interpreting Language Models at Scale") over the component graph, as MIB scores it (EAP-IG's
`get_scores_information_flow_routes`). One forward of the clean prompts; no counterfactual, no
metric, no gradient.

A node input is a sum of terms: x_v = Σ_u a_u (+ the attention output biases, which belong to no
node). The importance of the edge u -> v at one position is the proximity of the source's term
to the whole, normalised over v's sources (the paper's eq.; the llm-transparency-tool's
`get_contributions` computes the same):

    prox(u, v) = max(‖x_v‖₁ − ‖x_v − a_u‖₁, 0),    imp(u, v) = prox(u, v) / Σ_u' prox(u', v)

so importances are ≥ 0 and sum to 1 over a destination's sources (0 where every proximity is 0:
MIB divides 0 by 0 there, the transparency tool floors each proximity at 1e-5). x_v is what the
node reads before its norm: the block input for a head's queries, keys and values, the stream
after attention for a sequential MLP (the block input for a parallel one), the last block's
output for the logits; a_u is the source's output (the input embedding, z_h · O_h with O_h the
head's output projection, an MLP's output; models/graph.py). The graph is position-blind: as
MIB does, the per-position importance is averaged over each prompt's tokens, then over prompts
(MIB's code: importance summed over the unpadded positions / the prompt's length, summed over
prompts / their number).

Attention heads (`heads` option):
- `same_position` (MIB): an edge into a head's query, key or value input is scored at the head's
  own position like every other edge, so a layer's heads and their q, k, v inputs share a column.
- `attention`: the paper decomposes an attention output through its pattern, y_i = Σ_j α_ij v_j O_h
  (the head's output at position i as one part per position j it reads). Here the key and value
  edges of head h are scored that way: c_ij = the proximity share of α_ij v_j O_h in y_i
  (normalised over j), and imp(u -> h<k|v>, i) = Σ_j c_ij · imp(u -> block input, j): a source
  counts where the head reads from, weighted by that position's part of the head's output. Queries
  are read at i only and keep the same-position score. This is our adaptation to a position-blind
  graph, not MIB's.

Where this differs from MIB's code: EAP-IG's input node reads the token embeddings only, so
in models with learned absolute positions (GPT-2) the position embedding belongs to no source
there; here the input node is the whole block-0 input (tokens + positions), as in every other
edge method of circuitbench.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.edges import node_outputs, valid_positions
from circuitbench.scores.interventions import BaseRun
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import IfrOptions
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput

CHUNK_ELEMENTS = 1 << 23  # parts × d_model elements per distance computation (bounds memory, ~32 MB in float32)


@dataclass(frozen=True)
class IfrRun:
    """One forward's sources and node inputs (pre-norm), all [batch, pos, ...]."""

    outputs: torch.Tensor  # [batch, pos, n_sources, d_model] every source's output (graph order)
    attention_inputs: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] what q, k, v read (block input)
    mlp_inputs: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] what each MLP reads (none: no MLPs)
    final: torch.Tensor  # [batch, pos, d_model] the logits' input (last block's output)
    patterns: list[torch.Tensor] | None = None  # [n_layers] x [batch, n_heads, query, key] (heads: attention)
    values: list[torch.Tensor] | None = None  # [n_layers] x [batch, pos, n_kv_heads, d_head]


def record_ifr_run(model: LoadedModel, tokens: torch.Tensor, patterns: bool = False) -> IfrRun:
    """One forward of `tokens` [batch, pos] keeping what IFR reads (patterns and values too if asked)."""
    n, seq = model.n_layers, model.has_mlp and not model.parallel_attn_mlp
    sites = [hooks.resid_pre(l) for l in range(n)] + [hooks.head_outputs(l) for l in range(n)]
    sites.append(hooks.resid_post(n - 1))
    if model.has_mlp:
        sites += [hooks.mlp_out(l) for l in range(n)] + ([hooks.resid_mid(l) for l in range(n)] if seq else [])
    if patterns:
        sites += [hooks.attention_pattern(l) for l in range(n)] + [hooks.projection("v", l) for l in range(n)]
    # the logits are never read: unembed one position only
    _, cache = model.run_with_cache(tokens, sites, [(hooks.unembed_in(), lambda x: x[:, :1])])
    resid = [cache[hooks.resid_pre(l)] for l in range(n)]
    run = BaseRun(resid=resid, z=[cache[hooks.head_outputs(l)] for l in range(n)],
                  mlp=[cache[hooks.mlp_out(l)] for l in range(n)] if model.has_mlp else None)
    mlp_inputs = ([cache[hooks.resid_mid(l)] for l in range(n)] if seq else resid) if model.has_mlp else []
    return IfrRun(outputs=node_outputs(model, run), attention_inputs=resid, mlp_inputs=mlp_inputs,
                  final=cache[hooks.resid_post(n - 1)],
                  patterns=[cache[hooks.attention_pattern(l)] for l in range(n)] if patterns else None,
                  values=[cache[hooks.projection("v", l)] for l in range(n)] if patterns else None)


def proximity(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """[..., n_parts] max(‖whole‖₁ − ‖whole − part‖₁, 0) for parts [..., n_parts, d] and whole [..., d]."""
    norm = whole.abs().sum(-1, keepdim=True)
    return (norm - (parts - whole.unsqueeze(-2)).abs().sum(-1)).clamp(min=0)


def shares(prox: torch.Tensor) -> torch.Tensor:
    """Proximities [..., n_parts] normalised to sum to 1 over the parts (0 where they are all 0)."""
    total = prox.sum(-1, keepdim=True)
    return torch.where(total > 0, prox / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(prox))


def source_shares(outputs: torch.Tensor, whole: torch.Tensor, upstream: int) -> torch.Tensor:
    """[batch, pos, upstream] imp(u -> v) per position for the first `upstream` sources of
    `outputs` [batch, pos, n_sources, d] into the node input `whole` [batch, pos, d]."""
    dtype = torch.float32 if whole.dtype in (torch.float16, torch.bfloat16) else whole.dtype
    per = max(1, CHUNK_ELEMENTS // max(1, whole.numel()))
    prox = torch.cat([proximity(outputs[:, :, s:min(s + per, upstream)].to(dtype), whole.to(dtype))
                      for s in range(0, upstream, per)], -1)
    return shares(prox)


def key_value_shares(model: LoadedModel, run: IfrRun, layer: int, head: int) -> torch.Tensor:
    """[batch, query, key] c_ij: the proximity share of α_ij v_j O_h in head h's output at i."""
    assert run.patterns is not None and run.values is not None
    w = model.attention_weights(layer)
    group = model.n_heads // max(1, run.values[layer].shape[2])
    pattern = run.patterns[layer][:, head]  # [batch, query, key]
    dtype = torch.float32 if pattern.dtype in (torch.float16, torch.bfloat16) else pattern.dtype
    moved = run.values[layer][:, :, head // group].to(dtype) @ w.output[head].to(dtype)  # [batch, key, d_model]
    whole = torch.einsum("bqk,bkd->bqd", pattern.to(dtype), moved)
    per = max(1, CHUNK_ELEMENTS // max(1, whole.numel()))
    prox = torch.cat([proximity(pattern[:, :, s:s + per, None].to(dtype) * moved[:, None, s:s + per], whole)
                      for s in range(0, pattern.shape[2], per)], -1)
    return shares(prox)


def batch_importance(model: LoadedModel, graph: ComponentGraph, run: IfrRun, valid: torch.Tensor,
                     heads: str = "same_position") -> torch.Tensor:
    """[n_src, n_dst] float64 Σ over the batch's prompts of each edge's importance averaged over the
    prompt's tokens (`valid` [batch, pos]: 1 at real tokens)."""
    out = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    weight = (valid / valid.sum(1, keepdim=True).clamp(min=1)).to(torch.float64)  # a mean over each prompt's tokens

    def per_prompt_mean(imp: torch.Tensor) -> torch.Tensor:  # [batch, pos, upstream] -> [upstream]
        return torch.einsum("bpu,bp->u", imp.to(torch.float64), weight).cpu()

    index = graph.destination_index
    for layer in range(model.n_layers):
        upstream = graph.n_upstream(f"a{layer}.h0<q>")
        imp = source_shares(run.outputs, run.attention_inputs[layer], upstream)
        out[:upstream, graph.block_destinations(layer, "q").start:graph.block_destinations(layer, "v").stop] = \
            per_prompt_mean(imp)[:, None]  # every query, key and value input reads the block input
        if heads == "attention":
            mixed = [per_prompt_mean(torch.einsum("bqk,bku->bqu", key_value_shares(model, run, layer, h).to(imp.dtype),
                                                  imp)) for h in range(model.n_heads)]
            for kind in "kv":  # a key-value group's input: the mean over the query heads that read it
                for j in range(graph.block_destinations(layer, kind).start, graph.block_destinations(layer, kind).stop):
                    out[:upstream, j] = torch.stack([mixed[h] for h in graph.destination_heads[j]]).mean(0)
        if model.has_mlp:
            upstream = graph.n_upstream(f"m{layer}")
            out[:upstream, index[f"m{layer}"]] = per_prompt_mean(
                source_shares(run.outputs, run.mlp_inputs[layer], upstream))
    out[:, index["logits"]] = per_prompt_mean(source_shares(run.outputs, run.final, len(graph.sources)))
    return out


def ifr(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = IfrOptions.model_validate(ctx.options)
    reason = model.residual_support()  # the proximities take each source's output as one term of x_v
    if reason is not None:
        raise CircuitbenchError(f"ifr cannot run on '{model.name}': {reason}.")
    graph = model.component_graph()
    total = torch.zeros(graph.real_edges.shape, dtype=torch.float64)
    batch: Batch
    for batch in data.batches(ctx.batch_size):
        run = record_ifr_run(model, batch.tokens, patterns=opts.heads == "attention")
        total += batch_importance(model, graph, run, valid_positions(batch, model.device), opts.heads)
        ctx.advance(len(batch))
    total, n = ctx.sum_shards((total, len(data)))
    scores = (total / max(n, 1)).numpy() * graph.real_edges
    return MethodOutput(edges=EdgeScores(graph, scores.astype(np.float64)),
                        settings={"method": "ifr", "heads": opts.heads, "ablation": "none (one clean forward)",
                                  "signed": False, "units": "the source's share of its destination's input "
                                  "(L1 proximity, normalised over the destination's sources)",
                                  "positions": "mean over each prompt's tokens, then over prompts"})
