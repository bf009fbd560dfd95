"""Counting the model work a stretch of code does, without that code knowing: while a meter is on
(`LoadedModel.metered()`), every forward the LoadedModel runs adds its token-positions times the
share of the blocks it runs, and a forward that keeps its autograd graph (`grad=True`: attribution
methods take one backward through it) adds that again as a backward.

The unit is the work of one forward of one token position through every block; a caller turns
it into forward-equivalents of its prompts by dividing by their token-positions (scores/cost.py).
A backward counts two forwards (the usual FLOP estimate: gradients of activations and of the
products they come from), as ACDC, EAP-IG and MIB's cost comparisons count it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ForwardMeter:
    """Token-position × block-share totals of the forwards (and backwards) run while it was on."""

    forward: float = 0.0  # Σ rows × positions × share of blocks run, over every forward
    backward: float = 0.0  # the same over the forwards that kept their graph for a backward
    calls: int = 0  # model calls (a batch of stacked copies is one call)

    def add(self, rows: int, positions: int, share: float = 1.0, backward: bool = False) -> None:
        """One forward of `rows` sequences of `positions` tokens through `share` of the blocks
        (a forward resumed at block L of n: (n − L) / n), with a backward through it if `backward`."""
        work = float(rows) * float(positions) * float(share)
        self.forward += work
        if backward:
            self.backward += work
        self.calls += 1

    def absorb(self, other: ForwardMeter) -> None:
        """Add another meter's totals (a meter switched on inside this one)."""
        self.forward += other.forward
        self.backward += other.backward
        self.calls += other.calls
