"""Graph circuits from the command line: run at edge level, report, export to MIB (EAP-IG graph JSON),
read MIB files back in `overlap` and `report`; graph overlap metrics by hand."""
import json

import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap import compare, edge_jaccard, edge_rbo, edge_weighted_jaccard, node_jaccard

from helpers import cli


@pytest.fixture(scope="module")
def edge_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_edges")
    code, stdout, stderr = _cli(["run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8",
                                 "--methods", "eap,eap_ig", "--circuit-level", "edge", "--out", str(out), "--no-cache",
                                 "-q"])
    assert code == 0, stderr
    return out / "toy-induction-2l" / "induction.json"


def _cli(args):
    import sys

    from circuitbench.cli import main

    argv, sys.argv = sys.argv, ["circuitbench", *args]
    try:
        main()
        return 0, "", ""
    except SystemExit as e:
        return int(e.code or 0), "", ""
    finally:
        sys.argv = argv


def test_run_report_export_and_overlap_of_edge_circuits(edge_result, tmp_path, capsys):
    result = json.loads(edge_result.read_text())
    c = result["circuit"]
    # the task's rule (top_k 5) at edge level; an edge circuit patches each prompt's counterfactual
    assert c["level"] == "edge" and c["rule"]["top_k"] == 5 and c["ablation"] == "counterfactual"
    assert set(result["edge_scores"]) == {"eap", "eap_ig"}
    for info in result["edge_scores"].values():
        assert (edge_result.parent / info["file"]).is_file()
    # report: the edge circuit drawn as a graph
    code, out, err = cli(capsys, "report", str(edge_result), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert (tmp_path / "rep" / "circuit_graph.png").is_file()
    # export to MIB, read it back as a circuit, and draw it alone
    mib = tmp_path / "circuit.json"
    code, out, err = cli(capsys, "circuit", "export", str(edge_result), "--format", "mib", "--out", str(mib))
    assert code == 0, err
    raw = json.loads(mib.read_text())
    assert raw["cfg"]["n_layers"] == 2 and sorted(e for e, v in raw["edges"].items() if v["in_graph"]) == sorted(
        c["edges"])
    circuit = Circuit.load(mib)
    assert circuit.level == "edge" and sorted(circuit.edges) == sorted(c["edges"]) and circuit.edge_scores
    code, out, err = cli(capsys, "report", str(mib), "--out", str(tmp_path / "mibrep"))
    assert code == 0, err
    # the other method's scores exported too; overlap reads MIB files beside RunResults
    other = tmp_path / "eap.json"
    method = "eap" if c["method"] != "eap" else "eap_ig"
    code, out, err = cli(capsys, "circuit", "export", str(edge_result), "--method", method, "--out", str(other))
    assert code == 0, err
    code, out, err = cli(capsys, "overlap", str(edge_result), str(mib), "--json")
    assert code == 0, err
    matrix = json.loads(out)
    assert matrix["edge_jaccard"][0][1] == 1.0 and matrix["edge_weighted_jaccard"][0][1] == pytest.approx(1.0)
    code, out, err = cli(capsys, "circuit", "export", str(edge_result), "--format", "acdc", "--out", str(other))
    assert code == 2 and "mib" in err
    # leaderboards carry MIB's CPR and CMD of every method at the circuit's level
    assert set(c["by_method"]) == {"eap", "eap_ig"} and c["by_method"][c["method"]]["cpr"] == c["cpr"]
    code, out, err = cli(capsys, "leaderboard", "--results", str(edge_result.parent.parent), "--out",
                         str(tmp_path / "lb"))
    assert code == 0, err
    table = (tmp_path / "lb" / "induction.md").read_text()
    assert "CPR eap (edge) ↑" in table and "CMD eap_ig (edge) ↓" in table


def test_graph_overlap_metrics_by_hand():
    a = Circuit(heads=[(0, 0)], mlps=[1], edges=["input->a0.h0<q>", "a0.h0->logits"], level="edge", n_layers=2,
                n_heads=2, edge_scores={"input->a0.h0<q>": 2.0, "a0.h0->logits": 1.0, "m1->logits": 0.0})
    b = Circuit(heads=[(0, 0), (1, 1)], edges=["a0.h0->logits", "a1.h1->logits"], level="edge", n_layers=2,
                n_heads=2, edge_scores={"input->a0.h0<q>": 1.0, "a0.h0->logits": 1.0, "a1.h1->logits": 0.5})
    assert node_jaccard(a, b) == pytest.approx(1 / 3)  # {a0.h0, m1} vs {a0.h0, a1.h1}
    assert edge_jaccard(a, b) == pytest.approx(1 / 3)
    # scaled to max 1: a = (1, .5, 0, 0), b = (1, 1, .5, 0) over (q, logits, a1.h1, m1)
    assert edge_weighted_jaccard(a, b) == pytest.approx((1 + 0.5 + 0) / (1 + 1 + 0.5))
    # tie-aware: a ranking without ties agrees with itself fully, b's two tied 1.0s only as two random orders do
    assert edge_rbo(a, a) == pytest.approx(1.0) and edge_rbo(b, b) < 1.0 and edge_rbo(a, b) < edge_rbo(b, b)
    values = compare(a, b, ["jaccard", "node_jaccard", "edge_jaccard"]).values
    assert values == {"jaccard": pytest.approx(0.5), "node_jaccard": pytest.approx(1 / 3),
                      "edge_jaccard": pytest.approx(1 / 3)}
