"""One circuit type (circuits/circuit.py): a RunResult's circuit *is* the Circuit overlap, recovery,
export and reports take; Circuit.from_result needs no disk; written results do not repeat what the
result holds elsewhere, and read back to the same Circuit (sidecar edge scores included)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import circuitbench as cb
from circuitbench.circuits.circuit import FROM_RESULT
from circuitbench.circuits.overlap import overlap_matrix
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.pipeline.unit import run_unit
from circuitbench.results.store import load_circuit, read_result, save_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import ExecutionOptions, TaskOverrides, effective_spec


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction-2l", device="cpu")


@pytest.fixture(scope="module")
def head_result(toy):
    spec = effective_spec(load_task("induction"), TaskOverrides(n_prompts=8, methods=["activation_patching",
                                                                                       "previous_token"]))
    return run_unit(spec, toy, ExecutionOptions(batch_size=8))


@pytest.fixture(scope="module")
def edge_result(toy):
    spec = effective_spec(load_task("induction"), TaskOverrides(n_prompts=8, methods=["eap"], circuit_level="edge"))
    return run_unit(spec, toy, ExecutionOptions(batch_size=8))


def test_the_result_circuit_is_a_circuit_with_its_scores_shape_and_faithfulness(head_result):
    c = cb.Circuit.from_result(head_result)
    assert c is head_result.circuit and isinstance(c, cb.Circuit) and isinstance(c.faithfulness, cb.Faithfulness)
    assert c.shape == (head_result.model.n_layers, head_result.model.n_heads)
    np.testing.assert_array_equal(np.asarray(c.scores), head_result.scores(c.method))
    assert c.label == f"{head_result.model.label}/{head_result.task.name}"
    f = c.faithfulness
    assert f.value == pytest.approx((f.m_circuit - f.m_empty) / (f.m_full - f.m_empty))  # the metric's own sign
    assert {k.method for k in c.candidates} == {"activation_patching", "previous_token"}


def test_a_written_result_holds_no_copies_and_reads_back_to_the_same_circuit(head_result, tmp_path):
    path = tmp_path / "r.json"
    save_result(head_result, path)
    written = json.loads(path.read_text())["circuit"]
    assert not FROM_RESULT & set(written) and written["faithfulness"]["value"] == head_result.circuit.faithfulness.value
    assert read_result(path).circuit == head_result.circuit == load_circuit(path)


def test_edge_scores_come_from_the_sidecar_the_result_reads_itself(edge_result, tmp_path):
    in_memory = cb.Circuit.from_result(edge_result)
    assert in_memory.level == "edge" and in_memory.edge_scores is not None
    assert in_memory.edge_scores == edge_result.edge_score_arrays()["eap"].as_dict()
    path = tmp_path / "e.json"
    save_result(edge_result, path)
    assert "edge_scores" not in json.loads(path.read_text())["circuit"]
    read_back = load_circuit(path)  # the sidecar next to it, read when asked
    assert read_back.edges == in_memory.edges and read_back.edge_scores == pytest.approx(in_memory.edge_scores)


def test_overlap_takes_result_circuits_without_disk(head_result, edge_result):
    a, b = cb.Circuit.from_result(head_result), cb.Circuit.from_result(edge_result)
    matrix = overlap_matrix([a, b], ["jaccard"], cb.OverlapSettings(permutations=0))
    heads_a, heads_b = set(map(tuple, a.heads)), set(map(tuple, b.heads))
    assert matrix.values["jaccard"][0][1] == pytest.approx(len(heads_a & heads_b) / len(heads_a | heads_b))
    assert matrix.labels == [f"{a.label}[0]", f"{b.label}[1]"]  # one task in one model twice: told apart


def test_a_result_without_a_circuit_says_why(head_result):
    failed = head_result.model_copy(update={"circuit": None})
    with pytest.raises(CircuitbenchError, match="no circuit in this result: its task has no circuit rule"):
        cb.Circuit.from_result(failed)


def test_circuit_load_points_results_to_load_circuit(head_result, tmp_path):
    path = tmp_path / "r.json"
    save_result(head_result, path)
    with pytest.raises(CircuitbenchError, match="a RunResult, not a circuit file: read it with "
                                                "circuitbench.load_circuit"):
        cb.Circuit.load(path)
