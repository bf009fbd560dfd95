"""circuitbench/results/circuit_files.py: the circuit files a user names, globs expanded
(files.expand_glob), read as circuits, a shape given to those without one."""
from __future__ import annotations

import json

import pytest

from circuitbench.errors import CircuitbenchError
from circuitbench.results.circuit_files import circuit_paths, circuit_shape, load_circuits
from circuitbench.specs.catalog import model_registry


def _write(path, **fields):
    path.write_text(json.dumps({"heads": [[0, 1]], **fields}))
    return path


def test_circuit_paths_expands_every_pattern_and_wants_two_files(tmp_path):
    a, b = _write(tmp_path / "a.json"), _write(tmp_path / "b.json")
    assert circuit_paths([str(tmp_path / "*.json")]) == [str(a), str(b)]
    assert circuit_paths([str(b), str(a)]) == [str(b), str(a)]
    with pytest.raises(CircuitbenchError, match="overlap: no file matches"):
        circuit_paths([str(a), str(tmp_path / "*.csv")])
    with pytest.raises(CircuitbenchError, match="give at least two circuit files"):
        circuit_paths([str(a)])


def test_circuit_shape_from_text_a_pair_or_a_registry_model():
    gpt2 = model_registry()["gpt2-small"]
    assert circuit_shape() is None
    assert circuit_shape("3,5") == circuit_shape((3, 5)) == (3, 5)
    assert circuit_shape(model="gpt2-small") == (gpt2.n_layers, gpt2.n_heads)
    for bad, message in (("3", "two positive integers"), ("0,4", "two positive integers"),
                         ("100000,100000", "heads")):
        with pytest.raises(CircuitbenchError, match=message):
            circuit_shape(bad)
    with pytest.raises(CircuitbenchError, match="both give the shape"):
        circuit_shape("3,5", "gpt2-small")
    with pytest.raises(CircuitbenchError, match="Did you mean 'gpt2-small'"):
        circuit_shape(model="gpt2-smal")


def test_load_circuits_gives_the_shape_only_to_circuits_without_one(tmp_path):
    bare, shaped = _write(tmp_path / "bare.json"), _write(tmp_path / "shaped.json", n_layers=2, n_heads=4)
    circuits = load_circuits([bare, str(shaped)], shape="3,5")
    assert [(c.label, c.shape, c.heads) for c in circuits] == [("bare", (3, 5), [(0, 1)]), ("shaped", (2, 4), [(0, 1)])]
    assert [c.shape for c in load_circuits([bare, shaped])] == [None, (2, 4)]


def test_a_glob_leaves_out_the_edge_scores_of_a_result_it_also_matches(tmp_path):
    """`overlap "results/toy-tasks/*.json"` after an edge-level run: the glob matches ioi.json and its
    edge scores ioi.eap_ig.edges.json; the scores belong to the result, so only the result is a
    circuit. A sidecar whose result is not matched, or a file named on its own, is kept."""
    for name in ("ioi.json", "ioi.eap_ig.edges.json", "seq_months.json", "orphan.eap.edges.json"):
        (tmp_path / name).write_text("{}")
    got = circuit_paths([str(tmp_path / "*.json")])
    assert [p.rsplit("/", 1)[1] for p in got] == ["ioi.json", "orphan.eap.edges.json", "seq_months.json"]
    named = circuit_paths([str(tmp_path / "ioi.json"), str(tmp_path / "ioi.eap_ig.edges.json")])
    assert [p.rsplit("/", 1)[1] for p in named] == ["ioi.json", "ioi.eap_ig.edges.json"]
