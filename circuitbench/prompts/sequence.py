"""Sequence continuation, one generator for every ordered family: digits/numbers, number words,
months, days, letters, or a custom item list. List form ("January February March" -> " April")
or the sentence form of the literature ("Anne was born in one. Anne was born in two. Anne was
born in" -> " three"). Counterfactuals (`counterfactual:`): `shuffled` (default), the same items
in another order (same tokens, aligned; order is what changes); `offset`, an in-order run of the
same length starting elsewhere in the family (order kept, which items changes; a prompt whose run
tokenizes to another length is dropped and counted). The clean prompts are the same for both.
Wrap-around (December -> January) is explicit: `wrap: false` excludes sequences that would cross
the end of the family."""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from circuitbench.prompts.base import Prompt, Segment, sample_split, shuffled_unlike
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split

FAMILIES: dict[str, list[str]] = {
    "numbers": [str(i) for i in range(1, 100)],
    "numwords": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                 "eighteen", "nineteen", "twenty"],
    "months": ["January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"],
    "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "letters": [chr(c) for c in range(ord("A"), ord("Z") + 1)],
}
CYCLIC = {"months", "days"}


class SequenceParams(GeneratorParams):
    name: Literal["sequence"]
    family: Literal["numbers", "numwords", "months", "days", "letters", "custom"]
    items: list[str] | None = Field(None, description="the ordered items, for family: custom")
    min_length: int = Field(3, ge=3,
                            description="fewest items shown (3+: the counterfactual reorders all but the first)")
    max_length: int = Field(6, ge=2, description="most items shown")
    wrap: bool | None = Field(None, description="allow crossing the end (default: months, days)")
    form: Literal["list", "sentence"] = "list"
    sentence: str = Field("{name} was born in {item}.", description="sentence form, with {name} and {item}")
    names: list[str] = Field(default_factory=lambda: ["Anne", "John", "Mary", "Tom", "Kate", "Paul", "Lisa", "Mark"])
    counterfactual: Literal["shuffled", "offset"] = Field(
        "shuffled", description="shuffled: the shown items after the first in another order; offset: an in-order run "
        "of the same length starting elsewhere in the family")

    @model_validator(mode="after")
    def _consistent(self) -> "SequenceParams":
        if (self.family == "custom") != (self.items is not None):
            raise ValueError("give items exactly when family is 'custom'")
        if self.min_length > self.max_length:
            raise ValueError(f"min_length={self.min_length} is larger than max_length={self.max_length}")
        if self.max_length >= len(self.ordered()):
            raise ValueError(f"max_length={self.max_length} must be below the family size {len(self.ordered())}")
        if self.form == "sentence":
            if "{item}" not in self.sentence or "{name}" not in self.sentence:
                raise ValueError("sentence must contain {name} and {item}")
            if not self.sentence.split("{item}")[0].endswith(" "):
                raise ValueError("sentence must put a space before {item}, e.g. 'born in {item}.'")
        return self

    def ordered(self) -> list[str]:
        return self.items if self.items is not None else FAMILIES[self.family]

    def wraps(self) -> bool:
        return self.wrap if self.wrap is not None else self.family in CYCLIC


def _list_segments(items: list[str]) -> list[Segment]:
    return [Segment(text=("" if i == 0 else " ") + it, label="LAST" if i == len(items) - 1 else None)
            for i, it in enumerate(items)]


def _sentence_segments(items: list[str], sentence: str, name: str) -> list[Segment]:
    """'X was V in one. X was V in two. X was V in' with the last item's sentence left open."""
    before, after = sentence.split("{item}")
    before, after = before.replace("{name}", name), after.replace("{name}", name)
    segs: list[Segment] = []
    for i, it in enumerate(items):
        segs.append(Segment(text=("" if i == 0 else " ") + before.rstrip(" ")))
        segs.append(Segment(text=" " + it, label="LAST" if i == len(items) - 1 else None))
        segs.append(Segment(text=after))
    segs.append(Segment(text=" " + before.rstrip(" ")))
    return segs


def _offset_run(ordered: list[str], start: int, length: int, last_start: int) -> list[str]:
    """`length` consecutive items from another start (its own RNG, seeded by the prompt; a start
    the clean prompt could have had, so wrapping follows the family's rule)."""
    rng = random.Random(f"offset:{start}:{length}")
    other = rng.choice([s for s in range(last_start + 1) if s != start])
    return [ordered[(other + i) % len(ordered)] for i in range(length)]


def generate(params: SequenceParams, n: int, seed: int, split: Split) -> list[Prompt]:
    ordered = params.ordered()
    size = len(ordered)

    def draw(rng: random.Random) -> Prompt:
        length = rng.randint(params.min_length, params.max_length)
        last_start = size - 1 if params.wraps() else size - length - 1
        start = rng.randint(0, last_start)
        seq = [ordered[(start + i) % size] for i in range(length + 1)]
        shown, answer = seq[:-1], seq[-1]
        corrupted = shuffled_unlike(shown, rng)  # drawn for every counterfactual: the clean prompts stay the same
        if params.counterfactual == "offset":
            corrupted = _offset_run(ordered, start, length, last_start)
        if params.form == "list":
            clean_segs, corrupt_segs, key_extra = _list_segments(shown), _list_segments(corrupted), ""
        else:
            name = rng.choice(params.names)
            clean_segs = _sentence_segments(shown, params.sentence, name)
            corrupt_segs = _sentence_segments(corrupted, params.sentence, name)
            key_extra = f"|{name}"
        return Prompt(
            segments=clean_segs,
            corrupted_segments=corrupt_segs,
            answer=f" {answer}",
            distractor=f" {shown[-1]}",
            split_key=f"{start}|{length}{key_extra}",
            meta={"start": start, "length": length},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task=f"sequence:{params.family}")


generator(
    "sequence",
    params=SequenceParams,
    positions=("LAST",),
    description="ordered-sequence continuation (numbers, number words, months, days, letters)",
)(generate)
