"""run_unit's own judgements of a run (pipeline/unit.py)."""
from __future__ import annotations

import circuitbench as cb
from circuitbench.pipeline.unit import CAPABLE, competence_warnings
from circuitbench.specs.catalog import load_task


def test_a_model_that_cannot_do_the_task_is_said_to():
    """toy-tasks answers fewer than half of fibonacci's test prompts (held-out starts) and nearly all of
    IOI's: only the first run warns, with the accuracy measured on its own prompts."""
    warned = {}
    for task in ("fibonacci", "ioi"):
        spec = load_task(task).model_copy(update={"n_prompts": 32, "circuit": None, "methods": ["previous_token"]})
        result = cb.run(spec, "toy-tasks")
        warned[task] = [w for w in result.warnings if "mostly cannot do this task" in w]
        assert (result.metrics["accuracy"] < CAPABLE) == bool(warned[task]), task
    assert warned["fibonacci"] and not warned["ioi"]


def test_competence_needs_an_accuracy_metric():
    assert competence_warnings({"induction_loss": 9.0}) == []
    assert competence_warnings({"accuracy": CAPABLE}) == []
    assert "answers 20% of these prompts right" in competence_warnings({"accuracy": 0.2})[0]
