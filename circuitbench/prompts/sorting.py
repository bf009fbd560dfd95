"""Sorting (the 1-layer, 1-head sorting result): "<list> SEP <sorted prefix>" -> next element of the
sorted list, e.g. "12 5 30 7 | 5 7" -> " 12". Lists of distinct values; the distractor is the
largest value still to come (a wrong but plausible list element). Counterfactual: another list
of distinct values with a sorted prefix of the same length."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, Segment, sample_split
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split


class SortingParams(GeneratorParams):
    name: Literal["sorting"]
    list_length: int = Field(5, ge=2, le=30)
    max_value: int = Field(50, ge=3, description="values drawn from 0..max_value-1")
    separator: str = Field("|", min_length=1)
    counterfactual: Literal["other_list"] = "other_list"

    @model_validator(mode="after")
    def _enough_values(self) -> "SortingParams":
        if self.max_value < self.list_length + 1:
            raise ValueError(f"max_value={self.max_value} must exceed list_length={self.list_length}")
        return self


def _segments(values: list[int], prefix: list[int], sep: str) -> list[Segment]:
    segs = [Segment(text=("" if i == 0 else " ") + str(v)) for i, v in enumerate(values)]
    segs.append(Segment(text=f" {sep}", label="SEP"))
    segs.extend(Segment(text=f" {v}") for v in prefix)
    return segs


def generate(params: SortingParams, n: int, seed: int, split: Split) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        values = rng.sample(range(params.max_value), params.list_length)
        k = rng.randrange(params.list_length - 1)  # at least two elements left to output
        ordered = sorted(values)
        other = rng.sample(range(params.max_value), params.list_length)
        return Prompt(
            segments=_segments(values, ordered[:k], params.separator),
            corrupted_segments=_segments(other, sorted(other)[:k], params.separator),
            answer=f" {ordered[k]}",
            distractor=f" {ordered[-1]}",
            split_key=f"{','.join(map(str, values))}|{k}",
            meta={"k": k},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task="sorting")


generator(
    "sorting",
    params=SortingParams,
    positions=("SEP",),
    description="next element of the sorted list (toy sorting models)",
)(generate)
