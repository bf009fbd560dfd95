"""Prompts written into the spec itself: `generator: {name: records, records: [{prompt, answer, …}, …]}`.

What `TaskSpec.from_prompts` builds for a notebook user's own prompts (no data file, no YAML). A
record has the fields of a data file's (see prompts/file.py: prompt, answer, distractor, corrupted,
split, key, positions, corrupted_positions) with the same checks; a record without a split belongs
to every split, so a task of twenty prompts runs all twenty whatever its split. The spec and content
hashes cover the records themselves."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, field_validator

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import Prompt
from circuitbench.prompts.file import DataFileError, Record, check_together, record_prompt
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split

MAX_RECORDS = 100_000


class RecordsParams(GeneratorParams):
    name: Literal["records"]
    records: list[Record] = Field(min_length=1, max_length=MAX_RECORDS,
                                  description="the prompts, one record each (fields as in a data file)")

    @field_validator("records")
    @classmethod
    def _together(cls, records: list[Record]) -> list[Record]:
        try:
            check_together(list(enumerate(records, 1)), "records", what="record")
        except DataFileError as e:
            raise ValueError(str(e)) from None
        return records


def generate(params: RecordsParams, n: int | None, seed: int, split: Split) -> list[Prompt]:
    chosen = []
    for index, record in enumerate(params.records, 1):
        if record.split not in (None, split):
            continue
        try:
            prompt, _ = record_prompt(index, record, "records", what="record")
        except DataFileError as e:
            raise CircuitbenchError(str(e)) from None
        chosen.append(prompt)
    if not chosen:
        raise CircuitbenchError(f"no record belongs to the {split} split; choose another split, or give records "
                                "without a split")
    random.Random(f"records:{seed}:{split}").shuffle(chosen)
    return chosen if n is None else chosen[:n]


generator(
    "records",
    params=RecordsParams,
    answers_of=lambda params: (params.records[0].answer is not None, params.records[0].distractor is not None),
    description="prompts written into the spec (TaskSpec.from_prompts): answers, distractors, counterfactuals",
)(generate)
