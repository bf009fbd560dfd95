"""Resolve `--model` (registry short name, HF id, local HF directory, toy or TL-format checkpoint) and load
it behind a TransformerLens bridge. Everything model-specific stays in this package."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoModelForCausalLM

from circuitbench.errors import CircuitbenchError
from circuitbench.models.fingerprint import weights_fingerprint
from circuitbench.models.loaded import DeviceMap, KvGraph, LoadedModel
from circuitbench.models.memory import check_fits
from circuitbench.models.resolve import (
    Init,
    ModelRef,
    hub_reachable,
    random_init_needs_architecture,
    resolve_device,
    resolve_model,
    unreachable_error,
)
from circuitbench.models.tl_format import load_tl
from circuitbench.models.toy import load_toy, read_checkpoint_meta
from circuitbench.models.ungrouped import ungroup_key_values
from circuitbench.models.vocabulary import hf_config, load_tokenizer, tl_symbol_pool, vocabulary_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _n_params_from_config(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _dispatched(model, device_map: DeviceMap):
    """A model built in memory (random init) spread over the devices by accelerate, as
    from_pretrained(device_map=...) does for stored weights."""
    from accelerate import dispatch_model, infer_auto_device_map

    plan = infer_auto_device_map(model, no_split_module_classes=getattr(model, "_no_split_modules", None) or [])
    return dispatch_model(model, plan)


def _hf_model(ref: ModelRef, revision: str | None, init: Init, dtype: torch.dtype, seed: int,
              device_map: DeviceMap | None = None):
    """A fresh HF model (the bridge mutates the one it wraps), placed by `device_map` if given:
    the bridge wraps an accelerate-dispatched model as it is (it refuses to dispatch a model it
    is handed, so placement happens here)."""
    common = {"dtype": dtype, "attn_implementation": "eager"}
    if init == "random":
        if ref.spec is not None and ref.spec.hf_config is not None:
            cfg = dict(ref.spec.hf_config)
            config = AutoConfig.for_model(str(cfg.pop("model_type")), **cfg)
        else:
            config = hf_config(ref, revision)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, **common)
        return _dispatched(model, device_map) if device_map else model
    if device_map:
        common["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(
            ref.location, revision=revision, local_files_only=True, **common
        )
    except OSError:
        if ref.kind == "local_hf":
            raise CircuitbenchError(
                f"--model {ref.location}: cannot load weights from the directory (no model.safetensors "
                "or pytorch_model.bin). Save with model.save_pretrained(DIR), or use --init random."
            ) from None
    if not hub_reachable():
        raise unreachable_error(ref, "its weights are")
    return AutoModelForCausalLM.from_pretrained(ref.location, revision=revision, **common)


def _fused_activations(model):
    """GPT-2-style `gelu_new` (HF's NewGELUActivation: about seven elementwise passes over the MLP's
    [tokens, d_mlp] activations) as torch's fused tanh GELU: the same function in one pass (float
    rounding differences ~1e-7). Most of a small model's non-matmul time on CPU."""
    from transformers.activations import NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    return model


def load_model(
    name: str,
    *,
    init: Init = "pretrained",
    dtype: str | None = None,
    device: str = "auto",
    seed: int = 0,
    device_map: DeviceMap | None = None,
    kv_graph: KvGraph = "grouped",
) -> LoadedModel:
    """Load `name` behind a TransformerBridge; see resolve_model for what `name` may be.

    `kv_graph="ungrouped"`: a grouped-query-attention model computes keys and values per query
    head (models/ungrouped.py), so its component graph is EAP-IG's; toys have no grouped attention.

    `device_map="auto"` lets accelerate spread a HuggingFace model over the available devices
    (model parallel) before the bridge wraps it; toy models are small and ignore it."""
    t0 = time.perf_counter()
    ref = resolve_model(name)
    dev = resolve_device(device)
    dtype_name = ref.dtype(dtype)
    torch_dtype = DTYPES[dtype_name]
    revision = ref.spec.revision if ref.spec else None

    if ref.kind == "toy":
        if init == "random":
            raise CircuitbenchError(
                f"--init random is for HuggingFace architectures; '{name}' is a toy checkpoint. "
                "Train a fresh one with `circuitbench train` instead."
            )
        path = Path(ref.location)
        bridge, tok, n_params = load_toy(path, dev, torch_dtype)
        vocab, unk = vocabulary_of(tok, int(bridge.cfg.d_vocab), read_checkpoint_meta(path).get("symbol_pool"))
        return LoadedModel(bridge, vocab, unk, ref.name, str(path), None, "pretrained", dtype_name,
                           n_params, "toy word-level (shipped with the checkpoint)", dev,
                           load_seconds=round(time.perf_counter() - t0, 3),
                           fingerprint=weights_fingerprint(ref, "pretrained", None))

    if ref.kind == "tl":
        if init == "random":
            raise CircuitbenchError(f"--init random is for HuggingFace architectures; '{name}' is a "
                                    "TransformerLens-format checkpoint.")
        path = Path(ref.location)
        bridge, tok, n_params = load_tl(path, dev, torch_dtype)
        vocab, unk = vocabulary_of(tok, int(bridge.cfg.d_vocab), tl_symbol_pool(path, tok))
        return LoadedModel(bridge, vocab, unk, ref.name, str(path), None, "pretrained", dtype_name, n_params,
                           "word-level (shipped with the checkpoint)", dev,
                           load_seconds=round(time.perf_counter() - t0, 3),
                           fingerprint=weights_fingerprint(ref, "pretrained", None))

    if init == "random" and ref.kind == "hub":
        raise random_init_needs_architecture(name)
    expected_params = ref.spec.n_params if ref.spec else _n_params_from_config(hf_config(ref, revision))
    check_fits(ref.name, expected_params, dtype_name, dev, device_map)
    tok, tok_source = load_tokenizer(ref, revision, init)
    hf = _fused_activations(_hf_model(ref, revision, init, torch_dtype, seed, device_map))
    n_params = sum(p.numel() for p in hf.parameters())
    try:
        bridge = TransformerBridge.boot_transformers(
            ref.location, hf_model=hf, tokenizer=tok, device=str(dev), dtype=torch_dtype
        )
    except ValueError as e:
        if device_map is None:
            raise
        # e.g. accelerate put part of the model on CPU/disk next to GPUs, which the bridge refuses
        raise CircuitbenchError(f"Model '{ref.name}' with --device-map {device_map}: the bridge cannot wrap the "
                                f"placement accelerate chose ({e}). Try --dtype bfloat16, or more GPUs.") from None
    bridge.eval()
    if kv_graph == "ungrouped":
        ungroup_key_values(bridge, ref.name)
    if device_map:
        dev = torch.device(bridge.cfg.device)  # inputs go where the token embedding is
    vocab, unk = vocabulary_of(tok, int(bridge.cfg.d_vocab))
    # A revision names trained weights: none for random init or a local directory.
    kept_revision = revision if init == "pretrained" and ref.kind != "local_hf" else None
    return LoadedModel(bridge, vocab, unk, ref.name, ref.location, kept_revision, init, dtype_name, n_params,
                       tok_source, dev, load_seconds=round(time.perf_counter() - t0, 3), device_map=device_map,
                       init_seed=seed if init == "random" else None, fingerprint=weights_fingerprint(ref, init, seed),
                       kv_graph=kv_graph)
