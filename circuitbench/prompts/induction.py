"""Induction: a random token sequence repeated once; the repeat is predictable only in context.

Prompts are in symbol space (indices into the model's token pool), so the same spec runs on a
toy model's 64-token vocabulary and on GPT-2's 50k. The repeat length varies per prompt.
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, sample_split
from circuitbench.specs.registries import GENERATORS, Generator, GeneratorParams
from circuitbench.specs.task import Split


class InductionParams(GeneratorParams):
    name: Literal["induction"]
    min_len: int = Field(8, ge=2, description="shortest random half")
    max_len: int = Field(24, ge=2, description="longest random half")
    n_symbols: int = Field(48, ge=4, description="distinct tokens drawn from (the model's pool)")
    counterfactual: Literal["fresh_random"] = "fresh_random"

    @model_validator(mode="after")
    def _ordered(self) -> "InductionParams":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len={self.min_len} is larger than max_len={self.max_len}")
        if self.max_len > self.n_symbols:
            raise ValueError(
                f"max_len={self.max_len} exceeds n_symbols={self.n_symbols}: the random half "
                "is drawn without repeats so prefix matching is unambiguous"
            )
        return self


def generate(params: InductionParams, n: int, seed: int, split: Split) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        length = rng.randint(params.min_len, params.max_len)
        half = rng.sample(range(params.n_symbols), length)
        # Counterfactual: same first half, a fresh random second half, so nothing repeats.
        fresh = rng.sample(range(params.n_symbols), length)
        return Prompt(
            symbols=half + half,
            corrupted_symbols=half + fresh,
            symbol_positions={"REPEAT": length},
            score_from="REPEAT",
            split_key=",".join(map(str, half)),
            meta={"length": length},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task="induction")


GENERATORS.add(
    "induction",
    Generator(
        params=InductionParams,
        generate=generate,  # type: ignore[arg-type]
        positions=frozenset({"END", "REPEAT"}),
        has_answer=False,
        description="repeated random tokens (induction heads)",
    ),
)
