"""Overlap metrics against hand computation, edge cases, and the `overlap` CLI."""
import itertools
import json

import numpy as np
import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap import OverlapMatrix, compare, overlap_matrix, to_relative_depth
from circuitbench.circuits.overlap_metrics import (
    OVERLAP_METRICS,
    OverlapSettings,
    directional,
    hypergeometric_p,
    jaccard,
    kendall,
    overlap_coefficient,
    plugin_metric,
    rank_biased_overlap,
    spearman,
    top_n_overlap,
    weighted_jaccard,
)
from circuitbench.errors import CircuitbenchError
from circuitbench.results.store import load_circuit

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
        compare(A, other, ["jaccard"], OverlapSettings(alignment="head"))
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
    result = compare(A, deep, ["jaccard"], OverlapSettings(bins=2))
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
    assert m.values["jaccard"][0][1] == m.values["jaccard"][1][0] == 0.4 and m.values["jaccard"][2][2] == 1.0

    code, stdout, _ = cli(capsys, "overlap", *paths, "--metric", "jaccard", "--json", "--plot", str(tmp_path / "o.png"))
    assert code == 0
    out = json.loads(stdout)
    assert out["labels"] == ["A", "B", "E"] and out["jaccard"][0][1] == 0.4
    # the --json layout users' scripts read: the metrics share the top level with the other keys
    assert list(out) == ["labels", "alignment", "jaccard", "null", "null_mean", "p_value", "skipped"]
    assert out == json.loads(json.dumps(overlap_matrix([A, B, EMPTY], ["jaccard"]).to_json()))
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
    a = load_circuit(tmp_path / "res" / "toy-induction-2l" / "ind_a.json")
    b = load_circuit(tmp_path / "res" / "toy-induction-2l" / "ind_b.json")
    assert a.heads == b.heads == [(1, 0), (1, 1), (1, 2), (1, 3)] and jaccard(a, b) == 1.0
    # without --metric: the same defaults as `overlap` (the units are resumed, not rerun)
    code, out, _ = cli(capsys, "compare", "--model", "toy-induction-2l", "--tasks", "ind_a,ind_b", "--out",
                       str(tmp_path / "res"), "--include-path", str(tasks), "-q", "--permutations", "20")
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") == 5]
    assert code == 0 and rows == ["jaccard", "overlap_coefficient", "hypergeometric_p", "spearman"]


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
        result = compare(_model(rng.normal(size=(2, 4))), _model(rng.normal(size=(4, 4))), list(values),
                         OverlapSettings(bins=10))
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
        result = compare(_model(a), _model(b), ["spearman", "kendall", "rbo", "top_n_overlap"],
                         OverlapSettings(bins=10, top_n=1))
        assert all(abs(v - 1.0) < 1e-12 for v in result.values.values()), result.values


def test_relative_depth_score_metrics_by_hand():
    # bins (of 10) with a layer: shallow 0, 5; deep 0, 2, 5, 7. Mean |score| per bin:
    # shallow 0 → 1, 5 → 3; deep 0 → 2, 2 → 9, 5 → 1, 7 → 5. Compared: bins 0 and 5 only.
    shallow = _model([[1, -1], [3, 3]])
    deep = _model([[2, 2], [9, -9], [1, 1], [5, 5]])
    result = compare(shallow, deep, ["spearman", "kendall", "weighted_jaccard", "rbo"], OverlapSettings(bins=10))
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
    assert abs(compare(shallow, deep, ["hypergeometric_p"], OverlapSettings(bins=10)).values["hypergeometric_p"]
               - 1 / 6) < 1e-12
    # one head in layer 1 (bin 5) against layers 2 and 3 (bins 5, 7): the shallow bin is 0 or 5, and
    # the deep circuit holds a given bin with probability C(3, 1) / C(4, 2) = 1/2
    shallow = _model(np.ones((2, 4)), [(1, 2)])
    deep = _model(np.ones((4, 4)), [(2, 0), (3, 0)])
    result = compare(shallow, deep, ["hypergeometric_p", "jaccard"], OverlapSettings(bins=10))
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
    monkeypatch.setitem(OVERLAP_METRICS._items, "my_metric", plugin_metric("my_metric", returned))
    with pytest.raises(CircuitbenchError, match=r"Overlap metric 'my_metric' \(a plugin\)") as err:
        compare(A, B, ["my_metric"], OverlapSettings(permutations=0))
    assert message in str(err.value)


def test_a_plugin_metric_of_numpy_scalars_is_kept_with_its_null(monkeypatch):
    monkeypatch.setitem(OVERLAP_METRICS._items, "my_count",
                        plugin_metric("my_count", lambda a, b: np.float32(len(set(a.heads) & set(b.heads)))))
    out = compare(A, B, ["my_count"], OverlapSettings(permutations=20))
    assert out.values == {"my_count": 2.0} and out.p_value["my_count"] is not None


def test_the_permutation_null_is_bounded_before_it_is_drawn():
    big = Circuit(heads=[(0, 0)], n_layers=512, n_heads=128, label="big")  # 65,536 heads: the most allowed
    with pytest.raises(CircuitbenchError, match=r"--permutations 2000: 2,000 shuffles of the 65,536 heads of 'big' "
                                                r"would need about 3\.1 GB"):
        compare(big, big, ["jaccard"], OverlapSettings(permutations=2000))


def test_circuit_files_with_shapes_beyond_any_model_are_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"heads": [[0, 0]], "n_layers": 200000, "n_heads": 12}))
    with pytest.raises(CircuitbenchError, match=r"huge.json: n_layers 200000 × n_heads 12 = 2,400,000 heads \("
                                                r"overlap's permutation null alone would need about 11\.5 GB\)"):
        Circuit.load(path)
    for shape, field in (({"n_layers": "2", "n_heads": 4}, "n_layers: '2'"), ({"n_layers": 2, "n_heads": 0},
                                                                               "n_heads: 0"),
                         ({"n_layers": 2, "n_heads": True}, "n_heads: True")):
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


# ---- metrics as objects, settings, the typed matrix (issue 22) ------------------------------------

def _random_circuit(rng, shape, label, ties=False) -> Circuit:
    scores = rng.normal(size=shape)
    if ties:  # zeros and a repeated value: tie spans in both rankings
        scores[rng.random(shape) < 0.4] = 0.0
        scores[0] = 0.5
    cells = rng.choice(scores.size, size=max(1, scores.size // 3), replace=False)
    heads = sorted((int(c) // shape[1], int(c) % shape[1]) for c in cells)
    return Circuit(heads=heads, n_layers=shape[0], n_heads=shape[1], scores=scores.tolist(), label=label)


BATCHED = ["jaccard", "overlap_coefficient", "directional", "hypergeometric_p", "weighted_jaccard", "spearman",
           "kendall", "top_n_overlap", "rbo"]


@pytest.mark.parametrize("name", BATCHED)
def test_the_batched_null_equals_the_generic_one(name):
    from circuitbench.circuits.overlap import null_orders
    from circuitbench.circuits.overlap_metrics import OverlapMetric

    metric = OVERLAP_METRICS.get(name).configured(OverlapSettings(top_n=3, rbo_p=0.8))
    assert type(metric).null_values is not OverlapMetric.null_values  # a real batched form, not the generic one
    rng = np.random.default_rng(11)
    pairs = [(_random_circuit(rng, (3, 4), "a"), _random_circuit(rng, (3, 4), "b")),
             (_random_circuit(rng, (4, 5), "a", ties=True), _random_circuit(rng, (4, 5), "b", ties=True)),
             # relative depth: only the bins both models occupy are compared and shuffled
             (to_relative_depth(_random_circuit(rng, (2, 4), "a"), 10),
              to_relative_depth(_random_circuit(rng, (6, 3), "b", ties=True), 10))]
    for x, y in pairs:
        for kind in ("within_layer", "all"):
            orders = null_orders(y, 40, np.random.default_rng(5), kind)
            batched = metric.null_values(x, y, orders)
            generic = OverlapMetric.null_values(metric, x, y, orders)  # value() on each shuffled circuit
            assert batched.shape == generic.shape == (40,)
            np.testing.assert_allclose(batched, generic, rtol=0, atol=1e-12, equal_nan=True)


def test_metrics_take_their_parameters_from_the_settings_not_from_their_names():
    rng = np.random.default_rng(2)
    a, b = _random_circuit(rng, (4, 4), "a", ties=True), _random_circuit(rng, (4, 4), "b")
    settings = OverlapSettings(top_n=3, rbo_p=0.5)
    assert OVERLAP_METRICS.get("top_n_overlap").configured(settings).value(a, b) == top_n_overlap(a, b, 3)
    assert OVERLAP_METRICS.get("rbo").configured(settings).value(a, b) == rank_biased_overlap(a, b, 0.5)
    assert OVERLAP_METRICS.get("jaccard").configured(settings) is OVERLAP_METRICS.get("jaccard")
    values = compare(a, b, ["top_n_overlap", "rbo"], settings).values
    assert values == {"top_n_overlap": top_n_overlap(a, b, 3), "rbo": rank_biased_overlap(a, b, 0.5)}
    assert not OVERLAP_METRICS.get("hypergeometric_p").higher_is_better and OVERLAP_METRICS.get("rbo").higher_is_better
    assert OVERLAP_METRICS.get("edge_rbo").compares_graph and not OVERLAP_METRICS.get("spearman").compares_graph


@pytest.mark.parametrize("field, value, message", [
    ("bins", 0, "relative depth needs at least 1 bin"), ("top_n", 0, "compare at least the top 1 head"),
    ("rbo_p", 1.0, "strictly between 0 and 1"), ("permutations", -1, "give 0 (no null) or more"),
    ("null", "uniform", "'within_layer' or 'all'"), ("alignment", "depth", "'auto', 'head' or 'relative_depth'"),
    ("top_m", 3, "Extra inputs are not permitted")])
def test_settings_are_checked_once_naming_the_field(field, value, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        OverlapSettings(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,) and message in str(err.value)


def test_the_typed_matrix_holds_the_values_and_nulls_computed_independently():
    from circuitbench.circuits.overlap import null_orders
    from circuitbench.circuits.overlap_metrics import shuffled

    rng = np.random.default_rng(4)
    circuits = [_random_circuit(rng, (3, 4), label, ties=label == "c") for label in "abc"]
    settings = OverlapSettings(permutations=30, seed=3, top_n=2)
    m = overlap_matrix(circuits, ["jaccard", "hypergeometric_p", "top_n_overlap"], settings)
    assert isinstance(m, OverlapMatrix) and m.settings == settings
    assert m.labels == ["a", "b", "c"] and m.metrics == ["jaccard", "hypergeometric_p", "top_n_overlap"]
    assert m.skipped == {} and m.alignment == [["head"] * 3] * 3
    assert m.null == "30 shuffles of the second circuit's head scores within each layer"
    by_hand = {"jaccard": lambda x, y: len(set(x.heads) & set(y.heads)) / len(set(x.heads) | set(y.heads)),
               "hypergeometric_p": hypergeometric_p, "top_n_overlap": lambda x, y: top_n_overlap(x, y, 2)}
    for name, fn in by_hand.items():
        for i, a in enumerate(circuits):
            for j, b in enumerate(circuits):
                assert m.values[name][i][j] == pytest.approx(fn(a, b), abs=1e-12)
                assert m.value(name, a.label, b.label) == m.values[name][i][j] == m.array(name)[i, j]
                if i == j:
                    assert m.null_mean[name][i][j] is None and m.p_value[name][i][j] is None
                    continue
                # the null by a naive loop: the metric against each within-layer shuffle of b, seeded per pair
                orders = null_orders(b, 30, np.random.default_rng(3), "within_layer")
                null = np.array([fn(a, shuffled(b, order)) for order in orders])
                observed = fn(a, b)
                tol = 1e-9 * max(1.0, abs(observed))
                extreme = null <= observed + tol if name == "hypergeometric_p" else null >= observed - tol
                assert m.null_mean[name][i][j] == pytest.approx(null.mean(), abs=1e-12)
                assert m.p_value[name][i][j] == pytest.approx((1 + extreme.sum()) / 31, abs=1e-12)
    frame = m.frame("jaccard", "p_value")
    assert list(frame.index) == m.labels and np.isnan(frame.loc["a", "a"]) and frame.loc["a", "b"] == m.p_value[
        "jaccard"][0][1]
    with pytest.raises(CircuitbenchError, match="'spearman' is not in this matrix"):
        m.array("spearman")


def test_defaults_and_labels_are_decided_by_the_library():
    bare = [Circuit(heads=[(9, 1), (10, 7)], label="x"), Circuit(heads=[(9, 1)], label="x"),
            Circuit(heads=[(4, 4)], label="y")]
    m = overlap_matrix(bare, settings=OverlapSettings(permutations=0))
    # no shape, no scores: the default metrics that need them are skipped with the reason, not an error
    assert m.metrics == ["jaccard", "overlap_coefficient"] and set(m.skipped) == {"hypergeometric_p", "spearman"}
    assert "no model shape" in m.skipped["hypergeometric_p"] and "no head scores" in m.skipped["spearman"]
    assert m.labels == ["x[0]", "x[1]", "y"]  # equal labels told apart
    m = overlap_matrix(bare, ["jaccard"], OverlapSettings(permutations=0), sources=["runs/1/t.json", "runs/2/t.json",
                                                                                     "y.json"])
    assert m.labels == ["runs/1/t", "runs/2/t", "y"] and m.values["jaccard"][0][1] == 0.5
    with pytest.raises(CircuitbenchError, match="no model shape"):  # a metric asked for by name must be computed
        overlap_matrix(bare, ["hypergeometric_p"])
    graph = Circuit(heads=[(0, 0)], mlps=[1], edges=["a0.h0->logits"], level="edge", n_layers=2, n_heads=2,
                    edge_scores={"a0.h0->logits": 1.0})
    m = overlap_matrix([graph, graph.model_copy(update={"label": "g2"})], settings=OverlapSettings(permutations=5))
    assert m.metrics == ["jaccard", "overlap_coefficient", "hypergeometric_p", "node_jaccard", "edge_jaccard",
                         "edge_weighted_jaccard", "edge_rbo"]
    assert set(m.skipped) == {"spearman", "node_rbo"}
    assert m.p_value["edge_jaccard"][0][1] is None and m.p_value["jaccard"][0][1] is not None  # no null by name


def test_a_plugin_metric_registers_as_the_built_ins_do(monkeypatch):
    from circuitbench.circuits.overlap_metrics import PluginMetric
    from circuitbench.plugins import register_overlap_metric
    from circuitbench.tables.listings import listing

    OVERLAP_METRICS.names()  # built-ins and entry points loaded before the registry is copied
    monkeypatch.setattr(OVERLAP_METRICS, "_items", dict(OVERLAP_METRICS._items))
    monkeypatch.setattr(OVERLAP_METRICS, "_origins", dict(OVERLAP_METRICS._origins))

    def shared_heads(a, b):
        """Heads both circuits hold."""
        return len(set(a.heads) & set(b.heads))

    metric = register_overlap_metric("shared_heads", shared_heads)
    assert isinstance(metric, PluginMetric) and OVERLAP_METRICS.get("shared_heads") is metric
    assert metric.description == "Heads both circuits hold." and metric.higher_is_better
    assert OVERLAP_METRICS.plugin_code("shared_heads") is not None  # known as a plugin's, with its code's hash
    assert ("shared_heads", "Heads both circuits hold.") in listing("overlap-metrics").itertuples(index=False)
    # a metric where smaller means more overlap: its p-value counts the other tail, so the same as jaccard's
    register_overlap_metric("minus_jaccard", lambda a, b: -jaccard(a, b), higher_is_better=False)
    rng = np.random.default_rng(8)
    circuits = [_random_circuit(rng, (3, 4), label) for label in "ab"]
    m = overlap_matrix(circuits, ["jaccard", "minus_jaccard", "shared_heads"], OverlapSettings(permutations=25))
    assert m.p_value["minus_jaccard"] == m.p_value["jaccard"]
    assert m.null_mean["minus_jaccard"][0][1] == pytest.approx(-m.null_mean["jaccard"][0][1])
    assert m.values["shared_heads"][0][1] == len(set(circuits[0].heads) & set(circuits[1].heads))


# ---- the permutation null beside every figure (issue 16) ------------------------------------------

def test_permutation_null_matches_the_exact_within_layer_distribution():
    """Two circuits of 4 heads, both in layer 0 of a 4 × 8 model, sharing 3. Uniform over 32 heads
    that is rare (hypergeometric p = 113/35960); shuffled within layer 0 the shared count K is
    hypergeometric(8, 4, 4), so the null's mean Jaccard is E[K / (8 − K)] and p = P(K ≥ 3) = 17/70."""
    from math import comb

    def circuit(heads):
        scores = np.zeros((4, 8))
        for i, (l, h) in enumerate(heads):
            scores[l, h] = 1.0 + i
        return Circuit(heads=heads, n_layers=4, n_heads=8, scores=scores.tolist(), label="x")

    a, b = circuit([(0, 0), (0, 1), (0, 2), (0, 3)]), circuit([(0, 1), (0, 2), (0, 3), (0, 4)])
    out = compare(a, b, ["jaccard", "hypergeometric_p"], OverlapSettings(permutations=4000, seed=1))
    pk = {k: comb(4, k) * comb(4, 4 - k) / comb(8, 4) for k in range(5)}
    assert out.values["hypergeometric_p"] == pytest.approx(113 / 35960)
    assert out.values["jaccard"] == pytest.approx(3 / 5)
    assert out.null_mean["jaccard"] == pytest.approx(sum(p * k / (8 - k) for k, p in pk.items()), abs=0.01)
    assert out.p_value["jaccard"] == pytest.approx(17 / 70, abs=0.02)
    assert out.p_value["hypergeometric_p"] == pytest.approx(17 / 70, abs=0.02)  # smaller p: more overlap
    everywhere = compare(a, b, ["jaccard"], OverlapSettings(permutations=4000, seed=1, null="all"))
    assert everywhere.p_value["jaccard"] < 0.01  # the uniform null calls it "shared"; within layers it is not


def test_overlap_output_shows_the_null_beside_every_figure(capsys, tmp_path):
    import re

    for name, heads in (("a", [[0, 0], [0, 1]]), ("b", [[0, 1], [0, 2]])):
        scores = [[0.0] * 4 for _ in range(2)]
        for i, (l, h) in enumerate(heads):
            scores[l][h] = 1.0 + i
        (tmp_path / f"{name}.json").write_text(json.dumps({"heads": heads, "scores": scores}))
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    code, out, err = cli(capsys, "overlap", *files, "--metric", "jaccard,spearman", "--shape", "2,4")
    assert code == 0, err
    assert "null mean" in out and "p (vs null)" in out and "200 shuffles" in out
    rows = [line for line in out.splitlines() if line.lstrip("│ ").startswith(("jaccard", "spearman"))]
    assert len(rows) == 2 and all(len(re.findall(r"-?\d\.\d+", row)) == 3 for row in rows)
    matrix = overlap_matrix([load_circuit(tmp_path / "a.json").with_shape(2, 4),
                             load_circuit(tmp_path / "b.json").with_shape(2, 4)], None,
                            OverlapSettings(permutations=50), sources=files)
    assert isinstance(matrix, OverlapMatrix)
    assert matrix.p_value["jaccard"][0][1] is not None and matrix.null_mean["jaccard"][1][0] is not None
    assert matrix.p_value["jaccard"][0][0] is None  # no null on the diagonal
