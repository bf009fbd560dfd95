"""How far a circuit can be trusted (circuits/panel.py): bootstrap intervals against a naive loop,
the verdict rules, and, on compiled tracr programs whose true circuit is known, that a circuit
missing a reference node is never called robust and names what it misses."""
from __future__ import annotations

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.circuits.circuit import OutsideComponent, PanelEntry
from circuitbench.circuits.panel import PanelValues, bootstrap_interval, f_of, judge, worst_case

TRACR = [("reverse", "tracr-reverse"), ("hist", "tracr-hist"), ("sort_unique", "tracr-sort-unique"),
         ("detect_abc", "tracr-detect-abc")]


def test_bootstrap_interval_is_the_percentile_interval_of_a_naive_loop():
    rng = np.random.default_rng(1)
    full, empty = rng.normal(2.0, 0.3, 40), rng.normal(0.0, 0.3, 40)
    circuit = 0.9 * full + 0.1 * empty + rng.normal(0, 0.05, 40)
    values = PanelValues(full, empty, circuit, None)
    draws = np.random.default_rng(7).integers(0, 40, size=(200, 40))
    naive = [(circuit[r].mean() - empty[r].mean()) / (full[r].mean() - empty[r].mean()) for r in draws]
    low, high = bootstrap_interval(values, seed=7, n_resamples=200)
    assert (low, high) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])))
    assert low < f_of(full, empty, circuit) < high
    assert bootstrap_interval(PanelValues(full[:1], empty[:1], circuit[:1], None), seed=0) is None


def _entry(name, value, ci):
    return PanelEntry(ablation=name, value=value, ci=ci, n=32)


GOOD = (0.95, 1.05)


@pytest.mark.parametrize("panel, outside, verdict", [
    ({"counterfactual": _entry("counterfactual", 1.0, GOOD), "mean_clean": _entry("mean_clean", 1.0, GOOD),
      "resample": _entry("resample", 1.0, GOOD), "zero": _entry("zero", 0.2, (0.1, 0.3))}, [], "robust"),
    # the interval must lie inside the band, not only the value
    ({"counterfactual": _entry("counterfactual", 1.0, GOOD), "mean_clean": _entry("mean_clean", 0.9, (0.7, 1.1)),
      "resample": _entry("resample", 1.0, GOOD)}, [], "counterfactual_specific"),
    ({"counterfactual": _entry("counterfactual", 1.0, GOOD), "mean_clean": _entry("mean_clean", 1.0, GOOD),
      "resample": _entry("resample", 1.0, GOOD)},
     [OutsideComponent(node="a0.h0", ablation="zero", effect=-1.0, ci=(-1.2, -0.8), share=0.5)],
     "counterfactual_specific"),
    ({"counterfactual": _entry("counterfactual", 0.5, (0.4, 0.6)), "mean_clean": _entry("mean_clean", 1.0, GOOD),
      "resample": _entry("resample", 1.0, GOOD)}, [], "unfaithful"),
    ({"counterfactual": PanelEntry(ablation="counterfactual", value=None, undefined="within noise", n=8)}, [],
     "undefined"),
])
def test_verdict_rules(panel, outside, verdict):
    got, reasons = judge(panel, "counterfactual", outside, [])
    assert got == verdict and (reasons == []) == (verdict == "robust")
    if outside:
        assert any("a0.h0" in r for r in reasons)


def test_every_counterfactual_and_a_required_zero_ablation_count_for_robust():
    """Patching with a second counterfactual joins what robust needs; zero ablation does only when the task
    requires it; and the worst case auto weighs follows the same list."""
    panel = {"counterfactual": _entry("counterfactual", 1.0, GOOD), "mean_clean": _entry("mean_clean", 1.0, GOOD),
             "resample": _entry("resample", 1.0, GOOD), "zero": _entry("zero", 0.3, (0.2, 0.4))}
    assert judge(panel, "counterfactual", [], [])[0] == "robust"
    verdict, reasons = judge(panel, "counterfactual", [], [], require_zero=True)
    assert verdict == "counterfactual_specific" and any("zero ablation is 0.30" in r for r in reasons)
    assert worst_case(panel, "counterfactual") == (0.0, "counterfactual")
    assert worst_case(panel, "counterfactual", require_zero=True) == pytest.approx((0.7, "zero"))
    panel["counterfactual:offset"] = _entry("counterfactual:offset", 0.5, (0.4, 0.6))
    verdict, reasons = judge(panel, "counterfactual", [], [])
    assert verdict == "counterfactual_specific" and any("counterfactual:offset" in r for r in reasons)
    assert worst_case(panel, "counterfactual") == pytest.approx((0.5, "counterfactual:offset"))


@pytest.mark.parametrize("program, model", TRACR)
@pytest.mark.parametrize("level, methods", [("node", ["ablation", "activation_patching"]),
                                            ("edge", ["eap", "edge_patching"])])
def test_a_circuit_missing_a_reference_node_is_never_robust_and_names_it(program, model, level, methods):
    """top_k 2 nodes / 4 edges is smaller than most true circuits: whatever it keeps, a missing
    reference node (often invisible to the counterfactual) is listed as necessary outside it."""
    task = cb.load_task(f"tasks/known_answers/tracr_{program}.yaml")
    rule = task.circuit.model_copy(update={"level": level, "top_k": 2 if level == "node" else 4,
                                           "ablation": "counterfactual" if level == "edge" else task.circuit.ablation})
    result = cb.run(task.model_copy(update={"circuit": rule}), model, methods=methods)
    c = result.circuit
    reference = {f"a{l}.h{h}" for l, h in result.reference.heads} | {f"m{l}" for l in result.reference.mlps}
    missing = reference - set(c.nodes)
    assert c.verdict is not None and set(c.panel) >= {"counterfactual", "mean_clean", "zero"}
    if missing:
        assert c.verdict != "robust" and c.verdict_reasons
        assert missing <= {o.node for o in c.outside_necessary}, (missing, c.outside_necessary)
    for entry in c.panel.values():
        assert entry.value is None or entry.ci is None or entry.ci[0] <= entry.value <= entry.ci[1] + 1e-9


def test_the_previous_token_head_left_out_of_a_patching_circuit_is_named():
    """toy-induction-2l's default counterfactual keeps the first half of the sequence, so the previous-
    token head's output at the keys the induction heads read is the same in both runs: a circuit from
    exact patching alone may leave it out, and ablating it alone from the full model must say so."""
    result = cb.run("induction", "toy-induction-2l", n_prompts=16, methods=["activation_patching"])
    c = result.circuit
    assert "a0.h2" in c.nodes or "a0.h2" in {o.node for o in c.outside_necessary}
    assert c.verdict in ("robust", "counterfactual_specific", "unfaithful")
    if "a0.h2" not in c.nodes:
        assert c.verdict != "robust"



def test_the_known_circuit_of_hist_is_robust_and_one_prompt_length_is_warned(tmp_path):
    """tracr's hist keeps its one head and MLP: robust (the README's example); its prompts of one
    length only are warned about (a length reader is constant on them)."""
    import json
    import shutil

    result = cb.run(cb.load_task("tasks/known_answers/tracr_hist.yaml"), "tracr-hist")
    assert result.circuit.verdict == "robust" and result.circuit.verdict_reasons == []
    assert not any("every prompt has" in w for w in result.warnings)
    rows = [json.loads(line) for line in open("tasks/known_answers/tracr_hist.jsonl")]
    one_length = [r for r in rows if len(r["prompt"].split()) == 4]
    (tmp_path / "tracr_hist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in one_length))
    shutil.copy("tasks/known_answers/tracr_hist.yaml", tmp_path / "tracr_hist.yaml")
    same = cb.run(cb.load_task(str(tmp_path / "tracr_hist.yaml")), "tracr-hist")
    assert 1 < same.task.n_prompts <= len(one_length)  # the test split of them
    assert any(w.startswith("every prompt has") for w in same.warnings)


def test_auto_says_why_and_which_candidates_could_not_see_the_reference():
    """tracr reverse's a0.h0 has the same output under its counterfactual: patching scores it exactly 0.
    auto keeps the candidate with the smallest worst case over the panel (ablation, which sees a0.h0),
    says so, and names the candidates that scored the reference head 0."""
    result = cb.run(cb.load_task("tasks/known_answers/tracr_reverse.yaml"), "tracr-reverse")
    c = result.circuit
    assert result.scores("activation_patching")[0, 0] == 0.0
    assert "a0.h0" in result.unknown_scores["activation_patching"]
    worst = {k.method: k.worst_case for k in c.candidates}
    assert c.method == min(worst, key=worst.get) and (0, 0) in map(tuple, c.heads)
    assert c.choice is not None and c.method in c.choice
    for method in ("activation_patching", "attribution_patching"):
        assert f"candidate {method} scored reference a0.h0 exactly 0" in " ".join(c.warnings)
    assert "ablation" not in result.unknown_scores  # ablation is not a patching method: it sees a0.h0


def test_a_freshly_trained_induction_models_previous_token_head_is_never_silently_left_out(tmp_path):
    """A 2-layer attention-only model trained here (not shipped). The default counterfactual keeps
    the first half, where the previous-token head's output feeds the induction heads' keys; exact
    patching scores what changes. Whatever circuit patching keeps, its layer-0 previous-token head (the
    one the detector ranks first) is in it or named as necessary outside it, and then not robust."""
    from circuitbench.environment import torch_threads
    from circuitbench.specs.task import CircuitRule
    from circuitbench.training.config import TrainConfig, arch_from
    from circuitbench.training.trainer import train

    small = "tasks/examples/induction_small.yaml"
    config = TrainConfig(arch=arch_from("attn-only-2l", d_model=32, n_heads=2, positional="rotary"), tasks=[small],
                         steps=400, checkpoints=0, batch_size=32, lr=1e-2, seed=1, loss_positions="answer")
    with torch_threads(1):
        train(config, tmp_path / "model")
    task = cb.load_task(small).model_copy(update={"circuit": CircuitRule(top_k=2, method="activation_patching")})
    result = cb.run(task, str(tmp_path / "model"), methods=["activation_patching", "previous_token"])
    assert result.metrics["induction_loss"] < 1.0  # it learned induction
    detector = result.scores("previous_token")
    previous_token_head = f"a0.h{int(np.argmax(detector[0]))}"
    c = result.circuit
    named = set(c.nodes) | {o.node for o in c.outside_necessary}
    assert previous_token_head in named, (c.nodes, c.outside_necessary)
    if previous_token_head not in c.nodes:
        assert c.verdict != "robust"

    # A second counterfactual that moves every position (permuted_positions) changes what the previous-token
    # head writes at the keys: it scores that head higher than the default one, and the circuit built from both
    # holds it (issue 23 point 4).
    both = type(task).model_validate({**task.model_dump(), "methods": ["activation_patching", "previous_token"],
                                      "counterfactuals": ["fresh_random", "permuted_positions"]})
    combined = cb.run(both, str(tmp_path / "model"))
    runs = {run.name: run for run in combined.counterfactuals}
    layer, head = 0, int(previous_token_head.split(".h")[1])
    under = {name: abs(run.head_scores["activation_patching"][layer][head]) for name, run in runs.items()}
    assert under["permuted_positions"] > under["fresh_random"], under
    combined_scores = combined.scores("activation_patching")
    assert abs(combined_scores[layer, head]) == max(under.values())  # largest magnitude over the counterfactuals
    assert previous_token_head in combined.circuit.nodes, combined.circuit.nodes
    assert "counterfactual:permuted_positions" in combined.circuit.panel


def test_a_circuit_patching_cannot_measure_is_judged_by_the_rules_ablation():
    """Counterfactual patching undefined (ablating everything with it changes nothing): the verdict
    falls back to the rule's ablation instead of calling a faithful circuit unfaithful."""
    panel = {"mean_counterfactual": _entry("mean_counterfactual", 1.0, GOOD),
             "counterfactual": PanelEntry(ablation="counterfactual", value=None, undefined="no change", n=32),
             "mean_clean": _entry("mean_clean", 1.0, GOOD), "resample": _entry("resample", 1.0, GOOD)}
    verdict, reasons = judge(panel, "mean_counterfactual", [], [])
    assert verdict == "counterfactual_specific" and any("counterfactual ablation is undefined" in r for r in reasons)
    panel["mean_counterfactual"] = _entry("mean_counterfactual", 0.5, (0.4, 0.6))
    assert judge(panel, "mean_counterfactual", [], [])[0] == "unfaithful"
