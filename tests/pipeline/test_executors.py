"""Executors (pipeline/executors.py): a grid sent to Ray gives the results a local run gives, written
by the driver in the same store; --resume reuses results across executors; a unit that fails on a
worker is one failed record while the others stand; Ctrl-C stops the rest; a missing ray extra is
one message. One local Ray cluster (2 CPUs) serves the whole module: Ray starts slowly."""
from __future__ import annotations

import builtins
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from circuitbench.errors import CircuitbenchError, Interrupted
from circuitbench.models.resolve import resolve_model
from circuitbench.pipeline import grid as grid_module
from circuitbench.pipeline.executors import (
    RAY_EXTRA_MESSAGE,
    ExecutorSettings,
    LocalExecutor,
    RayExecutor,
    UnitJob,
    UnitResources,
    unit_resources,
)
from circuitbench.pipeline.grid import run
from circuitbench.results.store import load_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import RunOptions

from helpers import cli, library_log

pytestmark = pytest.mark.xdist_group("ray")  # one worker, one Ray cluster (make test: --dist loadgroup)

MODEL, TASKS = "toy-tasks", ["ioi", "seq_months", "seq_digits"]  # the 3-unit grid
OPTIONS = dict(n_prompts=6, methods=["activation_patching", "previous_token"], cache=False)
# What legitimately differs between two runs of the same unit (when and how long, the process's
# memory), left out of the comparison; everything else (spec, model identity, metrics and their
# per-prompt values, head scores, circuit, faithfulness, options, threads, versions, forwards
# counted per method) must be equal.
TIMING_AND_PROVENANCE = ("run.started_at", "run.duration_s", "run.model_load_s", "run.peak_memory_mb",
                         "method_costs.<method>.seconds")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra (make setup installs it)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def grids(ray_cluster, tmp_path_factory):
    """The same grid run on Ray and locally, each into its own store."""
    root = tmp_path_factory.mktemp("grids")
    on_ray = run(TASKS, MODEL, RunOptions(out=str(root / "ray"), **OPTIONS), executor=RayExecutor(ExecutorSettings()))
    local = run(TASKS, MODEL, RunOptions(out=str(root / "local"), **OPTIONS))
    return root, on_ray, local


def comparable(result) -> dict:
    dumped = result.model_dump()
    for field in TIMING_AND_PROVENANCE:
        where, _, name = field.rpartition(".")
        parents = [dumped[where.split(".")[0]]]
        if where.endswith("<method>"):
            parents = list(parents[0].values())
        for parent in parents:
            parent.pop(name)
    return dumped


def files(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / MODEL).iterdir()}


def test_a_ray_grid_equals_the_local_run(grids):
    root, on_ray, local = grids
    assert [(o.model, o.task) for o in on_ray] == [(o.model, o.task) for o in local] == [(MODEL, t) for t in TASKS]
    assert all(o.result.status == "complete" and not o.skipped for o in on_ray + local)
    for task in TASKS:
        stored_ray, stored_local = (load_result(root / where / MODEL / f"{task}.json") for where in ("ray", "local"))
        assert comparable(stored_ray) == comparable(stored_local)  # written by the driver, as a local run writes
        for method in OPTIONS["methods"]:
            np.testing.assert_array_equal(stored_ray.scores(method), stored_local.scores(method))
        assert stored_ray.metrics == stored_local.metrics and stored_ray.circuit == stored_local.circuit
        assert stored_ray.circuit.heads and stored_ray.circuit.faithfulness.value is not None
    # the driver's writes are atomic: no temporary file is left beside the results
    assert sorted(p.name for p in (root / "ray" / MODEL).iterdir()) == sorted(f"{t}.json" for t in TASKS)


def test_resume_reuses_results_across_executors(grids, monkeypatch):
    """A local --resume keeps every result a Ray run wrote and a Ray --resume every result a local
    run wrote: no unit is computed (compute is never called) and no file is touched."""
    root = grids[0]

    def no_compute(*args, **kwargs):
        raise AssertionError("a unit was computed again")

    monkeypatch.setattr(grid_module, "_run_pending", no_compute)  # the local path's compute
    monkeypatch.setattr(grid_module, "compute_unit", no_compute)  # what a Ray worker would run
    for out, executor in ((root / "ray", LocalExecutor()), (root / "local", RayExecutor(ExecutorSettings()))):
        before = files(out)
        outcomes = run(TASKS, MODEL, RunOptions(out=str(out), resume=True, **OPTIONS), executor=executor)
        assert [o.skipped for o in outcomes] == [True] * len(TASKS)
        assert files(out) == before
    # the library's run takes an executor by name too (results written here, so out= is needed)
    import circuitbench as cb

    before = files(root / "local")
    results = cb.run(TASKS, [MODEL], out=root / "local", executor="ray", resume=True, **OPTIONS)
    assert [r.task.name for r in results] == TASKS and files(root / "local") == before
    with pytest.raises(CircuitbenchError, match="give out too"):
        cb.run(TASKS[0], MODEL, executor="ray", **OPTIONS)


def test_resume_never_reuses_a_result_for_another_model(grids, tmp_path, monkeypatch):
    """The store's identity check holds for Ray too: a result of the float32 model is not reused for the
    bfloat16 one (same folder), it is sent to the workers again."""
    shutil.copytree(grids[0] / "ray", tmp_path / "r")
    monkeypatch.setattr(grid_module, "compute_unit", max)  # the unit fails on the worker: no model loads
    with library_log(logging.WARNING) as messages:
        outcomes = run(["ioi"], MODEL, RunOptions(out=str(tmp_path / "r"), resume=True, dtype="bfloat16", **OPTIONS),
                       executor=RayExecutor(ExecutorSettings()))
    assert not outcomes[0].skipped and outcomes[0].failed
    assert "recomputing ioi on toy-tasks: the stored result is of another model (dtype float32 ≠ bfloat16)" in messages


def test_a_unit_failing_on_a_worker_is_one_failed_record_and_the_others_stand(ray_cluster, tmp_path):
    # fibonacci's numbers are not in toy-induction-2l's vocabulary: a user mistake, met on the worker
    with library_log(logging.ERROR) as messages:
        outcomes = run(["fibonacci", "induction"], "toy-induction-2l",
                       RunOptions(out=str(tmp_path), n_prompts=6, methods=["previous_token"], cache=False),
                       executor=RayExecutor(ExecutorSettings()))
    failed, done = (load_result(tmp_path / "toy-induction-2l" / f"{t}.json") for t in ("fibonacci", "induction"))
    assert [o.failed for o in outcomes] == [True, False]
    assert failed.status == "failed" and failed.error.user_error and "would be dropped" in failed.error.message
    assert done.status == "complete" and done.head_scores["previous_token"]
    assert [m for m in messages if "failed" in m] == []  # its message is printed once: in the CLI's run summary


def test_a_worker_that_returns_no_result_fails_its_unit(ray_cluster, tmp_path, monkeypatch):
    """An exception outside the unit's own code (here the worker's entry point raises TypeError; in
    life a lost node) is recorded as that unit's failure, not a crash of the driver."""
    monkeypatch.setattr(grid_module, "compute_unit", max)  # max(settings, job): TypeError on the worker
    outcomes = run(["ioi"], MODEL, RunOptions(out=str(tmp_path), n_prompts=4, methods=["previous_token"], cache=False),
                   executor=RayExecutor(ExecutorSettings()))
    stored = load_result(tmp_path / MODEL / "ioi.json")
    assert outcomes[0].failed and stored.status == "failed" and stored.error.type == "TypeError"
    assert not stored.error.user_error and stored.model.name == MODEL and stored.task.name == "ioi"


def test_ctrl_c_cancels_the_remaining_units_and_writes_nothing_half(ray_cluster, tmp_path):
    """Ctrl-C while units run on Ray (here when the first one is written): the rest are cancelled,
    the grid says what finished, and the store holds only whole results."""

    def interrupt(what: str, done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stop:
        run(TASKS, MODEL, RunOptions(out=str(tmp_path), n_prompts=4, methods=["previous_token"], cache=False),
            executor=RayExecutor(ExecutorSettings()), progress=interrupt)
    assert stop.value.exit_code == 130 and stop.value.detail.startswith("1 of 3 units written")
    written = list((tmp_path / MODEL).iterdir())
    assert len(written) == 1 and load_result(written[0]).status == "complete"


def test_a_unit_asks_for_its_device_and_its_model_size(tiny_gpt2_dir):
    """GPUs from the unit's device, host memory from the model's size: the registry's parameter count
    × bytes per parameter of the run's dtype × 1.2 headroom (or a directory's weight files × 1.2), or
    the --max-memory budget when larger."""
    job = UnitJob("gpt2-small", resolve_model("gpt2-small"), load_task("ioi"), Path("ioi.json"))
    n_params = 124_439_808  # models.yaml
    assert unit_resources(job, RunOptions(device="cuda"), cluster_gpus=0, cluster_cpus=8) == UnitResources(
        num_cpus=1, num_gpus=1, memory_bytes=int(n_params * 4 * 1.2))
    assert unit_resources(job, RunOptions(dtype="bfloat16"), cluster_gpus=2, cluster_cpus=8) == UnitResources(
        num_cpus=1, num_gpus=1, memory_bytes=int(n_params * 2 * 1.2))  # auto on a cluster with GPUs: a GPU
    assert unit_resources(job, RunOptions(threads=16), cluster_gpus=0, cluster_cpus=8) == UnitResources(
        num_cpus=8, num_gpus=0, memory_bytes=int(n_params * 4 * 1.2))  # --threads, at most a node's CPUs
    assert unit_resources(job, RunOptions(max_memory="3GB"), 0, 8).memory_bytes == 3 * 10**9  # a larger budget
    local = UnitJob(str(tiny_gpt2_dir), resolve_model(str(tiny_gpt2_dir)), load_task("ioi"), Path("ioi.json"))
    weights = (tiny_gpt2_dir / "model.safetensors").stat().st_size
    assert unit_resources(local, RunOptions(device="cpu"), 0, 2).memory_bytes == int(weights * 1.2)


def test_a_unit_no_node_can_take_is_refused_before_anything_runs(ray_cluster, tmp_path):
    with pytest.raises(CircuitbenchError, match=r"ioi on toy-tasks asks for 1 CPU, 1 GPU, .* more than any node"):
        run(["ioi"], MODEL, RunOptions(out=str(tmp_path), device="cuda", **OPTIONS),
            executor=RayExecutor(ExecutorSettings()))
    assert not (tmp_path / MODEL).exists()


def test_without_the_ray_extra_one_message_exit_2(capsys, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(CircuitbenchError, match="needs the ray extra"):
        RayExecutor(ExecutorSettings())
    code, out, err = cli(capsys, "run", "--task", "ioi", "--model", MODEL, "--n", "4", "--out", str(tmp_path),
                         "--executor", "ray", "-q")
    assert code == 2 and RAY_EXTRA_MESSAGE in " ".join(err.split()) and "Traceback" not in err
    assert not tmp_path.joinpath(MODEL).exists()  # said before any work
