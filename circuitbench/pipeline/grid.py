"""The task × model grid: every unit in order (models as given, then tasks as given), each result
written atomically, finished units kept under --resume, and a unit that raises recorded as
failed while the grid goes on."""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from circuitbench.environment import git_commit, peak_memory_mb, run_versions
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.loading import ModelRef, load_model, resolve_device, resolve_model
from circuitbench.parallel import Processes, current_processes, launched_world_size
from circuitbench.pipeline.unit import model_info, run_unit, task_info
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.prompts.generate import generate_prompts
from circuitbench.registry import loaded_plugins
from circuitbench.results.schema import ErrorInfo, ModelInfo, RunInfo, RunResult
from circuitbench.results.store import is_finished, load_result, result_path, save_result
from circuitbench.scores.activation_cache import check_cache_dir
from circuitbench.specs.catalog import expand_task_names, load_task
from circuitbench.specs.options import RunOptions, effective_spec
from circuitbench.specs.task import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class UnitOutcome:
    model: str
    task: str
    path: Path
    result: RunResult
    skipped: bool  # finished earlier, kept as it was (--resume)

    @property
    def failed(self) -> bool:
        return self.result.status == "failed"


def error_info(err: Exception) -> ErrorInfo:
    """A user mistake keeps its message; anything else (a bug, a crash) also its traceback."""
    user_error = isinstance(err, CircuitbenchError)
    trace = None if user_error else "".join(traceback.format_exception(err))
    return ErrorInfo(type=type(err).__name__, message=str(err), user_error=user_error, traceback=trace)


def failed_result(spec: TaskSpec, model: LoadedModel | ModelRef, options: RunOptions, err: Exception,
                  started: datetime, seconds: float, command: str | None, processes: Processes) -> RunResult:
    """The record of a unit that raised: what was asked, what went wrong, no numbers."""
    if isinstance(model, LoadedModel):
        info, device = model_info(model), str(model.device)
    else:
        dtype = options.dtype or (model.spec.dtype if model.spec else "float32")
        info = ModelInfo(name=model.name, source=model.location, init=options.init, dtype=dtype)
        device = options.device
    return RunResult(
        status="failed", error=error_info(err), task=task_info(spec), model=info,
        run=RunInfo(seed=spec.seed, device=device, started_at=started.isoformat(), duration_s=round(seconds, 3),
                    peak_memory_mb=peak_memory_mb(resolve_device("cpu")), versions=run_versions(), git=git_commit(),
                    command=command, options=options.model_dump(mode="json"), plugins=loaded_plugins(),
                    world_size=processes.world_size),
    )


def _launch_device(options: RunOptions, processes: Processes) -> str:
    # Each process takes the launcher's accelerator (cuda:LOCAL_RANK); on CPU they share it.
    if processes.device is not None and processes.device.type != "cpu" and options.device in ("auto", "cuda"):
        return str(processes.device)
    return options.device


def run(
    tasks: str | list[str],
    models: str | list[str],
    options: RunOptions | None = None,
    *,
    include_paths: tuple[str, ...] = (),
    progress: ProgressFn = no_progress,
    command: str | None = None,
) -> list[UnitOutcome]:
    """Run every (model, task) unit, writing `out/<model>/<task>.json` for each.

    Everything that can be checked is checked before any model loads (task specs and their
    prompts, model names, the cache directory). With `resume`, units whose result file is
    complete with the same spec hash, init and dtype are kept untouched. A unit that raises is
    written with status "failed" and the grid goes on; the outcomes say which failed. Under a
    launcher every process calls this; the prompts are split between them, and only the main
    process writes the files.
    """
    options = options or RunOptions()
    task_names = expand_task_names([tasks] if isinstance(tasks, str) else list(tasks), include_paths)
    model_names = [models] if isinstance(models, str) else list(models)
    specs = [effective_spec(load_task(t, include_paths), options) for t in task_names]
    for spec in specs:  # prompt generation is cheap: fail on an impossible spec before any model loads
        generate_prompts(spec)
    if options.device_map is not None and launched_world_size() > 1:
        raise CircuitbenchError(
            f"--device-map {options.device_map} spreads one model over all devices and cannot be combined with "
            f"{launched_world_size()} data-parallel processes. Launch a single process for --device-map, or drop it "
            "to run one copy of the model per process."
        )
    refs = [resolve_model(name) for name in model_names]  # unknown names fail here, before any compute
    processes = current_processes(options.device)
    if not processes.is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # e.g. "Loading weights": the main process's bar speaks for all
    check_cache_dir(options)
    out = Path(options.out)
    outcomes: list[UnitOutcome] = []
    for model_arg, ref in zip(model_names, refs):
        units = [(spec, result_path(out, ref.name, spec.name)) for spec in specs]
        # The main process decides what is finished (its view of the files rules) and tells the others.
        kept = processes.from_main(lambda units=units: [
            load_result(path) if options.resume and is_finished(path, spec.spec_hash(), options.init, options.dtype)
            else None for spec, path in units])
        pending = []
        for (spec, path), existing in zip(units, kept):
            if existing is not None:
                outcomes.append(UnitOutcome(ref.name, spec.name, path, existing, True))
            else:
                pending.append((spec, path))
        if pending:
            outcomes += _run_model(model_arg, ref, pending, options, processes, progress, command)
    return outcomes


def _run_model(model_arg: str, ref: ModelRef, pending: list[tuple[TaskSpec, Path]], options: RunOptions,
               processes: Processes, progress: ProgressFn, command: str | None) -> list[UnitOutcome]:
    """Load one model and run its pending units; a failed load fails each of them."""
    log.info("loading model %s (%s)", ref.name, options.init)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    model: LoadedModel | ModelRef = ref
    load_error: Exception | None = None
    try:
        model = load_model(model_arg, init=options.init, dtype=options.dtype, device=_launch_device(options, processes),
                           seed=options.seed or 0, device_map=options.device_map)
    except Exception as e:  # noqa: BLE001  (recorded per unit; Ctrl-C is no Exception and stops the grid)
        load_error = e
    outcomes = []
    for spec, path in pending:
        if load_error is None:
            assert isinstance(model, LoadedModel)
            log.info("running %s on %s", spec.name, ref.name)
            started, t0 = datetime.now(timezone.utc), time.perf_counter()
            try:
                result = run_unit(spec, model, options, progress=progress, command=command, processes=processes)
            except Exception as e:  # noqa: BLE001
                result = failed_result(spec, model, options, e, started, time.perf_counter() - t0, command, processes)
        else:
            result = failed_result(spec, model, options, load_error, started, time.perf_counter() - t0, command,
                                   processes)
        if result.error is not None:
            log.error("%s on %s failed: %s: %s", spec.name, ref.name, result.error.type, result.error.message)
        if processes.is_main:
            save_result(result, path)
        outcomes.append(UnitOutcome(ref.name, spec.name, path, result, False))
    return outcomes
