"""circuitbench.run (pipeline/runner.py) and the pure core under it (pipeline/unit.py run_unit):
overrides change the spec before the unit runs and every recorded option is what ran; out=None
writes nothing anywhere; a failing unit raises its own exception from Python."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.pipeline.unit import run_unit
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import ExecutionOptions, RunOptions, TaskOverrides, effective_spec

OVERRIDES = dict(n_prompts=6, seed=5, split="val", methods=["ablation", "previous_token"], circuit_level="node")


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-tasks", device="cpu")


def test_every_override_is_applied_to_the_spec_and_recorded_as_what_ran(toy):
    """Through the public API with every task override and an execution option: the same numbers as
    run_unit on the overridden spec, and the result says exactly that (spec, prompts, methods)."""
    result = cb.run("induction", toy, batch_size=3, **OVERRIDES)
    spec = effective_spec(load_task("induction"), TaskOverrides(**OVERRIDES))
    direct = run_unit(spec, toy, ExecutionOptions(batch_size=3))
    assert result.task.spec == direct.task.spec == spec.model_dump(mode="json")
    assert result.task.spec["seed"] == 5 and result.task.spec["split"] == "val"
    assert result.task.spec["circuit"]["level"] == "node" and result.circuit.level == "node"
    assert result.task.n_prompts == 6 and all(len(v) == 6 for v in result.metric_values.values())
    assert set(result.head_scores) == {"ablation", "previous_token"} == set(result.task.spec["methods"])
    for method in result.head_scores:
        np.testing.assert_array_equal(result.scores(method), direct.scores(method))
    assert result.metric_values == direct.metric_values and result.circuit == direct.circuit
    options = {"batch_size": 3, "cache_dir": None, "threads": None, "max_memory": None}
    assert result.run.options == options == direct.run.options
    assert result.run.overrides == OVERRIDES and direct.run.overrides == {}
    # the per-prompt values are the metrics' own numbers
    for name, values in result.metric_values.items():
        assert np.mean(values) == pytest.approx(result.metrics[name], rel=1e-6)


def test_run_unit_takes_no_task_overrides(toy):
    """RunOptions carry overrides run_unit would not apply (the old core recorded them anyway)."""
    with pytest.raises(TypeError, match="effective_spec"):
        run_unit(load_task("induction"), toy, RunOptions(methods=["previous_token"], seed=5))


def test_out_none_writes_nothing_anywhere(tmp_path, monkeypatch, toy):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CIRCUITBENCH_CACHE", raising=False)
    monkeypatch.chdir(work)
    result = cb.run("induction", "toy-induction-2l", n_prompts=4, methods=["induction"])
    assert result.status == "complete" and result.task.n_prompts == 4
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    # the cache only when asked for, where asked
    cb.run("induction", toy, n_prompts=4, methods=["activation_patching"], cache_dir=str(tmp_path / "c"))
    assert list((tmp_path / "c").rglob("*.safetensors")) and not list(home.rglob("*"))


def test_out_dir_runs_the_grid_and_returns_its_results(tmp_path):
    results = cb.run(["induction"], ["toy-induction-2l"], n_prompts=4, methods=["induction"], out=tmp_path / "r",
                     cache=False)
    assert isinstance(results, list) and len(results) == 1
    stored = json.loads((tmp_path / "r" / "toy-induction-2l" / "induction.json").read_text())
    assert stored["metrics"] == results[0].metrics and stored["run"]["overrides"]["n_prompts"] == 4
    again = cb.run("induction", "toy-induction-2l", n_prompts=4, methods=["induction"], out=tmp_path / "r",
                   cache=False, resume=True)
    assert again.run.started_at == results[0].run.started_at  # kept, not recomputed


def test_a_failing_unit_raises_its_own_exception_unless_asked_to_record_it(tmp_path, toy):
    reference = tmp_path / "ref.json"
    reference.write_text('{"heads": [[7, 0]]}')  # outside the 2-layer toy: the unit fails before any method
    with pytest.raises(CircuitbenchError, match="outside"):
        cb.run("induction", toy, n_prompts=4, methods=["induction"], reference=str(reference))
    failed = cb.run("induction", toy, n_prompts=4, methods=["induction"], reference=str(reference),
                    fail_on_error=False)
    assert failed.status == "failed" and failed.error.type == "CircuitbenchError" and "outside" in failed.error.message
    with pytest.raises(CircuitbenchError, match="n_promts"):
        cb.run("induction", toy, n_promts=4)


def test_tasks_from_prompts_in_python(tiny_models):
    prompts = ["When Mary and John went to the store, John gave a drink to",
               "When Anna and Tom went to the park, Tom gave a ball to",
               "When Lucy and Paul went to the beach, Paul gave a hat to"]
    task = cb.Task.from_prompts("my_task", prompts=prompts, answers=[" Mary", " Anna", " Lucy"],
                                distractors=[" John", " Tom", " Paul"],
                                counterfactuals=[p.replace("When", "Then") for p in prompts])
    assert task.n_prompts == 3 and task.metrics[0] == "logit_diff"
    result = cb.run(task, str(tiny_models["gpt2"]), methods=["activation_patching"], batch_size=2)
    assert result.task.n_prompts == 3 and result.scores("activation_patching").shape == (2, 4)
    assert sorted(result.task.spec["generator"]["records"], key=lambda r: r["prompt"])[0]["answer"] == " Anna"
    # every prompt runs whatever the split; the same records give the same hash
    again = cb.Task.from_prompts("my_task", prompts=prompts, answers=[" Mary", " Anna", " Lucy"],
                                 distractors=[" John", " Tom", " Paul"],
                                 counterfactuals=[p.replace("When", "Then") for p in prompts])
    assert again.spec_hash() == task.spec_hash()
    with pytest.raises(CircuitbenchError, match="2 answers for 3 prompts"):
        cb.Task.from_prompts("bad", prompts=prompts, answers=[" Mary", " Anna"])
    plain = cb.Task.from_prompts("plain", prompts=prompts)
    assert plain.metrics == ["sequence_loss"]


def test_the_notebook_examples_are_the_ones_tested():
    """The README's and the guide's notebook examples build a task from prompts as tested above
    (tests/test_docs.py runs both blocks)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    guide = (Path(__file__).resolve().parents[2] / "docs" / "guide" / "cli.md").read_text()
    assert "cb.Task.from_prompts(" in readme and "cb.run(task, \"toy-tasks\"" in readme
    assert "cb.Task.from_prompts(" in guide and "cb.run(task, \"gpt2-small\"" in guide
