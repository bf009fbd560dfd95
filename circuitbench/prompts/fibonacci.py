"""Fibonacci continuation: '1, 1, 2, 3, 5, 8,' -> ' 13' (distractor: the last term, ' 8')."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, number_list_segments, sample_split
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split


class FibonacciParams(GeneratorParams):
    name: Literal["fibonacci"]
    length: int = Field(6, ge=3, le=20, description="terms shown in the prompt")
    max_start: int = Field(25, ge=1, description="first two terms drawn from 1..max_start")
    max_answer: int = Field(999, ge=2, description="drop sequences whose next term is larger")
    separator: str = Field(",", min_length=1)
    counterfactual: Literal["arithmetic"] = "arithmetic"

    @model_validator(mode="after")
    def _reachable(self) -> "FibonacciParams":
        if _terms(1, 1, self.length + 1)[-1] > self.max_answer:
            raise ValueError(
                f"length={self.length} makes even 1, 1, ... exceed max_answer={self.max_answer}"
            )
        return self


def _terms(a: int, b: int, n: int) -> list[int]:
    out = [a, b]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return out[:n]


def generate(params: FibonacciParams, n: int, seed: int, split: Split) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        while True:
            a, b = rng.randint(1, params.max_start), rng.randint(1, params.max_start)
            seq = _terms(a, b, params.length + 1)
            if seq[-1] <= params.max_answer:
                break
        shown, answer = seq[:-1], seq[-1]
        # Counterfactual: an arithmetic progression of the same length from the same start,
        # so the prompt looks alike but the Fibonacci rule no longer predicts the answer.
        step = rng.randint(1, max(1, params.max_start // 2))
        corrupted = [a + i * step for i in range(params.length)]
        return Prompt(
            segments=number_list_segments(shown, params.separator),
            corrupted_segments=number_list_segments(corrupted, params.separator),
            answer=f" {answer}",
            distractor=f" {shown[-1]}",
            split_key=f"{a},{b}",
            meta={"start": [a, b], "answer": answer},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task="fibonacci")


generator(
    "fibonacci",
    params=FibonacciParams,
    positions=("LAST",),
    description="Fibonacci continuation from random starts",
)(generate)
