"""Compare circuits across tasks or models in one call: run what is missing of the grid (one model
on several tasks, or several models on one task; finished units are kept), then the overlap of the
units' circuits (`overlap_matrix`, with its own default metrics when none are named)."""
from __future__ import annotations

from collections.abc import Sequence

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap import DEFAULT_SETTINGS, OverlapMatrix, overlap_matrix
from circuitbench.circuits.overlap_settings import OverlapSettings
from circuitbench.errors import CircuitbenchError
from circuitbench.parallel import is_main_process
from circuitbench.pipeline.grid import UnitOutcome
from circuitbench.pipeline.grid import run as run_grid
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.specs.options import RunOptions


def compare(model: str | None = None, tasks: Sequence[str] | None = None, *, models: Sequence[str] | None = None,
            task: str | None = None, options: RunOptions | None = None, settings: OverlapSettings = DEFAULT_SETTINGS,
            metrics: Sequence[str] | None = None, include_paths: tuple[str, ...] = (),
            progress: ProgressFn = no_progress) -> tuple[list[UnitOutcome], OverlapMatrix | None]:
    """The circuits of `model` on `tasks`, or of `models` on `task`, compared: every unit runs with
    `options` (default: RunOptions()) and always resumes (a finished unit is kept, a failed one
    retried). Returns the outcomes and the overlap matrix of their circuits; the matrix is None when a
    unit failed (the outcomes say why) and in data-parallel processes other than the main one."""
    if bool(model and tasks) == bool(models and task):
        raise CircuitbenchError("compare: give either --model M --tasks T1,T2 or --models M1,M2 --task T.")
    task_list, model_list = (list(tasks), [model]) if model and tasks else ([task], list(models or []))
    options = (options or RunOptions()).model_copy(update={"resume": True})
    outcomes = run_grid(task_list, model_list, options, include_paths=include_paths, progress=progress)
    if not is_main_process() or any(o.failed for o in outcomes):
        return outcomes, None
    missing = [f"{o.model}/{o.task}" for o in outcomes if o.result.circuit is None]
    if missing:
        raise CircuitbenchError(f"compare: no circuit in {missing}: give those tasks a circuit rule in their YAML.")
    circuits = [Circuit.from_result(o.result) for o in outcomes]
    return outcomes, overlap_matrix(circuits, metrics, settings, sources=[o.path for o in outcomes])
