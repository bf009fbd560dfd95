"""The task × model grid: every unit in order (models as given, then tasks as given), each result
written atomically, finished units of the same model identity kept under --resume, and a unit
that raises recorded as failed while the grid goes on.

Everything that can be checked is checked before any model loads: task specs and their prompts,
model names and files, the output and cache directories, and that no two different models would
share result files."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from circuitbench.circuits.recovery import Reference, find_reference, load_reference
from circuitbench.environment import git_commit, peak_memory_mb, run_versions, set_threads, threads_for, torch_threads
from circuitbench.errors import CircuitbenchError, Interrupted
from circuitbench.files import check_writable_dir
from circuitbench.models.fingerprint import weights_fingerprint
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.loading import load_model
from circuitbench.models.resolve import ModelRef, check_available, resolve_device, resolve_model
from circuitbench.output_paths import inside
from circuitbench.parallel import ONE_PROCESS, Processes, current_processes, launched_world_size
from circuitbench.pipeline.executors import Computed, Executor, GridWork, LocalExecutor, UnitJob
from circuitbench.pipeline.plan import announce
from circuitbench.pipeline.unit import model_info, run_unit, task_info
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.prompts.generate import generate_prompts, shortfall
from circuitbench.registry import load_plugins, loaded_plugins
from circuitbench.results.schema import ErrorInfo, ModelInfo, PluginCode, RunInfo, RunResult
from circuitbench.results.store import load_result, nonfinite_fields, save_result
from circuitbench.scores.activation_cache import check_cache_dir, fingerprint_memo_dir
from circuitbench.specs.catalog import expand_task_names, load_task
from circuitbench.specs.options import ExecutionOptions, RunOptions, TaskOverrides, effective_spec
from circuitbench.specs.registries import GENERATORS, METHODS, METRICS
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


@dataclass(frozen=True)
class Unit:
    spec: TaskSpec
    path: Path


@dataclass(frozen=True)
class GridRun:
    """What every unit of one grid shares: its options (the execution part and the task overrides
    already split out), the processes, progress, the command line, and whether a failing unit
    raises (a library call) or is recorded while the grid goes on (the CLI)."""

    options: RunOptions
    execution: ExecutionOptions
    processes: Processes
    progress: ProgressFn
    command: str | None
    fail_on_error: bool


def error_info(err: Exception) -> ErrorInfo:
    """A user mistake keeps its message; anything else (a bug, a crash) also its traceback."""
    user_error = isinstance(err, CircuitbenchError)
    trace = None if user_error else "".join(traceback.format_exception(err))
    return ErrorInfo(type=type(err).__name__, message=str(err), user_error=user_error, traceback=trace)


def expected_model(ref: ModelRef, options: RunOptions) -> ModelInfo:
    """The identity a result of this run will carry, known before the model loads (local weights
    by content; their files' digests remembered inside the cache root when the cache is on)."""
    seed = options.seed or 0
    shipped = ref.kind in ("toy", "tl")  # zoo checkpoints: no hub revision
    hub_revision = ref.spec.revision if ref.spec and options.init == "pretrained" and not shipped else None
    fingerprint = weights_fingerprint(ref, options.init, seed, memo_dir=fingerprint_memo_dir(options))
    return ModelInfo(name=ref.name, source=ref.location, revision=hub_revision, fingerprint=fingerprint,
                     init=options.init, init_seed=seed if options.init == "random" else None, kv_graph=options.kv_graph,
                     dtype=ref.dtype(options.dtype))


def expected_reference(spec: TaskSpec, ref: ModelRef, options: RunOptions) -> Reference | None:
    """The reference circuit a run of this unit will score recovery against, known before the model loads."""
    return find_reference(options.reference, spec.reference_circuits, spec.name, (ref.name, ref.location),
                          ref.location)


def task_plugin_code(spec: TaskSpec) -> dict[str, PluginCode]:
    """The plugin code behind the task's generator, metrics and methods ('method:x' -> module,
    version, code sha256); built-in ones have none."""
    used = [("generator", GENERATORS, spec.generator.name), *(("metric", METRICS, m) for m in spec.metrics),
            *(("method", METHODS, m) for m in spec.methods)]
    codes = {}
    for kind, registry, name in used:
        if (code := registry.plugin_code(name)) is not None:
            codes[f"{kind}:{name}"] = PluginCode.model_validate(code)
    return codes


def failed_result(unit: Unit, model: LoadedModel | ModelRef, grid: GridRun, err: Exception, started: datetime,
                  seconds: float) -> RunResult:
    """The record of a unit that raised: what was asked, what went wrong, no numbers."""
    if isinstance(model, LoadedModel):
        info, device = model_info(model), str(model.device)
    else:
        info, device = expected_model(model, grid.options), grid.options.device
    return RunResult(
        status="failed", error=error_info(err), task=task_info(unit.spec), model=info,
        run=RunInfo(seed=unit.spec.seed, device=device, started_at=started.isoformat(), duration_s=round(seconds, 3),
                    peak_memory_mb=peak_memory_mb(resolve_device("cpu")), versions=run_versions(), git=git_commit(),
                    command=grid.command, options=grid.execution.model_dump(mode="json"),
                    overrides=grid.options.overrides().model_dump(exclude_none=True), plugins=loaded_plugins(),
                    world_size=grid.processes.world_size),
    )


def why_not_reusable(existing: RunResult | None, unit: Unit, expected: ModelInfo, device_type: str,
                     reference: Reference | None = None, plugin_code: dict[str, PluginCode] | None = None,
                     ) -> str | None:
    """None when `existing` is a complete result of this very unit (same spec, same model
    identity, same dtype and device type, scored against the same reference circuit, by the same
    plugin code); else why it must be computed again."""
    if existing is None:
        return "no readable result"
    if existing.status != "complete":
        return "the stored result failed"
    if existing.task.spec_hash != unit.spec.spec_hash():
        return f"the task spec changed (spec hash {existing.task.spec_hash} ≠ {unit.spec.spec_hash()})"
    stored = existing.model
    for field in ("source", "fingerprint", "revision", "init", "init_seed", "dtype", "kv_graph"):
        if getattr(stored, field) != getattr(expected, field):
            was, now = getattr(stored, field), getattr(expected, field)
            return f"the stored result is of another model ({field} {was} ≠ {now})"
    if existing.run.device.split(":")[0] != device_type:  # cpu and cuda kernels differ in the last bits
        return f"the stored result ran on {existing.run.device}, this run on {device_type}"
    return _other_reference(existing, reference) or _other_plugin_code(existing, plugin_code or {})


def _other_reference(existing: RunResult, reference: Reference | None) -> str | None:
    """Why the stored result's recovery scores do not hold for `reference` (None: they do)."""
    stored = existing.reference
    if stored is None and reference is None:
        return None
    if stored is None:
        assert reference is not None
        return f"the stored result was scored without a reference circuit; this run has {reference.source}"
    if reference is None:
        return f"the stored result was scored against {stored.source}; this run has no reference circuit"
    for field in ("heads", "mlps", "edges"):
        if sorted(getattr(stored, field)) != sorted(getattr(reference, field)):
            return f"the reference circuit changed ({reference.source}: other {field})"
    return None


def _other_plugin_code(existing: RunResult, codes: dict[str, PluginCode]) -> str | None:
    """Why the stored result was made by other plugin code than is loaded now (None: the same)."""
    stored = existing.run.plugin_code
    for key in sorted(set(stored) | set(codes)):
        kind, _, name = key.partition(":")
        was, now = stored.get(key), codes.get(key)
        if now is None:
            return f"{kind} '{name}' was a plugin's when the stored result was made, and is not now"
        if was is None:
            return f"the stored result has no record of the code of plugin {kind} '{name}' ({now.file or now.module})"
        if was.version != now.version:
            return f"plugin {kind} '{name}' changed (version {was.version} ≠ {now.version})"
        if was.code_sha256 != now.code_sha256 or was.module != now.module:
            return (f"the code of plugin {kind} '{name}' changed ({now.file or now.module}: sha256 {was.code_sha256} "
                    f"≠ {now.code_sha256})")
    return None


def _same_slot(stored: dict, ref: ModelRef) -> bool:
    """Whether a stored result's `model` record belongs to the model `ref` names (a registry name
    is one model wherever it is installed; a directory is its own path)."""
    return stored.get("name") == ref.name if ref.spec is not None else stored.get("source") == ref.location


def _stored_model(path: Path) -> dict:
    """The `model` record of the file at a result path, of any schema version; a file there that is
    no circuitbench result at all is refused before any compute (a run would replace it)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict) or "schema_version" not in raw or "status" not in raw:
        raise CircuitbenchError(f"{path}: exists and is not a result circuitbench wrote; the run would replace it. "
                                "Move it away, or use another --out.")
    return raw["model"] if isinstance(raw.get("model"), dict) else {}


def _refuse_shared_folders(refs: list[ModelRef], units_of: dict[int, list[Unit]]) -> None:
    """Two models must never share result files: refuse, before any compute, a model whose folder
    holds results of another model (e.g. two directories both named toyX)."""
    seen: dict[Path, ModelRef] = {}
    for i, ref in enumerate(refs):
        folder = units_of[i][0].path.parent if units_of[i] else None
        if folder is None:
            continue
        other = seen.setdefault(folder, ref)
        if other.location != ref.location:
            raise CircuitbenchError(
                f"--model {other.location} and {ref.location} would both write to {folder}/ (same folder name). "
                "Run them with different --out directories, or rename one directory.")
        for unit in units_of[i]:
            if not unit.path.exists():
                continue
            stored = _stored_model(unit.path)
            if not _same_slot(stored, ref):
                raise CircuitbenchError(
                    f"{unit.path} holds a result of model {stored.get('source')}, not of {ref.location} (their folder "
                    f"names agree). Use another --out, or move {folder}/ away.")


def _launch_device(options: RunOptions, processes: Processes) -> str:
    # Each process takes the launcher's accelerator (cuda:LOCAL_RANK); on CPU they share it.
    if processes.device is not None and processes.device.type != "cpu" and options.device in ("auto", "cuda"):
        return str(processes.device)
    return options.device


def task_specs(tasks: str | TaskSpec | list[str | TaskSpec], include_paths: tuple[str, ...],
               overrides: TaskOverrides) -> list[TaskSpec]:
    """The specs of the grid's tasks (names, 'suite', YAML paths or TaskSpec objects), overrides applied."""
    given = [tasks] if isinstance(tasks, (str, TaskSpec)) else list(tasks)
    loaded: list[TaskSpec] = []
    for task in given:
        names = [] if isinstance(task, TaskSpec) else expand_task_names([task], include_paths)
        loaded += [task] if isinstance(task, TaskSpec) else [load_task(name, include_paths) for name in names]
    return [effective_spec(spec, overrides) for spec in loaded]


def run(
    tasks: str | TaskSpec | list[str | TaskSpec],
    models: str | list[str],
    options: RunOptions | None = None,
    *,
    include_paths: tuple[str, ...] = (),
    progress: ProgressFn = no_progress,
    command: str | None = None,
    fail_on_error: bool = False,
    executor: Executor | None = None,
) -> list[UnitOutcome]:
    """Run every (model, task) unit, writing `out/<model folder>/<task>.json` for each.

    With `resume`, a unit whose stored result is complete, of the same spec hash and the same
    model identity (source, weights fingerprint, revision, init and seed, dtype, device type) is
    kept untouched; anything else is computed again, with a log line saying why. A unit that
    raises is written with status "failed" and the grid goes on, the outcomes saying which failed
    (`fail_on_error`: the original exception is raised once its failed record is written).
    Ctrl-C or SIGTERM raise `Interrupted`, saying what finished. Under a launcher every process
    calls this; the prompts are split between them, and only the main process writes the files.
    `executor` computes the pending units elsewhere (pipeline/executors.py, e.g. on Ray); this
    process still writes every result and --resume reads the same store (default: in this process).
    """
    options = options or RunOptions()
    specs = task_specs(tasks, include_paths, options.overrides())
    model_names = [models] if isinstance(models, str) else list(models)
    if not specs or not model_names:
        raise CircuitbenchError(f"--{'task' if not specs else 'model'}: nothing to run (an empty list).")
    for spec in specs:  # prompt generation is cheap: fail on an impossible spec before any model loads
        if note := shortfall(spec, generate_prompts(spec)):
            log.warning(note)
    if options.device_map is not None and launched_world_size() > 1:
        raise CircuitbenchError(
            f"--device-map {options.device_map} spreads one model over all devices and cannot be combined with "
            f"{launched_world_size()} data-parallel processes. Launch a single process for --device-map, or drop it "
            "to run one copy of the model per process."
        )
    refs = [resolve_model(name) for name in model_names]  # unknown names and broken files fail here
    if executor is None or executor.name == "local":  # (another executor's workers may hold what this machine lacks)
        for ref in refs:  # a hub model neither cached nor reachable: one message, nothing written
            check_available(ref, options.init)
    if options.reference is not None:
        load_reference(Path(options.reference))  # a broken reference file fails here, not after the compute
    out = Path(options.out)
    units_of = {i: [Unit(spec, result_path(out, ref.folder(options.init), spec)) for spec in specs]
                for i, ref in enumerate(refs)}
    processes = current_processes(options.device)
    if processes.is_main:
        check_writable_dir(out, "--out")
        check_file_size_limit()
        check_writable_dir(unsaved_dir(), "the fallback folder for results that cannot be written (set "
                           f"{FALLBACK_ENV} to another folder)")
        _refuse_shared_folders(refs, units_of)
    if not processes.is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # e.g. "Loading weights": the main process's bar speaks for all
    check_cache_dir(options)
    grid = GridRun(options, options.execution(), processes, progress, command, fail_on_error)
    outcomes: list[UnitOutcome] = []
    executor = executor or LocalExecutor()
    try:
        executor.run(_grid_work(model_names, refs, units_of, grid, outcomes))
    except (KeyboardInterrupt, Interrupted) as stop:
        name, code = ("SIGINT", 130) if isinstance(stop, KeyboardInterrupt) else (stop.signal_name, stop.exit_code)
        done = [o for o in outcomes if not o.skipped]
        total = len(refs) * len(specs)
        finished = (f"{len(done)} of {total} units written under {out}/" if done
                    else f"no unit finished (none written under {out}/)")
        raise Interrupted(name, code, f"{finished}; rerun the same command with --resume to continue") from None
    if executor.name != "local":  # units end in any order elsewhere: listed in the grid's order
        order = {unit.path: k for k, unit in enumerate(u for i in range(len(refs)) for u in units_of[i])}
        outcomes.sort(key=lambda o: order[o.path])
    return outcomes


def _grid_work(model_names: list[str], refs: list[ModelRef], units_of: dict[int, list[Unit]], grid: GridRun,
               outcomes: list[UnitOutcome]) -> GridWork:
    """The checked grid as an executor receives it (pipeline/executors.py)."""

    def run_here() -> None:
        for i, (model_arg, ref) in enumerate(zip(model_names, refs)):
            _run_model_units(model_arg, ref, units_of[i], grid, outcomes)

    def pending(device_type: str) -> list[UnitJob]:
        return [UnitJob(model_arg, ref, unit.spec, unit.path)
                for i, (model_arg, ref) in enumerate(zip(model_names, refs))
                for unit in _pending_units(ref, units_of[i], grid, outcomes, device_type)]

    def record(job: UnitJob, computed: Computed) -> None:
        _record(job, computed, grid, outcomes)

    settings = WorkerSettings(grid.options, grid.execution, grid.command, tuple(loaded_plugins()))
    return GridWork(options=grid.options, world_size=grid.processes.world_size, run_here=run_here, pending=pending,
                    compute=partial(compute_unit, settings), record=record, progress=grid.progress)


@dataclass(frozen=True)
class WorkerSettings:
    """What every unit of a grid computed by an executor elsewhere shares (picklable)."""

    options: RunOptions
    execution: ExecutionOptions
    command: str | None
    plugins: tuple[str, ...]  # loaded there too: the task's plugin generators, metrics, methods


def compute_unit(settings: WorkerSettings, job: UnitJob) -> RunResult:
    """One unit computed where an executor runs it (a Ray worker, maybe another machine): the model
    loaded by its --model name, the unit run as a local run runs it, its result returned (a failure
    recorded in it, not raised); nothing is written there."""
    load_plugins(settings.plugins)
    grid = GridRun(settings.options, settings.execution, ONE_PROCESS, no_progress, settings.command, False)
    outcomes: list[UnitOutcome] = []
    n_params = job.ref.spec.n_params if job.ref.spec is not None else None
    with torch_threads(threads_for(n_params, settings.options.threads)):
        _run_pending(job.model, job.ref, [Unit(job.spec, job.path)], grid, outcomes, save=False)
    return outcomes[0].result


def _record(job: UnitJob, computed: Computed, grid: GridRun, outcomes: list[UnitOutcome]) -> None:
    """On the driver: a unit computed elsewhere written atomically and recorded, as a local one is."""
    unit = Unit(job.spec, job.path)
    if isinstance(computed, RunResult):
        result = computed
    else:  # no result came back (the worker could not load the task's code, a lost node, ...)
        if not isinstance(computed, Exception):  # e.g. SystemExit inside a worker: still one failed unit
            computed = RuntimeError(f"{type(computed).__name__}: {computed}")
        result = failed_result(unit, job.ref, grid, computed, datetime.now(timezone.utc), 0.0)
        result.run.overrides = grid.options.overrides().model_dump(exclude_none=True)
        result.run.plugin_code = task_plugin_code(unit.spec)
    if result.error is not None:  # the message itself is printed once, in the run's summary
        log.debug("%s on %s failed (%s): %s", unit.spec.name, job.ref.name, result.error.type, result.error.message)
    _save_or_keep(result, unit.path)
    outcomes.append(UnitOutcome(job.ref.name, unit.spec.name, unit.path, result, False))
    if result.error is not None and grid.fail_on_error:
        if isinstance(computed, Exception):
            raise computed
        error = result.error
        raise (CircuitbenchError(error.message) if error.user_error
               else RuntimeError(f"{error.type}: {error.message}\n{error.traceback or ''}"))


def _run_model_units(model_arg: str, ref: ModelRef, units: list[Unit], grid: GridRun,
                     outcomes: list[UnitOutcome]) -> None:
    """Keep what --resume may keep, then load the model and run its pending units."""
    device_type = resolve_device(_launch_device(grid.options, grid.processes)).type
    pending = _pending_units(ref, units, grid, outcomes, device_type)
    if pending:
        n_params = ref.spec.n_params if ref.spec is not None else None
        with torch_threads(threads_for(n_params, grid.options.threads)):
            _run_pending(model_arg, ref, pending, grid, outcomes)


def _pending_units(ref: ModelRef, units: list[Unit], grid: GridRun, outcomes: list[UnitOutcome],
                   device_type: str) -> list[Unit]:
    """The units to compute for results made on `device_type`; those --resume keeps are recorded as kept."""
    options, processes = grid.options, grid.processes
    expected = expected_model(ref, options)

    def reason(unit: Unit) -> str | None:
        try:
            reference = expected_reference(unit.spec, ref, options)
        except CircuitbenchError as e:  # the unit fails with it when it runs
            return f"the reference circuit cannot be read ({e})"
        return why_not_reusable(load_result(unit.path), unit, expected, device_type, reference,
                                task_plugin_code(unit.spec))

    def reasons() -> list[str | None]:  # the main process's view of the files rules, shared with the others
        return [reason(u) if options.resume else "no --resume" for u in units]

    pending = []
    for unit, why in zip(units, processes.from_main(reasons)):
        if why is None:
            outcomes.append(UnitOutcome(ref.name, unit.spec.name, unit.path, load_result(unit.path), True))
            continue
        if options.resume and unit.path.exists() and why != "no readable result":
            log.warning("recomputing %s on %s: %s", unit.spec.name, ref.name, why)
        pending.append(unit)
    return pending


def _run_pending(model_arg: str, ref: ModelRef, pending: list[Unit], grid: GridRun,
                 outcomes: list[UnitOutcome], save: bool = True) -> None:
    """Load one model and run its pending units; a failed load fails each of them (`save`: write
    each result; an executor's worker leaves that to the driver)."""
    options, processes = grid.options, grid.processes
    log.info("loading model %s (%s)", ref.name, options.init)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    model: LoadedModel | ModelRef = ref
    load_error: Exception | None = None
    try:
        model = load_model(model_arg, init=options.init, dtype=options.dtype, device=_launch_device(options, processes),
                           seed=options.seed or 0, device_map=options.device_map, kv_graph=options.kv_graph)
    except Exception as e:  # noqa: BLE001  (recorded per unit; Ctrl-C is no Exception and stops the grid)
        load_error = e
    if load_error is None and isinstance(model, LoadedModel) and ref.spec is None:  # size known only now
        set_threads(threads_for(model.n_params, options.threads))  # (the caller's torch_threads block restores it)
    for unit in pending:
        if load_error is None:
            assert isinstance(model, LoadedModel)
            log.info("running %s on %s", unit.spec.name, ref.name)
            started, t0 = datetime.now(timezone.utc), time.perf_counter()
            error: Exception | None = None
            try:
                reference = load_reference(Path(options.reference)) if options.reference is not None else None
                if processes.is_main:  # the unit's time estimate, said before it starts (pipeline/plan.py)
                    announce(unit.spec, model, grid.execution)
                result = run_unit(unit.spec, model, grid.execution, reference=reference, progress=grid.progress,
                                  command=grid.command, processes=processes)
                if bad := nonfinite_fields(result.model_dump()):  # never a null in place of a number
                    raise RuntimeError(f"the result holds non-finite numbers at {', '.join(bad[:5])}")
            except Exception as e:  # noqa: BLE001
                error = e
                result = failed_result(unit, model, grid, e, started, time.perf_counter() - t0)
        else:
            error = load_error
            result = failed_result(unit, model, grid, load_error, started, time.perf_counter() - t0)
        result.run.overrides = options.overrides().model_dump(exclude_none=True)  # applied to the spec by task_specs
        result.run.plugin_code = task_plugin_code(unit.spec)  # what --resume compares with the code loaded then
        if result.error is not None:  # the message itself is printed once, in the run's summary
            log.debug("%s on %s failed (%s): %s", unit.spec.name, ref.name, result.error.type, result.error.message)
        if processes.is_main and save:
            _save_or_keep(result, unit.path)
        outcomes.append(UnitOutcome(ref.name, unit.spec.name, unit.path, result, False))
        if error is not None and grid.fail_on_error:
            raise error


def result_path(out: Path, folder: str, spec: TaskSpec) -> Path:
    """OUT/<model folder>/<task>.json, refused before any compute when a name cannot be a file name
    or would lead outside OUT; room is kept for the longest sidecar (<task>.<method>.edges.json)."""
    reserve = max((len(m) for m in spec.methods), default=0) + len("..edges.json")
    return inside(out, folder, f"{spec.name}.json", what="result file (named by the model and task)", reserve=reserve)


FALLBACK_ENV = "CIRCUITBENCH_UNSAVED"
MIN_FILE_SIZE_LIMIT = 64 << 20  # results with edge-score sidecars reach a few MB on GPT-2-sized models


def unsaved_dir() -> Path:
    """Where a computed result goes when it cannot be written where asked: $CIRCUITBENCH_UNSAVED,
    else a folder of the user's own in the system's temp directory. Checked before any compute."""
    if os.environ.get(FALLBACK_ENV):
        return Path(os.environ[FALLBACK_ENV]).expanduser()
    return Path(tempfile.gettempdir()) / f"circuitbench-unsaved-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def check_file_size_limit() -> None:
    """A file-size limit (`ulimit -f`) too small for results would lose them after the compute: refused before."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < MIN_FILE_SIZE_LIMIT:
        raise CircuitbenchError(f"The file-size limit of this shell (ulimit -f) is {soft:,} bytes: results and their "
                                f"edge-score files may need up to {MIN_FILE_SIZE_LIMIT >> 20} MB and would be lost "
                                "after the compute. Raise it (ulimit -f unlimited) and run again.")


def _save_or_keep(result: RunResult, path: Path) -> None:
    """Write the result; if that fails after all the compute (disk full, permissions changed),
    write it to the fallback folder checked before the compute, and stop saying where it went."""
    try:
        save_result(result, path)
    except OSError as e:
        kept = unsaved_dir() / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{path.parent.name}"[:120] / path.name
        try:
            save_result(result, kept)
        except OSError as again:
            raise CircuitbenchError(
                f"Cannot write {path} ({e.strerror or e}), nor the fallback {kept} ({again.strerror or again}): the "
                "computed result is lost. Free space or fix the permissions and run again.") from None
        raise CircuitbenchError(f"Cannot write {path} ({e.strerror or e}); the computed result is kept at {kept} "
                                "(its edge-score files beside it). Free space or fix the permissions, then move it "
                                "there (or rerun with --resume once it is there).") from None
