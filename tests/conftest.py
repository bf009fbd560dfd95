"""Shared fixtures. Tests never reach a model hub: local models are built here."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["COLUMNS"] = "200"  # rich tables wide enough that names are not folded

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Runs cache by default: never in ~/.cache/circuitbench, also not from module- or session-scoped
# fixtures, which run before the per-test cache below.
_SESSION_CACHE = tempfile.mkdtemp(prefix="circuitbench-test-cache-")
os.environ["CIRCUITBENCH_CACHE"] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_CONFIGS = {
    "gpt2": dict(model_type="gpt2", n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257),
    "gpt_neo": dict(model_type="gpt_neo", num_layers=2, num_heads=4, hidden_size=64, max_position_embeddings=128,
                    vocab_size=50257, attention_types=[[["global", "local"], 1]], window_size=16),
    "gpt_neox": dict(model_type="gpt_neox", num_hidden_layers=2, num_attention_heads=4, hidden_size=64,
                     intermediate_size=128, max_position_embeddings=128, vocab_size=50304, rotary_pct=0.25),
    "llama": dict(model_type="llama", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=128, max_position_embeddings=128, vocab_size=50257),
}
# More architectures (tests/models/test_architectures.py), built only when a test asks for one: Qwen2 (q/k/v
# biases), Gemma-2 (post-attention / post-MLP norms, soft-capping), Mistral (sliding window) with grouped-query
# attention, Phi (parallel attention + MLP sharing one LayerNorm, partial rotary).
MORE_TINY_CONFIGS = {
    "qwen2": dict(model_type="qwen2", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=128, max_position_embeddings=128, vocab_size=50257),
    "gemma2": dict(model_type="gemma2", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   hidden_size=64, head_dim=16, intermediate_size=128, max_position_embeddings=128,
                   vocab_size=50257, sliding_window=16),
    "mistral": dict(model_type="mistral", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    hidden_size=64, intermediate_size=128, max_position_embeddings=128, vocab_size=50257,
                    sliding_window=16),
    "phi": dict(model_type="phi", num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128,
                max_position_embeddings=128, vocab_size=50257, partial_rotary_factor=0.5),
}


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from circuitbench.models.tokenizers import gpt2_bpe_tokenizer

    return gpt2_bpe_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A random-init GPT-2 of 2 layers × 2 heads with MLPs (d_model 32), saved with save_pretrained:
    small enough for naive one-forward-per-edge references (46 edges)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2_2x2")
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        GPT2LMHeadModel(config).save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, gpt2_tokenizer) -> dict[str, Path]:
    """Random-init tiny HF models of four architectures, saved with save_pretrained (weights and
    GPT-2 BPE tokenizer), as a user would save a model for offline use."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny_models")
    out = {}
    for name, cfg in TINY_CONFIGS.items():
        cfg = dict(cfg)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
        path = root / name
        model.save_pretrained(path)
        gpt2_tokenizer.save_pretrained(path)
        out[name] = path
    return out


def _save_tiny(path: Path, cfg: dict, tokenizer) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def more_tiny_models(tmp_path_factory, gpt2_tokenizer):
    """name -> directory of a random-init tiny model of MORE_TINY_CONFIGS, saved on first use."""
    root = tmp_path_factory.mktemp("more_tiny_models")
    made: dict[str, Path] = {}

    def directory(name: str) -> Path:
        if name not in made:
            made[name] = _save_tiny(root / name, MORE_TINY_CONFIGS[name], gpt2_tokenizer)
        return made[name]
    return directory


@pytest.fixture(autouse=True)
def isolated_activation_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets an empty activation cache of its own, never ~/.cache/circuitbench (runs
    cache by default; a shared one would let one test's forwards stand in for another's)."""
    root = tmp_path_factory.mktemp("activation_cache")
    monkeypatch.setenv("CIRCUITBENCH_CACHE", str(root))
    return root
