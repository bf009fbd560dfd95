"""A unit that raises is recorded as failed and the grid goes on; the exit code says what kind of
failure it was; --resume retries failed units; leaderboards list them apart."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import circuitbench as cb
from circuitbench.results.store import load_result
from circuitbench.specs.catalog import task_files
from circuitbench.specs.registries import METHODS

from helpers import cli  # the in-process CLI runner

FLAKY = {"fail": True}


def flaky_method(model, data, ctx):
    """Raises (a crash, not a user mistake) while FLAKY says so; else every head scores 1."""
    if FLAKY["fail"]:
        raise RuntimeError("boom in a scoring method")
    return np.ones((model.n_layers, model.n_heads))


@pytest.fixture(scope="module", autouse=True)
def registered():
    cb.register_method("test_flaky", flaky_method, description="fails while told to")


def test_user_mistake_in_one_unit_fails_it_and_the_grid_goes_on(capsys, tmp_path):
    # fibonacci's numbers are not in toy-induction-2l's vocabulary: a user mistake, found per unit
    code, out, err = cli(capsys, "run", "--task", "fibonacci,induction", "--model", "toy-induction-2l", "--n", "8",
                         "--out", str(tmp_path), "-q")
    assert code == 2 and "Traceback" not in err
    failed = load_result(tmp_path / "toy-induction-2l" / "fibonacci.json")
    done = load_result(tmp_path / "toy-induction-2l" / "induction.json")
    assert failed.status == "failed" and failed.error.user_error and failed.error.traceback is None
    assert done.status == "complete" and done.metrics["induction_loss"] > 0
    assert "1 of 2 units failed" in err and "would be dropped" in err


def test_crash_exits_1_keeps_the_traceback_and_resume_retries_only_the_failed_unit(capsys, tmp_path):
    FLAKY["fail"] = True
    args = ["run", "--task", "induction,sorting", "--model", "toy-induction-2l", "--n", "8", "--out", str(tmp_path),
            "-q", "--methods", "test_flaky"]
    # sorting does not tokenize on this vocabulary either: one crash, one user mistake -> exit 1
    code, _, err = cli(capsys, *args)
    assert code == 1
    crashed = load_result(tmp_path / "toy-induction-2l" / "induction.json")
    assert crashed.status == "failed" and not crashed.error.user_error
    assert crashed.error.type == "RuntimeError" and "flaky_method" in crashed.error.traceback
    assert crashed.task.spec["methods"] == ["test_flaky"] and crashed.run.overrides["methods"] == ["test_flaky"]

    FLAKY["fail"] = False
    code, _, _ = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8",
                     "--out", str(tmp_path), "-q", "--methods", "test_flaky", "--resume")
    assert code == 0
    retried = load_result(tmp_path / "toy-induction-2l" / "induction.json")
    assert retried.status == "complete" and np.array(retried.head_scores["test_flaky"]).tolist() == [[1.0] * 4] * 2
    kept = (tmp_path / "toy-induction-2l" / "induction.json").read_bytes()
    assert cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8", "--out", str(tmp_path),
               "-q", "--methods", "test_flaky", "--resume")[0] == 0
    assert (tmp_path / "toy-induction-2l" / "induction.json").read_bytes() == kept  # a complete unit is kept

    code, out, _ = cli(capsys, "leaderboard", "--results", str(tmp_path), "--out", str(tmp_path / "board"))
    board = (tmp_path / "board" / "README.md").read_text()
    assert code == 0 and "1 results flagged" in out
    assert "## Not included" in board and "failed: CircuitbenchError" in board  # sorting, listed apart


def test_a_model_that_fails_to_load_fails_each_of_its_units(capsys, tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_models["gpt2"] / "config.json").read_text())  # no weights, no tokenizer
    code, _, err = cli(capsys, "run", "--task", "ioi,sorting", "--model", f"{broken},toy-sort-1l", "--n", "4",
                       "--out", str(tmp_path / "r"), "-q", "--methods", "previous_token")
    assert code == 2 and "Traceback" not in err
    for task in ("ioi", "sorting"):
        result = load_result(tmp_path / "r" / "broken" / f"{task}.json")
        assert result.status == "failed" and result.error.user_error and result.model.n_layers is None
    assert load_result(tmp_path / "r" / "toy-sort-1l" / "sorting.json").status == "complete"  # the grid went on
    assert json.loads((tmp_path / "r" / "toy-sort-1l" / "ioi.json").read_text())["status"] == "failed"


EXITS = {"method": 0, "metric": 0}  # calls left before the plugin calls sys.exit(5)


def exiting_method(model, data, ctx):
    if EXITS["method"] > 0:
        EXITS["method"] -= 1
        sys.exit(5)
    return np.ones((model.n_layers, model.n_heads))


def exiting_metric(logits, batch):
    if EXITS["metric"] > 0:
        EXITS["metric"] -= 1
        sys.exit(5)
    return torch.zeros(len(batch))


@pytest.mark.parametrize("kind", ["method", "metric"])
def test_a_plugin_calling_sys_exit_in_a_unit_fails_that_unit_and_the_grid_goes_on(capsys, tmp_path, kind):
    """Issue 21: a plugin method raising SystemExit ended the grid silently, with no record (exit 5)."""
    if "test_exits" not in METHODS:
        cb.register_method("test_exits", exiting_method, description="calls sys.exit(5) when told to")
        cb.register_metric("test_exits", exiting_metric, higher_is_better=True, needs_answer=False)
    text = task_files()["induction"].read_text()
    if kind == "metric":
        text = text.replace("metrics: [induction_loss, sequence_loss]", "metrics: [induction_loss, test_exits]")
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(text.replace("name: induction\n", "name: first\n", 1))
    second.write_text(text.replace("name: induction\n", "name: second\n", 1))
    EXITS[kind] = 1  # the first unit's plugin exits, the second's does not
    code, _, err = cli(capsys, "run", "--task", f"{first},{second}", "--model", "toy-induction-2l", "--n", "8",
                       "--out", str(tmp_path / "r"), "-q", "--no-cache", "--methods", "test_exits")
    assert code == 1, err  # a crash in plugin code: exit 1, its traceback kept
    failed = load_result(tmp_path / "r" / "toy-induction-2l" / "first.json")
    assert failed.status == "failed" and not failed.error.user_error
    assert f"plugin {kind} 'test_exits' called sys.exit(5)" in failed.error.message
    assert f"exiting_{kind}" in failed.error.traceback  # where the plugin exited
    assert load_result(tmp_path / "r" / "toy-induction-2l" / "second.json").status == "complete"  # the grid went on
    assert "1 of 2 units failed" in err
