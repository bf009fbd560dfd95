"""The run planner (pipeline/plan.py, scores/estimates.py): each built-in method's predicted
forward-equivalents against what the meter counts when it runs (models/forward_meter.py), on a tiny
random-init GPT-2 (2 layers × 2 heads, MLPs, key/value prefixes) and the toy-tasks checkpoint
(2 × 4); `run --dry-run` computes and writes nothing; a plugin method without an estimator is
unknown; the first-answer advice appears only when the estimate is long."""
import logging

import pytest

from circuitbench.models.loading import load_model
from circuitbench.pipeline.plan import advice_line, estimate_method, plan_unit, unit_line
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.methods.outputs import MethodOutput
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import method

from helpers import cli

# options that keep the slow methods short here (the formulas take them into account)
OPTIONS = {"edge_pruning": {"steps": 6}, "acdc": {"thresholds": [0.01, 0.3]}, "causal_tracing": {"samples": 2},
           "attribution_patching": {"ig_steps": 3}, "ablation": {"kind": "zero"}}
EXACT = ["activation_patching", "ablation", "attribution_patching", "nap", "nap_ig", "eap", "eap_ig", "edge_patching",
         "causal_tracing", "ifr", "previous_token", "edge_pruning"]


def _unit(model_arg: str, n: int = 6):
    model = load_model(model_arg, device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": n}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def _measured_and_estimated(model, data, methods, batch_size=4):
    outputs = run_methods(model, data, methods, MethodRun(batch_size, metric="logit_diff", method_options=OPTIONS))
    return {m: (outputs[m].cost.forwards, estimate_method(m, model, data, batch_size, "logit_diff",
                                                         OPTIONS.get(m, {}))) for m in methods}


def test_estimates_equal_the_meter_on_a_tiny_gpt2(tiny_gpt2_dir):
    """Every formula follows how its method runs: equal to the meter's count (batches of 4 and 2 at
    their own widths, activation patching's first-difference prefix, resumed forwards); ACDC's is an
    upper bound it stays under."""
    model, data = _unit(str(tiny_gpt2_dir))
    figures = _measured_and_estimated(model, data, [*EXACT, "acdc"])
    for name in EXACT:
        measured, estimate = figures[name]
        assert estimate.forwards == pytest.approx(measured, rel=1e-3), name
        assert not estimate.upper_bound
    measured, acdc = figures["acdc"]
    assert acdc.upper_bound and measured <= acdc.forwards == 2 + 2 * model.component_graph().n_edges
    # the prefix makes exact head patching cheaper than its full-width count: 2 + 3 · (1 + 1/2)
    assert figures["activation_patching"][0] < 6.5


def test_estimates_equal_the_meter_on_the_toy_model_at_another_batch_size():
    model, data = _unit("toy-tasks", n=5)
    figures = _measured_and_estimated(model, data, ["activation_patching", "ablation", "eap_ig", "edge_patching",
                                                    "causal_tracing"], batch_size=2)
    for name, (measured, estimate) in figures.items():
        assert estimate.forwards == pytest.approx(measured, rel=1e-3), name


def test_a_method_without_an_estimator_is_unknown(tiny_gpt2_dir):
    @method("plan_test_no_estimator", description="a plugin that declares no cost")
    def _scores(model, data, ctx):
        return MethodOutput(heads=None)

    model, _ = _unit(str(tiny_gpt2_dir))
    spec = load_task("ioi").model_copy(update={"n_prompts": 4, "methods": ["eap", "plan_test_no_estimator"],
                                               "circuit": None})
    plan = plan_unit(spec, model, forward_seconds=0.01)
    by_name = {m.method: m for m in plan.methods}
    assert by_name["plan_test_no_estimator"].forwards is None and by_name["plan_test_no_estimator"].seconds is None
    # eap runs under each of ioi's two counterfactuals
    assert by_name["eap"].forwards == 8.0 and by_name["eap"].seconds == pytest.approx(0.08)
    assert "unknown: plan_test_no_estimator" in unit_line(plan)
    assert plan.known_forwards == pytest.approx(8.0 + 2.0 * (1 + len(spec.report_splits)))  # eap + evaluation


def test_first_answer_advice_only_when_the_estimate_is_long(tiny_gpt2_dir):
    model, _ = _unit(str(tiny_gpt2_dir))
    spec = load_task("ioi").model_copy(update={"n_prompts": 4, "methods": ["activation_patching", "edge_patching"]})
    quick = plan_unit(spec, model, forward_seconds=1e-3)
    assert quick.first_answer == [] and advice_line(quick) is None
    slow = plan_unit(spec, model, forward_seconds=60.0)  # as on a 2.7B model on two CPU cores
    assert slow.seconds > 180 and slow.slowest is not None and slow.slowest.method == "edge_patching"
    assert [m.method for m in slow.first_answer] == ["attribution_patching", "eap"]
    assert all(m.forwards == 8.0 and m.seconds == pytest.approx(480.0) for m in slow.first_answer)  # 2 counterfactuals
    advice = advice_line(slow)
    assert advice is not None and "--methods attribution_patching,eap" in advice and "≈ 8 min" in advice


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path, caplog):
    out = tmp_path / "res"
    with caplog.at_level(logging.INFO):
        code, stdout, _ = cli(capsys, "run", "--task", "ioi", "--model", "toy-tasks", "--n", "6", "--out", str(out),
                              "--methods", "activation_patching,eap,edge_patching", "--dry-run")
    assert code == 0, stdout
    assert not out.exists()
    # each measured once per counterfactual: ioi has two (9.5, 4 and 65.5 under one)
    for name, forwards in (("activation_patching", "19.0"), ("eap", "8.0"), ("edge_patching", "131.0")):
        line = next(line for line in stdout.splitlines() if name in line and "│" in line)
        assert forwards in line
    assert "estimate ioi on toy-tasks" in stdout and "nothing was computed or written" in stdout


def test_methods_that_patch_are_counted_once_per_counterfactual(tiny_gpt2_dir):
    """ioi has two counterfactuals: eap runs under each (twice the forwards), ifr needs none (once)."""
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    spec = load_task("ioi").model_copy(update={"n_prompts": 4, "methods": ["eap", "ifr"], "circuit": None})
    assert len(spec.counterfactuals) == 2
    both = {m.method: m.forwards for m in plan_unit(spec, model, forward_seconds=1.0).methods}
    one = {m.method: m.forwards for m in plan_unit(spec.model_copy(update={"counterfactuals": []}), model,
                                                   forward_seconds=1.0).methods}
    assert both["eap"] == 2 * one["eap"] == 8 and both["ifr"] == one["ifr"] == 1


def test_estimates_follow_heads_only_patching_and_per_span_edges(tiny_gpt2_dir):
    """`mlps: false` drops the MLP copies from the estimate, `positions: per_span` adds one forward per
    (edge, span): both still equal the meter."""
    model, data = _unit(str(tiny_gpt2_dir))
    options = {"activation_patching": {"mlps": False}, "edge_patching": {"positions": "per_span"}}
    outputs = run_methods(model, data, list(options), MethodRun(4, metric="logit_diff", method_options=options))
    for name, opts in options.items():  # per span: within 5 % (spans a prompt lacks start their forwards at END)
        estimate = estimate_method(name, model, data, 4, "logit_diff", opts)
        assert estimate.forwards == pytest.approx(outputs[name].cost.forwards, rel=1e-3 if "mlps" in opts else 0.05)
    full = estimate_method("activation_patching", model, data, 4, "logit_diff", {})
    blind = estimate_method("edge_patching", model, data, 4, "logit_diff", {})
    assert full.forwards > outputs["activation_patching"].cost.forwards
    assert outputs["edge_patching"].cost.forwards > 5 * blind.forwards
