"""Number progressions: x2 (doubling, "2, 4, 8, 16," -> " 32") and arith_k (+k, "2, 4, 6, 8," ->
" 10"). Their point is generalisation, so the split holds out whole starts: every prompt from a
given start lands in one split, and the test split's starts never occur in training prompts."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, number_list_segments, sample_split, shuffled_unlike
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split


class _ProgressionParams(GeneratorParams):
    min_length: int = Field(4, ge=3, le=20, description="fewest terms shown")
    max_length: int = Field(5, ge=3, le=20, description="most terms shown")
    max_start: int = Field(30, ge=1, description="first term drawn from 1..max_start")
    max_answer: int = Field(999, ge=2, description="skip progressions whose next term is larger")
    separator: str = Field(",", min_length=1)
    counterfactual: Literal["shuffled"] = "shuffled"

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_length > self.max_length:
            raise ValueError(f"min_length={self.min_length} is larger than max_length={self.max_length}")
        return self


class X2Params(_ProgressionParams):
    name: Literal["x2"]
    factor: int = Field(2, ge=2, le=10, description="each term is the previous times factor")
    max_start: int = Field(40, ge=1)


class ArithKParams(_ProgressionParams):
    name: Literal["arith_k"]
    k: int = Field(2, ge=1, description="step between terms")
    max_start: int = Field(99, ge=1)


def _generate(terms_of, params: _ProgressionParams, n: int, seed: int, split: Split, task: str) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        while True:
            start = rng.randint(1, params.max_start)
            length = rng.randint(params.min_length, params.max_length)
            seq = terms_of(start, length + 1)
            if seq[-1] <= params.max_answer:
                break
        shown = seq[:-1]
        # Counterfactual: the same numbers out of order, so token lengths and positions stay
        # aligned while the rule no longer predicts the next term.
        return Prompt(
            segments=number_list_segments(shown, params.separator),
            corrupted_segments=number_list_segments(shuffled_unlike(shown, rng), params.separator),
            answer=f" {seq[-1]}",
            distractor=f" {shown[-1]}",
            split_key=f"start={start}|len={length}",
            meta={"start": start, "length": length, "answer": seq[-1]},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task=task, group=lambda key: key.split("|")[0])


def generate_x2(params: X2Params, n: int, seed: int, split: Split) -> list[Prompt]:
    return _generate(lambda a, m: [a * params.factor**i for i in range(m)], params, n, seed, split, "x2")


def generate_arith_k(params: ArithKParams, n: int, seed: int, split: Split) -> list[Prompt]:
    return _generate(lambda a, m: [a + params.k * i for i in range(m)], params, n, seed, split, "arith_k")


generator(
    "x2",
    params=X2Params,
    positions=("LAST",),
    description="geometric progressions (x2 by default); whole starts held out per split",
)(generate_x2)
generator(
    "arith_k",
    params=ArithKParams,
    positions=("LAST",),
    description="+k progressions; whole starts held out per split",
)(generate_arith_k)
