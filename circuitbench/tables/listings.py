"""What `circuitbench ls` lists — tasks, models, methods, metrics, generators, overlap metrics — as
DataFrames a notebook can read as well as the CLI can print (cb.listing("models"))."""
from __future__ import annotations

import pandas as pd

from circuitbench.errors import CircuitbenchError, did_you_mean

LISTINGS = ("tasks", "models", "methods", "metrics", "generators", "overlap-metrics")


# Columns of names (never cut: a name is what the user types next) and short values, and columns of
# comma-separated names (folded inside a name only when one alone is wider than its column), as the
# console renders `ls` (the models listing, eight columns of values, is printed as it is).
NAME_COLUMNS = ("task", "generator", "n", "method", "metric", "overlap metric")
LIST_COLUMNS = ("metrics", "methods")
_OPENING, _CLOSING = "([{“", ")]}”"


def first_sentence(text: str) -> str:
    """The first sentence of `text` (whitespace runs made single spaces), ending with its period: a
    sentence ends at '.', '!' or '?' followed by a space and a capital letter, never inside quotes
    or brackets ('("A was born in one. A was born in" -> " two")' is inside one sentence)."""
    text = " ".join(text.split())
    depth, quoted = 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char in _OPENING:
            depth += 1
        elif char in _CLOSING:
            depth = max(0, depth - 1)
        elif (char in ".!?" and not quoted and depth == 0 and text[i + 1:i + 2] == " "
              and text[i + 2:i + 3].isupper()):
            return text[:i + 1]
    return text if not text or text[-1] in ".!?" else text + "."


def _tasks(include_paths: tuple[str, ...]) -> pd.DataFrame:
    from circuitbench.specs.catalog import all_tasks

    rows = [(name, spec.generator.name, str(spec.n_prompts), ", ".join(spec.metrics), ", ".join(spec.methods),
             first_sentence(spec.description)) for name, spec in all_tasks(include_paths).items()]
    return pd.DataFrame(rows, columns=["task", "generator", "n", "metrics", "methods", "description"])


def _models() -> pd.DataFrame:
    from circuitbench.specs.catalog import model_registry
    from circuitbench.specs.model import memory_needed_bytes

    rows = [(name, m.hf_id or f"{m.source}: {m.path}", f"{m.n_params / 1e6:,.1f}M", f"{m.n_layers}×{m.n_heads}",
             str(m.d_model), m.dtype,
             " / ".join(f"{memory_needed_bytes(m.n_params, d) / 2**30:.1f} GB" for d in ("float32", "bfloat16")),
             m.notes) for name, m in model_registry().items()]
    return pd.DataFrame(rows, columns=["model", "source", "params", "layers×heads", "d_model", "dtype",
                                       "memory fp32 / bf16", "notes"])


def _registry(what: str) -> pd.DataFrame:
    from circuitbench.specs.registries import GENERATORS, METHODS, METRICS

    registry = {"methods": METHODS, "metrics": METRICS, "generators": GENERATORS}[what]
    return pd.DataFrame([(name, item.description) for name, item in registry.items()],
                        columns=[what[:-1], "description"])


def _overlap_metrics() -> pd.DataFrame:
    from circuitbench.circuits.overlap_metrics import OVERLAP_METRICS

    rows = [(name, metric.description) for name, metric in OVERLAP_METRICS.items()]
    return pd.DataFrame(rows, columns=["overlap metric", "description"])


def listing(what: str, include_paths: tuple[str, ...] = ()) -> pd.DataFrame:
    """One of LISTINGS as a table of strings (plugins loaded first are listed too)."""
    if what == "tasks":
        return _tasks(include_paths)
    if what == "models":
        return _models()
    if what in ("methods", "metrics", "generators"):
        return _registry(what)
    if what == "overlap-metrics":
        return _overlap_metrics()
    raise CircuitbenchError(f"ls {what!r}: choose one of {', '.join(LISTINGS)}.{did_you_mean(what, LISTINGS)}")
