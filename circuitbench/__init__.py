"""circuitbench: a declarative benchmark harness for circuit tasks in transformer LMs.

Notebook use mirrors the CLI:

    import circuitbench as cb
    outcomes = cb.run("induction", "toy-induction-2l")
    model = cb.load_model("toy-induction-2l")

Names are imported on first use, so `import circuitbench` (and the CLI's --help) stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Circuit": "circuitbench.circuits.circuit",
    "CircuitbenchError": "circuitbench.errors",
    "GeneratorParams": "circuitbench.specs.registries",
    "LoadedModel": "circuitbench.models.loaded",
    "ModelSpec": "circuitbench.specs.model",
    "RunOptions": "circuitbench.specs.options",
    "RunResult": "circuitbench.results.schema",
    "TaskSpec": "circuitbench.specs.task",
    "load_model": "circuitbench.models.loading",
    "load_plugins": "circuitbench.registry",
    "load_result": "circuitbench.results.store",
    "load_task": "circuitbench.specs.catalog",
    "model_registry": "circuitbench.specs.catalog",
    "register_generator": "circuitbench.plugins",
    "register_method": "circuitbench.plugins",
    "register_metric": "circuitbench.plugins",
    "register_overlap_metric": "circuitbench.plugins",
    "run": "circuitbench.pipeline.grid",
    "run_unit": "circuitbench.pipeline.unit",
}
__all__ = [
    "Circuit", "CircuitbenchError", "GeneratorParams", "LoadedModel", "ModelSpec", "RunOptions", "RunResult",
    "TaskSpec",
    "load_model", "load_plugins", "load_result", "load_task", "model_registry", "register_generator", "register_method",
    "register_metric", "register_overlap_metric", "run", "run_unit",
]

if TYPE_CHECKING:
    from circuitbench.circuits.circuit import Circuit
    from circuitbench.errors import CircuitbenchError
    from circuitbench.models.loaded import LoadedModel
    from circuitbench.models.loading import load_model
    from circuitbench.pipeline.grid import run
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.plugins import register_generator, register_method, register_metric, register_overlap_metric
    from circuitbench.registry import load_plugins
    from circuitbench.results.schema import RunResult
    from circuitbench.results.store import load_result
    from circuitbench.specs.catalog import load_task, model_registry
    from circuitbench.specs.model import ModelSpec
    from circuitbench.specs.options import RunOptions
    from circuitbench.specs.registries import GeneratorParams
    from circuitbench.specs.task import TaskSpec


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'circuitbench' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
