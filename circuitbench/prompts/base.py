"""PromptSet: what a generator yields, before any tokenizer sees it.

A prompt is either text made of labelled segments (so named positions such as IO or S2 can be
found after tokenization, whatever the tokenizer) or, for token-space tasks such as induction on
random tokens, a list of symbols that each model maps onto tokens of its own vocabulary.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# Fractions of the prompt universe assigned to each split (by hash of the prompt's split key).
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}


class Segment(BaseModel):
    """A piece of prompt text; `label` names the position of its last token (e.g. 'IO')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    label: str | None = None


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
    n: int,
    seed: int,
    split: Split,
    task: str,
    max_tries_per_prompt: int = 200,
) -> list[Prompt]:
    """Draw distinct prompts whose split key falls in `split`, with a local RNG.

    Splits are disjoint by construction: a prompt's split is a function of its key, and keys are
    deduplicated. Fails with a clear message when the universe is too small for `n`.
    """
    rng = random.Random(f"{task}:{seed}:{split}")
    seen: set[str] = set()
    out: list[Prompt] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries_per_prompt * n + 1000:
            raise CircuitbenchError(
                f"generator '{task}' could only draw {len(out)} distinct {split} prompts of the {n} "
                f"asked (a split holds about {SPLIT_FRACTIONS[split]:.0%} of all distinct prompts). "
                "Lower n_prompts, or widen the generator's ranges in the task YAML."
            )
        prompt = draw(rng)
        if prompt.split_key in seen or split_of(prompt.split_key) != split:
            continue
        seen.add(prompt.split_key)
        out.append(prompt)
    return out
