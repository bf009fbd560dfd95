"""Recovery against a known circuit: the scores by hand, and a planted reference on the shipped
induction toy (its circuit: the previous-token head 0.2 and the four layer-1 induction heads)."""
from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from circuitbench.circuits.recovery import Reference, auroc, average_precision, load_reference, recovery
from circuitbench.errors import CircuitbenchError
from circuitbench.results.store import load_result

from helpers import cli

TOY_CIRCUIT = [[0, 2], [1, 0], [1, 1], [1, 2], [1, 3]]


def brute_auroc(scores, positive):
    pairs = [(p, n) for p in scores[positive] for n in scores[~positive]]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def brute_average_precision(scores, positive):
    """Precision at each distinct threshold, weighted by the recall gained there."""
    total = 0.0
    for t in sorted(set(scores), reverse=True):
        kept = scores >= t
        gained = positive[scores == t].sum() / positive.sum()
        total += gained * positive[kept].sum() / kept.sum()
    return total


def test_auroc_and_average_precision_match_their_definitions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 4, size=12).astype(float)  # many ties
        positive = rng.random(12) < 0.4
        if positive.all() or not positive.any():
            continue
        assert auroc(scores, positive) == pytest.approx(brute_auroc(scores, positive))
        assert average_precision(scores, positive) == pytest.approx(brute_average_precision(scores, positive))
    assert auroc(np.ones(3), np.array([True, True, True])) is None


def test_precision_recall_f1_of_the_chosen_circuit():
    scores = np.array([[0.9, 0.1], [0.8, 0.0]])
    ref = Reference(heads=[(0, 0), (1, 1)], source="hand")
    r = recovery(scores, [(0, 0), (1, 0)], ref)
    assert (r.precision, r.recall, r.f1) == (0.5, 0.5, 0.5) and r.n_reference == 2 and r.n_circuit == 2
    assert r.auroc == pytest.approx(brute_auroc(scores.ravel(), np.array([True, False, False, True])))
    with pytest.raises(CircuitbenchError, match="outside a model"):
        recovery(scores, [], Reference(heads=[(3, 0)], source="hand"))


def test_reference_files_take_heads_and_node_names(tmp_path):
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps({"nodes": ["a0.h2", "m1"], "heads": [[1, 3]]}))
    ref = load_reference(path)
    assert ref.heads == [(0, 2), (1, 3)] and ref.mlps == [1] and ref.nodes == ["a0.h2", "a1.h3", "m1"]
    path.write_text(json.dumps({"nodes": ["head 2"]}))
    with pytest.raises(CircuitbenchError, match="node name"):
        load_reference(path)


def test_planted_reference_is_recovered_and_missing_heads_are_warned(capsys, tmp_path):
    spec = tmp_path / "ind_ref.yaml"
    spec.write_text("name: ind_ref\ngenerator: {name: induction}\nn_prompts: 16\nmetrics: [induction_loss]\n"
                    "methods: [activation_patching, induction]\ncircuit: {top_k: 5}\n"
                    f"reference_circuits:\n  toy-induction-2l: {json.dumps(TOY_CIRCUIT)}\n")
    code, out, _ = cli(capsys, "run", "--task", str(spec), "--model", "toy-induction-2l", "--out", str(tmp_path), "-q",
                       "--details")
    assert code == 0 and "recovery of the reference (5 heads) by activation_patching" in out
    result = load_result(tmp_path / "toy-induction-2l" / "ind_ref.json")
    exact = result.recovery["activation_patching"]
    assert exact.recall == 1.0 and exact.precision == 1.0 and exact.auroc == 1.0  # noising patching finds it
    assert result.recovery["induction"].recall < 1.0  # the detector alone misses the previous-token head
    assert result.reference.heads == [tuple(h) for h in TOY_CIRCUIT] and result.reference.invisible == []
    # a reference head the circuit lacks is named, with the faithfulness under both ablations
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({"heads": TOY_CIRCUIT + [[0, 0]]}))
    code, out, _ = cli(capsys, "run", "--task", str(spec), "--model", "toy-induction-2l", "--out", str(tmp_path / "b"),
                       "-q", "--reference", str(bigger))
    warnings = load_result(tmp_path / "b" / "toy-induction-2l" / "ind_ref.json").circuit.warnings
    assert code == 0 and any("misses reference heads a0.h0" in w and "zero" in w for w in warnings)


def test_heads_that_the_counterfactual_cannot_see_are_found():
    """A counterfactual equal to the clean prompt hides every head; a real one hides none here."""
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.methods.context import MethodContext
    from circuitbench.scores.visibility import visibility
    from circuitbench.specs.catalog import load_task

    model = load_model("toy-induction-2l", device="cpu")
    data = encode_task(load_task("induction").model_copy(update={"n_prompts": 8}), model.vocab, model.unk_id,
                       model.n_ctx)
    heads = [f"a{l}.h{h}" for l, h in itertools.product(range(2), range(4))]
    ctx = MethodContext(batch_size=4, metric="induction_loss")
    assert [h for h in heads if visibility(model, data, ctx)[h] == 0.0] == []
    same = replace(data, corrupted=data.tokens.clone())
    assert [h for h in heads if visibility(model, same, ctx)[h] == 0.0] == heads


# ---- typed references (issue 21) ----------------------------------------------------------------

def test_a_reference_outside_the_model_fails_before_any_method_runs(capsys, tmp_path, monkeypatch):
    import circuitbench.pipeline.unit as unit

    scored = []
    monkeypatch.setattr(unit, "run_methods", lambda *a, **k: scored.append(1) or pytest.fail("a method ran"))
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"heads": [[7, 0], [1, 1]]}))
    code, out, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--out", str(tmp_path),
                         "-q", "--no-cache", "--reference", str(ref))
    result = load_result(tmp_path / "toy-induction-2l" / "induction.json")
    assert code == 2 and not scored and result.status == "failed" and result.error.user_error
    assert result.error.message.startswith(f"{ref}: heads: a7.h0 lie outside toy-induction-2l (2 layers × 4 heads")
    ref.write_text(json.dumps({"heads": [[0, 0]], "edges": ["a0.h0->a0.h1<q>"]}))  # no edge of any model
    code, out, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--out", str(tmp_path),
                         "-q", "--no-cache", "--reference", str(ref))
    message = load_result(tmp_path / "toy-induction-2l" / "induction.json").error.message
    assert code == 2 and not scored and message.startswith(f"{ref}: edges: 'a0.h0->a0.h1<q>' is no edge")


@pytest.mark.parametrize("content, message", [
    ({"heads": [[True, 0]]}, "heads: [True, 0] is neither a [layer, head] pair of whole numbers ≥ 0"),
    ({"heads": [[-1, 0]]}, "heads: [-1, 0] is neither"),
    ({"heads": [[0.5, 0]]}, "heads: [0.5, 0] is neither"),
    ({"heads": "a0.h1"}, "heads: a list of [layer, head] pairs"),
    ({"nodes": ["a0.h1"], "mlps": [0, "1"]}, "mlps: [0, '1'] is not a list of layers"),
    ({"heads": [], "edges": ["a0.h1->a1.h0<q>", 3]}, "edges: 3 is not an edge name"),
])
def test_reference_files_are_validated_naming_the_field(tmp_path, content, message):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CircuitbenchError) as err:
        load_reference(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_recovery_reads_a_literal_path_with_brackets(capsys, tmp_path):
    from bad_inputs import complete_result

    scores = {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "auroc": 0.9, "average_precision": 0.8,
              "n_reference": 2, "n_circuit": 1}
    path = tmp_path / "run[1].json"
    path.write_text(json.dumps(complete_result(recovery={"eap": scores}, circuit=None, edge_scores={})))
    code, out, err = cli(capsys, "recovery", str(path))
    assert code == 0, err
    assert "0.50" in out and "0.90" in out
