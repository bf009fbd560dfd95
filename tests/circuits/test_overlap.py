"""Overlap metrics against hand computation, edge cases, and the `overlap` CLI."""
import itertools
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
    # one model's tasks: the model is named once, in the title; two circuits: a row per metric with its null
    assert "ind_a vs ind_b (toy-induction-2l)" in out and "toy-induction-2l/" not in out
    assert "null mean" in out and "p (vs null)" in out and "shuffles of the second circuit" in out
    assert (tmp_path / "res" / "toy-induction-2l" / "ind_b.json").exists()
    # both circuits are the four layer-1 induction heads: Jaccard 1 off the diagonal
    a = Circuit.load(tmp_path / "res" / "toy-induction-2l" / "ind_a.json")
    b = Circuit.load(tmp_path / "res" / "toy-induction-2l" / "ind_b.json")
    assert a.heads == b.heads == [(1, 0), (1, 1), (1, 2), (1, 3)] and jaccard(a, b) == 1.0


# Tie-aware rankings ------------------------------------------------------------------------------


def _circuit(scores) -> Circuit:
    scores = np.asarray(scores, dtype=float)
    return Circuit(heads=[], n_layers=scores.shape[0], n_heads=scores.shape[1], scores=scores.tolist())


def _rbo_of_lists(ra: list, rb: list, p: float) -> float:
    """Extrapolated RBO of two complete rankings without ties (Webber et al. 2010, eq. 32 for lists of
    one length): (1 − p)/p · Σ_d A_d p^d + A_k p^k, A_d = |S_:d ∩ T_:d| / d."""
    k = len(ra)
    agreements = [len(set(ra[:d]) & set(rb[:d])) / d for d in range(1, k + 1)]
    return (1 - p) / p * sum(a * p**d for d, a in enumerate(agreements, 1)) + agreements[-1] * p**k


def _tie_breaks(scores) -> list[list[int]]:
    """Every ranking of the flat |scores| (largest first) that breaks ties some way."""
    flat = np.abs(np.ravel(scores))
    groups = [[i for i in range(flat.size) if flat[i] == v] for v in sorted(set(flat.tolist()), reverse=True)]
    return [sum(map(list, parts), []) for parts in itertools.product(*map(itertools.permutations, groups))]


def test_rbo_and_top_n_do_not_break_ties_by_head_index():
    # two unrelated maps of a 12×12 model, one non-zero head each: the 143 zeros of each map carry no
    # order, so nothing but chance links the rankings (breaking ties by head index gave RBO 0.74, top-10 0.9)
    a, b = np.zeros((12, 12)), np.zeros((12, 12))
    a[0, 1], b[11, 11] = 1.0, 1.0
    assert rank_biased_overlap(_circuit(a), _circuit(b), 0.9) < 0.1
    assert top_n_overlap(_circuit(a), _circuit(b), 10) < 0.1
    # the same leading head in both (at another magnitude): clearly more agreement than chance
    assert rank_biased_overlap(_circuit(a), _circuit(a / 2), 0.9) > 3 * rank_biased_overlap(_circuit(a), _circuit(b))


def test_identical_maps_without_ties_agree_fully():
    rng = np.random.default_rng(0)
    for shape in ((2, 3), (4, 4), (12, 12)):
        x = _circuit(rng.normal(size=shape))
        assert abs(rank_biased_overlap(x, x, 0.9) - 1.0) < 1e-12 and top_n_overlap(x, x, 10) == 1.0


def test_tie_aware_rbo_and_top_n_by_hand():
    # |S| = 0.9, 0.5, 0.5, 0.1: head 0 at rank 1, heads 1 and 2 share ranks 2–3, head 3 at rank 4
    # |T| = 0.5, 0.9, 0.1, 0.1: head 1 at rank 1, head 0 at rank 2, heads 2 and 3 share ranks 3–4
    s, t = [[0.9, 0.5, -0.5, 0.1]], [[0.5, 0.9, 0.1, -0.1]]
    # a head whose tie group spans ranks i..j lies in the depth-d prefix with probability (d − i + 1)/(j − i + 1)
    # (random order within the tie); X_d = Σ_h P_S(h, d) · P_T(h, d), A_d = X_d / d
    #   d=1: S {0}, T {1}                     X = 0
    #   d=2: S {0, ½·1, ½·2}, T {1, 0}        X = 1 + ½ = 1.5
    #   d=3: S {0, 1, 2}, T {1, 0, ½·2, ½·3}  X = 1 + 1 + ½ = 2.5
    #   d=4: everything                       X = 4
    p, agreement = 0.9, [0, 1.5 / 2, 2.5 / 3, 1.0]
    expected = (1 - p) / p * sum(a * p**d for d, a in enumerate(agreement, 1)) + 1.0 * p**4
    assert abs(rank_biased_overlap(_circuit(s), _circuit(t), p) - expected) < 1e-12
    assert top_n_overlap(_circuit(s), _circuit(t), 1) == 0.0
    assert abs(top_n_overlap(_circuit(s), _circuit(t), 2) - 0.75) < 1e-12
    assert abs(top_n_overlap(_circuit(s), _circuit(t), 3) - 2.5 / 3) < 1e-12
    # ... which is the mean over every way of breaking the ties (2 × 2 pairs of rankings)
    pairs = list(itertools.product(_tie_breaks(s), _tie_breaks(t)))
    assert abs(expected - np.mean([_rbo_of_lists(ra, rb, p) for ra, rb in pairs])) < 1e-12
    # a map with ties against itself: the tied heads agree only as two random orders do (A_2 = 0.75)
    self_pairs = list(itertools.product(_tie_breaks(s), repeat=2))
    self_rbo = np.mean([_rbo_of_lists(ra, rb, p) for ra, rb in self_pairs])
    assert abs(rank_biased_overlap(_circuit(s), _circuit(s), p) - self_rbo) < 1e-12 and self_rbo < 1
    assert abs(top_n_overlap(_circuit(s), _circuit(s), 2) - 0.75) < 1e-12


def test_rbo_and_top_n_without_ties_are_unchanged():
    # maps without ties: the values of the former implementation (rankings broken by head index, which
    # is no choice at all when no two heads tie)
    rng = np.random.default_rng(1)
    for seed in range(20):
        shape = ((2, 3), (3, 4), (6, 8))[seed % 3]
        x, y = rng.normal(size=shape), rng.normal(size=shape)
        ra = [int(i) for i in np.argsort(-np.abs(x).ravel(), kind="stable")]
        rb = [int(i) for i in np.argsort(-np.abs(y).ravel(), kind="stable")]
        for p in (0.5, 0.9, 0.98):
            assert abs(rank_biased_overlap(_circuit(x), _circuit(y), p) - _rbo_of_lists(ra, rb, p)) < 1e-12
        for n in (1, 3, 10, 100):
            old = len(set(ra[:n]) & set(rb[:n])) / min(n, len(ra))
            assert abs(top_n_overlap(_circuit(x), _circuit(y), n) - old) < 1e-12


# Relative depth: only bins that hold a layer of both models --------------------------------------


def _model(scores, heads=()) -> Circuit:
    scores = np.asarray(scores, dtype=float)
    return Circuit(heads=list(heads), n_layers=scores.shape[0], n_heads=scores.shape[1], scores=scores.tolist())


def test_relative_depth_leaves_out_bins_a_model_has_no_layer_in():
    # independent random scores: the 8 bins empty in both used to agree (0 = 0), giving Spearman ≈ 0.58,
    # Kendall ≈ 0.53; on the 2 bins both models occupy they agree only by chance
    values = {"spearman": [], "kendall": [], "rbo": []}
    for seed in range(200):
        rng = np.random.default_rng(seed)
        result = compare(_model(rng.normal(size=(2, 4))), _model(rng.normal(size=(4, 4))), list(values), bins=10)
        for name in values:
            values[name].append(result.values[name])
    assert abs(np.mean(values["spearman"])) < 0.15 and abs(np.mean(values["kendall"])) < 0.15
    # RBO is a similarity, not a correlation: two random orders of 2 bins score 1 (same) or p = 0.9
    # (swapped), so chance is 0.95, whatever the 8 empty bins
    assert set(np.round(values["rbo"], 12)) == {0.9, 1.0} and abs(np.mean(values["rbo"]) - 0.95) < 0.03
    # 10 bins: a 2-layer model has layers in bins 0 and 5, a 4-layer model in bins 0, 2, 5 and 7
    assert to_relative_depth(_model(np.ones((2, 4))), 10).occupied == [0, 5]
    assert to_relative_depth(_model(np.ones((4, 4))), 10).occupied == [0, 2, 5, 7]


def test_relative_depth_keeps_structure_both_models_share():
    # a planted shared structure: the layer starting at half depth (bin 5) stands out in both models
    for seed in range(50):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(size=(2, 4)), rng.normal(size=(4, 4))
        a[1] += 10
        b[2] += 10
        result = compare(_model(a), _model(b), ["spearman", "kendall", "rbo", "top_n_overlap"], bins=10, top_n=1)
        assert all(abs(v - 1.0) < 1e-12 for v in result.values.values()), result.values


def test_relative_depth_score_metrics_by_hand():
    # bins (of 10) with a layer: shallow 0, 5; deep 0, 2, 5, 7. Mean |score| per bin:
    # shallow 0 → 1, 5 → 3; deep 0 → 2, 2 → 9, 5 → 1, 7 → 5. Compared: bins 0 and 5 only.
    shallow = _model([[1, -1], [3, 3]])
    deep = _model([[2, 2], [9, -9], [1, 1], [5, 5]])
    result = compare(shallow, deep, ["spearman", "kendall", "weighted_jaccard", "rbo"], bins=10)
    # shallow (1, 3) / 3 = (1/3, 1), deep (2, 1) / 2 = (1, 1/2): Σ min / Σ max = (1/3 + 1/2) / (1 + 1)
    assert abs(result.values["weighted_jaccard"] - (1 / 3 + 1 / 2) / 2) < 1e-12
    assert abs(result.values["spearman"] + 1.0) < 1e-12 and result.values["kendall"] == -1.0
    assert abs(result.values["rbo"] - 0.9) < 1e-12  # two items swapped: (1 − p)/p · p² + p²


def test_relative_depth_hypergeometric_draws_from_the_bins_each_model_has():
    # a 2-layer circuit on both its layers (bins 0, 5) and a 4-layer one on layers 0 and 2 (bins 0, 5 of
    # 0, 2, 5, 7): the shallow circuit holds every bin it can; the deep one picks 2 of its 4 bins, both
    # shared with probability 1 / C(4, 2) (with 10 bins as the population it was 1 / C(10, 2))
    shallow = _model(np.ones((2, 4)), [(0, 0), (1, 0)])
    deep = _model(np.ones((4, 4)), [(0, 1), (2, 3)])
    assert abs(compare(shallow, deep, ["hypergeometric_p"], bins=10).values["hypergeometric_p"] - 1 / 6) < 1e-12
    # one head in layer 1 (bin 5) against layers 2 and 3 (bins 5, 7): the shallow bin is 0 or 5, and
    # the deep circuit holds a given bin with probability C(3, 1) / C(4, 2) = 1/2
    shallow = _model(np.ones((2, 4)), [(1, 2)])
    deep = _model(np.ones((4, 4)), [(2, 0), (3, 0)])
    result = compare(shallow, deep, ["hypergeometric_p", "jaccard"], bins=10)
    assert abs(result.values["hypergeometric_p"] - 1 / 2) < 1e-12
    # set metrics count only bins a circuit holds: the deep head at 3/4 depth is an unshared head
    assert result.values["jaccard"] == 0.5


# ---- typed inputs (issue 21) --------------------------------------------------------------------

@pytest.mark.parametrize("returned, message", [
    (lambda a, b: "high", "returned a str ('high'), not a number"),
    (lambda a, b: float("nan"), "returned nan for 'A' and 'B'"),
    (lambda a, b: np.ones((4, 3)), "returned an array of shape [4, 3], not a number"),
    (lambda a, b: 1 / 0, "raised ZeroDivisionError at"),
])
def test_a_plugin_metric_returns_one_finite_number_or_fails_naming_it(monkeypatch, returned, message):
    from circuitbench.circuits.overlap import OVERLAP_METRICS

    monkeypatch.setitem(OVERLAP_METRICS._items, "my_metric", returned)
    with pytest.raises(CircuitbenchError, match=r"Overlap metric 'my_metric' \(a plugin\)") as err:
        compare(A, B, ["my_metric"], permutations=0)
    assert message in str(err.value)


def test_a_plugin_metric_of_numpy_scalars_is_kept_with_its_null(monkeypatch):
    from circuitbench.circuits.overlap import OVERLAP_METRICS

    monkeypatch.setitem(OVERLAP_METRICS._items, "my_count", lambda a, b: np.float32(len(set(a.heads) & set(b.heads))))
    out = compare(A, B, ["my_count"], permutations=20)
    assert out.values == {"my_count": 2.0} and out.p_value["my_count"] is not None


def test_the_permutation_null_is_bounded_before_it_is_drawn():
    big = Circuit(heads=[(0, 0)], n_layers=512, n_heads=128, label="big")  # 65,536 heads: the most allowed
    with pytest.raises(CircuitbenchError, match=r"--permutations 2000: 2,000 shuffles of the 65,536 heads of 'big' "
                                                r"would need about 3\.1 GB"):
        compare(big, big, ["jaccard"], permutations=2000)


def test_circuit_files_with_shapes_beyond_any_model_are_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"heads": [[0, 0]], "n_layers": 200000, "n_heads": 12}))
    with pytest.raises(CircuitbenchError, match=r"huge.json: n_layers 200000 × n_heads 12 = 2,400,000 heads \("
                                                r"overlap's permutation null alone would need about 11\.5 GB\)"):
        Circuit.load(path)
    for shape, field in (({"n_layers": "2", "n_heads": 4}, "n_layers: '2'"), ({"n_layers": 2, "n_heads": 0},
                                                                               "n_heads: 0"),
                         ({"model": {"n_layers": 2, "n_heads": True}}, "model.n_heads: True")):
        path.write_text(json.dumps({"heads": [[0, 0]], **shape}))
        with pytest.raises(CircuitbenchError, match=f"{field} is not a positive whole number"):
            Circuit.load(path)


def test_non_finite_scores_in_a_circuit_file_are_refused(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"heads": [[0, 0]], "n_layers": 1, "n_heads": 2, "scores": [[NaN, 1.0]]}')
    with pytest.raises(CircuitbenchError, match="nan.json: scores: holds nan, not a finite number"):
        Circuit.load(path)


def test_a_literal_path_with_brackets_is_read_as_given_not_as_a_glob(tmp_path, capsys):
    literal, lookalike, other = tmp_path / "run[1].json", tmp_path / "run1.json", tmp_path / "other.json"
    literal.write_text(json.dumps({"heads": [[0, 1]], "n_layers": 2, "n_heads": 2}))
    lookalike.write_text(json.dumps({"heads": [[1, 1]], "n_layers": 2, "n_heads": 2}))  # what the glob matches
    other.write_text(json.dumps({"heads": [[0, 1]], "n_layers": 2, "n_heads": 2}))
    code, out, err = cli(capsys, "overlap", str(literal), str(other), "--metric", "jaccard", "--json",
                         "--permutations", "0")
    assert code == 0, err
    assert json.loads(out)["jaccard"][0][1] == 1.0  # run[1].json itself, not run1.json (jaccard 0)
    lookalike.unlink()
    code, out, err = cli(capsys, "overlap", str(literal), str(other), "--metric", "jaccard", "--json",
                         "--permutations", "0")
    assert code == 0, err
    code, out, err = cli(capsys, "overlap", str(tmp_path / "run[12].json"), str(other), "--permutations", "0")
    assert code == 2 and "no file matches" in err  # not a file: still a glob (matching nothing here)
