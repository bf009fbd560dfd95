"""`circuitbench.run`: the library's entry point, what a notebook calls.

    import circuitbench as cb
    task = cb.Task.from_prompts("my_task", prompts=[...], answers=[...], distractors=[...], counterfactuals=[...])
    result = cb.run(task, "gpt2-small", init="random", n_prompts=8, methods=["activation_patching"])
    result.circuit.heads, result.scores("activation_patching")

Options are keyword arguments named as the CLI's options. `out=None` (the default) computes in
memory and writes nothing anywhere: no result, no activation cache unless `cache_dir` is given,
nothing under `~` (a hub model's download aside). `out=DIR` runs the grid: results written
atomically to DIR/<model>/<task>.json, `resume=True` keeping finished units. A unit that raises
raises its original exception (`fail_on_error=False`: it comes back as a failed RunResult, as the
CLI records it)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from circuitbench.circuits.recovery import load_reference
from circuitbench.environment import threads_for, torch_threads
from circuitbench.errors import CircuitbenchError, format_validation_error
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.loading import load_model
from circuitbench.parallel import ONE_PROCESS
from circuitbench.pipeline.executors import Executor, executor_named
from circuitbench.pipeline.grid import GridRun, Unit, failed_result, task_specs
from circuitbench.pipeline.grid import run as run_grid
from circuitbench.pipeline.unit import run_unit
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.results.schema import RunResult
from circuitbench.specs.options import ExecutionOptions, RunOptions
from circuitbench.specs.task import TaskSpec

TaskArg = str | TaskSpec
ModelArg = str | LoadedModel


def run(
    task: TaskArg | Sequence[TaskArg], model: ModelArg | Sequence[ModelArg], *, out: str | Path | None = None,
    fail_on_error: bool = True, include_paths: Sequence[str] = (), progress: ProgressFn = no_progress,
    executor: str | Executor = "local", address: str | None = None, **options: Any,
) -> RunResult | list[RunResult]:
    """Run task(s) on model(s). One task and one model give one RunResult; lists give a list,
    models outer, tasks inner. `task`: a catalog name, a YAML path, 'suite' or a TaskSpec;
    `model`: a registry name, HF id, local directory, or an already loaded model (`load_model`).
    `options`: n_prompts, seed, split, methods, circuit_level (they change the task: applied to
    its spec before it runs), batch_size, cache_dir, threads (how it runs), init, dtype, device,
    device_map, reference, and with `out` resume and cache. `executor` (with `out`): where the
    units run, 'local', 'ray' (at `address`, or a local cluster) or an Executor
    (pipeline/executors.py); results are written here either way."""
    if "out" in options or not isinstance(fail_on_error, bool):
        raise TypeError("out and fail_on_error are keyword arguments of their own")
    try:
        opts = RunOptions(out=str(out) if out is not None else "results", **options)
    except ValidationError as e:
        raise CircuitbenchError(format_validation_error(e, "circuitbench.run", "options")) from None
    single = isinstance(task, (str, TaskSpec)) and isinstance(model, (str, LoadedModel))
    tasks = [task] if isinstance(task, (str, TaskSpec)) else list(task)
    models = [model] if isinstance(model, (str, LoadedModel)) else list(model)
    if out is not None:
        if any(isinstance(m, LoadedModel) for m in models):
            raise CircuitbenchError("out=DIR writes results named by the model: give model names, not loaded models "
                                    "(or out=None to run in memory).")
        runs_on = executor_named(executor, address) if isinstance(executor, str) else executor
        outcomes = run_grid(tasks, [str(m) for m in models], opts, include_paths=tuple(include_paths),
                            progress=progress, fail_on_error=fail_on_error, executor=runs_on)
        results = [o.result for o in outcomes]
    else:
        if opts.resume:
            raise CircuitbenchError("resume=True keeps results written under out=DIR: give out too.")
        if executor != "local" or address is not None:
            raise CircuitbenchError("executor= computes units elsewhere and writes their results under out=DIR: "
                                    "give out too.")
        results = _in_memory(tasks, models, opts, tuple(include_paths), progress, fail_on_error)
    return results[0] if single else results


def _in_memory(tasks: list[TaskArg], models: list[ModelArg], opts: RunOptions, include_paths: tuple[str, ...],
               progress: ProgressFn, fail_on_error: bool) -> list[RunResult]:
    """Every unit computed in memory: no result file, no cache unless cache_dir was given."""
    specs = task_specs(tasks, include_paths, opts.overrides())
    execution = ExecutionOptions(batch_size=opts.batch_size, threads=opts.threads, max_memory=opts.max_memory,
                                 cache_dir=opts.cache_dir if opts.cache and opts.cache_dir else None)
    grid = GridRun(opts, execution, ONE_PROCESS, progress, None, fail_on_error)
    reference = load_reference(Path(opts.reference)) if opts.reference is not None else None
    results = []
    for given in models:
        loaded = given if isinstance(given, LoadedModel) else load_model(
            given, init=opts.init, dtype=opts.dtype, device=opts.device, seed=opts.seed or 0,
            device_map=opts.device_map, kv_graph=opts.kv_graph)
        with torch_threads(threads_for(loaded.n_params, opts.threads)):
            for spec in specs:
                started, t0 = datetime.now(timezone.utc), time.perf_counter()
                try:
                    result = run_unit(spec, loaded, execution, reference=reference, progress=progress)
                except Exception as e:
                    if fail_on_error:
                        raise
                    result = failed_result(Unit(spec, Path()), loaded, grid, e, started, time.perf_counter() - t0)
                result.run.overrides = opts.overrides().model_dump(exclude_none=True)
                results.append(result)
    return results
