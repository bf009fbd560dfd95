"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary" (distractor " John"), in ABBA and BABA orders. Named positions
IO, S1, S2 (the subject's two mentions) and END. Counterfactual (`counterfactual:`):

- `abc` (default): the same sentence with three unrelated names (the "ABC" distribution), so
  name-moving heads have nothing to move.
- `swapped_names`: the same sentence with IO and S exchanged at every mention ("When John and
  Mary went to the store, Mary gave a drink to"). A prompt of the clean distribution whose right
  answer is the clean distractor, so logit_diff flips sign: patching measures which heads carry
  *which* name is the indirect object, not just that names are there.

Both keep every position in place (IO, S1, S2 name the same slots), and the clean prompts of a
seed are the same for either.

`corrupted_names` (abc only): the pool the three unrelated names are drawn from instead of `names`
(a local RNG per prompt: the clean prompts stay the same). Names that tokenize to other lengths
("Bartholomew" is three GPT-2 tokens) give counterfactuals of another length: with
`aligned_counterfactual: false` they are kept and patched span by span (prompts/spans.py,
scores/alignment.py); otherwise such prompts are dropped and counted."""
from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from circuitbench.prompts.base import Prompt, Segment, sample_split
from circuitbench.specs.registries import GeneratorParams, generator
from circuitbench.specs.task import Split

DEFAULT_TEMPLATES = [
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "The {PLACE} was quiet when {A} and {B} arrived. {S} handed the {OBJECT} to",
    "Yesterday {A} and {B} argued about a {OBJECT} at the {PLACE}. Afterwards {S} said to",
]
DEFAULT_NAMES = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Alice", "Paul", "Kate", "Anne",
    "Mark", "Chris", "Lisa", "Mike", "Sarah", "Jack", "Ben", "Rose", "Max", "Sam", "Adam", "Ryan",
    "Emma", "Eric", "Tim", "Steve", "Joe", "David", "Jane", "Laura",
]
DEFAULT_PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "station", "park", "market", "beach"]
DEFAULT_OBJECTS = ["drink", "ring", "book", "bone", "basketball", "computer", "necklace", "snack", "kiss", "bottle"]
_SLOT = re.compile(r"\{(A|B|S|PLACE|OBJECT)\}")


class IOIParams(GeneratorParams):
    model_config = ConfigDict(validate_default=True)
    name: Literal["ioi"]
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    names: list[str] = Field(default_factory=lambda: list(DEFAULT_NAMES), min_length=5)
    places: list[str] = Field(default_factory=lambda: list(DEFAULT_PLACES), min_length=1)
    objects: list[str] = Field(default_factory=lambda: list(DEFAULT_OBJECTS), min_length=1)
    orders: list[Literal["ABBA", "BABA"]] = Field(default_factory=lambda: ["ABBA", "BABA"], min_length=1)
    counterfactual: Literal["abc", "swapped_names"] = Field(
        "abc", description="abc: three unrelated names; swapped_names: IO and S exchanged everywhere")
    # Left out of the dump (and so of every hash) when not given: IOI tasks hash as they did.
    corrupted_names: list[str] | None = Field(
        None, min_length=5, exclude_if=lambda names: names is None,
        description="abc: draw the three unrelated names from this pool (default: names); names of another token "
        "length make counterfactuals of another length (keep them with aligned_counterfactual: false)")

    @field_validator("templates")
    @classmethod
    def _slots(cls, templates: list[str]) -> list[str]:
        for t in templates:
            slots = _SLOT.findall(t)
            if sorted(slots) != sorted(["A", "B", "S", "PLACE", "OBJECT"]):
                raise ValueError(f"template {t!r} must use each of {{A}}, {{B}}, {{S}}, {{PLACE}}, {{OBJECT}} once")
            if t.index("{S}") < max(t.index("{A}"), t.index("{B}")):
                raise ValueError(f"template {t!r}: {{S}} must come after {{A}} and {{B}}")
            if t.startswith(("{A}", "{B}", "{S}")):
                raise ValueError(
                    f"template {t!r}: start with a word, not a name (names are single tokens only after a space)")
        return templates

    @model_validator(mode="after")
    def _distinct_names(self) -> "IOIParams":
        if len(set(self.names)) != len(self.names):
            raise ValueError("names must be distinct")
        if self.corrupted_names is not None:
            if len(set(self.corrupted_names)) != len(self.corrupted_names):
                raise ValueError("corrupted_names must be distinct")
            if self.counterfactual != "abc":
                raise ValueError(f"corrupted_names is the pool of the abc counterfactual; counterfactual is "
                                 f"'{self.counterfactual}': remove corrupted_names or use counterfactual: abc")
        return self


def _segments(template: str, fill: dict[str, str], labels: dict[str, str]) -> list[Segment]:
    """Split the template at its slots; a name slot keeps its leading space inside the segment so
    BPE sees ' Mary' (or 'Mary' at the very start)."""
    segs: list[Segment] = []
    pos = 0
    for m in _SLOT.finditer(template):
        before = template[pos : m.start()]
        space = before.endswith(" ")
        if before.rstrip(" ") or (before and not space):
            segs.append(Segment(text=before[:-1] if space else before))
        slot = m.group(1)
        segs.append(Segment(text=(" " if space else "") + fill[slot], label=labels.get(slot)))
        pos = m.end()
    if template[pos:]:
        segs.append(Segment(text=template[pos:]))
    return segs


def generate(params: IOIParams, n: int, seed: int, split: Split) -> list[Prompt]:
    def draw(rng: random.Random) -> Prompt:
        t_index = rng.randrange(len(params.templates))
        template = params.templates[t_index]
        order = rng.choice(params.orders)
        io, s, c1, c2, c3 = rng.sample(params.names, 5)
        place, obj = rng.choice(params.places), rng.choice(params.objects)
        a, b = (io, s) if order == "ABBA" else (s, io)
        labels = {"A": "IO" if order == "ABBA" else "S1", "B": "S1" if order == "ABBA" else "IO", "S": "S2"}
        clean = _segments(template, {"A": a, "B": b, "S": s, "PLACE": place, "OBJECT": obj}, labels)
        key = f"{t_index}|{order}|{io}|{s}|{place}|{obj}"
        if params.corrupted_names is not None:  # its own RNG: the clean prompts do not change
            pool = [n for n in params.corrupted_names if n not in (io, s)]
            c1, c2, c3 = random.Random(f"ioi-corrupted:{key}").sample(pool, 3)
        other = {"A": c1, "B": c2, "S": c3} if params.counterfactual == "abc" else {"A": b, "B": a, "S": io}
        corrupted = _segments(template, {**other, "PLACE": place, "OBJECT": obj}, labels)
        return Prompt(
            segments=clean,
            corrupted_segments=corrupted,
            answer=f" {io}",
            distractor=f" {s}",
            split_key=key,
            meta={"template": t_index, "order": order},
        )

    return sample_split(draw, n=n, seed=seed, split=split, task="ioi")


generator(
    "ioi",
    params=IOIParams,
    positions=("IO", "S1", "S2"),
    description="indirect object identification, ABBA and BABA; counterfactuals abc | swapped_names",
)(generate)
