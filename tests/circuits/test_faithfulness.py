"""circuits/faithfulness.py: the paired standard error of m(M) − m(∅), faithfulness undefined
(None, with the reason) exactly when that gap is within noise, and a run storing that decision."""
from __future__ import annotations

import re

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.circuits.circuit import RANDOM_INIT
from circuitbench.circuits.faithfulness import NOISE_Z, paired_gap, undefined_reason
from circuitbench.pipeline.grid import UnitOutcome
from circuitbench.results.store import load_result
from circuitbench.scores.methods.context import MethodContext
from circuitbench.tables.console import print_run_summary

NUMBER = re.compile(r"faithfulness -?\d")  # "faithfulness 118.16": a number where there should be none


def _ctx() -> MethodContext:
    return MethodContext(batch_size=8, metric="logit_diff", sum_shards=lambda x: x)


def test_paired_gap_is_the_standard_error_of_the_per_prompt_differences():
    rng = np.random.default_rng(0)
    full = rng.normal(1.0, 1.0, 50)
    empty = full - rng.normal(0.3, 0.5, 50)  # correlated runs: the paired stderr is far below the unpaired one
    m_full, m_empty, stderr, n = paired_gap(full, empty, _ctx())
    diff = full - empty
    assert n == 50 and m_full == pytest.approx(full.mean()) and m_empty == pytest.approx(empty.mean())
    assert stderr == pytest.approx(diff.std(ddof=1) / np.sqrt(50))
    assert stderr < np.sqrt(full.var(ddof=1) / 50 + empty.var(ddof=1) / 50) / 1.5


@pytest.mark.parametrize("gap, stderr, defined", [(0.3, 0.05, True), (0.0003, 0.0003, False), (0.1, 0.049, True),
                                                  (0.1, 0.051, False), (0.0, 0.0, False)])
def test_faithfulness_is_undefined_within_noise(gap, stderr, defined):
    reason = undefined_reason(-0.0447, -0.0447 - gap, stderr, 16, "ablating every head (zero)", "logit_diff", -0.0447)
    assert (reason is None) == defined == (gap >= NOISE_Z * stderr and gap > 0)
    if not defined:
        assert ("within noise" in reason) if gap else ("does not change" in reason)


def test_a_run_stores_null_faithfulness_exactly_when_the_gap_is_within_noise(capsys, tmp_path, tiny_models):
    """Whatever a random-init model's numbers are, the stored decision follows from them; the
    summary prints a faithfulness number only when it is defined."""
    result = cb.run("ioi", str(tiny_models["gpt2"]), out=tmp_path, init="random", n_prompts=8,
                    methods=["attribution_patching"])
    assert isinstance(result, cb.RunResult) and isinstance(result.circuit, cb.Circuit)
    f = result.circuit.faithfulness
    assert isinstance(f, cb.Faithfulness)
    path = tmp_path / f"gpt2{RANDOM_INIT}" / "ioi.json"
    assert load_result(path).circuit.faithfulness == f  # what is stored is what was returned
    within = abs(f.m_full - f.m_empty) < NOISE_Z * f.gap_stderr
    assert (f.value is None) == within == (f.undefined is not None)
    assert (f.cpr is None and f.cmd is None) if within else f.value == pytest.approx(
        (f.m_circuit - f.m_empty) / (f.m_full - f.m_empty))
    print_run_summary([UnitOutcome(result.model.label, "ioi", path, result, False)])
    assert bool(NUMBER.search(capsys.readouterr().out)) != within
