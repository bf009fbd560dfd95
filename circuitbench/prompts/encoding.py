"""Encode a PromptSet for one model's tokenizer: the prompts that survive tokenization
(prompts/tokenization.py: drops counted there) as right-padded token tensors. Padding is on the
right: with causal attention no real token ever sees a pad, so no attention mask is needed and
absolute positions stay exact.

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
from dataclasses import dataclass, field, replace

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import PromptSet
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.spans import shared_span_names, structure
from circuitbench.prompts.tokenization import (  # Vocabulary and DropReport: re-exported for their users
    DropReport,
    TokenizedPrompt,
    Vocabulary,
    tokenize_prompts,
)
from circuitbench.specs.registries import GENERATORS
from circuitbench.specs.task import TaskSpec


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
    rows, report = tokenize_prompts(prompt_set, vocab, has_answer=has_answer, n_ctx=n_ctx,
                                    max_drop_fraction=max_drop_fraction, unk_id=unk_id, aligned=aligned)
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


def _span_tensors(rows: list[TokenizedPrompt], width: int, has_corrupted: bool,
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
