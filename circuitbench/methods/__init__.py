"""Head-scoring methods: each returns a [n_layers, n_heads] score array, registered by id."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from circuitbench.registry import Registry

if TYPE_CHECKING:
    from circuitbench.activation_cache import CacheEntry
    from circuitbench.encoding import EncodedPrompts
    from circuitbench.models import LoadedModel


@dataclass
class MethodContext:
    """What a method may use besides model and prompts: the task's main metric (patching
    methods score changes of it), the method's options from the task YAML, batching, progress."""

    batch_size: int
    metric: str = "logit_diff"
    options: dict[str, Any] = field(default_factory=dict)
    advance: Callable[[int], None] = field(default=lambda n: None)  # progress: n prompts done
    # Where unpatched clean/corrupted runs are read from or stored (None: computed per batch).
    activations: "CacheEntry | None" = None


@dataclass(frozen=True)
class Method:
    fn: "Callable[[LoadedModel, EncodedPrompts, MethodContext], np.ndarray]"
    description: str
    needs_corrupted: bool = False
    needs_answer: bool = False
    options: type[BaseModel] | None = None  # validates `method_options.<name>` in the task YAML
    produces: Literal["head_scores", "traces"] = "head_scores"  # traces: per-(layer, position) maps


METHODS: Registry[Method] = Registry("method")

from circuitbench.methods import causal_tracing, detectors, patching  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "Method", "MethodContext"]
