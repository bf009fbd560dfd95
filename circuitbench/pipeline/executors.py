"""Executors: where the pending (model, task) units of a grid are computed.

The grid (pipeline/grid.py) checks everything first, then hands an executor its `GridWork`:

- `local` (the default) runs the grid in this process as it always has: each model loaded once, its
  pending units run, each result written as it finishes;
- `ray` sends each pending unit to a Ray cluster as a task with its resources (a GPU when the unit's
  device is one, host memory from the model's size), and the driver (this process) receives each
  unit's RunResult and writes it itself, atomically, where and as a local run does. `--resume`
  reads the same store either way, so results of one executor are reused by the other.

Data parallelism *inside* a unit stays with the launchers (`torchrun`, `accelerate launch`,
circuitbench/parallel.py); an executor spreads whole units.

A third party adds one (e.g. slurm) by registering a factory: `EXECUTORS.add("slurm", make)`, where
`make(settings: ExecutorSettings) -> Executor` and the executor calls `work.pending(device_type)`,
runs `work.compute(job)` somewhere for each job (it is picklable: a module-level function and
plain data), and calls `work.record(job, result_or_exception)` on the driver as each one ends.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.environment import threads_for
from circuitbench.errors import CircuitbenchError
from circuitbench.models.resolve import ModelRef
from circuitbench.progress import ProgressFn
from circuitbench.registry import Registry
from circuitbench.results.schema import RunResult
from circuitbench.specs.model import MEMORY_HEADROOM, memory_needed_bytes
from circuitbench.specs.options import RunOptions
from circuitbench.specs.task import TaskSpec

log = logging.getLogger(__name__)

RAY_EXTRA_MESSAGE = "--executor ray needs the ray extra: pip install 'circuitbench[ray]'"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class UnitJob:
    """One pending (model, task) unit as an executor sends it out: all a worker needs to compute it
    (picklable). `model` is the --model argument (loaded by that name where the unit runs), `path`
    where the driver writes the result."""

    model: str
    ref: ModelRef
    spec: TaskSpec
    path: Path

    @property
    def label(self) -> str:
        return f"{self.spec.name} on {self.ref.name}"


# A unit's outcome as the driver receives it: the result (complete, or failed with its error), or
# the exception that kept the worker from returning one (a lost node, a worker killed for memory).
Computed = RunResult | BaseException


@dataclass(frozen=True)
class GridWork:
    """A grid, checked and ready, as an executor receives it.

    run_here: the whole grid in this process (the local executor: models loaded once each).
    pending: the units still to compute, for results made on `device_type` ("cpu", "cuda", ...):
      units --resume keeps are recorded as kept (skipped) and left out.
    compute: computes one job and returns its RunResult, a failure recorded in it (picklable; runs
      anywhere, writes nothing).
    record: on the driver, writes a job's result atomically and records its outcome (a failed unit
      too; with fail_on_error it then raises).
    """

    options: RunOptions
    world_size: int
    run_here: Callable[[], None]
    pending: Callable[[str], list[UnitJob]]
    compute: Callable[[UnitJob], RunResult]
    record: Callable[[UnitJob, Computed], None]
    progress: ProgressFn


class Executor(Protocol):
    """Computes the pending units of a grid (see the module docstring)."""

    name: str

    def run(self, work: GridWork) -> None:
        """Compute every pending unit of `work`, record each as it ends; on KeyboardInterrupt or
        Interrupted stop what still runs and re-raise."""


class ExecutorSettings(BaseModel):
    """What the command line tells an executor (`--address`)."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="the cluster to connect to (ray: 'auto', 'HOST:PORT' or "
                                "'ray://HOST:10001'); None: the executor's own default (ray: a local cluster)")


ExecutorFactory = Callable[[ExecutorSettings], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")


def executor_named(name: str, address: str | None = None) -> Executor:
    """The executor registered as `name` ('local', 'ray', or a plugin's), set up for `address`;
    an executor whose extra is missing says so here, before any work."""
    factory = EXECUTORS.get(name)
    if address is not None and name == "local":
        raise CircuitbenchError(f"--address {address}: only an executor that runs elsewhere takes an address "
                                "(--executor ray --address ...).")
    return factory(ExecutorSettings(address=address))


class LocalExecutor:
    """The grid in this process, exactly as `run` has always computed it."""

    name = "local"

    def run(self, work: GridWork) -> None:
        work.run_here()


# --- Ray ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitResources:
    """What a unit asks the cluster for (Ray's logical resources: they schedule, they do not limit)."""

    num_cpus: int
    num_gpus: int
    memory_bytes: int | None  # None: unknown size (a hub id outside the registry): no request

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options

    def text(self) -> str:
        memory = f", {self.memory_bytes / 2**30:.2g} GB" if self.memory_bytes else ""
        return f"{self.num_cpus} CPU{'s' if self.num_cpus > 1 else ''}, {self.num_gpus} GPU{memory}"


def model_memory_bytes(ref: ModelRef, dtype: str | None) -> int | None:
    """Host memory to load and run the model: the registry's parameter count in the run's dtype
    (specs.model.memory_needed_bytes), else the weight files' size with the same headroom; None
    when neither is known here (a hub id outside the registry)."""
    if ref.spec is not None:
        return memory_needed_bytes(ref.spec.n_params, ref.dtype(dtype))
    folder = Path(ref.location)
    if not folder.is_dir():
        return None
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return int(size * MEMORY_HEADROOM) or None


def unit_resources(job: UnitJob, options: RunOptions, cluster_gpus: float, cluster_cpus: int) -> UnitResources:
    """A unit's request: a GPU when its device is CUDA (or 'auto' on a cluster that has GPUs), CPUs
    for its torch threads (by model size, at most a node's), host memory from the model's size, or
    the run's --max-memory budget (weights and an edge method's tensors) when that is larger."""
    wants_gpu = options.device.startswith("cuda") or (options.device == "auto" and cluster_gpus > 0)
    n_params = job.ref.spec.n_params if job.ref.spec is not None else None
    cpus = max(1, min(threads_for(n_params, options.threads), max(cluster_cpus, 1)))
    memory = model_memory_bytes(job.ref, options.dtype)
    if options.max_memory is not None:
        memory = max(memory or 0, options.max_memory)
    return UnitResources(num_cpus=cpus, num_gpus=1 if wants_gpu else 0, memory_bytes=memory)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CircuitbenchError(RAY_EXTRA_MESSAGE) from None
    return ray


def _compute_on_worker(compute: Callable[[UnitJob], RunResult], job: UnitJob) -> RunResult:
    """The Ray task: one unit computed on a worker (module level, so Ray pickles it by reference)."""
    return compute(job)


@contextmanager
def _keep_sigterm() -> Iterator[None]:
    """ray.init installs its own SIGTERM handler (sys.exit); the command's own (exit 143, saying what
    finished) is put back."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


class _DeferredSignals:
    """SIGINT and SIGTERM noted while Ray's own (C++) calls run, and handed to the command's handlers
    (KeyboardInterrupt, Interrupted) between those calls: raised inside one, an exception surfaces
    as a SystemError from Ray instead (seen with Ray 2.60)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.handlers: dict[int, Any] = {}

    def __enter__(self) -> _DeferredSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self.handlers[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
        return self

    def check(self) -> None:
        """Raise what the command's handler for the first signal received raises."""
        if self.received:
            signum = self.received[0]
            self.__exit__()
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)
            raise KeyboardInterrupt  # SIG_DFL / SIG_IGN: stop all the same

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}


class RayExecutor:
    """Each pending unit a Ray task; the driver writes the results. Without an address a local Ray
    cluster is started on this machine (every core, no dashboard, workers' logs not forwarded) and
    stopped at the end; an already initialised Ray (a notebook, a test) is used as it is."""

    name = "ray"

    def __init__(self, settings: ExecutorSettings) -> None:
        self.ray = _import_ray()  # a missing extra fails here, before any work
        self.address = settings.address

    def _connect(self) -> bool:
        """Connect (or start a local cluster); True when this call started Ray (and stops it)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        with _keep_sigterm():
            if self.address is None:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline by design: no report home
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR)
            else:
                try:
                    ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise CircuitbenchError(f"--address {self.address}: cannot connect to a Ray cluster ({e}). "
                                            "Start one (`ray start --head`) or give its address.") from None
        return True

    def run(self, work: GridWork) -> None:
        if work.world_size > 1:
            raise CircuitbenchError(
                "--executor ray runs whole units on a Ray cluster; inside a unit, data parallelism is the launcher's "
                "(torchrun, accelerate launch). Launch `circuitbench run --executor ray` as one process.")
        if work.options.device_map is not None:
            raise CircuitbenchError(
                f"--device-map {work.options.device_map} spreads one model over every device of a machine, which a "
                "Ray task does not own: run such a model with the local executor (drop --executor ray).")
        if work.options.device.startswith("cuda:"):
            raise CircuitbenchError(
                f"--device {work.options.device} names a GPU of this machine; on Ray each unit runs on the GPU Ray "
                "assigns it. Use --device cuda (or auto).")
        started_here = self._connect()
        try:
            self._run(work, cancel=not started_here)
        finally:
            if started_here:  # stops whatever still runs there
                self.ray.shutdown()

    def _run(self, work: GridWork, cancel: bool) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        device_type = "cuda" if work.options.device.startswith("cuda") or (
            work.options.device == "auto" and gpus > 0) else work.options.device.replace("auto", "cpu")
        jobs = work.pending(device_type)
        if not jobs:
            return
        requests = {job.path: unit_resources(job, work.options, gpus, _largest_node_cpus(ray) or cpus)
                    for job in jobs}
        self._check_fits(jobs, requests)
        log.info("sending %d unit%s to Ray (%s: %g CPUs, %g GPUs)", len(jobs), "s" * (len(jobs) > 1),
                 self.address or "a local cluster", cpus, gpus)
        remote = ray.remote(_compute_on_worker)
        running = {}
        for job in jobs:
            options = {**requests[job.path].ray_options(), "max_retries": 0, "name": job.label[:100]}
            running[remote.options(**options).remote(work.compute, job)] = job
        what = "units (ray)"
        work.progress(what, 0, len(jobs))
        left, finished = list(running), 0
        try:
            with _DeferredSignals() as signals:
                while left:
                    # a short wait: a signal is handled between calls, never inside a blocking one
                    ready, left = ray.wait(left, num_returns=1, timeout=0.5)
                    signals.check()
                    for ref in ready:
                        work.record(running[ref], self._outcome(ref))
                        finished += 1
                        work.progress(what, finished, len(jobs))
        except BaseException:
            # Ctrl-C, SIGTERM, fail_on_error: nothing more is written, and on a cluster we did not start
            # nothing more runs (interrupted, not killed: Ray 2.60 can abort the driver when a
            # force-killed task's reply still arrives)
            if cancel:
                for ref in left:
                    ray.cancel(ref)
            raise

    def _outcome(self, ref: Any) -> Computed:
        """The unit's RunResult, or why the worker returned none (its exception, or Ray's)."""
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as e:  # the worker raised outside the unit (compute records the unit's own errors)
            return e.cause if isinstance(e.cause, BaseException) else RuntimeError(str(e))
        except self.ray.exceptions.RayError as e:  # a lost worker or node, a task killed for memory
            return RuntimeError(f"Ray could not finish the unit: {type(e).__name__}: {e}")

    def _check_fits(self, jobs: list[UnitJob], requests: dict[Path, UnitResources]) -> None:
        """A request no node can meet would wait forever: refused before anything is submitted on a
        cluster this run started; on a given cluster (which may add nodes) a warning."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive", True)]
        for job in jobs:
            need = requests[job.path]
            if any(_fits(need, node) for node in nodes):
                continue
            have = "; ".join(_node_text(node) for node in nodes) or "no live node"
            message = f"{job.label} asks for {need.text()}, more than any node of the Ray cluster has ({have})"
            if self.address is None:
                raise CircuitbenchError(f"{message}. Use --device cpu, another dtype, or a cluster (--address).")
            log.warning("%s: it waits until the cluster grows", message)


def _fits(need: UnitResources, node: dict[str, float]) -> bool:
    return (node.get("CPU", 0) >= need.num_cpus and node.get("GPU", 0) >= need.num_gpus
            and (need.memory_bytes is None or node.get("memory", 0) >= need.memory_bytes))


def _node_text(node: dict[str, float]) -> str:
    return f"{node.get('CPU', 0):g} CPUs, {node.get('GPU', 0):g} GPUs, {node.get('memory', 0) / 2**30:.2g} GB"


def _largest_node_cpus(ray: Any) -> int:
    return int(max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive", True)), default=0))


def _make_ray(settings: ExecutorSettings) -> Executor:
    return RayExecutor(settings)


EXECUTORS.add("local", lambda settings: LocalExecutor())
EXECUTORS.add("ray", _make_ray)
