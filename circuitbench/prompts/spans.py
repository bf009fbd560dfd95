"""Named spans: every token of a text prompt belongs to one span named after the prompt's segments.

A span is a labelled segment, named by its label (IO, S1, S2, LAST, …), or a run of consecutive
unlabelled segments between two labels, named by where it sits:

- `before X`: the unlabelled text before the first label X;
- `X..Y`: the unlabelled text between labels X and Y;
- `END`: the last segment when it is unlabelled (IOI's " to"): the span of the prompt's last token,
  where answer metrics read the logits; it is its own span even when unlabelled text precedes it
  (that text is `X..END`, after the last label X). When the last segment is labelled (a sequence's
  LAST), END lies in that label's span. Either way END is the last span of every prompt;
- `BOS`: the model's beginning-of-sequence token, when the tokenizer adds one.

Runs of unlabelled segments are one span, not one span per segment, so that prompts drawn from
different templates ("When A and B went to the PLACE, S gave a OBJECT to", "Then, A and B …") share
their spans: IOI's are BOS, before IO, IO, IO..S1, S1, S1..S2, S2, S2..END, END (ABBA order). A
name that recurs later in the same prompt (a label used twice) is numbered: `X#2`.

One prompt set, one tuple of span names (`shared_span_names`): prompts whose structure differs
(IOI's ABBA and BABA orders put IO and S1 the other way round) keep their spans; the set's names
are the union, in the order of the most common structure with the others' names inserted after
the span they follow. A prompt simply has no token in a span it lacks. Nothing is dropped.
Counterfactual prompts are named the same way; a clean span their counterfactual lacks has no
counterpart to be aligned with (scores/alignment.py refuses it, naming the prompt).

The spans follow PEAP's "schema" (Haklay et al. 2025, "Position-aware Automatic Circuit
Discovery", arXiv:2502.04577): positions grouped into spans that play the same role across
prompts, so that prompts of different lengths share one position axis.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

BOS = "BOS"
END = "END"


def segment_span_names(labels: Sequence[str | None]) -> list[str]:
    """The span name of each segment, given the segments' labels (None: unlabelled), as the module
    docstring says: consecutive unlabelled segments share a name; a name recurring after another
    span is numbered (`X#2`)."""
    n = len(labels)
    names: list[str] = []
    for i, label in enumerate(labels):
        if label is not None:
            names.append(label)
            continue
        if i == n - 1:
            names.append(END)
            continue
        before = next((labels[j] for j in range(i - 1, -1, -1) if labels[j] is not None), None)
        after = next((labels[j] for j in range(i + 1, n) if labels[j] is not None), None)
        if after is None:  # unlabelled to the end: the last segment is END
            names.append(f"{before}..{END}" if before is not None else f"before {END}")
        else:
            names.append(f"{before}..{after}" if before is not None else f"before {after}")
    out: list[str] = []
    seen: Counter[str] = Counter()
    for i, name in enumerate(names):
        if i and names[i - 1] == name:  # the same run continues
            out.append(out[-1])
            continue
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def token_span_names(bos: bool, labels: Sequence[str | None], counts: Sequence[int]) -> list[str]:
    """The span name of every token of a prompt: BOS (when the tokenizer adds one), then each
    segment's name once per token it tokenizes to (`counts`)."""
    names = [BOS] if bos else []
    for name, count in zip(segment_span_names(labels), counts):
        names.extend([name] * count)
    return names


def structure(token_names: Sequence[str]) -> tuple[str, ...]:
    """A prompt's spans in order, each once (its token names with repeats collapsed)."""
    return tuple(dict.fromkeys(token_names))


def shared_span_names(structures: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """One tuple of span names for prompts of these structures (each a prompt's spans in order):
    the most common structure's order (ties: the first seen), every other structure's new names
    inserted right after the span that precedes them there (at the start when none does)."""
    counts: Counter[tuple[str, ...]] = Counter(tuple(s) for s in structures)
    ranked = sorted(counts, key=lambda s: -counts[s])  # stable: ties keep first appearance
    order: list[str] = []
    for struct in ranked:
        for k, name in enumerate(struct):
            if name in order:
                continue
            previous = next((struct[j] for j in range(k - 1, -1, -1) if struct[j] in order), None)
            order.insert(0 if previous is None else order.index(previous) + 1, name)
    return tuple(order)
