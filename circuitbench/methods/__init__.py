"""Head-scoring methods: each returns a [n_layers, n_heads] score array, registered by id.

Data parallel contract: a method gets this process's shard of the prompts and must pass every
quantity summed over prompts (metric totals, counts, per-head totals) through `ctx.sum_shards`
before it normalises, so that each process ends with the numbers of a one-process run. A method
that cannot be split that way registers with `shardable=False` and runs on the main process only.
"""
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
    # Adds this process's partial sums to every other process's (data_parallel.Processes.sum);
    # the identity in a one-process run.
    sum_shards: Callable[[Any], Any] = field(default=lambda value: value)
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
    shardable: bool = True  # False: needs all prompts at once; runs on the main process only


METHODS: Registry[Method] = Registry("method")

from circuitbench.methods import causal_tracing, detectors, patching  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "Method", "MethodContext"]
