"""circuitbench: a declarative benchmark harness for circuit tasks in transformer LMs.

Notebook use mirrors the CLI (options are keyword arguments named as its flags):

    import circuitbench as cb
    task = cb.Task.from_prompts("my_task", prompts=[...], answers=[...], distractors=[...],
                                counterfactuals=[...])             # or cb.load_task("ioi")
    result = cb.run(task, "gpt2-small", init="random", n_prompts=8,
                    methods=["activation_patching"])               # out=None: nothing written
    result.circuit.heads, result.circuit.faithfulness.value, result.scores("activation_patching")

Names are imported on first use, so `import circuitbench` (and the CLI's --help) stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (an alias: "module:attribute")
_EXPORTS = {
    "Circuit": "circuitbench.circuits.circuit",
    "Faithfulness": "circuitbench.circuits.circuit",
    "load_circuit": "circuitbench.results.store",
    "ExecutionOptions": "circuitbench.specs.options",
    "MethodOutput": "circuitbench.scores.methods.outputs",
    "OverlapMatrix": "circuitbench.circuits.overlap",
    "OverlapSettings": "circuitbench.circuits.overlap_settings",
    "overlap_matrix": "circuitbench.circuits.overlap",
    "generator": "circuitbench.specs.registries",
    "listing": "circuitbench.tables.listings",
    "compare": "circuitbench.pipeline.compare",
    "load_circuits": "circuitbench.results.circuit_files",
    "method": "circuitbench.specs.registries",
    "metric": "circuitbench.specs.registries",
    "validate_task": "circuitbench.pipeline.validation",
    "Task": "circuitbench.specs.task:TaskSpec",
    "TaskOverrides": "circuitbench.specs.options",
    "effective_spec": "circuitbench.specs.options",
    "run_grid": "circuitbench.pipeline.grid:run",
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
    "run": "circuitbench.pipeline.runner",
    "run_unit": "circuitbench.pipeline.unit",
}
__all__ = [
    "Circuit", "CircuitbenchError", "ExecutionOptions", "Faithfulness", "GeneratorParams", "LoadedModel",
    "MethodOutput", "ModelSpec", "OverlapMatrix", "OverlapSettings", "RunOptions", "RunResult", "Task",
    "TaskOverrides", "TaskSpec", "compare", "effective_spec", "generator", "listing", "load_circuit", "load_circuits",
    "load_model", "load_plugins", "load_result", "load_task", "method", "metric", "model_registry", "overlap_matrix",
    "register_generator", "register_method", "register_metric", "register_overlap_metric", "run", "run_grid",
    "run_unit", "validate_task",
]

if TYPE_CHECKING:
    from circuitbench.circuits.circuit import Circuit, Faithfulness
    from circuitbench.circuits.overlap import OverlapMatrix, overlap_matrix
    from circuitbench.circuits.overlap_settings import OverlapSettings
    from circuitbench.errors import CircuitbenchError
    from circuitbench.models.loaded import LoadedModel
    from circuitbench.models.loading import load_model
    from circuitbench.pipeline.compare import compare
    from circuitbench.pipeline.grid import run as run_grid
    from circuitbench.pipeline.runner import run
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.pipeline.validation import validate_task
    from circuitbench.plugins import register_generator, register_method, register_metric, register_overlap_metric
    from circuitbench.registry import load_plugins
    from circuitbench.results.circuit_files import load_circuits
    from circuitbench.results.schema import RunResult
    from circuitbench.results.store import load_circuit, load_result
    from circuitbench.scores.methods.outputs import MethodOutput
    from circuitbench.specs.catalog import load_task, model_registry
    from circuitbench.specs.model import ModelSpec
    from circuitbench.specs.options import ExecutionOptions, RunOptions, TaskOverrides, effective_spec
    from circuitbench.specs.registries import GeneratorParams, generator, method, metric
    from circuitbench.specs.task import TaskSpec
    from circuitbench.specs.task import TaskSpec as Task
    from circuitbench.tables.listings import listing


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'circuitbench' has no attribute '{name}'")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value
