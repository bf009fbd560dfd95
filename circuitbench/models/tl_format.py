"""TransformerLens-format checkpoints: a model saved the way HookedTransformer saved them (the
layout of InterpBench and of older TransformerLens training code), loaded through the bridge.

A TL-format directory holds

    cfg.json (or ll_model_cfg.json)   HookedTransformerConfig fields: n_layers, d_model, n_heads,
                                      d_head, d_mlp, d_vocab, n_ctx, act_fn, normalization_type,
                                      attn_only, positional_embedding_type, attention_dir, ...
    model.safetensors (or one *.pth)  the state dict in TransformerLens parameter names and
                                      per-head shapes (below)
    tokenizer.json                    or vocab.json: a JSON list of tokens, id = list index
    circuit.json (optional)           the model's true circuit, when it is known
    tracr.json (optional)             how a tracr program was compiled into it (tracr_import.py)

State dict (H heads, H_kv key/value heads, d = d_model):

    embed.W_E [d_vocab, d]                  pos_embed.W_pos [n_ctx, d]
    blocks.{l}.attn.W_Q [H, d, d_head]      b_Q [H, d_head]      (W_K, W_V, b_K, b_V: H_kv heads;
    blocks.{l}.attn.W_O [H, d_head, d]      b_O [d]               GQA files may name them _W_K ...)
    blocks.{l}.mlp.W_in [d, d_mlp]  b_in [d_mlp]  W_out [d_mlp, d]  b_out [d]   (unless attn_only)
    blocks.{l}.ln1.w / .b, ln2.w / .b, ln_final.w / .b   (LN: w and b; RMS: w; LNPre, RMSPre, none: -)
    unembed.W_U [d, d_vocab_out]            unembed.b_U [d_vocab_out] (optional: zero if absent)

The config becomes a TransformerBridgeConfig of TransformerLens's NativeModel (which computes
no-norm, LN/RMS, bidirectional or causal attention, relu/gelu/silu/solu MLPs); the weights,
checked by name and shape here, go through TransformerLens's own `convert_tl_checkpoint` into
the bridge, loaded strictly. HookedTransformer features the native model does not compute
(rotary or shortformer positions, parallel attention+MLP, local attention, gated MLPs, ...) are
refused with the config field named, never dropped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.tokenizers import load_saved_tokenizer, vocab_list_tokenizer

CONFIG_FILES = ("cfg.json", "ll_model_cfg.json")
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE, VOCAB_FILE = "tokenizer.json", "vocab.json"
CIRCUIT_FILE = "circuit.json"
TRACR_FILE = "tracr.json"

_REQUIRED = ("n_layers", "d_model", "d_head", "n_ctx", "d_vocab")
# Fields the bridge config has under the same name and meaning.
_CARRIED = ("n_layers", "d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
            "normalization_type", "attn_only", "attention_dir", "n_key_value_heads", "final_rms", "eps",
            "attn_scores_soft_cap", "output_logits_soft_cap", "default_prepend_bos", "original_architecture")
_ALLOWED = {
    "positional_embedding_type": ("standard",),
    "normalization_type": (None, "LN", "LNPre", "RMS", "RMSPre"),
    "attention_dir": ("causal", "bidirectional"),
    "act_fn": ("relu", "gelu", "gelu_new", "silu", "swish", "solu", "solu_ln"),
}
# HookedTransformer features the native model does not compute, with their "off" value.
_NOT_COMPUTED = {"parallel_attn_mlp": False, "use_local_attn": False, "scale_attn_by_inverse_layer_idx": False,
                 "use_qk_norm": False, "post_embedding_ln": False, "use_normalization_before_and_after": False,
                 "gated_mlp": False, "num_experts": None, "shortformer_pos": False, "rmsnorm_uses_offset": False}
_NORM_PARAMS = {None: (), "LN": ("w", "b"), "LNPre": (), "RMS": ("w",), "RMSPre": ()}
_BUFFERS = (".mask", ".IGNORE")  # HookedTransformer attention buffers: no parameters


def config_file(path: Path) -> Path | None:
    return next((path / name for name in CONFIG_FILES if (path / name).is_file()), None)


def is_tl_checkpoint(path: Path) -> bool:
    return config_file(path) is not None


@dataclass(frozen=True)
class TLConfig:
    """A TL-format config read and checked: the bridge config it becomes, and the factor W_Q and
    b_Q are multiplied by when the file's attention scale is one the native model cannot take
    as it is (unscaled attention, d_head > 1): q·k / sqrt(d_head) · sqrt(d_head) = q·k."""

    source: Path
    fields: dict[str, Any]  # the file's fields, with defaults filled in
    bridge: dict[str, Any]
    query_factor: float = 1.0

    @property
    def n_heads(self) -> int:
        return int(self.fields["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        return int(self.fields.get("n_key_value_heads") or self.fields["n_heads"])


def _positive_int(raw: dict[str, Any], key: str, source: Path) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CircuitbenchError(f"{source}: field '{key}' must be a positive integer, not {value!r}.")
    return value


def read_config_dict(source: Path) -> dict[str, Any]:
    try:
        raw = json.loads(source.read_text())
    except OSError as e:
        raise CircuitbenchError(f"{source}: cannot read the TransformerLens config ({e.strerror or e}).") from None
    except ValueError as e:
        raise CircuitbenchError(f"{source}: the TransformerLens config is not valid JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise CircuitbenchError(f"{source}: the TransformerLens config must be a JSON object of "
                                f"HookedTransformerConfig fields, not {type(raw).__name__}.")
    return raw


def tl_config(raw: dict[str, Any], source: Path) -> TLConfig:
    """Check a HookedTransformerConfig dict and turn it into the native bridge's config."""
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CircuitbenchError(f"{source}: missing field(s) {', '.join(missing)} (HookedTransformerConfig fields).")
    fields = {"normalization_type": "LN", "positional_embedding_type": "standard", "attention_dir": "causal",
              "attn_only": False, "n_heads": -1, "act_fn": None, "d_mlp": None, "d_vocab_out": -1, **raw}
    for key in (*_REQUIRED, *(k for k in ("d_mlp", "n_key_value_heads") if fields.get(k) is not None)):
        _positive_int(fields, key, source)
    if fields["n_heads"] in (-1, None):
        fields["n_heads"] = fields["d_model"] // fields["d_head"]
    _positive_int(fields, "n_heads", source)
    if fields["attn_only"]:
        fields["act_fn"] = fields["act_fn"] or "relu"  # no MLP: never used
    elif fields["d_mlp"] is None or fields["act_fn"] is None:
        raise CircuitbenchError(f"{source}: a model with MLPs (attn_only false) needs 'd_mlp' and 'act_fn'.")
    for key, allowed in _ALLOWED.items():
        if fields[key] not in allowed:
            raise CircuitbenchError(f"{source}: {key} {fields[key]!r} is not supported by the native bridge "
                                    f"(supported: {', '.join(map(str, allowed))}).")
    for key, off in _NOT_COMPUTED.items():
        if fields.get(key, off) not in (off, None):
            raise CircuitbenchError(f"{source}: {key}={fields[key]!r} is a HookedTransformer feature the native "
                                    "bridge does not compute; this checkpoint cannot be loaded exactly.")
    bridge = {k: fields[k] for k in _CARRIED if fields.get(k) is not None}
    bridge["normalization_type"] = fields["normalization_type"]  # None (no norm) is a value here
    bridge.update(positional_embedding_type="standard", init_weights=False, seed=0)
    d_head = fields["d_head"]
    if fields.get("use_attn_scale", True):
        wanted = float(fields.get("attn_scale", -1.0))
        wanted = wanted if wanted > 0 else math.sqrt(d_head)
    else:
        wanted = 1.0
    factor = 1.0
    if math.isclose(wanted, math.sqrt(d_head)):
        bridge["attn_scale"] = -1.0
    elif d_head > 1 and math.isclose(wanted, 1.0):  # the native model refuses attn_scale 1 with d_head > 1
        bridge["attn_scale"], factor = -1.0, math.sqrt(d_head)
    else:
        bridge["attn_scale"] = wanted
    bridge["use_attn_scale"] = True
    return TLConfig(source=source, fields=fields, bridge=bridge, query_factor=factor)


def read_tl_config(path: Path) -> TLConfig:
    source = config_file(path)
    if source is None:
        raise CircuitbenchError(f"{path}: no TransformerLens config ({' or '.join(CONFIG_FILES)}).")
    return tl_config(read_config_dict(source), source)


def expected_shapes(config: TLConfig) -> dict[str, tuple[int, ...]]:
    """TL parameter name -> shape, for every parameter the config's model has (b_U included)."""
    f = config.fields
    d, d_head, n_ctx, vocab = f["d_model"], f["d_head"], f["n_ctx"], f["d_vocab"]
    heads, kv = config.n_heads, config.n_kv_heads
    vocab_out = f["d_vocab_out"] if f["d_vocab_out"] > 0 else vocab
    norm = _NORM_PARAMS[f["normalization_type"]]
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (vocab, d), "pos_embed.W_pos": (n_ctx, d)}
    for l in range(f["n_layers"]):
        block = f"blocks.{l}"
        shapes.update({f"{block}.ln1.{p}": (d,) for p in norm})
        shapes.update({f"{block}.attn.W_Q": (heads, d, d_head), f"{block}.attn.b_Q": (heads, d_head),
                       f"{block}.attn.W_K": (kv, d, d_head), f"{block}.attn.b_K": (kv, d_head),
                       f"{block}.attn.W_V": (kv, d, d_head), f"{block}.attn.b_V": (kv, d_head),
                       f"{block}.attn.W_O": (heads, d_head, d), f"{block}.attn.b_O": (d,)})
        if not f["attn_only"]:
            d_mlp = f["d_mlp"]
            shapes.update({f"{block}.ln2.{p}": (d,) for p in norm})
            shapes.update({f"{block}.mlp.W_in": (d, d_mlp), f"{block}.mlp.b_in": (d_mlp,),
                           f"{block}.mlp.W_out": (d_mlp, d), f"{block}.mlp.b_out": (d,)})
            if f["act_fn"] == "solu_ln":
                shapes.update({f"{block}.mlp.ln.w": (d_mlp,), f"{block}.mlp.ln.b": (d_mlp,)})
    shapes.update({f"ln_final.{p}": (d,) for p in norm})
    shapes.update({"unembed.W_U": (d, vocab_out), "unembed.b_U": (vocab_out,)})
    return shapes


def weights_file(path: Path) -> Path:
    """model.safetensors, else the directory's one *.pth / *.pt file."""
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    found = sorted(p for ext in ("*.pth", "*.pt") for p in path.glob(ext))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CircuitbenchError(f"{path}: no weights ({WEIGHTS_FILE}, or one *.pth state dict in TransformerLens "
                                "parameter names).")
    raise CircuitbenchError(f"{path}: several weight files ({', '.join(p.name for p in found)}); keep one, or "
                            f"save the weights as {WEIGHTS_FILE}.")


def read_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by TL name, HookedTransformer's buffers (mask, IGNORE) left out and GQA's
    _W_K / _W_V / _b_K / _b_V under their plain names."""
    try:
        if source.suffix == ".safetensors":
            raw: Any = load_file(str(source))
        else:
            raw = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise CircuitbenchError(f"{source}: cannot read the weights ({type(e).__name__}: {e}).") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CircuitbenchError(f"{source}: not a state dict (a mapping of TransformerLens parameter names to "
                                "tensors).")
    state = {}
    for key, value in raw.items():
        if key.endswith(_BUFFERS):
            continue
        for gqa in ("_W_K", "_W_V", "_b_K", "_b_V"):
            if key.endswith(f".{gqa}"):
                key = key[: -len(gqa)] + gqa[1:]
        state[key] = value
    return state


def check_state_dict(state: dict[str, torch.Tensor], config: TLConfig, source: Path) -> None:
    """Every parameter the config's model has, of its shape, and nothing else (b_U may be absent)."""
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in state and k != "unembed.b_U"]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {shapes[k]})" for k in state
             if k in shapes and tuple(state[k].shape) != shapes[k]]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}")
    if wrong:
        problems.append(f"wrong shape: {', '.join(wrong[:4])}")
    if problems:
        raise CircuitbenchError(f"{source}: does not match the config {config.source.name} ({'; '.join(problems)}).")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CircuitbenchError(f"{source}: non-finite values in {', '.join(bad[:5])}.")


def load_tl_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    if (path / TOKENIZER_FILE).is_file():
        return load_saved_tokenizer(path)
    if (path / VOCAB_FILE).is_file():
        try:
            tokens = json.loads((path / VOCAB_FILE).read_text())
        except (OSError, ValueError) as e:
            raise CircuitbenchError(f"{path / VOCAB_FILE}: cannot read the vocabulary ({e}).") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or len(set(tokens)) != len(
                tokens):
            raise CircuitbenchError(f"{path / VOCAB_FILE}: must be a JSON list of distinct token strings "
                                    "(token id = list index).")
        return vocab_list_tokenizer(tokens, str(path))
    raise CircuitbenchError(f"{path}: no tokenizer ({TOKENIZER_FILE}, or {VOCAB_FILE}: a JSON list of tokens).")


def read_tracr_record(path: Path) -> dict[str, Any]:
    """tracr.json, when the checkpoint was compiled from a tracr program ({} otherwise)."""
    record = path / TRACR_FILE
    return json.loads(record.read_text()) if record.is_file() else {}


def load_tl(path: Path, device: torch.device,
            dtype: torch.dtype) -> tuple[TransformerBridge, PreTrainedTokenizerBase, int]:
    """(bridge, tokenizer, n_params) for a TL-format directory."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native.model import NativeModel
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    config = read_tl_config(path)
    source = weights_file(path)
    state = read_state_dict(source)
    check_state_dict(state, config, source)
    tokenizer = load_tl_tokenizer(path)
    if len(tokenizer) > config.fields["d_vocab"]:
        raise CircuitbenchError(f"{path}: the tokenizer has {len(tokenizer)} tokens, more than the model's d_vocab "
                                f"{config.fields['d_vocab']} ({config.source.name}).")
    state = {k: v.float() for k, v in state.items()}
    n_params = sum(v.numel() for v in state.values())
    if config.query_factor != 1.0:
        for key in [k for k in state if k.endswith((".W_Q", ".b_Q"))]:
            state[key] = state[key] * config.query_factor
    cfg = TransformerBridgeConfig.from_dict(config.bridge)
    with torch.random.fork_rng(devices=[]):  # NativeModel draws an init we overwrite: keep global RNG as it was
        native = NativeModel(cfg)
    native = native.to(device=device, dtype=dtype).eval()
    bridge = build_bridge_from_module(native, architecture="TransformerLensNative", tl_config=cfg,
                                      tokenizer=tokenizer, dtype=dtype, device=device, model_name=path.name)
    # TransformerLens's own TL-name conversion, loaded strictly (copied into the placed tensors)
    converted = convert_tl_checkpoint(state, cfg)
    converted.setdefault("unembed.bias", torch.zeros(bridge.state_dict()["unembed.bias"].shape))
    bridge.load_state_dict(converted, strict=True)
    bridge.eval()
    return bridge, tokenizer, n_params


def save_tl_checkpoint(path: Path, config: dict[str, Any], state: dict[str, torch.Tensor],
                       tokenizer: PreTrainedTokenizerBase, extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Write a TL-format directory: cfg.json (HookedTransformerConfig fields), model.safetensors
    (TL parameter names), the tokenizer files and `extra` JSON files (circuit.json, tracr.json)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    write_atomic(path / WEIGHTS_FILE, save(tensors))
    tokenizer.save_pretrained(str(path))
    for name, value in {CONFIG_FILES[0]: config, **(extra or {})}.items():
        write_atomic(path / name, json.dumps(value, indent=2) + "\n")

