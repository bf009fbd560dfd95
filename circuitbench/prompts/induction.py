"""Induction: a random token sequence repeated once; the repeat is predictable only in context.

Prompts are in symbol space (indices into the model's token pool), so the same spec runs on a
toy model's 64-token vocabulary and on GPT-2's 50k. The repeat length varies per prompt.

The clean prompt is A + A, A a random sequence of distinct symbols. The counterfactual
(`counterfactual:` in the YAML) is the same length, so every position lines up with the clean
prompt's, and has no induction pattern to follow:

- `fresh_random` (default): A + B, B a fresh random sequence of distinct symbols of A's length,
  drawn independently of A (same unigram distribution; B may share a bigram with A by chance).
- `shuffled_first_half`: A + S, S the symbols of A in another order such that the corrupted
  prompt holds no bigram twice (no bigram of A recurs in S or across the A|S junction) and no
  symbol follows itself. Exactly the clean prompt's symbols: every symbol still appears twice,
  so prefix matching finds the earlier copy, but the token after that copy is never the next
  one. Needs min_len >= 3.
- `permuted_positions`: the clean prompt's 2·|A| symbols at permuted positions such that no
  bigram of the clean prompt appears (A's bigrams, nor the junction's), no bigram appears twice
  and no symbol follows itself: the same symbol counts as the clean prompt, with nothing
  repeated in order anywhere (the first half changes too). Needs min_len >= 4.

The clean prompts of a seed do not depend on the counterfactual chosen: the shuffles draw from
their own RNG, seeded by the seed and the prompt's key.
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, sample_split
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split

Counterfactual = Literal["fresh_random", "shuffled_first_half", "permuted_positions"]
# The shortest random half each counterfactual exists for (shuffles of shorter ones cannot avoid every bigram).
MIN_HALF: dict[str, int] = {"fresh_random": 2, "shuffled_first_half": 3, "permuted_positions": 4}
MAX_SHUFFLES = 100_000  # never reached from MIN_HALF on: a shuffle succeeds with probability >= 1.5%


class InductionParams(GeneratorParams):
    name: Literal["induction"]
    min_len: int = Field(8, ge=2, description="shortest random half")
    max_len: int = Field(24, ge=2, description="longest random half")
    n_symbols: int = Field(48, ge=4, description="distinct tokens drawn from (the model's pool)")
    counterfactual: Counterfactual = Field(
        "fresh_random", description="fresh_random: A + a fresh random half; shuffled_first_half: A + A shuffled "
        "so no bigram recurs; permuted_positions: A + A's symbols permuted so nothing repeats in order")

    @model_validator(mode="after")
    def _ordered(self) -> "InductionParams":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len={self.min_len} is larger than max_len={self.max_len}")
        if self.max_len > self.n_symbols:
            raise ValueError(
                f"max_len={self.max_len} exceeds n_symbols={self.n_symbols}: the random half "
                "is drawn without repeats so prefix matching is unambiguous"
            )
        if self.min_len < MIN_HALF[self.counterfactual]:
            raise ValueError(f"counterfactual '{self.counterfactual}' needs min_len >= {MIN_HALF[self.counterfactual]} "
                             f"(got {self.min_len}): shorter halves cannot be shuffled without repeating a bigram")
        return self


def bigrams(symbols: list[int]) -> list[tuple[int, int]]:
    return list(zip(symbols, symbols[1:]))


def repeats_nothing(sequence: list[int], forbidden: set[tuple[int, int]]) -> bool:
    """No bigram of `sequence` twice, none in `forbidden`, no symbol right after itself."""
    pairs = bigrams(sequence)
    return len(set(pairs)) == len(pairs) and not set(pairs) & forbidden and all(a != b for a, b in pairs)


def _shuffled_until(items: list[int], accept, rng: random.Random) -> list[int]:
    out = list(items)
    for _ in range(MAX_SHUFFLES):
        rng.shuffle(out)
        if accept(out):
            return out
    raise RuntimeError(f"no acceptable shuffle of {items} in {MAX_SHUFFLES} tries")  # excluded by MIN_HALF


def counterfactual_of(half: list[int], kind: Counterfactual, rng: random.Random) -> list[int]:
    """The corrupted prompt of the clean prompt half + half (see the module docstring)."""
    if kind == "shuffled_first_half":
        return half + _shuffled_until(half, lambda s: repeats_nothing(half + s, set()), rng)
    assert kind == "permuted_positions"
    clean = set(bigrams(half + half))
    return _shuffled_until(half + half, lambda s: repeats_nothing(s, clean), rng)


def generate(params: InductionParams, n: int, seed: int, split: Split) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        length = rng.randint(params.min_len, params.max_len)
        half = rng.sample(range(params.n_symbols), length)
        # Drawn for every counterfactual, so the clean prompts of a seed are the same for all of them.
        fresh = rng.sample(range(params.n_symbols), length)
        key = ",".join(map(str, half))
        if params.counterfactual == "fresh_random":
            corrupted = half + fresh
        else:
            corrupted = counterfactual_of(half, params.counterfactual,
                                          random.Random(f"{seed}:{key}:{params.counterfactual}"))
        return Prompt(
            symbols=half + half,
            corrupted_symbols=corrupted,
            symbol_positions={"REPEAT": length},
            score_from="REPEAT",
            split_key=key,
            meta={"length": length},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task="induction")


generator(
    "induction",
    params=InductionParams,
    positions=("REPEAT",),
    has_answer=False,
    description="repeated random tokens (induction heads); counterfactuals fresh_random | shuffled_first_half | "
                "permuted_positions",
)(generate)
