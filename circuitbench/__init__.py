"""circuitbench: a declarative benchmark harness for circuit tasks in transformer LMs.

Notebook use mirrors the CLI:

    import circuitbench as cb
    outcomes = cb.run("induction", "toy-induction-2l")
    model = cb.load_model("toy-induction-2l")
"""
from __future__ import annotations

__version__ = "0.1.0"

from circuitbench.catalog import load_task, model_registry
from circuitbench.circuits import Circuit
from circuitbench.errors import CircuitbenchError
from circuitbench.models import LoadedModel, load_model
from circuitbench.results import RunResult, load_result
from circuitbench.runner import run, run_unit
from circuitbench.spec import ModelSpec, RunOptions, TaskSpec

__all__ = [
    "Circuit", "CircuitbenchError", "LoadedModel", "ModelSpec", "RunOptions", "RunResult", "TaskSpec",
    "load_model", "load_result", "load_task", "model_registry", "run", "run_unit",
]
