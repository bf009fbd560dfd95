"""Tokenize a PromptSet for one model's tokenizer and count what must be dropped: plain Python,
no torch, so `circuitbench validate --model` stays fast (prompts/encoding.py packs the rows that
survive into tensors).

Prompts that cannot be used (multi-token answer, clean and corrupted of different token length,
segments that tokenize differently on their own) are dropped and counted with reasons and
examples; if more than `max_drop_fraction` would go, the run stops with a message instead.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import Prompt, PromptSet, excerpt
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.spans import token_span_names
from circuitbench.specs.registries import GENERATORS
from circuitbench.specs.task import TaskSpec


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Vocabulary:
    """What encoding needs from a model: its tokenizer, BOS handling and random-token pool."""

    tokenizer: TextTokenizer
    bos_id: int | None
    pad_id: int
    token_pool: list[int]  # ids symbol prompts draw from (no special tokens)


@dataclass
class DropReport:
    n_total: int
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(self.reasons.values())

    def drop(self, reason: str, example: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _single_token(vocab: Vocabulary, text: str, what: str) -> int:
    ids = vocab.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise _Drop(f"{what} is not a single token")
    return ids[0]


def _encode_segments(vocab: Vocabulary, prompt: Prompt,
                     corrupted: bool) -> tuple[list[int], dict[str, int], list[str]]:
    """(ids, named positions, the span name of every token: prompts/spans.py)."""
    segments = prompt.corrupted_segments if corrupted else prompt.segments
    assert segments is not None
    ids: list[int] = [] if vocab.bos_id is None else [vocab.bos_id]
    positions: dict[str, int] = {}
    counts: list[int] = []
    for seg in segments:
        part = vocab.tokenizer.encode(seg.text, add_special_tokens=False)
        ids.extend(part)
        counts.append(len(part))
        if seg.label is not None:
            positions[seg.label] = len(ids) - 1
    whole = vocab.tokenizer.encode("".join(s.text for s in segments), add_special_tokens=False)
    offset = 0 if vocab.bos_id is None else 1
    if ids[offset:] != whole:
        # Segment-wise tokenization must equal the real one, or named positions would lie.
        raise _Drop("segments tokenize differently from the whole prompt")
    return ids, positions, token_span_names(vocab.bos_id is not None, [s.label for s in segments], counts)


def _encode_symbols(vocab: Vocabulary, symbols: list[int], named: dict[str, int]) -> tuple[list[int], dict[str, int]]:
    if max(symbols) >= len(vocab.token_pool):
        raise _Drop("symbol outside the model's token pool (n_symbols too large)")
    ids = [vocab.token_pool[s] for s in symbols]
    offset = 0
    if vocab.bos_id is not None:
        ids = [vocab.bos_id] + ids
        offset = 1
    return ids, {k: v + offset for k, v in named.items()}


@dataclass
class TokenizedPrompt:
    """One prompt that survived encoding."""

    text: str
    ids: list[int]
    corrupted_ids: list[int] | None
    answer: int
    distractor: int
    positions: dict[str, int]
    score_from: int  # sequence losses score the tokens from here on
    span_names: list[str] | None = None  # per token (None: symbol prompts, no spans)
    corrupted_span_names: list[str] | None = None


@dataclass
class _Encoded:
    """One prompt's clean and corrupted ids, named positions and per-token span names."""

    ids: list[int]
    corrupted_ids: list[int] | None
    positions: dict[str, int]
    span_names: list[str] | None = None
    corrupted_span_names: list[str] | None = None


def _prompt_ids(vocab: Vocabulary, prompt: Prompt, aligned: bool = True) -> _Encoded:
    """The prompt's ids, named positions and spans; raises _Drop when clean and corrupted do not
    line up (and must: `aligned`)."""
    if prompt.symbols is not None:
        ids, pos = _encode_symbols(vocab, prompt.symbols, prompt.symbol_positions)
        if prompt.corrupted_symbols is None:
            return _Encoded(ids, None, pos)
        return _Encoded(ids, _encode_symbols(vocab, prompt.corrupted_symbols, prompt.symbol_positions)[0], pos)
    ids, pos, spans = _encode_segments(vocab, prompt, corrupted=False)
    if prompt.corrupted_segments is None:
        return _Encoded(ids, None, pos, spans)
    cids, cpos, cspans = _encode_segments(vocab, prompt, corrupted=True)
    if not aligned:
        return _Encoded(ids, cids, pos, spans, cspans)
    if len(cids) != len(ids):
        raise _Drop("clean and corrupted prompts differ in token length")
    # A corrupted prompt without labels (a data file's, by default) shares the clean positions.
    if cpos and cpos != pos:
        raise _Drop("named positions of the clean and corrupted prompts differ")
    # Aligned: token i of the counterfactual stands in for token i of the clean prompt, spans included.
    return _Encoded(ids, cids, pos, spans, spans)


def _encode_row(vocab: Vocabulary, prompt: Prompt, has_answer: bool, n_ctx: int, unk_id: int | None,
                aligned: bool = True) -> TokenizedPrompt:
    encoded = _prompt_ids(vocab, prompt, aligned)
    ids, cids, pos = encoded.ids, encoded.corrupted_ids, encoded.positions
    if unk_id is not None and (unk_id in ids or (cids is not None and unk_id in cids)):
        raise _Drop("prompt has tokens outside the model's vocabulary")
    if max(len(ids), len(cids or [])) > n_ctx:
        raise _Drop(f"prompt longer than the model's context ({n_ctx} tokens)")
    answer = distractor = -1
    if has_answer:
        assert prompt.answer is not None
        answer = _single_token(vocab, prompt.answer, "answer")
        # no distractor (a data file may give none): -1, and metrics reading it are refused by the spec
        distractor = -1 if prompt.distractor is None else _single_token(vocab, prompt.distractor, "distractor")
        if unk_id is not None and unk_id in (answer, distractor):
            raise _Drop("answer or distractor outside the model's vocabulary")
    pos["END"] = len(ids) - 1
    # Sequence losses score the tokens strictly after `score_from` (default: after BOS).
    score_from = pos[prompt.score_from] + 1 if prompt.score_from else 1
    return TokenizedPrompt(prompt.text, ids, cids, answer, distractor, pos, score_from, encoded.span_names,
                encoded.corrupted_span_names)


def _check_drops(report: DropReport, task: str, max_drop_fraction: float) -> None:
    if report.n_total and report.n_dropped / report.n_total > max_drop_fraction:
        lines = "; ".join(
            f"{reason}: {count} (e.g. {', '.join(report.examples[reason])})"
            for reason, count in report.reasons.most_common()
        )
        raise CircuitbenchError(
            f"Task '{task}': {report.n_dropped} of {report.n_total} prompts would be "
            f"dropped for this tokenizer (limit {max_drop_fraction:.0%}). {lines}. Choose a model "
            "whose tokenizer has these answers as single tokens, change the task's pools, or "
            "raise max_drop_fraction in the task YAML."
        )


def tokenize_prompts(
    prompt_set: PromptSet,
    vocab: Vocabulary,
    *,
    has_answer: bool,
    n_ctx: int,
    max_drop_fraction: float,
    unk_id: int | None = None,
    aligned: bool = True,
) -> tuple[list[TokenizedPrompt], DropReport]:
    """Every usable prompt of the set as token ids; the others dropped and counted (too many: an
    error naming the reasons). `aligned=False` keeps counterfactuals of another length."""
    report = DropReport(n_total=len(prompt_set.prompts))
    rows: list[TokenizedPrompt] = []
    for prompt in prompt_set.prompts:
        try:
            rows.append(_encode_row(vocab, prompt, has_answer, n_ctx, unk_id, aligned))
        except _Drop as drop:
            text, answer = excerpt(prompt.text), prompt.answer if prompt.answer is None else excerpt(prompt.answer)
            example = text if not has_answer else f"{text!r} -> {answer!r}"
            report.drop(drop.reason, example)
    _check_drops(report, prompt_set.task, max_drop_fraction)
    return rows, report


def tokenize_task(spec: TaskSpec, vocab: Vocabulary, unk_id: int | None, n_ctx: int,
                  prompts: PromptSet | None = None) -> tuple[list[TokenizedPrompt], DropReport]:
    """The task's prompts (generated unless given) tokenized for one tokenizer (drops counted)."""
    return tokenize_prompts(
        generate_prompts(spec) if prompts is None else prompts,
        vocab,
        has_answer=GENERATORS.get(spec.generator.name).answers(spec.generator),
        n_ctx=n_ctx,
        max_drop_fraction=spec.max_drop_fraction,
        unk_id=unk_id,
        aligned=spec.aligned_counterfactual,
    )
