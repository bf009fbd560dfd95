"""MethodContext: what a scoring method may use besides the model and the prompts."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from circuitbench.scores.activation_cache import CacheEntry


@dataclass
class MethodContext:
    """The task's main metric (patching methods score changes of it), the method's options from
    the task YAML, batching, progress, data-parallel sums and the activation cache entry.

    Data parallel contract: a method gets this process's shard of the prompts and passes every
    quantity summed over prompts (metric totals, counts, per-head totals) through `sum_shards`
    before it normalises, so that each process ends with the numbers of a one-process run."""

    batch_size: int
    metric: str = "logit_diff"
    options: dict[str, Any] = field(default_factory=dict)
    advance: Callable[[int], None] = field(default=lambda n: None)  # progress: n prompts done
    advance_heads: Callable[[int], None] = field(default=lambda n: None)  # progress: n more heads patched
    # Adds this process's partial sums to every other process's (parallel.Processes.sum); the
    # identity in a one-process run.
    sum_shards: Callable[[Any], Any] = field(default=lambda value: value)
    # Every process's per-prompt array joined in prompt order (bootstrap intervals need all prompts);
    # the identity in a one-process run.
    gather_shards: Callable[[Any], Any] = field(default=lambda values: values)
    # Where unpatched clean/corrupted runs are read from or stored (None: computed per batch).
    cache_entry: "CacheEntry | None" = None
    # Bytes the weights and a method's tensors may take together (--max-memory); None: a default from the free
    # memory. The edge methods plan sub-batches and source chunks under it (scores/memory_plan.py).
    memory_budget: int | None = None
