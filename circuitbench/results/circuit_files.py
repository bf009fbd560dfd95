"""Circuit files as a user names them (`circuitbench overlap`'s arguments): globs expanded, each
file read as a circuit (`load_circuit`: a RunResult checked as a result, a JSON with heads or nodes,
an EAP-IG / MIB graph file) and a model shape given to the circuits that carry none."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.graph_files import check_head_bounds, edge_scores_owner
from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.files import expand_glob
from circuitbench.results.store import load_circuit
from circuitbench.specs.catalog import model_registry

log = logging.getLogger(__name__)


def circuit_paths(patterns: Sequence[str]) -> list[str]:
    """The files `patterns` name (paths or globs, see `expand_glob`): each matches at least one,
    and at least two in all (an overlap compares circuits)."""
    paths: list[str] = []
    for pattern in patterns:
        matches = expand_glob(pattern)
        if not matches:
            raise CircuitbenchError(f"overlap: no file matches {pattern!r}.")
        # a glob over a results folder also matches each result's edge-score files: they are that
        # result's scores, not another circuit (a file named on its own is always taken)
        owners = {str(edge_scores_owner(Path(m))) for m in matches} & set(matches)
        sidecars = [m for m in matches if str(edge_scores_owner(Path(m))) in owners]
        if sidecars:
            log.info("overlap: %s left out: the edge scores of %s, also matched by %r",
                     ", ".join(Path(s).name for s in sidecars),
                     "a result" if len(sidecars) == 1 else "results", pattern)
        paths.extend(m for m in matches if m not in sidecars)
    if len(paths) < 2:
        raise CircuitbenchError("overlap: give at least two circuit files.")
    return paths


def circuit_shape(shape: str | tuple[int, int] | None = None, model: str | None = None) -> tuple[int, int] | None:
    """(n_layers, n_heads) for circuits that carry none: `shape` as "LAYERS,HEADS" (--shape) or a
    pair, or a registry `model`'s (--model); None when neither is given."""
    if shape is not None and model is not None:
        raise CircuitbenchError("--shape and --model both give the shape: pass one.")
    if model is not None:
        registry = model_registry()
        if model not in registry:
            raise CircuitbenchError(f"--model {model}: not a registry model.{did_you_mean(model, registry)} Use "
                                    "--shape LAYERS,HEADS for another model.")
        return registry[model].n_layers, registry[model].n_heads
    if shape is None:
        return None
    text = shape if isinstance(shape, str) else ",".join(map(str, shape))
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise CircuitbenchError(f"--shape {text!r}: give LAYERS,HEADS as two positive integers, e.g. 12,12.")
    check_head_bounds(int(parts[0]), int(parts[1]), f"--shape {text}", "--shape")
    return int(parts[0]), int(parts[1])


def load_circuits(paths: Sequence[str | Path], shape: str | tuple[int, int] | None = None,
                  model: str | None = None) -> list[Circuit]:
    """The circuit of each file (`load_circuit`), those without a model shape given `circuit_shape(shape,
    model)` when one is given (the shape is checked before any file is read)."""
    given = circuit_shape(shape, model)
    circuits = [load_circuit(Path(p)) for p in paths]
    return [c if c.shape or given is None else c.with_shape(*given) for c in circuits]
