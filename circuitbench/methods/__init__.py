"""Head-scoring methods: each returns a [n_layers, n_heads] score array, registered by id."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from circuitbench.registry import Registry

if TYPE_CHECKING:
    from circuitbench.encoding import EncodedPrompts
    from circuitbench.models import LoadedModel


@dataclass
class MethodContext:
    """What a method may use besides model and prompts."""

    batch_size: int
    advance: Callable[[int], None] = field(default=lambda n: None)  # progress: n prompts done


@dataclass(frozen=True)
class Method:
    fn: "Callable[[LoadedModel, EncodedPrompts, MethodContext], np.ndarray]"
    description: str
    needs_corrupted: bool = False
    needs_answer: bool = False
    passes: int = 1  # forward passes over the prompts, for progress bars


METHODS: Registry[Method] = Registry("method")

from circuitbench.methods import detectors  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "Method", "MethodContext"]
