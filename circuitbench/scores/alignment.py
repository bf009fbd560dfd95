"""Counterfactuals of another token length, aligned span by span (prompts/spans.py names the spans).

`align_counterfactual(batch)` gives, for every clean position, the corrupted position whose
activation stands in for it when clean and corrupted runs are combined position by position:

- within a span of the same token length in both prompts, token i <-> token i;
- spans of unequal length are right-aligned: the span's last token <-> the span's last token
  (where its label's named position is: IO, S2, END, …), the one before it <-> the one before, …;
  clean tokens left without a counterpart (the clean span is longer) read the counterfactual
  span's first token; counterfactual tokens left over (it is longer) are read by no clean token;
- padding (past the clean prompt's end) reads its own position, as in an aligned batch.

A clean span the counterfactual lacks (another segment structure) has no counterpart: that is a
CircuitbenchError naming the prompt and the span. An aligned batch (same lengths and named
positions, `corrupted_lengths` None) aligns every position with itself, so gathering along this
alignment leaves a corrupted run exactly as it is.

PEAP (Haklay et al. 2025, "Position-aware Automatic Circuit Discovery", arXiv:2502.04577; code
technion-cs-nlp/PEAP) introduced dataset schemas — spans with the same role across prompts — to
aggregate position-aware scores over prompts of different lengths; its counterfactuals keep the
clean prompt's span boundaries (`Experiament.get_span_masks` applies the clean row's span indices
to both runs). Right-aligning spans of unequal length is our extension of the schema to
counterfactuals whose spans differ in length: the last token of a span is the one its label
names, and under causal attention the only one that has read all of the span.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import excerpt
from circuitbench.prompts.encoding import Batch, EncodedPrompts


def align_counterfactual(batch: Batch, *, span_names: Sequence[str] = (), texts: Sequence[str] | None = None,
                         first: int = 0) -> torch.Tensor:
    """[batch, clean_pos] int64: for each clean position, the corrupted position it reads (see the
    module docstring). `span_names`, `texts` and `first` (the batch's first prompt's index in its
    set) only name things in the error a missing span raises."""
    b, width = batch.tokens.shape
    identity = torch.arange(width).expand(b, width).clone()
    if batch.corrupted_lengths is None:
        return identity
    if batch.spans is None or batch.corrupted_spans is None:
        raise CircuitbenchError("These prompts' counterfactuals have other token lengths and no named spans to align "
                                "them by (symbol prompts): methods that patch position by position cannot run on them.")
    spans, corrupted = batch.spans.cpu(), batch.corrupted_spans.cpu()
    for row in range(b):
        clean_row, corrupted_row = spans[row], corrupted[row]
        for span in dict.fromkeys(clean_row[clean_row >= 0].tolist()):  # in prompt order: the first missing named
            at = torch.nonzero(clean_row == span).flatten()
            there = torch.nonzero(corrupted_row == span).flatten()
            if len(there) == 0:
                raise CircuitbenchError(_missing(span, row, span_names, texts, first, corrupted_row))
            # right-aligned; the clean tokens before the counterfactual span's start read its first token
            identity[row, at] = there[(torch.arange(len(at)) + len(there) - len(at)).clamp(min=0)]
    return identity


def _missing(span: int, row: int, span_names: Sequence[str], texts: Sequence[str] | None, first: int,
             corrupted_row: torch.Tensor) -> str:
    name = span_names[span] if span < len(span_names) else f"#{span}"
    has = [span_names[s] if s < len(span_names) else f"#{s}" for s in dict.fromkeys(corrupted_row[corrupted_row >= 0]
                                                                                       .tolist())]
    prompt = f"prompt {first + row}" + (f" ({excerpt(texts[row])!r})" if texts is not None else "")
    return (f"{prompt}: its counterfactual has no span '{name}' (it has {', '.join(has)}), so the clean prompt's "
            f"'{name}' tokens have nothing to be patched from. Give the counterfactual the same labelled segments as "
            "the clean prompt (a data file: corrupted_positions naming the same positions), or drop "
            "aligned_counterfactual: false so that prompts of another length are dropped and counted.")


def check_alignment(data: EncodedPrompts) -> None:
    """Every prompt of the set aligns with its counterfactual (align_counterfactual), or a
    CircuitbenchError naming the first that does not: checked before any compute."""
    if data.aligned or data.corrupted is None:
        return
    step = 256
    for start in range(0, len(data), step):
        stop = min(start + step, len(data))
        align_counterfactual(data.batch(start, stop), span_names=data.span_names, texts=data.texts[start:stop],
                             first=data.offset + start)


def aligns(data: EncodedPrompts) -> bool:
    """Whether every prompt's counterfactual run can be read in the clean prompt's positions: aligned
    prompts, or unaligned ones whose counterfactuals all have their clean prompt's spans."""
    if data.aligned or data.corrupted is None:
        return True
    if data.spans is None:
        return False
    try:
        check_alignment(data)
    except CircuitbenchError:
        return False
    return True


def gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [batch, pos, ...] read at `index` [batch, pos'] along pos: out[b, p] = x[b, index[b, p]]."""
    idx = index.to(x.device).view(*index.shape, *[1] * (x.dim() - 2)).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)
