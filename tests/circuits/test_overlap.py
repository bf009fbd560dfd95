"""Overlap metrics against hand computation, edge cases, and the `overlap` CLI."""
import json

import numpy as np
import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap import (
    compare,
    directional,
    hypergeometric_p,
    jaccard,
    kendall,
    overlap_coefficient,
    overlap_matrix,
    rank_biased_overlap,
    spearman,
    to_relative_depth,
    top_n_overlap,
    weighted_jaccard,
)
from circuitbench.errors import CircuitbenchError

from helpers import cli  # the in-process CLI runner

A = Circuit(heads=[(0, 0), (0, 1), (1, 2)], n_layers=2, n_heads=3, label="A",
            scores=[[0.9, 0.5, 0.0], [0.1, 0.2, 0.7]])
B = Circuit(heads=[(0, 1), (1, 2), (1, 0), (1, 1)], n_layers=2, n_heads=3, label="B",
            scores=[[0.0, 0.6, 0.1], [0.3, 0.4, 0.8]])
EMPTY = Circuit(heads=[], n_layers=2, n_heads=3, label="E")


def test_set_metrics_by_hand():
    # A ∩ B = {(0,1), (1,2)}: 2; |A| = 3, |B| = 4, |A ∪ B| = 5
    assert jaccard(A, B) == 2 / 5
    assert overlap_coefficient(A, B) == 2 / 3
    assert directional(A, B) == 2 / 3 and directional(B, A) == 2 / 4
    # P(X >= 2), X ~ Hypergeometric(N=6, K=3, n=4): [C(3,2)C(3,2) + C(3,3)C(3,1)] / C(6,4) = (9 + 3) / 15
    assert abs(hypergeometric_p(A, B) - 12 / 15) < 1e-12


def test_edge_cases():
    assert jaccard(A, A) == 1 and overlap_coefficient(A, A) == 1 and hypergeometric_p(A, A) <= hypergeometric_p(A, B)
    assert jaccard(EMPTY, EMPTY) == 1 and jaccard(A, EMPTY) == 0 and overlap_coefficient(A, EMPTY) == 0
    disjoint = Circuit(heads=[(1, 0), (1, 1)], n_layers=2, n_heads=3)
    assert jaccard(A, disjoint) == 0 and hypergeometric_p(A, disjoint) == 1.0  # P(X >= 0) = 1
    other = Circuit(heads=[(0, 0)], n_layers=4, n_heads=3, label="deep")
    with pytest.raises(CircuitbenchError, match="differ in shape"):
        compare(A, other, ["jaccard"], alignment="head")
    with pytest.raises(CircuitbenchError, match="no model shape"):
        hypergeometric_p(Circuit(heads=[(0, 0)]), Circuit(heads=[(0, 0)]))
    with pytest.raises(CircuitbenchError, match="Did you mean 'jaccard'"):
        compare(A, B, ["jacard"])


def test_score_metrics_by_hand():
    a, b = np.ravel(A.scores), np.ravel(B.scores)
    # weighted Jaccard on |scores| scaled to max 1
    x, y = a / 0.9, b / 0.8
    assert abs(weighted_jaccard(A, B) - np.minimum(x, y).sum() / np.maximum(x, y).sum()) < 1e-12
    # Spearman: Pearson correlation of the ranks
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert abs(spearman(A, B) - np.corrcoef(ra, rb)[0, 1]) < 1e-12
    # Kendall tau (no ties here): (concordant − discordant) / C(6, 2)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    c = sum(np.sign(a[j] - a[i]) * np.sign(b[j] - b[i]) for i, j in pairs)
    assert abs(kendall(A, B) - c / 15) < 1e-12
    # top-2 by |score|: A -> (0,0), (1,2); B -> (1,2), (0,1): one in common
    assert top_n_overlap(A, B, 2) == 0.5
    assert abs(rank_biased_overlap(A, A, 0.9) - 1.0) < 1e-12
    # RBO by hand at depth 1..6 (rankings A: 00 12 01 11 10 02, B: 12 01 11 10 02 00)
    ra_ = [(0, 0), (1, 2), (0, 1), (1, 1), (1, 0), (0, 2)]
    rb_ = [(1, 2), (0, 1), (1, 1), (1, 0), (0, 2), (0, 0)]
    p, total = 0.9, 0.0
    for d in range(1, 7):
        total += len(set(ra_[:d]) & set(rb_[:d])) / d * p**d
    expected = (1 - p) / p * total + 1.0 * p**6
    assert abs(rank_biased_overlap(A, B, p) - expected) < 1e-12


def test_relative_depth_alignment_for_different_models():
    deep = Circuit(heads=[(0, 0), (3, 2)], n_layers=4, n_heads=3, label="deep")
    result = compare(A, deep, ["jaccard"], bins=2)
    assert result.alignment == "relative_depth(bins=2)"
    # A -> bins {0 (layer 0), 1 (layer 1)}; deep -> bins {0 (layer 0), 1 (layer 3)}: identical
    assert result.values["jaccard"] == 1.0
    assert to_relative_depth(deep, 2).heads == [(0, 0), (1, 0)]


def test_matrix_and_cli(tmp_path, capsys):
    paths = []
    for c in (A, B, EMPTY):
        p = tmp_path / f"{c.label}.json"
        p.write_text(json.dumps({"heads": [list(h) for h in c.heads], "n_layers": 2, "n_heads": 3}))
        paths.append(str(p))
    m = overlap_matrix([A, B, EMPTY], ["jaccard"])
    assert m["jaccard"][0][1] == m["jaccard"][1][0] == 0.4 and m["jaccard"][2][2] == 1.0

    code, stdout, _ = cli(capsys, "overlap", *paths, "--metric", "jaccard", "--json", "--plot", str(tmp_path / "o.png"))
    assert code == 0
    out = json.loads(stdout)
    assert out["labels"] == ["A", "B", "E"] and out["jaccard"][0][1] == 0.4
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_runs_missing_units_then_prints_matrix(tmp_path, capsys):
    import yaml

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, symbols in (("ind_a", 30), ("ind_b", 40)):
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "generator": {"name": "induction", "n_symbols": symbols}, "n_prompts": 8,
            "metrics": ["induction_loss"], "methods": ["induction"], "circuit": {"top_k": 4}}))
    code, out, _ = cli(capsys, "compare", "--model", "toy-induction-2l", "--tasks", "ind_a,ind_b", "--metric",
                       "jaccard",
                       "--out", str(tmp_path / "res"), "--include-path", str(tasks), "-q")
    assert code == 0
    # one model's tasks: the model is named once, in the title; columns are the tasks
    assert "(toy-induction-2l)" in out and "toy-induction-2l/" not in out and "│ ind_a │" in out and "│ ind_b │" in out
    assert (tmp_path / "res" / "toy-induction-2l" / "ind_b.json").exists()
    # both circuits are the four layer-1 induction heads: Jaccard 1 off the diagonal
    a = Circuit.load(tmp_path / "res" / "toy-induction-2l" / "ind_a.json")
    b = Circuit.load(tmp_path / "res" / "toy-induction-2l" / "ind_b.json")
    assert a.heads == b.heads == [(1, 0), (1, 1), (1, 2), (1, 3)] and jaccard(a, b) == 1.0
