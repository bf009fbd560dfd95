"""Models whose circuit is known: compile a RASP program with tracr and convert the compiled
transformer exactly into a TransformerLens-format checkpoint (tl_format.py) that loads through
the bridge like any other model, with its true circuit beside it.

    circuitbench import-tracr reverse --vocab a,b,c,d --max-seq-len 5 --out DIR

What the checkpoint is:

- **Vocabulary.** One word-level tokenizer for prompts and answers: the BOS token (`--bos`,
  tracr's compiler BOS), `<pad>`, `<unk>`, the program's input values, then its output values
  that are not also inputs. Every value is one token, its text `str(value)` (`--vocab 1,2,3`
  gives the ints 1, 2, 3; anything else is a string).
- **Embeddings.** A token's row is tracr's token embedding of its value (BOS: the compiler BOS,
  `<pad>`: the compiler pad); tokens that are no program input (`<unk>`, output-only values)
  embed as the compiler pad. Positions are tracr's own: position 0 holds BOS, position p the
  program's element p - 1; n_ctx = max_seq_len + 1.
- **Blocks.** tracr layer i (attention, then MLP) is block i; heads are padded with zero heads
  to the widest attention layer (as tracr itself does), so a block whose tracr layer holds only
  an MLP has all-zero heads. No layer norm, ReLU MLPs, attention bidirectional unless
  `--causal`, scores divided by sqrt(key_size) as tracr's are.
- **Padding.** Batches are right-padded. In a bidirectional model every real position would see
  the pads, so each head with weights gets one extra query/key dimension: query 1 (bias),
  key -30000 on the compiler-pad direction. A pad key then gets exactly zero attention, as under
  tracr's own pad mask (`CompiledTransformerModel(pad_token=...)`); on inputs without pads the
  extra term is exactly 0. d_head = key_size + 1, the scale stays sqrt(key_size).
- **Read-out.** The unembedding maps the residual stream onto the output tokens: output value
  v's logit is tracr's output-space coordinate of v (about 1 for the program's output, 0 for
  the other values: the logit difference answer - other output is about 1); every other token
  gets -10000 (a bias). Categorical outputs only: a numerical SOp (a number in one residual
  direction, e.g. frac_prevs) has no answer token and is refused; wrap it in
  `rasp.categorical(rasp.Map(...))` to bucket it.

How to benchmark it: a circuitbench task answers at the END position, so the natural task is
"the program's output at the last element" (prompts.jsonl: {"prompt": "a b c d", "answer":
" a", "distractor": " d", "corrupted": "d c b a"}; encoding adds BOS itself). Every record's
answer is both the RASP program's output and the compiled model's argmax; prompts have random
lengths (a head that depends only on length, like reverse's, is invisible to prompts of one
length: it is constant over them, and zero output even decodes as the longest length);
corrupted prompts have the same length and another answer, which is the distractor.

Ground truth (circuit.json): the heads with non-zero weights ([layer, head], MIB/EAP-IG node
names `a{L}.h{H}`) and the MLPs with non-zero weights (`m{L}`) — exactly the components tracr
built for the program; zero padding heads and empty MLPs are not in it. Each component carries
the RASP values (residual directions) it reads and writes, and `edges` link writers to readers
(`input->a0.h0<k>`, `a1.h0->m1`, `m3->logits`).

The conversion is checked before anything is kept: the written checkpoint, loaded through
circuitbench, must reproduce tracr's own forward (what `model.apply` runs) on sample inputs — final
residual stream and output-space values within TOLERANCE, identical decoded outputs wherever
tracr's own output is not a near tie — or the import fails and writes nothing.

Before any compute: every --vocab value and the BOS must be one token, none of them reserved
(`<pad>`, `<unk>`, tracr's compiler pad); the compile is estimated from the program's value sets
(`check_size`: tracr's cost grows with the cube of its widest MLP, max_seq_len² wide for reverse)
and refused beyond LIMIT_SECONDS / LIMIT_BYTES unless --allow-large (never beyond free memory);
--n-prompts is at most MAX_PROMPTS, and when it reaches the number of distinct inputs, every input
is taken once. --out must be missing or empty; with --force it may be an earlier import (its
tracr.json and nothing but the files an import writes), never another folder, the working
directory, home, the root or an ancestor of them. The checkpoint is built in a staging folder
next to --out that replaces it only once complete (output_paths.replace_dir_staged), with the modes any
new folder and file get (the umask).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.files import write_atomic
from circuitbench.models.tl_format import CIRCUIT_FILE, CONFIG_FILES, TRACR_FILE, WEIGHTS_FILE, save_tl_checkpoint
from circuitbench.models.tokenizers import PAD, UNK, word_level_tokenizer
from circuitbench.output_paths import check_replaceable_dir, replace_dir_staged

COMPILER_PAD = "compiler_pad"
PAD_KEY = -30000.0  # key of a pad position on the extra dimension (query 1): never attended
OFF_OUTPUT_LOGIT = -10000.0  # logit of every token that is not an output value
TOLERANCE = 1e-3  # max |converted - tracr| on the residual stream and output space, relative to max(1, |tracr|)
N_VERIFY = 48
PROMPTS_FILE = "prompts.jsonl"


# --- which program -------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgramArgs:
    """What a program factory may ask for."""

    vocab: tuple[Any, ...]
    max_seq_len: int


def _lib_programs() -> dict[str, Callable[[ProgramArgs], Any]]:
    """tracr.compiler.lib programs by name (without `make_`), applied to the input tokens; those
    that need an argument get the one said here."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return {
        "length": lambda a: lib.make_length(),
        "reverse": lambda a: lib.make_reverse(rasp.tokens),
        "hist": lambda a: lib.make_hist(),
        "sort_unique": lambda a: lib.make_sort_unique(rasp.tokens, rasp.tokens),
        "sort": lambda a: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=a.max_seq_len, min_key=1),
        "sort_freq": lambda a: lib.make_sort_freq(max_seq_len=a.max_seq_len),
        "shuffle_dyck": lambda a: lib.make_shuffle_dyck(pairs=["()"]),  # vocab: ( ) and others
        "shuffle_dyck2": lambda a: lib.make_shuffle_dyck2(),
        "count_less_freq": lambda a: lib.make_count_less_freq(n=2),
        # True where the last three tokens are the first three --vocab values, in --vocab order
        "detect_pattern": lambda a: lib.detect_pattern(rasp.tokens, list(a.vocab[:3])),
        # numerical outputs, listed so that asking for them gives the clear refusal
        "frac_prevs": lambda a: lib.make_frac_prevs(rasp.tokens == a.vocab[0]),
        "pair_balance": lambda a: lib.make_pair_balance(rasp.tokens, "(", ")"),
    }


def _factory(spec: str) -> Callable[..., Any]:
    """The function PROGRAM names: `path/to/file.py:function`, `module:function`."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise CircuitbenchError(f"PROGRAM {spec}: no such file {path}.")
        module_spec = importlib.util.spec_from_file_location(f"_circuitbench_tracr_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file failed to import: say so
            raise CircuitbenchError(f"PROGRAM {spec}: importing {path} failed ({type(e).__name__}: {e}).") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise CircuitbenchError(f"PROGRAM {spec}: cannot import module {where!r} ({e}).") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise CircuitbenchError(f"PROGRAM {spec}: {where} has no function {name!r}.")
    return fn


def resolve_program(spec: str, args: ProgramArgs) -> Any:
    """The RASP expression PROGRAM names: a tracr lib program (`reverse` or `make_reverse`), or
    `module:function` / `file.py:function` returning one; such a function may take `vocab` and
    `max_seq_len` keyword arguments."""
    from tracr.rasp import rasp

    if ":" in spec:
        fn = _factory(spec)
        accepted = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in (("vocab", set(args.vocab)), ("max_seq_len", args.max_seq_len)) if k in accepted}
        try:
            sop = fn(**kwargs)
        except Exception as e:  # noqa: BLE001 - the user's function failed: say so
            raise CircuitbenchError(f"PROGRAM {spec}: calling it failed ({type(e).__name__}: {e}).") from None
        if not isinstance(sop, rasp.SOp):
            raise CircuitbenchError(f"PROGRAM {spec}: returned {type(sop).__name__}, not a RASP SOp.")
        return sop
    name = spec.removeprefix("make_")
    programs = _lib_programs()
    if name not in programs:
        raise CircuitbenchError(f"PROGRAM {spec!r}: not a tracr lib program ({', '.join(programs)})."
                                f"{did_you_mean(name, programs)} Or give module:function / file.py:function.")
    return programs[name](args)


def canonical_labels(sop: Any) -> None:
    """Number the program's expressions 1, 2, ... in depth-first order, children first.

    tracr labels an expression `name_<id>` with ids from a process-wide counter, and orders the
    residual stream by label: the same program would get other labels, even another order of
    dimensions, depending on what the process built before. Fixed ids make an import
    reproducible byte for byte (each id is the expression's cached `unique_id`)."""
    for number, expr in enumerate(_postorder(sop), 1):
        expr.__dict__["unique_id"] = number


def _postorder(sop: Any) -> list[Any]:
    """The program's expressions (SOps and selectors), each once, children first, depth first."""
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(sop, False)]
    while stack:
        expr, expanded = stack.pop()
        if expanded:
            order.append(expr)
        elif id(expr) not in seen:
            seen.add(id(expr))
            stack.append((expr, True))
            stack.extend((child, False) for child in reversed(list(expr.children)))
    return order


def parse_vocab(text: str) -> tuple[Any, ...]:
    """`a,b,c` -> ('a', 'b', 'c'); items that are integers become ints (`1,2,3` -> (1, 2, 3))."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise CircuitbenchError(f"--vocab {text!r}: give comma-separated values, e.g. --vocab a,b,c.")
    values = tuple(int(t) if re.fullmatch(r"-?\d+", t) else t for t in items)
    if len(set(values)) != len(values):
        raise CircuitbenchError(f"--vocab {text!r}: a value is listed twice.")
    return values


def check_tokens(vocab: tuple[Any, ...], bos: str) -> None:
    """Before any compute: every --vocab value and the BOS become one token each of the
    checkpoint's word-level tokenizer, none of them a reserved token (`<pad>`, `<unk>`, the
    compiler's pad, the BOS)."""
    reserved = {PAD: "the tokenizer's pad token", UNK: "the tokenizer's unknown-word token",
                COMPILER_PAD: "tracr's compiler pad"}
    if not bos.strip() or any(c.isspace() for c in bos):
        raise CircuitbenchError(f"--bos {bos!r}: the BOS token must be one word without spaces, e.g. --bos BOS.")
    if bos in reserved:
        raise CircuitbenchError(f"--bos {bos!r}: is {reserved[bos]}, reserved; pick another, e.g. --bos BOS.")
    words = [str(v) for v in vocab]
    for word in words:
        if word == bos:
            raise CircuitbenchError(f"--vocab {word!r} is also the BOS token (--bos {bos}); pick another --bos or "
                                    "rename that value.")
        if word in reserved:
            raise CircuitbenchError(f"--vocab {word!r}: collides with {reserved[word]}, which the checkpoint "
                                    "reserves; rename that value.")
    tokenizer = word_level_tokenizer(words, bos=bos)
    for word in words:
        _check_word(word, tokenizer, "--vocab value")


# --- conversion ----------------------------------------------------------------------------

@dataclass
class Converted:
    """A tracr model as a TL-format checkpoint: config, TL-named weights, tokenizer and the
    bookkeeping verification and the ground truth need."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    tokenizer: Any
    input_tokens: list[str]
    output_tokens: list[str]
    residual_labels: list[str]
    read_out: np.ndarray  # [d_model, n_outputs] tracr's projection of the residual onto the output space
    output_ids: list[int]  # token id of each output value, in tracr's output order
    key_size: int  # tracr's head dimensions (d_head has one more in a bidirectional model: the pad mask)


def _read_out_matrix(assembled: Any, d_model: int) -> np.ndarray:
    """[d_model, n_outputs] tracr's own unembedding (no argmax) applied to the identity."""
    import haiku as hk
    import jax.numpy as jnp

    @hk.without_apply_rng
    @hk.transform
    def read_out(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    out = np.asarray(read_out.apply({}, jnp.eye(d_model)))
    return out.reshape(d_model, -1)


def _check_word(word: str, tokenizer: Any, what: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or not word or any(c.isspace() for c in word):
        pieces = [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(word)]
        raise CircuitbenchError(f"{what} {word!r} is not one word of a word-level vocabulary (the tokenizer splits "
                                f"it into {pieces}: whitespace and punctuation split words, and a sign is "
                                "punctuation); use values of letters and digits, or a single punctuation mark.")
    return ids[0]


def convert(assembled: Any, bos: str, causal: bool, name: str) -> Converted:
    """tracr's AssembledTransformerModel -> HookedTransformerConfig fields and TL weights."""
    params = {k: {p: np.asarray(v, dtype=np.float64) for p, v in mod.items()} for k, mod in assembled.params.items()}
    cfg = assembled.model_config
    n_layers, n_heads, key_size, d_mlp = cfg.num_layers, cfg.num_heads, cfg.key_size, cfg.mlp_hidden_size
    labels = list(assembled.residual_labels)
    d_model = len(labels)
    in_map = dict(assembled.input_encoder.encoding_map)  # value -> tracr input id
    out_values = sorted(assembled.output_encoder.encoding_map, key=assembled.output_encoder.encoding_map.get)
    inputs = [v for v in sorted(in_map, key=in_map.get) if v not in (bos, COMPILER_PAD)]
    input_words = [str(v) for v in inputs]
    output_words = [str(v) for v in out_values]
    extra_words = [w for w in output_words if w not in input_words]
    clashes = sorted({w for w in extra_words if w in (bos, PAD, UNK)} | {w for w in extra_words
                                                                       if extra_words.count(w) > 1})
    if clashes:
        raise CircuitbenchError(f"the program's output values {clashes} collide with the BOS, <pad> or <unk> token, "
                                "or with each other as text; make its outputs distinct words (or pick another "
                                "--bos). Nothing was written.")
    tokenizer = word_level_tokenizer(input_words + extra_words, bos=bos)
    for word in input_words:
        _check_word(word, tokenizer, "input value")
    output_ids = [_check_word(w, tokenizer, "output value") for w in output_words]
    vocab_size = len(tokenizer)

    token_embed = params["token_embed"]["embeddings"]
    tracr_ids = {int(tokenizer.convert_tokens_to_ids(str(v))): in_map[v] for v in inputs}
    tracr_ids[int(tokenizer.bos_token_id)] = in_map[bos]
    w_e = np.stack([token_embed[tracr_ids.get(i, in_map[COMPILER_PAD])] for i in range(vocab_size)])
    pad_dim = labels.index(f"tokens:{COMPILER_PAD}")
    mask_pads = not causal
    d_head = key_size + 1 if mask_pads else key_size

    state: dict[str, np.ndarray] = {"embed.W_E": w_e, "pos_embed.W_pos": params["pos_embed"]["embeddings"]}
    for l in range(n_layers):
        attn, mlp = f"transformer/layer_{l}/attn", f"transformer/layer_{l}/mlp"
        per_head = {n: params[f"{attn}/{m}"]["w"].reshape(d_model, n_heads, key_size).transpose(1, 0, 2)
                    for n, m in (("Q", "query"), ("K", "key"), ("V", "value"))}
        biases = {n: params[f"{attn}/{m}"]["b"].reshape(n_heads, key_size)
                  for n, m in (("Q", "query"), ("K", "key"), ("V", "value"))}
        w_o = params[f"{attn}/linear"]["w"].reshape(n_heads, key_size, d_model)
        block = f"blocks.{l}"
        for n in "QKV":
            state[f"{block}.attn.W_{n}"] = np.zeros((n_heads, d_model, d_head))
            state[f"{block}.attn.W_{n}"][:, :, :key_size] = per_head[n]
            state[f"{block}.attn.b_{n}"] = np.zeros((n_heads, d_head))
            state[f"{block}.attn.b_{n}"][:, :key_size] = biases[n]
        state[f"{block}.attn.W_O"] = np.zeros((n_heads, d_head, d_model))
        state[f"{block}.attn.W_O"][:, :key_size] = w_o
        state[f"{block}.attn.b_O"] = params[f"{attn}/linear"]["b"]
        if mask_pads:
            for h in range(n_heads):
                if _head_has_weights(state, block, h):
                    state[f"{block}.attn.b_Q"][h, key_size] = 1.0
                    state[f"{block}.attn.W_K"][h, pad_dim, key_size] = PAD_KEY
        state[f"{block}.mlp.W_in"] = params[f"{mlp}/linear_1"]["w"]
        state[f"{block}.mlp.b_in"] = params[f"{mlp}/linear_1"]["b"]
        state[f"{block}.mlp.W_out"] = params[f"{mlp}/linear_2"]["w"]
        state[f"{block}.mlp.b_out"] = params[f"{mlp}/linear_2"]["b"]
    read_out = _read_out_matrix(assembled, d_model)
    w_u = np.zeros((d_model, vocab_size))
    b_u = np.full(vocab_size, OFF_OUTPUT_LOGIT)
    for j, token_id in enumerate(output_ids):
        w_u[:, token_id] = read_out[:, j]
        b_u[token_id] = 0.0
    state.update({"unembed.W_U": w_u, "unembed.b_U": b_u})

    config = {"model_name": name, "original_architecture": "tracr", "n_layers": n_layers, "d_model": d_model,
              "n_heads": n_heads, "d_head": d_head, "d_mlp": d_mlp, "d_vocab": vocab_size, "n_ctx": len(
                  params["pos_embed"]["embeddings"]), "act_fn": "relu", "normalization_type": None,
              "attn_only": False, "positional_embedding_type": "standard",
              "attention_dir": "causal" if causal else "bidirectional", "use_attn_scale": True,
              "attn_scale": math.sqrt(key_size), "default_prepend_bos": True}
    return Converted(config=config, state={k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()},
                     tokenizer=tokenizer, input_tokens=input_words, output_tokens=output_words,
                     residual_labels=labels, read_out=read_out, output_ids=output_ids, key_size=key_size)


def _head_has_weights(state: dict[str, Any], block: str, h: int) -> bool:
    return any(np.any(state[f"{block}.attn.{p}"][h] != 0) for p in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"))


# --- ground truth --------------------------------------------------------------------------

def _value_name(label: str) -> str:
    """The RASP value a residual direction belongs to: 'reverse_1:a' -> 'reverse_1'."""
    return label.split(":", 1)[0]


def _names(labels: list[str], dims: np.ndarray) -> list[str]:
    return sorted({_value_name(labels[i]) for i in np.flatnonzero(dims)})


def true_circuit(state: dict[str, torch.Tensor], labels: list[str], n_layers: int, n_heads: int, key_size: int,
                 program: str) -> dict[str, Any]:
    """circuit.json: the heads and MLPs with non-zero weights, what each reads and writes (RASP
    values, i.e. residual directions) and the edges from writers to readers. Reads are those of
    tracr's `key_size` head dimensions: the pad-mask dimension added after them reads the pad
    flag only, adds exactly 0 on unpadded inputs and is no part of the program."""
    w = {k: v.numpy() for k, v in state.items()}
    written: dict[str, set[int]] = {"input": set(np.flatnonzero(np.abs(w["embed.W_E"]).sum(0) + np.abs(
        w["pos_embed.W_pos"]).sum(0)))}
    reads: dict[str, dict[str, set[int]]] = {}
    components: dict[str, dict[str, Any]] = {}
    heads, mlps = [], []
    for l in range(n_layers):
        a = f"blocks.{l}.attn"
        for h in range(n_heads):
            if not _head_has_weights(w, f"blocks.{l}", h):
                continue
            node = f"a{l}.h{h}"
            heads.append([l, h])
            reads[node] = {c: set(np.flatnonzero(np.abs(w[f"{a}.W_{c.upper()}"][h, :, :key_size]).sum(1)))
                           for c in "qkv"}
            written[node] = set(np.flatnonzero(np.abs(w[f"{a}.W_O"][h, :key_size]).sum(0)))
            components[node] = {"reads": {c: _names(labels, _mask(reads[node][c], len(labels))) for c in "qkv"},
                                "writes": _names(labels, _mask(written[node], len(labels)))}
        m = f"blocks.{l}.mlp"
        if np.any(w[f"{m}.W_in"] != 0) or np.any(w[f"{m}.W_out"] != 0):
            node = f"m{l}"
            mlps.append(l)
            reads[node] = {"": set(np.flatnonzero(np.abs(w[f"{m}.W_in"]).sum(1)))}
            written[node] = set(np.flatnonzero(np.abs(w[f"{m}.W_out"]).sum(0)))
            components[node] = {"reads": _names(labels, _mask(reads[node][""], len(labels))),
                                "writes": _names(labels, _mask(written[node], len(labels)))}
    reads["logits"] = {"": set(np.flatnonzero(np.abs(w["unembed.W_U"]).sum(1)))}
    order = ["input", *[n for n in components], "logits"]  # forward order: a{l}.* before m{l} before a{l+1}.*
    edges = []
    for i, src in enumerate(order[:-1]):
        for dst in order[i + 1:]:
            if dst.startswith("a") and dst.split(".")[0] == src.split(".")[0]:
                continue  # heads of one layer do not see each other
            for part, dims in reads[dst].items():
                if written[src] & dims:
                    edges.append(f"{src}->{dst}" + (f"<{part}>" if part else ""))
    return {"source": "tracr", "program": program, "n_layers": n_layers, "n_heads": n_heads, "heads": heads,
            "mlps": mlps, "nodes": [f"a{l}.h{h}" for l, h in heads] + [f"m{l}" for l in mlps], "edges": edges,
            "components": components, "output": _names(labels, _mask(reads["logits"][""], len(labels)))}


def _mask(dims: set[int], size: int) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    out[list(dims)] = True
    return out


# --- verification --------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    n_inputs: int
    max_abs_diff_residual: float
    max_abs_diff_output: float
    n_positions_compared: int
    n_near_ties: int  # positions where tracr's own output is a near tie: decoded outputs not compared


def sample_inputs(vocab: tuple[Any, ...], max_seq_len: int, n: int, seed: int = 0) -> list[list[Any]]:
    """Deterministic inputs of every length 1..max_seq_len (all of them when there are few)."""
    rng = random.Random(seed)
    out: list[list[Any]] = []
    for length in range(1, max_seq_len + 1):
        k = max(1, n // max_seq_len)
        if len(vocab) ** length <= k:
            out += [list(t) for t in itertools.product(vocab, repeat=length)]
        else:
            out += [[rng.choice(vocab) for _ in range(length)] for _ in range(k)]
    return out


def verify(assembled: Any, conv: Converted, model: Any, inputs: list[list[Any]], bos: str) -> Verification:
    """Run tracr's forward and the loaded checkpoint on the same inputs; raise on any difference
    beyond TOLERANCE or any different decoded output. Inputs are run in batches of one length, and
    tracr's forward is compiled once per length (op by op, jax compiled every operation for every
    length: minutes and gigabytes for a few dozen lengths)."""
    import jax

    from circuitbench.models.hooks import resid_post

    @jax.jit
    def tracr_forward(params: Any, tokens: Any) -> tuple[Any, Any]:
        out = assembled.forward(params, tokens)  # what assembled.apply runs, for a batch
        return out.transformer_output.output, out.unembedded_output

    d_model = len(conv.residual_labels)
    diffs_resid, diffs_out, compared, ties = [], [], 0, 0
    last = resid_post(conv.config["n_layers"] - 1)
    by_length: dict[int, list[list[Any]]] = {}
    for seq in inputs:
        by_length.setdefault(len(seq), []).append(seq)
    for group in by_length.values():
        ref_resid, ref_unembedded = (np.asarray(x) for x in tracr_forward(
            assembled.params, np.array([assembled.input_encoder.encode([bos, *seq]) for seq in group])))
        ours = torch.tensor([[int(conv.tokenizer.bos_token_id)] + [
            int(conv.tokenizer.convert_tokens_to_ids(str(v))) for v in seq] for seq in group])
        logits, cache = model.run_with_cache(ours, [last])
        for i, seq in enumerate(group):
            resid_ref = ref_resid[i].astype(np.float64)  # [pos, d_model]
            decoded = assembled.output_encoder.decode(ref_unembedded[i].tolist())
            out_ref = resid_ref @ conv.read_out  # [pos, n_outputs]
            resid = cache[last][i, :, :d_model].double().cpu().numpy()
            out = logits[i][:, conv.output_ids].double().cpu().numpy()
            scale = max(1.0, float(np.abs(resid_ref).max()))
            diffs_resid.append(float(np.abs(resid - resid_ref).max()) / scale)
            diffs_out.append(float(np.abs(out - out_ref).max()) / max(1.0, float(np.abs(out_ref).max())))
            predicted = logits[i].argmax(-1).tolist()
            for pos in range(1, len(seq) + 1):
                top2 = np.sort(out_ref[pos])[-2:] if out_ref.shape[1] > 1 else np.array([-np.inf, out_ref[pos, 0]])
                if top2[1] - top2[0] <= 10 * TOLERANCE:
                    ties += 1
                    continue
                compared += 1
                want = str(decoded[pos])
                got = conv.tokenizer.convert_ids_to_tokens(predicted[pos])
                if got != want:
                    raise CircuitbenchError(f"conversion check failed: on input {seq} position {pos} tracr decodes "
                                            f"{want!r} but the converted model's argmax is {got!r}. Nothing was "
                                            "written.")
    worst = max(max(diffs_resid), max(diffs_out))
    if worst > TOLERANCE:
        raise CircuitbenchError(f"conversion check failed: max |converted - tracr| = {worst:.3g} (relative) exceeds "
                                f"{TOLERANCE}. Nothing was written.")
    return Verification(n_inputs=len(inputs), max_abs_diff_residual=max(diffs_resid),
                        max_abs_diff_output=max(diffs_out), n_positions_compared=compared, n_near_ties=ties)


# --- prompts for the END-position task -----------------------------------------------------

def distinct_inputs(n_values: int, max_seq_len: int, cap: int = 10**12) -> int:
    """How many inputs of length 1..max_seq_len there are (sum of n_values^L), at most `cap`."""
    total, power = 0, 1
    for _ in range(max_seq_len):
        power *= n_values
        total += power
        if total >= cap:
            return cap
    return total


def task_prompts(sop: Any, model: Any, conv: Converted, vocab: tuple[Any, ...], max_seq_len: int, n: int,
                 seed: int = 0) -> list[dict[str, str]]:
    """Up to `n` records {prompt, answer, distractor, corrupted}: inputs of random length (1 ..
    max_seq_len; a length-dependent head only shows across lengths) whose last output (the RASP
    program's, evaluated in Python) the converted model also predicts, each with a corrupted
    input of the same length and another answer (the distractor). When `n` reaches the number of
    distinct inputs, every input is taken (nothing to sample): fewer records than `n` then."""
    rng = random.Random(seed)
    seen: dict[tuple[Any, ...], str] = {}
    tried: set[tuple[Any, ...]] = set()

    def consider(seq: tuple[Any, ...]) -> None:
        tried.add(seq)
        try:
            value = sop(list(seq))[-1]
        except Exception:  # noqa: BLE001 - the program is undefined on this input (e.g. sort_unique, repeats)
            return
        if value is not None:
            seen[seq] = str(value)

    if n >= distinct_inputs(len(vocab), max_seq_len):
        for length in range(1, max_seq_len + 1):
            for seq in itertools.product(vocab, repeat=length):
                consider(seq)
    else:
        for _ in range(n * 20):  # (the draws every earlier import made: the same seed gives the same prompts)
            seq = tuple(rng.choice(vocab) for _ in range(rng.randint(1, max_seq_len)))
            if seq not in tried:
                consider(seq)
    good: list[tuple[Any, ...]] = []
    for length in sorted({len(seq) for seq in seen}):
        group = [seq for seq in seen if len(seq) == length]
        tokens = torch.tensor([[int(conv.tokenizer.bos_token_id)] + [
            int(conv.tokenizer.convert_tokens_to_ids(str(v))) for v in seq] for seq in group])
        predicted = model.run(tokens)[:, -1].argmax(-1).tolist()
        good += [seq for seq, p in zip(group, predicted) if conv.tokenizer.convert_ids_to_tokens(p) == seen[seq]]
    rng.shuffle(good)
    same_length: dict[int, list[tuple[Any, ...]]] = {}
    for seq in good:
        same_length.setdefault(len(seq), []).append(seq)
    other_answers: dict[tuple[int, str], list[tuple[Any, ...]]] = {}  # (length, answer) -> inputs with another
    records = []
    for seq in good:
        key = (len(seq), seen[seq])
        if key not in other_answers:
            other_answers[key] = [o for o in same_length[len(seq)] if seen[o] != seen[seq]]
        others = other_answers[key]
        if not others:
            continue
        corrupted = rng.choice(others)
        records.append({"prompt": " ".join(map(str, seq)), "answer": f" {seen[seq]}",
                        "distractor": f" {seen[corrupted]}", "corrupted": " ".join(map(str, corrupted))})
        if len(records) == n:
            break
    return records


# --- bounds before compute -----------------------------------------------------------------
#
# Measured (tracr-pypi 0.x, one CPU core): tracr builds every MLP one basis direction at a time,
# each direction a row of np.eye(width): an MLP `width` wide costs width³ operations and a
# width² matrix. Widths come from value sets: a categorical SequenceMap is |X|·|Y| wide
# (reverse's length × indices: max_seq_len², so reverse costs ~max_seq_len⁶), a categorical Map
# |output values|, a numerical Map 2·|input values|, a SelectorWidth 2·(max_seq_len + 1). reverse
# at max_seq_len 16/32/48: MLP 272/1056/2352 wide, compile 4/6/26 s (64 s on a loaded machine);
# at 200: 40,200 wide, a 12.9 GB np.eye (13.7 GB seen) and ~18 h. The check then compiles
# tracr's forward once per input length (~0.3 s each) and evaluates the program in Python for
# the task prompts (per input: length² selector cells).

LIMIT_SECONDS = 300.0  # estimated longer: refused unless --allow-large
LIMIT_BYTES = 4 * 2**30  # estimated more memory: refused unless --allow-large (never more than is free)
MAX_PROMPTS = 10_000
MAX_VALUE_EVALUATIONS = 2_000_000  # listing value sets exactly calls the program's functions this often at most
SECONDS_FIXED = 20.0  # start-up (imports), jax, XLA compiles, saving: 15-20 s for the smallest programs
SECONDS_PER_CUBE = 1.2e-9  # per width³ of every MLP (np.eye rows)
SECONDS_PER_LENGTH = 0.5  # the check: one compile of tracr's forward per input length
SECONDS_PER_CELL = 3e-6  # the RASP evaluator, per selector cell, for the task prompts
BYTES_FIXED = 900 * 2**20  # the process with torch, jax and transformers loaded
BYTES_PER_PARAM = 28  # tracr's float32 and float64 copies, the conversion's float64, torch, the loaded check


@dataclass(frozen=True)
class SizeEstimate:
    """What compiling a program will take, from the sizes of its value sets (tracr's own basis
    inference when that is cheap; upper bounds otherwise, `exact` False)."""

    d_model: int
    d_mlp: int  # the widest MLP layer, hidden units
    widest: str  # the RASP expressions in that layer
    n_layers: int
    n_params: int
    seconds: float
    bytes: int
    exact: bool

    def describe(self) -> str:
        about = "about" if self.exact else "up to"
        return (f"{about} {self.n_layers} layers, residual width {self.d_model:,}, widest MLP layer "
                f"{self.d_mlp:,} units ({self.widest}), {self.n_params:,} parameters: {about} "
                f"{_duration(self.seconds)} and {self.bytes / 2**30:.1f} GB")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:,.0f} days"


def _selector_sops(selector: Any) -> list[Any]:
    """The SOps a selector compares (keys and queries, through And/Or/Not)."""
    from tracr.rasp import rasp

    out: list[Any] = []
    for child in selector.children:
        out += [child] if isinstance(child, rasp.SOp) else _selector_sops(child)
    return out


def _value_set_sizes(sops: list[Any], vocab: tuple[Any, ...], max_seq_len: int,
                     program: str) -> tuple[dict[int, int], bool]:
    """Each SOp's number of values (by id), listed as tracr's basis inference lists them (the
    program's functions applied to every value, or pair of values, of their inputs) while that
    takes at most MAX_VALUE_EVALUATIONS calls; beyond, an upper bound (a SequenceMap: the product
    of its inputs' counts) and False for `exact`."""
    from tracr.rasp import rasp
    from tracr.utils import errors

    values: dict[int, set[Any] | None] = {}  # None: not listed (too many calls), size is a bound
    size: dict[int, int] = {}
    budget = MAX_VALUE_EVALUATIONS

    def listed(count: int) -> bool:
        nonlocal budget
        budget -= count
        return budget >= 0

    for e in sops:
        vs: set[Any] | None = None
        if isinstance(e, rasp.TokensType):
            vs, bound = set(vocab), len(vocab)
        elif isinstance(e, (rasp.IndicesType, rasp.SelectorWidth)):
            bound = max_seq_len + isinstance(e, rasp.SelectorWidth)
            vs = set(range(bound)) if listed(bound) else None
        elif isinstance(e, rasp.Map):
            inner, bound = values[id(e.inner)], size[id(e.inner)]
            if inner is not None and listed(len(inner)):
                f = errors.ignoring_arithmetic_errors(e.f)
                vs = {y for y in map(f, inner) if y is not None}
        elif isinstance(e, rasp.SequenceMap):
            fst, snd, bound = values[id(e.fst)], values[id(e.snd)], size[id(e.fst)] * size[id(e.snd)]
            if fst is not None and snd is not None and listed(bound):
                f = errors.ignoring_arithmetic_errors(e.f)
                vs = {y for y in itertools.starmap(f, itertools.product(fst, snd)) if y is not None}
        elif isinstance(e, rasp.Aggregate):
            inner, bound = values[id(e.sop)], size[id(e.sop)]
            if rasp.is_numerical(e):
                bound *= max_seq_len
                if inner is not None and listed(bound):
                    vs = {x / n for x in inner for n in range(1, max_seq_len + 1)}
            else:
                vs = inner
        else:  # Full, constants
            bound = 1
        values[id(e)] = vs
        size[id(e)] = len(vs) if vs is not None else bound
    return size, all(v is not None for v in values.values())


def _cost(sops: list[Any], size: dict[int, int], n_vocab: int, max_seq_len: int, n_prompts: int,
          exact: bool) -> SizeEstimate:
    """The model tracr will build, layer by layer as its compiler allocates them (an attention
    sublayer after everything a head reads, an MLP after everything it reads), and its cost."""
    from tracr.rasp import rasp

    slot: dict[int, int] = {}  # attention sublayers 0, 2, 4, ...; MLP sublayers 1, 3, 5, ...; inputs -1
    mlp_width: dict[int, int] = {}
    mlp_names: dict[int, list[str]] = {}
    heads: dict[int, int] = {}
    key_size, cube, projections, selects = 1, 0, 0, 0
    # the BOS and pad token directions, the constant 'one', and the tokens and indices even if unused
    d_model = 3 + (0 if any(isinstance(e, rasp.TokensType) for e in sops) else n_vocab) + (
        0 if any(isinstance(e, rasp.IndicesType) for e in sops) else max_seq_len)
    for e in sops:
        s = size.get(id(e), 1)
        d_model += 1 if rasp.is_numerical(e) else s
        reads = [c for c in e.children if isinstance(c, rasp.SOp)]
        compared = _selector_sops(e.selector) if isinstance(e, (rasp.Aggregate, rasp.SelectorWidth)) else []
        after = max((slot[id(c)] for c in reads + compared), default=-1)
        attn_slot = after + 1 if after % 2 else after + 2  # the next attention sublayer
        mlp_slot = after + 1 if after % 2 == 0 else after + 2  # the next MLP sublayer
        width = 0
        if isinstance(e, rasp.SequenceMap):
            width = 2 if isinstance(e, rasp.LinearSequenceMap) else size.get(id(e.fst), 1) * size.get(id(e.snd), 1)
            slot[id(e)] = mlp_slot
            cube += width**3 + width * s * s + s**3
        elif isinstance(e, rasp.Map):
            inner = size.get(id(e.inner), 1)
            width = 2 * inner + 1 if rasp.is_numerical(e.inner) else (1 if rasp.is_numerical(e) else s)
            slot[id(e)] = mlp_slot
            # a numerical input is discretised: tracr builds that hidden layer about six times over
            cube += (6 if rasp.is_numerical(e.inner) else 1) * width**3 + inner * s * s + s**3
        elif isinstance(e, rasp.SelectorWidth):
            width = 2 * (max_seq_len + 1)
            slot[id(e)] = attn_slot + 1
            heads[attn_slot] = heads.get(attn_slot, 0) + 1
            d_model += 1  # the head's output direction
            cube += width**3 + s**3
        elif isinstance(e, rasp.Aggregate):
            slot[id(e)] = attn_slot
            heads[attn_slot] = heads.get(attn_slot, 0) + 1
        else:
            slot[id(e)] = -1
        if compared:
            key_size = max(key_size, *(size.get(id(c), 1) for c in compared))
            selects += 1
        if width:
            mlp_width[slot[id(e)]] = mlp_width.get(slot[id(e)], 0) + width
            mlp_names.setdefault(slot[id(e)], []).append(e.label)
        projections += s * s
    n_layers = max(slot.values(), default=-1) // 2 + 1
    widest = max(mlp_width, key=mlp_width.__getitem__, default=None)
    d_mlp = mlp_width.get(widest, 0) if widest is not None else 0
    n_heads = max(heads.values(), default=1)
    n_params = (n_layers * (2 * d_model * d_mlp + 4 * d_model * (key_size + 1) * n_heads)
                + (n_vocab + 3 + max_seq_len + 1) * d_model)
    evaluated = min(20 * n_prompts, distinct_inputs(n_vocab, max_seq_len)) if n_prompts else 0
    seconds = (SECONDS_FIXED + SECONDS_PER_CUBE * (cube + d_model * projections) + SECONDS_PER_LENGTH * max_seq_len
               + SECONDS_PER_CELL * evaluated * (max_seq_len ** 2 / 4 * (selects + 1) + max_seq_len * len(sops)))
    biggest_matrix = max([d_model, *mlp_width.values()]) ** 2 * 8
    return SizeEstimate(d_model=d_model, d_mlp=d_mlp, widest=", ".join(mlp_names.get(widest, [])) or "none",
                        n_layers=n_layers, n_params=n_params, seconds=seconds,
                        bytes=BYTES_FIXED + biggest_matrix + BYTES_PER_PARAM * n_params, exact=exact)


def estimate_size(sop: Any, vocab: tuple[Any, ...], max_seq_len: int, n_prompts: int, program: str) -> SizeEstimate:
    """What compiling `sop` for `vocab` and `max_seq_len` will take (a few milliseconds to find:
    the value sets only, no MLP is built)."""
    from tracr.rasp import rasp

    sops = [e for e in _postorder(sop) if isinstance(e, rasp.SOp)]
    try:
        sizes, exact = _value_set_sizes(sops, vocab, max_seq_len, program)
    except (NotImplementedError, ValueError, KeyError, TypeError, ArithmeticError, AssertionError) as e:
        raise CircuitbenchError(f"PROGRAM {program}: tracr cannot compile it ({type(e).__name__}: {e}).") from None
    return _cost(sops, sizes, len(vocab), max_seq_len, n_prompts, exact=exact)


def check_size(sop: Any, program: str, vocab: tuple[Any, ...], max_seq_len: int, n_prompts: int,
               allow_large: bool) -> SizeEstimate:
    """Before any compute: refuse a program whose compile is estimated to take longer than
    LIMIT_SECONDS or more memory than LIMIT_BYTES (with `allow_large`: more than is free)."""
    from circuitbench.models.memory import available_memory_bytes

    estimate = estimate_size(sop, vocab, max_seq_len, n_prompts, program)
    free = available_memory_bytes(torch.device("cpu"))
    limit_bytes = free if allow_large else min(LIMIT_BYTES, free)

    def fits(e: SizeEstimate) -> bool:
        return e.bytes <= limit_bytes and (allow_large or e.seconds <= LIMIT_SECONDS)

    if fits(estimate):
        return estimate
    shorter = ""
    if estimate.exact and max_seq_len > 1:
        low, high = 0, max_seq_len  # the longest max_seq_len that fits, by bisection (each try: milliseconds)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(estimate_size(sop, vocab, mid, n_prompts, program)) else (low, mid)
        shorter = f" (at most {low} here)" if low else ""
    limits = f"{limit_bytes / 2**30:.1f} GB" + ("" if allow_large else f" and {_duration(LIMIT_SECONDS)}")
    override = ("" if allow_large or estimate.bytes > free
                else f"; or pass --allow-large to compile anyway ({free / 2**30:.1f} GB free)")
    raise CircuitbenchError(
        f"import-tracr {program} --max-seq-len {max_seq_len} with {len(vocab)} --vocab values is too large to "
        f"compile here: {estimate.describe()}, over the limit of {limits}. (tracr builds each MLP one direction at "
        f"a time: the cost grows with the cube of its width, and widths grow with --max-seq-len and the number of "
        f"values.) Use a smaller --max-seq-len{shorter} or fewer --vocab values{override}.")


# --- the import ----------------------------------------------------------------------------

IMPORT_FILES = frozenset({*CONFIG_FILES[:1], WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", CIRCUIT_FILE, TRACR_FILE, PROMPTS_FILE})
IMPORT_RECORD_KEYS = ("program", "vocab", "max_seq_len", "compiler_pad", "residual_labels")
IMPORT_OUTPUT = "a checkpoint `circuitbench import-tracr` wrote"


def not_an_import(folder: Path) -> str | None:
    """Why `folder` is not a checkpoint import-tracr wrote (None when it is): an import holds its
    record tracr.json (with the fields every import writes) and nothing but the files an import
    writes (IMPORT_FILES): no other file, no subfolder, no symlink."""
    record_file = folder / TRACR_FILE
    if record_file.is_symlink() or not record_file.is_file():
        return f"no {TRACR_FILE}, the record every import writes"
    try:
        record = json.loads(record_file.read_text()) if record_file.stat().st_size < 16 << 20 else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or any(key not in record for key in IMPORT_RECORD_KEYS):
        return f"its {TRACR_FILE} is not an import record"
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                     if p.name not in IMPORT_FILES or p.is_symlink() or not p.is_file())
    if foreign:
        return f"it also holds {', '.join(foreign[:4])}{', …' if len(foreign) > 4 else ''}, which no import writes"
    return None


@dataclass(frozen=True)
class ImportReport:
    path: Path
    program: str
    n_layers: int
    n_heads: int
    d_model: int
    circuit: dict[str, Any]
    verification: Verification
    n_prompts: int
    n_distinct_inputs: int  # inputs of length 1..max_seq_len there are (capped at 10^12)
    estimate: SizeEstimate

    def summary(self, n_asked: int, max_seq_len: int) -> str:
        """One paragraph: what was written, how it matched tracr, and why fewer prompts than asked."""
        check, distinct, short = self.verification, self.n_distinct_inputs, ""
        if self.n_prompts < n_asked:
            unusable = "undefined, mispredicted or without a same-length input with another answer"
            short = (f" (of {n_asked} asked: only {distinct:,} distinct inputs of length 1-{max_seq_len} exist"
                     + (f", {distinct - self.n_prompts:,} of them {unusable})" if self.n_prompts < distinct else ")")
                     if n_asked >= distinct else f" (of {n_asked} asked: the other inputs drawn were {unusable})")
        return (f"wrote {self.path}: {self.n_layers} layers × {self.n_heads} heads, d_model {self.d_model}; circuit "
                f"{', '.join(self.circuit['nodes'])}; matches tracr on {check.n_inputs} inputs (max |diff| residual "
                f"{check.max_abs_diff_residual:.2g}, output {check.max_abs_diff_output:.2g}; "
                f"{check.n_positions_compared} outputs identical); {self.n_prompts} prompts in prompts.jsonl{short}")


def _quiet_jax() -> None:
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


DEFAULT_BOS = "BOS"  # tracr's compiler BOS
DEFAULT_N_PROMPTS = 64


def reproduce_command(program: str, vocab: str, max_seq_len: int, *, causal: bool = False, bos: str = DEFAULT_BOS,
                      n_prompts: int = DEFAULT_N_PROMPTS) -> str:
    """The `circuitbench import-tracr` command that makes a checkpoint again (recorded in its
    tracr.json): `vocab` as typed, options at their defaults left out, the output folder as DIR."""
    return (f"circuitbench import-tracr {program} --vocab {vocab} --max-seq-len {max_seq_len}"
            + (" --causal" if causal else "") + (f" --bos {bos}" if bos != DEFAULT_BOS else "")
            + (f" --n-prompts {n_prompts}" if n_prompts != DEFAULT_N_PROMPTS else "") + " --out DIR")


def import_tracr(program: str, vocab: tuple[Any, ...], max_seq_len: int, out: Path, *, causal: bool = False,
                 bos: str = DEFAULT_BOS, force: bool = False, n_prompts: int = DEFAULT_N_PROMPTS, command: str = "",
                 allow_large: bool = False) -> ImportReport:
    """Compile PROGRAM with tracr, convert it, check the conversion against tracr's forward and
    write the TL-format checkpoint with circuit.json, tracr.json and prompts.jsonl to `out`.

    Everything is checked before any compute: the tokens, the sizes (`check_size`), and `out`
    (missing or empty; with `force`, an earlier import: `not_an_import`; never the working
    directory, home, root or their ancestors). The checkpoint is written into a staging folder
    next to `out`, which replaces `out` only once it is complete (`replace_dir_staged`)."""
    try:
        import tracr  # noqa: F401
        from tracr.compiler import compiling
        from tracr.rasp import rasp
    except ImportError:
        raise CircuitbenchError("import-tracr needs tracr: pip install 'circuitbench[tracr]' (tracr-pypi).") from None
    from circuitbench.models.loading import load_model

    _quiet_jax()
    if max_seq_len < 1:
        raise CircuitbenchError(f"--max-seq-len {max_seq_len}: must be at least 1.")
    if not 0 <= n_prompts <= MAX_PROMPTS:
        raise CircuitbenchError(f"--n-prompts {n_prompts}: give 0 to {MAX_PROMPTS:,} (each prompt is an input the "
                                "program is evaluated on and the model run on; a task needs tens to hundreds).")
    check_tokens(vocab, bos)
    check_replaceable_dir(out, "--out", force=force, not_own_output=not_an_import, what=IMPORT_OUTPUT)
    sop = resolve_program(program, ProgramArgs(vocab=vocab, max_seq_len=max_seq_len))
    if not rasp.is_categorical(sop):
        raise CircuitbenchError(f"PROGRAM {program}: its output is numerical (a number in one residual direction), "
                                "which has no answer token to benchmark. Wrap it in rasp.categorical(rasp.Map(...)) "
                                "to bucket the value into tokens.")
    canonical_labels(sop)
    estimate = check_size(sop, program, vocab, max_seq_len, n_prompts, allow_large)
    n_distinct = distinct_inputs(len(vocab), max_seq_len)

    def build(staging: Path) -> ImportReport:
        try:
            assembled = compiling.compile_rasp_to_model(sop, vocab=set(vocab), max_seq_len=max_seq_len,
                                                       causal=causal, compiler_bos=bos, compiler_pad=COMPILER_PAD)
        except (NotImplementedError, ValueError, KeyError, TypeError, ArithmeticError, AssertionError) as e:
            raise CircuitbenchError(f"PROGRAM {program}: tracr cannot compile it ({type(e).__name__}: {e}).") from None
        conv = convert(assembled, bos, causal, f"tracr:{program}")
        circuit = true_circuit(conv.state, conv.residual_labels, conv.config["n_layers"], conv.config["n_heads"],
                               conv.key_size, program)
        record = {"program": program, "vocab": list(vocab), "max_seq_len": max_seq_len, "causal": causal, "bos": bos,
                  "compiler_pad": COMPILER_PAD, "input_tokens": conv.input_tokens,
                  "output_tokens": conv.output_tokens, "output_sop": sop.label,
                  "residual_labels": conv.residual_labels, "command": command,
                  "tracr_version": _version("tracr-pypi")}
        save_tl_checkpoint(staging, conv.config, conv.state, conv.tokenizer, {CIRCUIT_FILE: circuit})
        model = load_model(str(staging), device="cpu")
        check = verify(assembled, conv, model, sample_inputs(vocab, max_seq_len, N_VERIFY), bos)
        record["verification"] = {**check.__dict__, "tolerance": TOLERANCE}
        prompts = task_prompts(sop, model, conv, vocab, max_seq_len, n_prompts) if n_prompts else []
        write_atomic(staging / TRACR_FILE, json.dumps(record, indent=2) + "\n")
        if prompts:
            write_atomic(staging / PROMPTS_FILE, "".join(json.dumps(r) + "\n" for r in prompts))
        return ImportReport(path=out, program=program, n_layers=conv.config["n_layers"],
                            n_heads=conv.config["n_heads"], d_model=conv.config["d_model"], circuit=circuit,
                            verification=check, n_prompts=len(prompts), n_distinct_inputs=n_distinct,
                            estimate=estimate)

    return replace_dir_staged(out, build, not_an_import, "--out", force=force, what=IMPORT_OUTPUT)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
