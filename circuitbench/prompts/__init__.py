"""Prompt generators, one module per family, all registered in GENERATORS."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from circuitbench.prompts.base import Prompt, PromptSet, Segment, Split, split_of
from circuitbench.registry import Registry


@dataclass(frozen=True)
class Generator:
    """A prompt family: its params model (validated from YAML) and how to draw prompts.

    `positions` lists the named positions its prompts define (END is always there);
    `has_answer` says whether prompts carry a single-token answer and distractor.
    """

    params: type[BaseModel]
    generate: Callable[[BaseModel, int | None, int, Split], list[Prompt]]  # (params, n or all, seed, split)
    positions: frozenset[str]
    has_answer: bool
    description: str


GENERATORS: Registry[Generator] = Registry("generator")

# Importing the families registers them.
from circuitbench.prompts import fibonacci, induction, ioi, progression, sequence, sorting  # noqa: E402,F401

__all__ = ["GENERATORS", "Generator", "Prompt", "PromptSet", "Segment", "Split", "split_of"]
