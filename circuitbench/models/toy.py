"""Toy checkpoints: a TransformerLens-native model saved by the project's own training code.

A checkpoint is a directory holding `circuitbench_toy.json` (bridge config, the variant's
changes to the native model, training record), `model.safetensors` (the native model's state
dict) and the tokenizer files. It loads through the bridge like every other model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native.model import NativeModel
from transformers import PreTrainedTokenizerBase

from circuitbench.files import write_atomic
from circuitbench.models.hooks import NativeSite
from circuitbench.models.smeared_keys import smear_keys
from circuitbench.models.tokenizers import load_saved_tokenizer

MARKER = "circuitbench_toy.json"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"  # the shipped toy checkpoints


def is_toy_checkpoint(path: Path) -> bool:
    return (path / MARKER).is_file()


def native_config(**arch: Any) -> dict[str, Any]:
    """A TransformerBridgeConfig dict for a small native model (pre-LN, learned positions)."""
    cfg = {
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
        "act_fn": "gelu",
        "attn_only": False,
        "d_mlp": None,
        "seed": 0,
    }
    cfg.update(arch)
    if cfg.get("d_mlp") is None and not cfg["attn_only"]:
        cfg["d_mlp"] = 4 * cfg["d_model"]
    return cfg


class NativeVariant(BaseModel):
    """What the project changes in TransformerLens's NativeModel; the bridge config cannot say it,
    so the checkpoint records it next to that config and loading rebuilds the same modules."""

    model_config = ConfigDict(extra="forbid")
    smear_keys: bool = False

    def apply(self, model: NativeModel) -> NativeModel:
        if self.smear_keys:
            smear_keys(model)
        return model


def build_native_model(config: dict[str, Any], seed: int, variant: NativeVariant | None = None) -> NativeModel:
    """A freshly initialised native model; the seed is local (global RNG left untouched). A
    variant's modules take over the initialised weights, so the plain and the varied model of
    one seed start from the same weights."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native.init import initialize_native_model

    cfg = TransformerBridgeConfig.from_dict({**config, "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NativeModel(cfg)
        initialize_native_model(model, cfg)
    return (variant or NativeVariant()).apply(model)


def save_checkpoint(
    path: Path,
    model: NativeModel,
    config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    record: dict[str, Any],
    variant: NativeVariant | None = None,
    symbol_pool: list[int] | None = None,
) -> None:
    """`symbol_pool`: the token ids random-symbol prompts (induction) should draw from — the
    symbols the model was trained on, where a word vocabulary also holds text words."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # atomically and with the mode any new file gets (safetensors' own save_file writes 0600)
    write_atomic(path / "model.safetensors", save(state))
    tokenizer.save_pretrained(str(path))
    meta: dict[str, Any] = {"config": config, "variant": (variant or NativeVariant()).model_dump(), "record": record}
    if symbol_pool is not None:
        meta["symbol_pool"] = symbol_pool
    write_atomic(path / MARKER, json.dumps(meta, indent=2) + "\n")


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text())


def load_toy(
    path: Path, device: torch.device, dtype: torch.dtype
) -> tuple[TransformerBridge, PreTrainedTokenizerBase, int]:
    """(bridge, tokenizer, n_params) for a toy checkpoint directory."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    meta = read_checkpoint_meta(path)
    tokenizer = load_saved_tokenizer(path)
    # Weights go into the plain native model before the bridge wraps (and renames) its modules;
    # this is boot_native's own path with a trained state dict instead of a fresh init.
    cfg = TransformerBridgeConfig.from_dict(meta["config"])
    # checkpoints from before variants existed have none: the plain native model
    native = NativeVariant.model_validate(meta.get("variant", {})).apply(NativeModel(cfg))
    native.load_state_dict(load_file(str(path / "model.safetensors")))
    n_params = sum(p.numel() for p in native.parameters())
    native = native.to(device=device, dtype=dtype).eval()
    bridge = build_bridge_from_module(
        native, architecture="TransformerLensNative", tl_config=cfg, tokenizer=tokenizer,
        dtype=dtype, device=device, model_name=path.name,
    )
    bridge.eval()
    return bridge, tokenizer, n_params


def output_modules(native: NativeModel, site: NativeSite) -> list[tuple[nn.Module, bool]]:
    """The native model's modules whose output is `site` (token embeddings, each attention
    layer's output, the residual stream after each block), each with whether that output is a
    tuple led by the activation (attention returns (output, pattern), blocks (hidden_states,))."""
    if site == "embed":
        return [(native.tok_embed, False)]
    if site == "attn_out":
        return [(block.attn, True) for block in native.layers]
    return [(block, True) for block in native.layers]
