"""A module's forward replaced for the length of a block (models/ only: it reaches into bridge
components). Used by the exact-patching shortcuts that hand a module its known output
(models/known_attention.py, models/answer_logits.py)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def replaced_forward(module: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """`module.forward` is `forward` inside the block, what it was after it. Set on the wrapper with
    object.__setattr__: a bridge component's own __setattr__ would hand `forward` to the HF module it
    wraps; an instance forward already there (accelerate's hooks) is put back."""
    own = module.__dict__.get("forward")
    object.__setattr__(module, "forward", forward)
    try:
        yield
    finally:
        if own is None:
            del module.__dict__["forward"]
        else:
            object.__setattr__(module, "forward", own)
