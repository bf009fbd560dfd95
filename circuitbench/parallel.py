"""Data parallelism over the processes of a launcher (`torchrun`, `accelerate launch`): which
process this is, which prompts it owns, and how per-shard results come back together.

Built on accelerate (`PartialState` for rank and world size, `gather_object` for the exchange),
not on a home-made engine. A plain `circuitbench run` is the one-process case of the same code:
every function here is then the identity.

Exactness: shards are contiguous runs of *whole batches* (batch size as in a one-process run), so
every forward pass sees exactly the batch it would see in one process (same padding width, same
neighbours for `resample` ablation). Per-prompt values are gathered and concatenated in prompt
order; sums are added in rank order, identically on every process, so every process holds the
same final numbers and makes the same decisions (circuit, errors) without further talk.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, TypeVar

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the launcher's processes (rank 0 is the main one)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # the launcher's device for this rank; None: one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_bounds(self, n_prompts: int, batch_size: int) -> tuple[int, int]:
        """[start, stop) of this rank's prompts: a contiguous, balanced run of whole batches
        (a rank may own none when there are fewer batches than processes)."""
        n_batches = -(-n_prompts // batch_size)
        first = self.rank * n_batches // self.world_size
        last = (self.rank + 1) * n_batches // self.world_size
        return min(first * batch_size, n_prompts), min(last * batch_size, n_prompts)

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank (must be called by all ranks)."""
        if self.world_size == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([_to_cpu(value)])

    def sum(self, value: T) -> T:
        """`value` (tensor, array, number, or a dict / tuple / list of them) added over ranks."""
        if self.world_size == 1:
            return value
        return reduce(_add, self.gather(value))

    def concat(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-prompt tensors of each shard, concatenated in rank (= prompt) order."""
        if self.world_size == 1:
            return values
        parts = self.gather(values)
        return {key: torch.cat([part[key] for part in parts]) for key in values}

    def from_main(self, compute: Callable[[], T]) -> T:
        """`compute()` run on the main rank only, its value (or its CircuitbenchError) handed to
        every rank, so that all ranks go on, or stop, together."""
        if self.world_size == 1:
            return compute()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", compute())
            except CircuitbenchError as e:
                outcome = ("error", str(e))
        from accelerate.utils import broadcast_object_list

        box = [_to_cpu(outcome)]
        broadcast_object_list(box, from_process=0)
        kind, value = box[0]
        if kind == "error":
            raise CircuitbenchError(value)
        return value


ONE_PROCESS = Processes()


def launched_world_size() -> int:
    """Processes started by a launcher, from its environment (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """From the launcher's environment, without any collective call: safe on an error path."""
    return int(os.environ.get("RANK", "0")) == 0


def current_processes(device: str = "auto") -> Processes:
    """The launcher's processes as accelerate sees them, or one process when not launched.

    On a machine without CUDA (or with --device cpu) accelerate must be told `cpu=True`, or it
    treats a torchrun/accelerate-launch process as a lone one and every rank would do all work.
    """
    if launched_world_size() <= 1:
        return ONE_PROCESS
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    return Processes(rank=state.process_index, world_size=state.num_processes, device=state.device)


def _to_cpu(value: Any) -> Any:
    """Tensors moved to the CPU before pickling across processes (gloo and NCCL alike)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)) and not isinstance(a, np.ndarray):
        return type(a)(_add(x, y) for x, y in zip(a, b))
    return a + b
