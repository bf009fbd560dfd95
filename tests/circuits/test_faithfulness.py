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
    print_run_summary([UnitOutcome(result.model.label, "ioi", path, result, False)], details=True)
    assert bool(NUMBER.search(capsys.readouterr().out)) != within


def test_cpr_and_cmd_intervals_are_a_naive_bootstrap_of_the_whole_curve():
    """CurveValues keeps every point's per-prompt values; the intervals of CPR and CMD equal a loop
    that resamples the prompts and recomputes every point of both curves, then integrates as MIB."""
    from types import SimpleNamespace

    from circuitbench.circuits.faithfulness import (
        CURVE_RESAMPLES,
        MIB_FRACTIONS,
        CurveValues,
        curves,
        mib_sizes,
    )
    from circuitbench.scores.methods.context import MethodContext

    rng = np.random.default_rng(3)
    n, names = 12, [f"a0.h{h}" for h in range(20)]
    weight = {name: w for name, w in zip(names, rng.uniform(0, 1, 20))}
    noise = rng.normal(0, 0.1, (n, 20))
    full, empty = 1 + rng.normal(0, 0.1, n), rng.normal(0, 0.1, n)

    def values_of(items):  # per-prompt metric with only `items` kept: their share of the full effect, noisy
        share = sum(weight[i] for i in items) / sum(weight.values())
        return empty + share * (full - empty) + noise[:, [names.index(i) for i in items]].mean(axis=1)

    baseline = SimpleNamespace(full_values=full, empty_values=empty, m_full=full.mean(), m_empty=empty.mean())
    order_abs = sorted(names, key=lambda x: -weight[x])
    order_signed = list(reversed(order_abs))
    fields = curves(order_abs, order_signed, "mib", CurveValues(values_of, baseline, MethodContext(batch_size=1)),
                    "abs", seed=5)
    rows = np.random.default_rng(5).integers(0, n, size=(CURVE_RESAMPLES, n))
    sizes = mib_sizes(len(names))
    cprs, cmds = [], []
    for r in rows:
        def f(order, k):
            if k == 0 or k >= len(order):
                return float(k > 0)
            return (values_of(order[:k])[r].mean() - empty[r].mean()) / (full[r].mean() - empty[r].mean())
        signed = [f(order_signed, k) for k in sizes]
        by_abs = [f(order_abs, k) for k in sizes]
        cprs.append(np.trapezoid(signed, MIB_FRACTIONS))
        cmds.append(np.trapezoid([abs(1 - v) for v in by_abs], MIB_FRACTIONS))
    assert fields["cpr_ci"] == pytest.approx(tuple(np.percentile(cprs, [2.5, 97.5])))
    assert fields["cmd_ci"] == pytest.approx(tuple(np.percentile(cmds, [2.5, 97.5])))
    assert fields["cpr_ci"][0] <= fields["cpr"] <= fields["cpr_ci"][1]


def test_mib_integration_of_a_curve_flat_at_zero_until_the_whole_graph():
    """A random ranking keeps almost no complete path until the whole graph (pruned, its top edges
    are nearly empty): f ≈ 0 on MIB's grid except f(100 %) = 1, so CPR = the last trapezoid,
    (1 − 0.5) · (0 + 1) / 2 = 0.25, and CMD = (1 − 0.001) − 0.25 = 0.749, MIB's random baseline.
    The x axis is the nominal fraction (not log, not the point's index)."""
    from circuitbench.circuits.faithfulness import MIB_FRACTIONS, mib_cpr_cmd, mib_sizes

    flat = [0.0] * 9 + [1.0]
    cpr, cmd = mib_cpr_cmd(flat, flat)
    assert cpr == pytest.approx(0.25, abs=1e-12) and cmd == pytest.approx(0.749, abs=1e-12)
    linear = list(MIB_FRACTIONS)  # f = x: the area under the diagonal from 0.001 to 1
    assert mib_cpr_cmd(linear, linear)[0] == pytest.approx((1 - 0.001**2) / 2, abs=1e-12)
    # n_k = ⌊k · N⌋ as MIB counts (int()), on GPT-2 small's 32,491 edges
    assert mib_sizes(32491) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]


def test_the_empty_node_circuit_is_mibs_the_counterfactual_run(tiny_models):
    """Node level removes the input embedding too (MIB's input node): under counterfactual patching
    m(∅) is the counterfactual run's metric exactly."""
    from circuitbench.circuits.faithfulness import Baseline
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.ablations import Counterfactual
    from circuitbench.scores.evaluation import evaluate
    from circuitbench.specs.catalog import load_task

    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)
    ctx = _ctx()
    _, corrupted = evaluate(model, data, ["logit_diff"], 8)
    node = Baseline(model, data, Counterfactual(), ctx, "node")
    assert node.m_empty == pytest.approx(float(corrupted["logit_diff"].double().mean()), abs=1e-5)
    # every head and MLP without the input recompute from the counterfactual embedding: the counterfactual run
    every = {(l, h) for l in range(model.n_layers) for h in range(model.n_heads)}
    assert node.metric(every, set(range(model.n_layers)), keep_input=True) == pytest.approx(node.m_full, abs=1e-5)
    without_input = node.metric(every, set(range(model.n_layers)), keep_input=False)
    assert without_input == pytest.approx(node.m_empty, abs=1e-5) and abs(without_input - node.m_full) > 1e-4


def test_nap_node_circuits_may_leave_the_input_out():
    from circuitbench.circuits.circuit import Circuit
    from circuitbench.specs.task import CircuitRule

    rule = CircuitRule(level="node", top_k=2)
    scores = {"input": 0.1, "a0.h0": 0.9, "a0.h1": -0.5, "m0": 0.05}
    left_out = Circuit.from_node_scores(scores, rule, "nap", (1, 2))
    assert not left_out.input and left_out.heads == [(0, 0), (0, 1)]
    kept = Circuit.from_node_scores({**scores, "input": 2.0}, rule, "nap", (1, 2))
    assert kept.input and kept.heads == [(0, 0)]
    unscored = Circuit.from_node_scores({k: v for k, v in scores.items() if k != "input"}, rule, "ablation", (1, 2))
    assert unscored.input  # a method that does not score the input keeps it, as MIB re-adds unscored nodes
    assert rule.ablation == "counterfactual"  # node circuits patch counterfactuals by default, as MIB


def test_a_curves_interval_is_summed_as_its_area_so_a_constant_resample_contains_it():
    """tracr's deterministic curves resample to one value: the interval must be that very number
    (summed in another order it was 0.9650000000000001 around a CPR of 0.965, shown [0.97, 0.97]
    beside 0.96)."""
    from circuitbench.circuits.faithfulness import MIB_FRACTIONS, _interval, trapezoid_area, trapezoid_areas

    f = [0.0] * 5 + [1.0] * 5
    point = trapezoid_area(MIB_FRACTIONS, f)
    low, high = _interval(trapezoid_areas(MIB_FRACTIONS, np.tile(f, (50, 1))))
    assert low == point == high == 0.965
