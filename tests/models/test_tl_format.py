"""TransformerLens-format checkpoints (cfg.json + TL-named state dict + tokenizer) load through the
bridge and compute what a HookedTransformer computes: checked against a forward written out here
from TransformerLens's conventions, and broken directories fail naming the file."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.models.resolve import resolve_model
from circuitbench.models.tokenizers import word_level_tokenizer
from circuitbench.models.vocabulary import load_vocabulary

WORDS = [f"w{i}" for i in range(9)]  # + <bos> <pad> <unk>: 12 tokens


def random_tl_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """A HookedTransformer-style state dict (TL names, per-head shapes) of random weights."""
    g = torch.Generator().manual_seed(seed)
    d, h, dh, v, n = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_vocab"], cfg["n_ctx"]

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.5

    state = {"embed.W_E": r(v, d), "pos_embed.W_pos": r(n, d), "unembed.W_U": r(d, v), "unembed.b_U": r(v)}
    norm = cfg["normalization_type"] == "LN"
    for l in range(cfg["n_layers"]):
        b = f"blocks.{l}"
        state.update({f"{b}.attn.W_Q": r(h, d, dh), f"{b}.attn.W_K": r(h, d, dh), f"{b}.attn.W_V": r(h, d, dh),
                      f"{b}.attn.W_O": r(h, dh, d), f"{b}.attn.b_Q": r(h, dh), f"{b}.attn.b_K": r(h, dh),
                      f"{b}.attn.b_V": r(h, dh), f"{b}.attn.b_O": r(d),
                      f"{b}.mlp.W_in": r(d, cfg["d_mlp"]), f"{b}.mlp.b_in": r(cfg["d_mlp"]),
                      f"{b}.mlp.W_out": r(cfg["d_mlp"], d), f"{b}.mlp.b_out": r(d),
                      # HookedTransformer's buffers come along in its state dicts
                      f"{b}.attn.mask": torch.ones(n, n).tril().bool(), f"{b}.attn.IGNORE": torch.tensor(-1e5)})
        if norm:
            for ln in ("ln1", "ln2"):
                state.update({f"{b}.{ln}.w": 1 + r(d), f"{b}.{ln}.b": r(d)})
    if norm:
        state.update({"ln_final.w": 1 + r(d), "ln_final.b": r(d)})
    return state


def tl_forward(state: dict[str, torch.Tensor], cfg: dict, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_vocab] logits, computed the way HookedTransformer computes them."""
    norm = cfg["normalization_type"] == "LN"
    act = {"gelu": F.gelu, "relu": F.relu}[cfg["act_fn"]]
    use_scale = cfg.get("use_attn_scale", True)
    scale = math.sqrt(cfg["d_head"]) if use_scale else 1.0

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        if not norm:
            return x
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * state[f"{name}.w"] + state[f"{name}.b"]

    n_pos = tokens.shape[1]
    x = state["embed.W_E"][tokens] + state["pos_embed.W_pos"][:n_pos]
    for l in range(cfg["n_layers"]):
        a = f"blocks.{l}.attn"
        h = ln(x, f"blocks.{l}.ln1")
        q, k, v = (torch.einsum("bpm,hmd->bphd", h, state[f"{a}.W_{n}"]) + state[f"{a}.b_{n}"] for n in "QKV")
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / scale
        if cfg.get("attention_dir", "causal") == "causal":
            scores = scores.masked_fill(torch.ones(n_pos, n_pos).triu(1).bool(), float("-inf"))
        z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
        x = x + torch.einsum("bqhd,hdm->bqm", z, state[f"{a}.W_O"]) + state[f"{a}.b_O"]
        m = f"blocks.{l}.mlp"
        x = x + act(ln(x, f"blocks.{l}.ln2") @ state[f"{m}.W_in"] + state[f"{m}.b_in"]) @ state[f"{m}.W_out"] \
            + state[f"{m}.b_out"]
    return ln(x, "ln_final") @ state["unembed.W_U"] + state.get("unembed.b_U", 0)


def write_tl_dir(path: Path, cfg: dict, state: dict[str, torch.Tensor], *, cfg_name: str = "cfg.json",
                 weights: str = "model.safetensors", tokenizer: str = "tokenizer.json") -> Path:
    path.mkdir(parents=True)
    (path / cfg_name).write_text(json.dumps(cfg))
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / weights))
    else:
        torch.save(state, path / weights)
    if tokenizer == "tokenizer.json":
        word_level_tokenizer(WORDS).save_pretrained(str(path))
    else:
        (path / "vocab.json").write_text(json.dumps(["<bos>", "<pad>", "<unk>", *WORDS]))
    return path


GPT_LIKE = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=12, n_ctx=10, act_fn="gelu",
                normalization_type="LN", attn_only=False, positional_embedding_type="standard",
                # fields a saved HookedTransformerConfig carries that do not change the computation
                model_name="custom", seed=0, dtype="torch.float32", device="cpu", n_params=1234, init_mode="gpt2",
                attn_scale=math.sqrt(8), use_attn_scale=True)
TRACR_LIKE = dict(n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=20, d_vocab=12, n_ctx=8, act_fn="relu",
                  normalization_type=None, attention_dir="bidirectional", use_attn_scale=False)


@pytest.mark.parametrize("cfg,layout", [
    (GPT_LIKE, dict()),
    (TRACR_LIKE, dict(cfg_name="ll_model_cfg.json", weights="ll_model.pth", tokenizer="vocab.json")),
], ids=["ln-gelu-causal-safetensors", "nonorm-relu-bidirectional-unscaled-pth-vocablist"])
def test_tl_dir_loads_and_matches_the_tl_forward(tmp_path, cfg, layout):
    state = random_tl_state(cfg, seed=3)
    path = write_tl_dir(tmp_path / "tl", cfg, state, **layout)
    assert resolve_model(str(path)).kind == "tl"
    model = load_model(str(path), device="cpu")
    assert (model.n_layers, model.n_heads, model.d_head) == (cfg["n_layers"], cfg["n_heads"], cfg["d_head"])
    params = {k: v for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))}
    assert model.n_params == sum(v.numel() for v in params.values())
    tokens = torch.randint(0, cfg["d_vocab"], (3, 7), generator=torch.Generator().manual_seed(0))
    expected = tl_forward(params, cfg, tokens)
    got = model.run(tokens)
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())
    # a bidirectional model's first position sees the last token; a causal one's does not
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % cfg["d_vocab"]
    first_moves = (model.run(changed)[:, 0] - got[:, 0]).abs().max().item() > 1e-6
    assert first_moves == (cfg.get("attention_dir") == "bidirectional")
    vocab, _, n_ctx, _ = load_vocabulary(str(path))
    assert n_ctx == cfg["n_ctx"] and vocab.bos_id == 0
    assert vocab.tokenizer.encode("w3 w0", add_special_tokens=False) == [6, 3]


def test_missing_unembed_bias_is_zero(tmp_path):
    state = random_tl_state(GPT_LIKE, seed=4)
    del state["unembed.b_U"]
    path = write_tl_dir(tmp_path / "tl", GPT_LIKE, state)
    tokens = torch.tensor([[0, 4, 5, 6]])
    params = {k: v for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))}
    assert (load_model(str(path), device="cpu").run(tokens) - tl_forward(params, GPT_LIKE, tokens)).abs().max() < 1e-4


def _break_shape(path: Path) -> None:
    state = random_tl_state(GPT_LIKE, seed=0)
    state["blocks.1.attn.W_Q"] = torch.zeros(2, 16, 4)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


def _drop_key(path: Path) -> None:
    state = random_tl_state(GPT_LIKE, seed=0)
    del state["blocks.0.mlp.W_in"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


def _set_cfg(**change):
    def edit(path: Path) -> None:
        cfg = {**GPT_LIKE, **change}
        (path / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if v != "DROP"}))
    return edit


BROKEN = {
    "cfg-not-json": (lambda p: (p / "cfg.json").write_text("{n_layers: 2"), "cfg.json", "not valid JSON"),
    "cfg-missing-field": (_set_cfg(d_head="DROP"), "cfg.json", "d_head"),
    "cfg-bad-int": (_set_cfg(n_layers="two"), "cfg.json", "n_layers"),
    "cfg-rotary": (_set_cfg(positional_embedding_type="rotary"), "cfg.json", "positional_embedding_type"),
    "cfg-parallel": (_set_cfg(parallel_attn_mlp=True), "cfg.json", "parallel_attn_mlp"),
    "no-weights": (lambda p: (p / "model.safetensors").unlink(), "tl", "no weights"),
    "truncated-weights": (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-99]),
                          "model.safetensors", "truncated"),
    "wrong-shape": (_break_shape, "model.safetensors", "blocks.1.attn.W_Q"),
    "missing-tensor": (_drop_key, "model.safetensors", "blocks.0.mlp.W_in"),
    "no-tokenizer": (lambda p: (p / "tokenizer.json").unlink(), "tl", "no tokenizer"),
    "bad-circuit": (lambda p: (p / "circuit.json").write_text("[1, 2]"), "circuit.json", "JSON object"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_tl_dir_names_the_file(tmp_path, case):
    path = write_tl_dir(tmp_path / "tl", GPT_LIKE, random_tl_state(GPT_LIKE, seed=0))
    breaker, file, words = BROKEN[case]
    breaker(path)
    with pytest.raises(CircuitbenchError) as err:
        load_model(str(path), device="cpu")
    message = str(err.value)
    assert str(path / file) in message or (file == "tl" and str(path) in message), message
    assert words in message, message
