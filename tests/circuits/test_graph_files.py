"""Graph circuits from the command line: run at edge level, report, export to MIB (EAP-IG graph JSON),
read MIB files back in `overlap` and `report`; graph overlap metrics by hand."""
import json

import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.overlap import compare
from circuitbench.circuits.overlap_metrics import edge_jaccard, edge_rbo, edge_weighted_jaccard, node_jaccard
from circuitbench.errors import CircuitbenchError

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
    assert c["level"] == "edge" and c["rule"]["top_k"] == 5 and c["faithfulness"]["ablation"] == "counterfactual"
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
    meaning = raw["circuitbench"]["scores"]  # the file says what its scores mean
    assert meaning["method"] == c["method"] and meaning["signed"] and meaning["higher_is_more_important"]
    assert meaning["ablation"] == "counterfactual" and "|m_clean − m_corrupted|" in meaning["units"]
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
    f = c["faithfulness"]
    assert set(f["by_method"]) == {"eap", "eap_ig"} and f["by_method"][c["method"]]["cpr"] == f["cpr"]
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


# ---- typed graph files (issue 21) ---------------------------------------------------------------

def _graph(**cfg):
    from circuitbench.circuits.graph_files import graph_json
    from circuitbench.models.graph import ComponentGraph

    g = graph_json(ComponentGraph(2, 2), {"input->a0.h0<q>": 0.5}, ["input->a0.h0<q>", "a0.h0->logits"])
    g["cfg"].update(cfg)
    return g


EDGE = "input->a0.h0<q>"


@pytest.mark.parametrize("change, field", [
    (lambda g: g.update(edges=list(g["edges"])), "edges: must be a JSON object {…}, not a list"),
    (lambda g: g.update(nodes=list(g["nodes"])), "nodes: must be a JSON object {…}, not a list"),
    (lambda g: g.pop("edges"), "edges: missing"),
    (lambda g: g.pop("cfg"), "cfg: missing"),
    (lambda g: g.update(cfg=[2, 2]), "cfg: must be a JSON object {…}, not a list"),
    (lambda g: g["edges"][EDGE].update(score="0.5"), f"edges['{EDGE}'].score: Input should be a valid number"),
    (lambda g: g["edges"][EDGE].update(score=float("inf")), f"edges['{EDGE}'].score: Input should be a finite number"),
    (lambda g: g["edges"][EDGE].pop("score"), f"edges['{EDGE}'].score: missing"),
    (lambda g: g["edges"][EDGE].update(in_graph=1), f"edges['{EDGE}'].in_graph: Input should be a valid boolean"),
    (lambda g: g["edges"][EDGE].update(weight=1), f"edges['{EDGE}'].weight: unknown field"),
    (lambda g: g["nodes"]["a0.h0"].update(score=float("-inf")), "nodes['a0.h0'].score: Input should be a finite"),
    (lambda g: g["nodes"].update({"a0.h9": True}), "nodes['a0.h9']: not a node of this graph (2 layers × 2 heads"),
    (lambda g: g["edges"].update({"a1.h0->a0.h0<q>": {"score": 0.0, "in_graph": False}}),
     "edges['a1.h0->a0.h0<q>']: 'a1.h0->a0.h0<q>' is no edge of this model"),
    (lambda g: g["cfg"].update(n_layers=2.0), "cfg.n_layers: Input should be a valid integer"),
    (lambda g: g["cfg"].update(n_heads=-3), "cfg.n_heads: Input should be greater than or equal to 1"),
    (lambda g: g["cfg"].update(parallel_attn_mlp="no"), "cfg.parallel_attn_mlp: Input should be a valid boolean"),
    (lambda g: g.update(notes="hi"), "notes: unknown field"),
])
def test_graph_files_are_validated_naming_the_file_and_field(tmp_path, change, field):
    g = _graph()
    change(g)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(g))
    with pytest.raises(CircuitbenchError) as err:
        Circuit.load(path)
    assert str(err.value).startswith(f"{path}: ") and field in str(err.value), str(err.value)


def test_eap_ig_files_load_with_their_own_keys(tmp_path):
    """EAP-IG writes its TransformerLens cfg keys, NaN for nodes it did not score, neuron masks."""
    g = _graph(d_vocab=50257, act_fn="gelu_new")
    g["nodes"]["a0.h0"].update(score=0.25, neurons=[True, False], neurons_scores=[float("nan"), 0.1])
    g["nodes"]["input"]["score"] = float("nan")  # unscored
    g["nodes"]["m1"] = False  # EAP-IG's from_json also documents {name: bool}
    path = tmp_path / "eap_ig.json"
    path.write_text(json.dumps(g))
    circuit = Circuit.load(path)
    assert circuit.node_scores == {"a0.h0": 0.25} and circuit.edges == [EDGE, "a0.h0->logits"]
    assert circuit.edge_scores[EDGE] == 0.5 and circuit.n_layers == 2


def test_graph_sizes_are_bounded_before_the_graph_is_built(monkeypatch):
    from circuitbench.circuits import graph_files
    from circuitbench.models.graph import ComponentGraph

    for shape in [(1, 1, True, False), (3, 4, True, False), (3, 4, False, False), (4, 2, True, True)]:
        graph = ComponentGraph(shape[0], shape[1], has_mlp=shape[2], parallel_attn_mlp=shape[3])
        assert graph_files.graph_size(*shape)[0] == graph.n_edges
    monkeypatch.setattr(ComponentGraph, "__init__", lambda *a, **k: pytest.fail("a graph was built"))
    raw = {"cfg": {"n_layers": 200000, "n_heads": 1}, "nodes": {}, "edges": {EDGE: {"score": 1.0, "in_graph": True}}}
    with pytest.raises(CircuitbenchError, match=r"huge: cfg: n_layers 200000 × n_heads 1 make a graph of "
                                                r"160,000,600,001 edges \(reading it needs about 16\.3 TB\)"):
        graph_files.read_graph_json(raw, "huge")


def test_a_sidecar_without_scores_is_named(edge_result, tmp_path):
    import shutil

    from circuitbench.results.export import export_mib
    from circuitbench.results.store import load_circuit, load_result

    folder = tmp_path / "r"
    shutil.copytree(edge_result.parent, folder)
    result = load_result(folder / edge_result.name)
    method = result.circuit.method
    sidecar = folder / result.edge_scores[method].file
    raw = json.loads(sidecar.read_text())
    raw["edges"]["input->a0.h0<q>"].pop("score")
    sidecar.write_text(json.dumps(raw))
    named = rf"{sidecar}: edges\['input->a0\.h0<q>'\]\.score: missing"
    with pytest.raises(CircuitbenchError, match=named):
        export_mib(result)  # the circuit's method: its scores, from the sidecar next to the result
    with pytest.raises(CircuitbenchError, match=named):
        load_circuit(folder / edge_result.name)
    raw["cfg"]["n_layers"] = 3  # another model's scores
    sidecar.write_text(json.dumps(graph_json_of(raw)))
    with pytest.raises(CircuitbenchError, match="a graph of 3 layers × 4 heads, but the result's model has 2 × 4"):
        load_circuit(folder / edge_result.name)


def graph_json_of(raw):
    """A valid graph file of raw's cfg (every edge scored 0)."""
    from circuitbench.circuits.graph_files import graph_json
    from circuitbench.models.graph import ComponentGraph

    cfg = raw["cfg"]
    return graph_json(ComponentGraph(cfg["n_layers"], cfg["n_heads"], has_mlp=not cfg.get("attn_only", False)))
