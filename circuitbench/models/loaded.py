"""LoadedModel: the one facade the rest of circuitbench runs models through.

Methods ask it for sites of the forward pass ("head outputs at layer l", "the residual stream
before block l", "attention patterns", "MLP output at layer l"; see hooks.py) and never see
TransformerLens. `bridge` stays public for notebook users who want TransformerLens directly.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from circuitbench.models.forward_meter import ForwardMeter
from circuitbench.models.graph import ComponentGraph
from circuitbench.models.hooks import Site, attn_out, embed, mlp_out, resid_post, resid_pre, tl_hook_name
from circuitbench.models.prefix import KeyValuePrefix, cache_reaches_attention, record_prefix
from circuitbench.models.resume import BlockFormat, block_output_formats, skip_blocks_before
from circuitbench.models.smeared_keys import SmearedKeyProjection
from circuitbench.prompts.tokenization import Vocabulary

logger = logging.getLogger(__name__)
# The prefix self-check's long sequence: past the 256-token local-attention window of GPT-Neo's blocks
PREFIX_CHECK_LENGTH = 320
# Bridge names of norms applied to a block's attention / MLP output before the residual add (Gemma-2/3)
POST_NORMS = ("ln1_post", "ln2_post")
Init = Literal["pretrained", "random"]
DeviceMap = Literal["auto"]
KvGraph = Literal["grouped", "ungrouped"]
# A hook sees the activation at its site and returns its replacement (None: keep it as it is).
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
Hook = tuple[Site, HookFn]


@dataclass(frozen=True)
class AttentionWeights:
    """One block's attention weights per head, in TransformerLens's layout: queries of head h are
    norm(x) @ query[h] + query_bias[h] (keys, values alike), its output z_h @ output[h]. Under
    grouped-query attention key / value are given per query head (each its group's copy)."""

    query: torch.Tensor  # [n_heads, d_model, d_head]
    key: torch.Tensor
    value: torch.Tensor
    query_bias: torch.Tensor  # [n_heads, d_head] (zeros where the model has no bias)
    key_bias: torch.Tensor
    value_bias: torch.Tensor
    output: torch.Tensor  # [n_heads, d_head, d_model]
    output_bias: torch.Tensor  # [d_model]

    def projection(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [n_heads, d_model, d_head], bias [n_heads, d_head]) of the query, key or value projection."""
        return {"q": (self.query, self.query_bias), "k": (self.key, self.key_bias),
                "v": (self.value, self.value_bias)}[kind]

    def head_results(self, z: torch.Tensor) -> torch.Tensor:
        """[batch, pos, n_heads, d_model] each head's term in the residual stream, z_h · W_O[h] (no bias)."""
        return torch.einsum("bphe,hed->bphd", z, self.output.to(z.dtype))

    def _for(self, kind: str, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection for `heads` heads on the head axis: every query head's, or, with fewer
        (grouped-query keys / values: one per group), each group's (its heads share one copy)."""
        w, b = self.projection(kind)
        step = w.shape[0] // heads
        return (w, b) if step == 1 else (w[::step], b[::step])

    def project(self, kind: str, normed: torch.Tensor) -> torch.Tensor:
        """[batch, pos, heads, d_head] queries / keys / values of each head (or key-value group)
        from its own (normed) input [batch, pos, heads, d_model]."""
        w, b = self._for(kind, normed.shape[2])
        return torch.einsum("bphd,hde->bphe", normed, w.to(normed.dtype)) + b.to(normed.dtype)

    def project_back(self, kind: str, grad: torch.Tensor) -> torch.Tensor:
        """[batch, pos, heads, d_model] a gradient at each head's (or key-value group's) queries /
        keys / values [batch, pos, heads, d_head] taken back to its (normed) input."""
        w, _ = self._for(kind, grad.shape[2])
        return torch.einsum("bphe,hde->bphd", grad.to(w.dtype), w)


@dataclass
class LoadedModel:
    """A loaded model with what the rest of the harness needs to know about it."""

    bridge: TransformerBridge
    vocab: Vocabulary
    unk_id: int | None
    name: str
    source: str
    revision: str | None
    init: Init
    dtype: str
    n_params: int
    tokenizer_source: str
    device: torch.device  # where inputs go (under a device map: the token embedding's device)
    load_seconds: float = 0.0
    device_map: DeviceMap | None = None  # "auto": accelerate spread the HF model over the devices
    init_seed: int | None = None  # the weights' seed under --init random (part of their identity)
    fingerprint: str = ""  # models/fingerprint.py: what identifies the weights beyond the name
    # grouped-query attention: "ungrouped" computes keys and values per query head (models/ungrouped.py),
    # so the component graph gives each query head its own k and v input (EAP-IG's, MIB's edge counts)
    kv_graph: KvGraph = "grouped"
    _formats: list[BlockFormat] | None = field(default=None, repr=False)
    _attention: dict[int, AttentionWeights] = field(default_factory=dict, repr=False)
    _prefix_ok: bool | None = field(default=None, repr=False)
    _meter: ForwardMeter | None = field(default=None, repr=False)  # metered(): the forwards being counted

    # --- shape -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_head(self) -> int:
        return int(self.bridge.cfg.d_head)

    @property
    def d_vocab(self) -> int:
        return int(self.bridge.cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    def has_site(self, site: Site) -> bool:
        """Whether the model computes this site (attention-only models have no MLP output)."""
        return tl_hook_name(site) in self.bridge.hook_dict

    @property
    def n_kv_heads(self) -> int:
        """Key-value heads per block (fewer than n_heads under grouped-query attention)."""
        return int(getattr(self.bridge.cfg, "n_key_value_heads", None) or self.n_heads)

    @property
    def parallel_attn_mlp(self) -> bool:
        """Whether each block's MLP reads the block input, as its attention does (GPT-NeoX, Pythia)."""
        return bool(getattr(self.bridge.cfg, "parallel_attn_mlp", False))

    @property
    def has_mlp(self) -> bool:
        return self.has_site(mlp_out(0))

    def component_graph(self) -> ComponentGraph:
        """Nodes (input, heads, MLPs, logits) and edges of this model's forward (models/graph.py):
        under grouped-query attention key and value inputs per group, unless the model was loaded
        with kv_graph="ungrouped" (its keys and values then computed per query head)."""
        kv = self.n_kv_heads
        return ComponentGraph(self.n_layers, self.n_heads, has_mlp=self.has_mlp,
                              parallel_attn_mlp=self.parallel_attn_mlp, d_model=self.d_model,
                              n_kv_heads=kv if kv != self.n_heads else None)

    def residual_support(self) -> str | None:
        """Why this model's node outputs do not enter the residual stream as one term each (None:
        they do), which every edge computation assumes (a node input is the sum of its sources'
        outputs). Gemma-2/3 normalise each attention and MLP output before adding it
        (post-attention / post-feedforward RMSNorm): the stream gets norm(Σ_h z_h·W_O[h] + b_O), not
        a sum of per-head terms, so no head's output is one term of it."""
        for block in self.bridge.blocks:
            post = [name for name in POST_NORMS if getattr(block, name, None) is not None]
            if post:
                return (f"its blocks normalise the attention and MLP outputs before adding them to the residual "
                        f"stream (post-norms {', '.join(post)}, as Gemma-2), so a head's or MLP's output is not one "
                        "term of a later node's input; node methods (e.g. activation_patching, attribution_patching, "
                        "nap, ablation) run on it")
        return None

    def edge_support(self) -> str | None:
        """Why edge-level computations cannot run on this model (None: they can): node outputs that
        are no terms of the residual stream (residual_support), or key projections that mix
        positions (smeared keys), which the rebuild of each head's queries, keys and values from its
        own input with the block's norm and projection weights does not fit."""
        reason = self.residual_support()
        if reason is not None:
            return reason
        for block in self.bridge.blocks:
            if isinstance(getattr(block.attn.k, "original_component", None), SmearedKeyProjection):
                return "its key projections smear keys over positions (not one linear map per position)"
        return None

    def attention_weights(self, layer: int) -> AttentionWeights:
        """Block `layer`'s attention weights per head (detached; see AttentionWeights)."""
        if layer not in self._attention:
            attn = self.bridge.blocks[layer].attn
            def heads(w: torch.Tensor) -> torch.Tensor:  # a key-value head's weights repeated for its query heads
                w = w.detach()
                return w.repeat_interleave(self.n_heads // w.shape[0], dim=0) if w.shape[0] != self.n_heads else w

            def bias(b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
                return torch.zeros(like.shape[0], like.shape[2], dtype=like.dtype, device=like.device) if b is None \
                    else heads(b.reshape(-1, like.shape[2]))

            W_Q, W_K, W_V = heads(attn.W_Q), heads(attn.W_K), heads(attn.W_V)
            W_O = attn.W_O.detach()
            b_O = attn.b_O.detach() if attn.b_O is not None else torch.zeros(W_O.shape[-1], dtype=W_O.dtype,
                                                                              device=W_O.device)
            self._attention[layer] = AttentionWeights(query=W_Q, key=W_K, value=W_V, query_bias=bias(attn.b_Q, W_Q),
                                                      key_bias=bias(attn.b_K, W_K), value_bias=bias(attn.b_V, W_V),
                                                      output=W_O, output_bias=b_O)
        return self._attention[layer]

    def normalize_attention_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """What block `layer`'s query/key/value projections read, given the residual stream `x`
        [..., d_model]: the block's first norm applied to it (the identity in models without one)."""
        return _norm(self.bridge.blocks[layer], "ln1", x)

    def normalize_mlp_input(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """What block `layer`'s MLP reads, given its residual input `x` (the block input in parallel
        blocks, the stream after attention otherwise): the block's second norm applied to it. A
        parallel block with one norm (Phi, GPT-J) feeds its attention and MLP the same normed input."""
        block = self.bridge.blocks[layer]
        shared = self.parallel_attn_mlp and getattr(block, "ln2", None) is None
        return _norm(block, "ln1" if shared else "ln2", x)

    def token_embeddings(self) -> torch.Tensor:
        """[d_vocab, d_model] the token embedding matrix (detached)."""
        return self.bridge.embed.W_E.detach()

    # --- forward passes --------------------------------------------------------------------
    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, pos, d_vocab] logits of a plain forward (no gradients)."""
        self._count(tokens)
        with torch.inference_mode():
            return self.bridge(tokens.to(self.device))

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        hooks: Sequence[Hook] = (),
        *,
        resume: tuple[int, torch.Tensor] | None = None,
        grad: bool = False,
        prefix: KeyValuePrefix | None = None,
    ) -> torch.Tensor:
        """[batch, pos, d_vocab] logits with `hooks` editing their sites.

        `resume=(layer, resid)` starts the forward at block `layer` with `resid` [batch, pos,
        d_model] as its input: blocks before it do no work (what makes exact patching fast).
        `prefix` (see prefix_forwards): `tokens` are the positions after it, the prefix's keys and
        values stand in for its own positions (its batch tiled to `tokens`' rows, copy-major).
        `grad=True` keeps the autograd graph (attribution methods); otherwise inference mode."""
        tl_hooks = [(tl_hook_name(site), _as_tl_hook(fn)) for site, fn in hooks]
        skip = nullcontext()
        if resume is not None:
            layer, resid = resume
            tl_hooks.insert(0, (tl_hook_name(resid_pre(layer)), _replacement(resid)))
            skip = skip_blocks_before(self.bridge, layer, self.block_formats())
        extra: dict[str, Any] = {}
        cached = nullcontext()
        if prefix is not None:
            extra["past_key_values"] = prefix.cache(tokens.shape[0] // prefix.batch)
            cached = cache_reaches_attention(self.bridge)
        self._count(tokens, 1.0 if resume is None else (self.n_layers - resume[0]) / self.n_layers, grad)
        with (nullcontext() if grad else torch.inference_mode()), skip, cached:
            return self.bridge.run_with_hooks(tokens.to(self.device), fwd_hooks=tl_hooks, **extra)

    def key_value_prefix(self, tokens: torch.Tensor) -> KeyValuePrefix:
        """Every block's keys and values on `tokens` [batch, length], for forwards of the positions
        after them (run_with_hooks's `prefix`)."""
        self._count(tokens)
        return record_prefix(self.bridge, tokens.to(self.device))

    def prefix_forwards(self) -> bool:
        """Whether forwards from a key/value prefix reproduce this model's full forward (checked once
        on random tokens, resuming at block 0 and at block 1 as exact patching does, on a short
        sequence and on a long one that outlasts local-attention windows): true for causal attention
        whose cache the bridge honours (HF models); false where the bridge keeps no cache (the native
        toys, TransformerLens-format checkpoints) and for attention that also looks ahead."""
        if self._prefix_ok is None:
            generator = torch.Generator().manual_seed(0)
            long = max(8, min(self.n_ctx or PREFIX_CHECK_LENGTH, PREFIX_CHECK_LENGTH))
            cases = [(6, 3), (long, long - 3)]  # (sequence length, prefix length)
            try:
                with self.unmetered():  # the self-check is no method's work
                    self._prefix_ok = all(self._prefix_reproduces(layer, length, cut, generator) for length, cut
                                          in cases for layer in sorted({0, min(1, self.n_layers - 1)}))
            except Exception as exc:  # noqa: BLE001 - any failure means: compute every position
                logger.debug("key/value prefixes disabled on %s: %s", self.name, exc)
                self._prefix_ok = False
        return self._prefix_ok

    def _prefix_reproduces(self, layer: int, length: int, cut: int, generator: torch.Generator) -> bool:
        """Whether resuming at `layer` after a `cut`-token prefix gives the full forward's logits."""
        tokens = torch.randint(0, max(1, min(self.d_vocab, 1000)), (2, length), generator=generator)
        full, cache = self.run_with_cache(tokens, [resid_pre(layer)])
        part = self.run_with_hooks(tokens[:, cut:], resume=(layer, cache[resid_pre(layer)][:, cut:]),
                                   prefix=self.key_value_prefix(tokens[:, :cut]))
        scale = 1.0 + float(full.abs().max())
        return bool(torch.isfinite(full).all()) and part.shape == full[:, cut:].shape and \
            float((part - full[:, cut:]).abs().max()) <= 1e-4 * scale

    def run_with_cache(
        self, tokens: torch.Tensor, sites: Iterable[Site], hooks: Sequence[Hook] = ()
    ) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
        """(logits, activation of every site in `sites`, detached), with `hooks` applied first."""
        cache: dict[Site, torch.Tensor] = {}

        def saver(site: Site) -> HookFn:
            def save(x: torch.Tensor) -> None:
                cache[site] = x.detach()
            return save

        logits = self.run_with_hooks(tokens, [*hooks, *((s, saver(s)) for s in sorted(set(sites)))])
        return logits, cache

    def embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, pos, d_model] the residual stream entering block 0 (what resid_pre.0 records), the
        forward stopped before any block runs."""
        with torch.inference_mode():
            try:
                return self.bridge.run_with_hooks(tokens.to(self.device), stop_at_layer=0)
            except NotImplementedError:  # no standard block stack to stop in: a full forward
                return self.run_with_cache(tokens, [resid_pre(0)])[1][resid_pre(0)]

    def first_nonfinite_site(self, tokens: torch.Tensor) -> Site | None:
        """The first site, in forward order, whose activation holds NaN or inf on `tokens` (None:
        all finite): where a broken weight or an overflowing dtype first shows."""
        order = [embed()]
        for layer in range(self.n_layers):
            order += [s for s in (attn_out(layer), mlp_out(layer)) if self.has_site(s)] + [resid_post(layer)]
        _, cache = self.run_with_cache(tokens, order)
        return next((site for site in order if not torch.isfinite(cache[site].float()).all()), None)

    def block_formats(self) -> list[BlockFormat]:
        if self._formats is None:
            self._formats = block_output_formats(self.bridge, self.device)
        return self._formats

    # --- counting the work of forwards (models/forward_meter.py) ---------------------------------
    @contextmanager
    def metered(self) -> Iterator[ForwardMeter]:
        """A meter of every forward this model runs inside the block (scoring.run_methods wraps each
        method in one); a meter already on gets the inner one's totals too."""
        outer, meter = self._meter, ForwardMeter()
        self._meter = meter
        try:
            yield meter
        finally:
            self._meter = outer
            if outer is not None:
                outer.absorb(meter)

    @contextmanager
    def unmetered(self) -> Iterator[None]:
        """Forwards inside the block are not counted (the harness's own checks)."""
        meter, self._meter = self._meter, None
        try:
            yield
        finally:
            self._meter = meter

    def _count(self, tokens: torch.Tensor, share: float = 1.0, backward: bool = False) -> None:
        if self._meter is not None and tokens.dim() == 2:
            self._meter.add(int(tokens.shape[0]), int(tokens.shape[1]), share, backward)

    @contextmanager
    def frozen_weights(self) -> Iterator[None]:
        """Weights without gradients inside the block (gradients w.r.t. activations only)."""
        params = [p for p in self.bridge.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)


def _norm(block: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    component = getattr(block, name, None)
    if component is None:
        return x
    module = getattr(component, "original_component", None)
    with torch.inference_mode() if x.is_inference() else nullcontext():  # a cached activation: no autograd
        return (component if module is None else module)(x)


def _as_tl_hook(fn: HookFn) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        out = fn(x)
        return x if out is None else out
    return hook


def _replacement(value: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def inject(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.to(dtype=x.dtype, device=x.device)
    return inject
