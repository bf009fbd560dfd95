"""PromptSet: what a generator yields, before any tokenizer sees it.

A prompt is either text made of labelled segments (so named positions such as IO or S2 can be
found after tokenization, whatever the tokenizer) or, for token-space tasks such as induction on
random tokens, a list of symbols that each model maps onto tokens of its own vocabulary.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.specs.task import SPLITS, Split

# Fractions of the prompt universe assigned to each split (by hash of the prompt's split key).
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}
# "all" prompts of a split stops here: for large universes "all" means "this many".
ALL_CAP = 20_000


class Segment(BaseModel):
    """A piece of prompt text; `label` names the position of its last token (e.g. 'IO')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    label: str | None = None


EXCERPT = 80  # characters of a prompt shown in drop reports and by `validate`


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """`text` cut to its first `limit` characters, with its length when cut: a dropped 2 MB prompt
    must not land whole in a result or on the terminal."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class Prompt(BaseModel):
    """One example: clean prompt, corrupted (counterfactual) prompt, answer and distractor.

    Text prompts use `segments` (+ `answer`/`distractor` strings, leading space included).
    Symbol prompts use `symbols` (indices into the model's token pool) and name positions by
    symbol index in `symbol_positions`; `score_from` names the position from which sequence
    losses (e.g. induction loss) are computed.
    """

    model_config = ConfigDict(extra="forbid")
    segments: list[Segment] | None = None
    corrupted_segments: list[Segment] | None = None
    symbols: list[int] | None = None
    corrupted_symbols: list[int] | None = None
    symbol_positions: dict[str, int] = Field(default_factory=dict)
    answer: str | None = None
    distractor: str | None = None
    score_from: str | None = None
    split_key: str
    meta: dict[str, int | float | str | list[int]] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        if self.segments is not None:
            return "".join(s.text for s in self.segments)
        return " ".join(f"<{s}>" for s in self.symbols or [])

    @property
    def corrupted_text(self) -> str | None:
        if self.corrupted_segments is None:
            return None
        return "".join(s.text for s in self.corrupted_segments)


class PromptSet(BaseModel):
    """The prompts of one task split, in generation order."""

    model_config = ConfigDict(extra="forbid")
    task: str
    split: Split
    seed: int
    prompts: list[Prompt]


def split_of(key: str) -> Split:
    """Deterministic split of a prompt's key: no key (hence no prompt) lands in two splits."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if bucket < edge:
            return split
    return SPLITS[-1]


def sample_split(
    draw: Callable[[random.Random], Prompt],
    *,
    n: int | None,
    seed: int,
    split: Split,
    task: str,
    group: Callable[[str], str] = lambda key: key,
    exhaust_after: int = 5000,
) -> list[Prompt]:
    """Up to `n` distinct prompts whose split falls in `split`, drawn with a local RNG (n None:
    every prompt of the split).

    Splits are disjoint by construction: a prompt's split is a function of its key's `group`
    (the key itself by default; e.g. the start of a progression, so that whole progressions are
    held out), and keys are deduplicated. The split counts as exhausted when `exhaust_after`
    draws in a row bring nothing new; a large universe stops at ALL_CAP prompts. The first k
    prompts of any draw are the same for every n >= k (one RNG sequence), so `n` prompts of a
    small split are the first n of all of them. None is an error; fewer than `n` is the caller's to
    report (see prompts/generate.py).
    """
    rng = random.Random(f"{task}:{seed}:{split}")
    seen: set[str] = set()
    out: list[Prompt] = []
    stale = 0
    cap = ALL_CAP if n is None else n
    while len(out) < cap and stale < exhaust_after:
        stale += 1
        prompt = draw(rng)
        if prompt.split_key in seen or split_of(group(prompt.split_key)) != split:
            continue
        seen.add(prompt.split_key)
        out.append(prompt)
        stale = 0
    if not out:
        raise CircuitbenchError(f"generator '{task}' has no {split} prompts with these params; widen its ranges.")
    return out


def number_list_segments(terms: list[int], sep: str, last_label: str | None = "LAST") -> list[Segment]:
    """'1, 1, 2,' as segments: each number (leading space after the first) then the separator;
    the last number's token is labelled `last_label`."""
    segs: list[Segment] = []
    for i, t in enumerate(terms):
        label = last_label if i == len(terms) - 1 else None
        segs.append(Segment(text=f"{'' if i == 0 else ' '}{t}", label=label))
        segs.append(Segment(text=sep))
    return segs


def shuffled_unlike(items: list, rng: random.Random) -> list:
    """The items with all but the first in another order (when one exists).

    The first item stays: at the start of a prompt it has no leading space, and many words
    that are one token after a space are several without one; keeping it keeps the clean and
    corrupted prompts the same token length."""
    head, tail = items[:1], items[1:]
    if len(set(tail)) < 2:
        return list(items)
    while True:
        out = list(tail)
        rng.shuffle(out)
        if out != tail:
            return head + out
