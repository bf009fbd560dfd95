"""Tokenize and validate a PromptSet for one model's tokenizer.

Prompts that cannot be used (multi-token answer, clean and corrupted of different token length,
segments that tokenize differently on their own) are dropped and counted with reasons and
examples; if more than `max_drop_fraction` would go, the run stops with a message instead.
Padding is on the right: with causal attention no real token ever sees a pad, so no attention
mask is needed and absolute positions stay exact.

A task that declares `aligned_counterfactual: false` keeps prompts whose corrupted version has
another token length (or other named positions): clean and corrupted tokens still share one
right-padded [n, pos] layout, `corrupted_lengths` holds the corrupted lengths, and a corrupted
batch's END is its own last token. Only END is named on a corrupted prompt then; methods that
patch clean and corrupted activations position by position align them span by span instead
(scores/alignment.py), or are refused when the prompts have no spans (see specs/registries.py,
Method.aligns_positions).

Spans (prompts/spans.py): every token of a text prompt carries the id of its span in
`EncodedPrompts.span_names` (`spans`, `corrupted_spans`: [n, pos], -1 at padding); symbol prompts
have none.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import Prompt, PromptSet, excerpt
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.spans import shared_span_names, structure, token_span_names
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


@dataclass
class Batch:
    """A slice of encoded prompts, trimmed to its own longest prompt.

    tokens, corrupted: [batch, pos] (corrupted may be None); lengths, answer, distractor: [batch];
    positions: name -> [batch] token index; score_mask: [batch, pos] bool over *target* positions
    (True where the token at that position is a scored target of sequence losses).
    """

    tokens: torch.Tensor
    corrupted: torch.Tensor | None
    lengths: torch.Tensor
    answer: torch.Tensor
    distractor: torch.Tensor
    positions: dict[str, torch.Tensor]
    score_mask: torch.Tensor
    # What sequence losses predict: the clean tokens, also when `tokens` holds the corrupted
    # prompt (a corrupted run is scored on the clean task, as answer metrics are).
    targets: torch.Tensor | None = None
    # [batch] lengths of the corrupted prompts when they may differ from the clean ones
    # (aligned_counterfactual: false); None: the clean lengths and positions hold for both.
    corrupted_lengths: torch.Tensor | None = None
    # [batch, pos] int64 span of every clean token (an index into EncodedPrompts.span_names), -1 at
    # padding; None: the task has no spans (symbol prompts). prompts/spans.py names them.
    spans: torch.Tensor | None = None
    # [batch, pos] the same for the corrupted tokens (the very `spans` tensor when aligned).
    corrupted_spans: torch.Tensor | None = None

    @property
    def target_tokens(self) -> torch.Tensor:
        return self.tokens if self.targets is None else self.targets

    def as_corrupted(self) -> "Batch":
        """The corrupted prompts as input, still scored against the clean answers and tokens.

        Unaligned (corrupted_lengths given): the corrupted prompts' own lengths, END at their last
        token and no other named position; sequence losses score the corrupted tokens themselves
        (a task with unaligned counterfactuals refuses sequence metrics). Spans swap with the
        tokens (and, unaligned, so do the lengths: corrupted_lengths holds the clean ones)."""
        assert self.corrupted is not None
        if self.corrupted_lengths is None:
            return Batch(self.corrupted, None, self.lengths, self.answer, self.distractor, self.positions,
                         self.score_mask, targets=self.target_tokens, spans=self.corrupted_spans,
                         corrupted_spans=self.spans)
        lengths = self.corrupted_lengths
        columns = torch.arange(self.corrupted.shape[1])[None, :]
        # the clean prompts are this batch's counterfactuals now: their lengths, their spans
        return Batch(self.corrupted, None, lengths, self.answer, self.distractor, {"END": lengths - 1},
                     (columns >= 1) & (columns < lengths[:, None]), corrupted_lengths=self.lengths,
                     spans=self.corrupted_spans, corrupted_spans=self.spans)

    @property
    def end(self) -> torch.Tensor:
        return self.positions["END"]

    def select(self, rows: torch.Tensor) -> "Batch":
        """The prompts at `rows` (indices or a bool mask), trimmed to their own longest prompt."""
        lengths = self.lengths[rows]
        corrupted_lengths = None if self.corrupted_lengths is None else self.corrupted_lengths[rows]
        width = int(lengths.max()) if len(lengths) else 0
        if corrupted_lengths is not None and len(corrupted_lengths):  # an unaligned counterfactual may be longer
            width = max(width, int(corrupted_lengths.max()))
        cut = lambda t: t[rows][:, :width]  # noqa: E731
        opt = lambda t: None if t is None else cut(t)  # noqa: E731
        return Batch(
            tokens=cut(self.tokens), corrupted=opt(self.corrupted),
            lengths=lengths, answer=self.answer[rows], distractor=self.distractor[rows],
            positions={k: v[rows] for k, v in self.positions.items()}, score_mask=cut(self.score_mask),
            targets=opt(self.targets), corrupted_lengths=corrupted_lengths,
            spans=opt(self.spans), corrupted_spans=opt(self.corrupted_spans),
        )

    def suffix(self, rows: torch.Tensor, start: int) -> "Batch":
        """The prompts at `rows` from position `start` on, positions renumbered (lengths and named
        positions less `start`): what a forward resuming after a shared prefix of `start` tokens sees."""
        cut = lambda t: t[rows][:, start:]  # noqa: E731
        opt = lambda t: None if t is None else cut(t)  # noqa: E731
        return Batch(
            tokens=cut(self.tokens), corrupted=opt(self.corrupted),
            lengths=self.lengths[rows] - start, answer=self.answer[rows], distractor=self.distractor[rows],
            positions={k: v[rows] - start for k, v in self.positions.items()}, score_mask=cut(self.score_mask),
            targets=opt(self.targets),
            corrupted_lengths=None if self.corrupted_lengths is None else self.corrupted_lengths[rows] - start,
            spans=opt(self.spans), corrupted_spans=opt(self.corrupted_spans),
        )

    def first_difference(self) -> torch.Tensor:
        """[batch] the first position where the clean and corrupted tokens differ (the length when
        they never do): under causal attention every activation before it is the same in both runs."""
        assert self.corrupted is not None
        differ = (self.tokens != self.corrupted) & (torch.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None])
        return torch.where(differ.any(1), differ.to(torch.int8).argmax(1), self.lengths)

    def repeated(self, copies: int) -> "Batch":
        """The batch stacked `copies` times (copy-major: row c * B + b)."""
        rep = lambda t: t.repeat(copies, *([1] * (t.dim() - 1)))  # noqa: E731
        return Batch(
            tokens=rep(self.tokens), corrupted=None if self.corrupted is None else rep(self.corrupted),
            lengths=rep(self.lengths), answer=rep(self.answer), distractor=rep(self.distractor),
            positions={k: rep(v) for k, v in self.positions.items()}, score_mask=rep(self.score_mask),
            targets=None if self.targets is None else rep(self.targets),
            corrupted_lengths=None if self.corrupted_lengths is None else rep(self.corrupted_lengths),
            spans=None if self.spans is None else rep(self.spans),
            corrupted_spans=None if self.corrupted_spans is None else rep(self.corrupted_spans),
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class EncodedPrompts:
    """All kept prompts of a task for one model, right-padded; index i is kept prompt i."""

    texts: list[str]
    tokens: torch.Tensor  # [n, pos]
    corrupted: torch.Tensor | None  # [n, pos]
    lengths: torch.Tensor  # [n]
    answer: torch.Tensor  # [n], -1 when the task has none
    distractor: torch.Tensor  # [n], -1 when the task has none
    positions: dict[str, torch.Tensor]  # name -> [n]
    score_mask: torch.Tensor  # [n, pos]
    has_answer: bool
    report: DropReport
    prompt_hash: str  # sha256 of the generated PromptSet: same spec + seed -> same hash anywhere
    # A data-parallel shard knows the whole set and where it starts in it (methods that pair
    # prompts across the set, e.g. resample ablation, need both); the whole set is its own.
    whole: "EncodedPrompts | None" = field(default=None, repr=False)
    offset: int = 0

    @property
    def full_set(self) -> "EncodedPrompts":
        return self if self.whole is None else self.whole
    corrupted_lengths: torch.Tensor | None = None  # [n] when counterfactuals may have other lengths (unaligned)
    # The task's spans in prompt order, one tuple for the whole set (prompts/spans.py); () without spans.
    span_names: tuple[str, ...] = ()
    spans: torch.Tensor | None = None  # [n, pos] int64 index into span_names of every clean token, -1 at padding
    corrupted_spans: torch.Tensor | None = None  # [n, pos] the same for the corrupted tokens (`spans` when aligned)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def aligned(self) -> bool:
        """Whether every corrupted prompt shares its clean prompt's length and named positions."""
        return self.corrupted_lengths is None

    def batch(self, start: int, stop: int) -> Batch:
        width = int(self.lengths[start:stop].max())
        if self.corrupted_lengths is not None:
            width = max(width, int(self.corrupted_lengths[start:stop].max()))
        return Batch(
            tokens=self.tokens[start:stop, :width],
            corrupted=None if self.corrupted is None else self.corrupted[start:stop, :width],
            lengths=self.lengths[start:stop],
            answer=self.answer[start:stop],
            distractor=self.distractor[start:stop],
            positions={k: v[start:stop] for k, v in self.positions.items()},
            score_mask=self.score_mask[start:stop, :width],
            corrupted_lengths=None if self.corrupted_lengths is None else self.corrupted_lengths[start:stop],
            spans=None if self.spans is None else self.spans[start:stop, :width],
            corrupted_spans=None if self.corrupted_spans is None else self.corrupted_spans[start:stop, :width],
        )

    def batches(self, batch_size: int) -> list[Batch]:
        return [self.batch(i, min(i + batch_size, len(self))) for i in range(0, len(self), batch_size)]

    def without_corrupted(self) -> "EncodedPrompts":
        """The same prompts with no counterfactuals (metrics on clean prompts only)."""
        return replace(self, corrupted=None, corrupted_lengths=None, corrupted_spans=None)

    def subset(self, start: int, stop: int) -> "EncodedPrompts":
        """Prompts start..stop-1 as a shard of this set: the padded width, drop report and prompt
        hash stay those of the whole set (batches trim to their own longest prompt anyway)."""
        return EncodedPrompts(
            texts=self.texts[start:stop],
            tokens=self.tokens[start:stop],
            corrupted=None if self.corrupted is None else self.corrupted[start:stop],
            lengths=self.lengths[start:stop],
            answer=self.answer[start:stop],
            distractor=self.distractor[start:stop],
            positions={k: v[start:stop] for k, v in self.positions.items()},
            score_mask=self.score_mask[start:stop],
            has_answer=self.has_answer,
            report=self.report,
            prompt_hash=self.prompt_hash,
            whole=self.full_set,
            offset=self.offset + start,
            corrupted_lengths=None if self.corrupted_lengths is None else self.corrupted_lengths[start:stop],
            span_names=self.span_names,
            spans=None if self.spans is None else self.spans[start:stop],
            corrupted_spans=None if self.corrupted_spans is None else self.corrupted_spans[start:stop],
        )


    def take(self, rows: "torch.Tensor | list[int]") -> "EncodedPrompts":
        """A resample of this set: prompts `rows` (repeats allowed, any order) as a set of its own,
        not a shard (methods that pair prompts across the set pair them within it). Its prompt hash
        names the rows, so nothing cached for the whole set is read for it."""
        index = torch.as_tensor(rows, dtype=torch.long)
        if index.dim() != 1 or (len(index) and (int(index.min()) < 0 or int(index.max()) >= len(self))):
            raise IndexError(f"rows must be indices 0..{len(self) - 1} of the prompt set")
        picked = index.tolist()
        digest = hashlib.sha256((self.prompt_hash + ":" + ",".join(map(str, picked))).encode()).hexdigest()
        return EncodedPrompts(
            texts=[self.texts[i] for i in picked],
            tokens=self.tokens[index],
            corrupted=None if self.corrupted is None else self.corrupted[index],
            lengths=self.lengths[index],
            answer=self.answer[index],
            distractor=self.distractor[index],
            positions={k: v[index] for k, v in self.positions.items()},
            score_mask=self.score_mask[index],
            has_answer=self.has_answer,
            report=self.report,
            prompt_hash=digest,
            corrupted_lengths=None if self.corrupted_lengths is None else self.corrupted_lengths[index],
            span_names=self.span_names,
            spans=None if self.spans is None else self.spans[index],
            corrupted_spans=None if self.corrupted_spans is None else self.corrupted_spans[index],
        )


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
class _Row:
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
                aligned: bool = True) -> _Row:
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
    return _Row(prompt.text, ids, cids, answer, distractor, pos, score_from, encoded.span_names,
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


def encode_prompts(
    prompt_set: PromptSet,
    vocab: Vocabulary,
    *,
    has_answer: bool,
    n_ctx: int,
    max_drop_fraction: float,
    unk_id: int | None = None,
    aligned: bool = True,
) -> EncodedPrompts:
    """Every usable prompt of the set as right-padded token tensors; the others dropped and counted.
    `aligned=False` keeps counterfactuals of another length (see the module docstring)."""
    report = DropReport(n_total=len(prompt_set.prompts))
    rows: list[_Row] = []
    for prompt in prompt_set.prompts:
        try:
            rows.append(_encode_row(vocab, prompt, has_answer, n_ctx, unk_id, aligned))
        except _Drop as drop:
            text, answer = excerpt(prompt.text), prompt.answer if prompt.answer is None else excerpt(prompt.answer)
            example = text if not has_answer else f"{text!r} -> {answer!r}"
            report.drop(drop.reason, example)
    _check_drops(report, prompt_set.task, max_drop_fraction)
    if not rows:
        raise CircuitbenchError(f"Task '{prompt_set.task}': no prompts to run.")

    n, width = len(rows), max(max(len(r.ids), len(r.corrupted_ids or [])) for r in rows)
    tokens = torch.full((n, width), vocab.pad_id, dtype=torch.long)
    corrupted = torch.full((n, width), vocab.pad_id, dtype=torch.long) if rows[0].corrupted_ids is not None else None
    score_mask = torch.zeros((n, width), dtype=torch.bool)
    names = set.intersection(*(set(r.positions) for r in rows))
    positions = {name: torch.empty(n, dtype=torch.long) for name in sorted(names)}
    for i, row in enumerate(rows):
        tokens[i, : len(row.ids)] = torch.tensor(row.ids)
        if corrupted is not None and row.corrupted_ids is not None:
            corrupted[i, : len(row.corrupted_ids)] = torch.tensor(row.corrupted_ids)
        score_mask[i, row.score_from : len(row.ids)] = True
        for name in names:
            positions[name][i] = row.positions[name]
    span_names, spans, corrupted_spans = _span_tensors(rows, width, corrupted is not None, aligned)
    return EncodedPrompts(
        texts=[r.text for r in rows],
        tokens=tokens,
        corrupted=corrupted,
        lengths=torch.tensor([len(r.ids) for r in rows]),
        answer=torch.tensor([r.answer for r in rows]),
        distractor=torch.tensor([r.distractor for r in rows]),
        positions=positions,
        score_mask=score_mask,
        has_answer=has_answer,
        report=report,
        prompt_hash=hashlib.sha256(prompt_set.model_dump_json().encode()).hexdigest()[:16],
        corrupted_lengths=None if aligned or corrupted is None else torch.tensor([len(r.corrupted_ids or [])
                                                                                  for r in rows]),
        span_names=span_names,
        spans=spans,
        corrupted_spans=corrupted_spans,
    )


def _span_tensors(rows: list[_Row], width: int, has_corrupted: bool,
                  aligned: bool) -> tuple[tuple[str, ...], torch.Tensor | None, torch.Tensor | None]:
    """(the set's span names, [n, width] clean and corrupted span ids, -1 at padding): no spans
    unless every prompt has them (symbol prompts have none)."""
    if any(r.span_names is None for r in rows):
        return (), None, None
    both = [r.span_names for r in rows] + ([r.corrupted_span_names for r in rows] if has_corrupted else [])
    names = shared_span_names(structure(s) for s in both if s is not None)
    index = {name: i for i, name in enumerate(names)}

    def ids_of(per_row: list[list[str] | None]) -> torch.Tensor:
        out = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, row_names in enumerate(per_row):
            if row_names:
                out[i, : len(row_names)] = torch.tensor([index[n] for n in row_names])
        return out

    spans = ids_of([r.span_names for r in rows])
    if not has_corrupted:
        return names, spans, None
    return names, spans, spans if aligned else ids_of([r.corrupted_span_names for r in rows])


def encode_task(spec: TaskSpec, vocab: Vocabulary, unk_id: int | None, n_ctx: int,
                prompts: PromptSet | None = None) -> EncodedPrompts:
    """The task's prompts (generated unless given) encoded for one tokenizer (drops counted)."""
    return encode_prompts(
        generate_prompts(spec) if prompts is None else prompts,
        vocab,
        has_answer=GENERATORS.get(spec.generator.name).answers(spec.generator),
        n_ctx=n_ctx,
        max_drop_fraction=spec.max_drop_fraction,
        unk_id=unk_id,
        aligned=spec.aligned_counterfactual,
    )
