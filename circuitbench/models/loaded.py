"""LoadedModel: the one facade the rest of circuitbench runs models through.

Methods ask it for sites of the forward pass ("head outputs at layer l", "the residual stream
before block l", "attention patterns", "MLP output at layer l"; see hooks.py) and never see
TransformerLens. `bridge` stays public for notebook users who want TransformerLens directly.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from circuitbench.models.hooks import Site, attn_out, embed, mlp_out, resid_post, resid_pre, tl_hook_name
from circuitbench.models.resume import BlockFormat, block_output_formats, skip_blocks_before
from circuitbench.prompts.encoding import Vocabulary

Init = Literal["pretrained", "random"]
DeviceMap = Literal["auto"]
# A hook sees the activation at its site and returns its replacement (None: keep it as it is).
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
Hook = tuple[Site, HookFn]


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
    _formats: list[BlockFormat] | None = field(default=None, repr=False)

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

    def token_embeddings(self) -> torch.Tensor:
        """[d_vocab, d_model] the token embedding matrix (detached)."""
        return self.bridge.embed.W_E.detach()

    # --- forward passes --------------------------------------------------------------------
    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, pos, d_vocab] logits of a plain forward (no gradients)."""
        with torch.inference_mode():
            return self.bridge(tokens.to(self.device))

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        hooks: Sequence[Hook] = (),
        *,
        resume: tuple[int, torch.Tensor] | None = None,
        grad: bool = False,
    ) -> torch.Tensor:
        """[batch, pos, d_vocab] logits with `hooks` editing their sites.

        `resume=(layer, resid)` starts the forward at block `layer` with `resid` [batch, pos,
        d_model] as its input: blocks before it do no work (what makes exact patching fast).
        `grad=True` keeps the autograd graph (attribution methods); otherwise inference mode."""
        tl_hooks = [(tl_hook_name(site), _as_tl_hook(fn)) for site, fn in hooks]
        skip = nullcontext()
        if resume is not None:
            layer, resid = resume
            tl_hooks.insert(0, (tl_hook_name(resid_pre(layer)), _replacement(resid)))
            skip = skip_blocks_before(self.bridge, layer, self.block_formats())
        with (nullcontext() if grad else torch.inference_mode()), skip:
            return self.bridge.run_with_hooks(tokens.to(self.device), fwd_hooks=tl_hooks)

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


def _as_tl_hook(fn: HookFn) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        out = fn(x)
        return x if out is None else out
    return hook


def _replacement(value: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def inject(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.to(dtype=x.dtype, device=x.device)
    return inject
