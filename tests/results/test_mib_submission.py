"""MIB submissions: results of 2 toy models × 2 tasks (and an attention-only model) packaged as MIB
asks, the scores read back identical, the packager never replacing what it did not write and
writing all or nothing; the validator on folders built by hand in MIB's documented formats (graph
JSON, EAP-IG's .pt, 9 sized circuits), each mistake one problem naming it."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from circuitbench.circuits.graph_files import load_graph_file
from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import ComponentGraph
from circuitbench.results import mib_submission
from circuitbench.results.mib_submission import CIRCUIT_FRACTIONS, MARKER, package_mib, validate_mib
from circuitbench.results.store import read_result

from helpers import cli

TASKS, MODELS = ("seq_digits", "seq_months"), ("toy-tasks", "toy-sequences")


def _run(*args: str) -> None:
    from circuitbench.cli import main

    argv, sys.argv = sys.argv, ["circuitbench", *args]
    try:
        main()
    except SystemExit as e:
        assert not e.code, f"circuitbench {' '.join(args)} exited {e.code}"
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mib_results")
    _run("run", "--task", ",".join(TASKS), "--model", ",".join(MODELS), "--n", "8", "--methods", "eap,eap_ig",
         "--out", str(out), "--no-cache", "-q")
    _run("run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8", "--methods", "eap", "--out",
         str(out), "--no-cache", "-q")
    return sorted(out.glob("*/*.json"))  # the results and their edge-score files (a glob names both)


def test_results_are_packaged_as_mib_asks_and_read_back_identical(results, tmp_path):
    out = tmp_path / "submission"
    package = package_mib(results, out)
    assert package.problems == [] and len(package.skipped) == 9  # 4 units × 2 methods + 1: the edge-score files
    expected = {f"eap_patching_edge/{t.replace('_', '-')}_{m}/importances.json" for t in TASKS for m in MODELS}
    expected |= {p.replace("eap_", "eap_ig_", 1) for p in expected} | {
        "eap_patching_edge/induction_toy-induction-2l/importances.json"}
    assert {str(f.relative_to(out)) for f in package.files} == expected
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "eap_ig_patching_edge", "eap_patching_edge"]
    for result_path in (p for p in results if not p.name.endswith(".edges.json")):
        result = read_result(result_path)
        for method, scores in result.edge_score_arrays().items():
            pair = f"{result.task.name.replace('_', '-')}_{result.model.name}"
            path = out / f"{method}_patching_edge" / pair / "importances.json"
            back = load_graph_file(path)  # ours -> MIB's graph JSON -> ours: identical scores
            assert np.array_equal(back.edge_scores().scores, scores.scores)
            raw = json.loads(path.read_text())
            assert raw["cfg"]["d_model"] == result.model.d_model  # MIB's loader needs it
            meaning = raw["circuitbench"]["scores"]
            assert meaning["method"] == method and meaning["signed"] and meaning["higher_is_more_important"]
            assert meaning["ablation"] == "counterfactual" and meaning["metric"] == result.task.main_metric
    assert validate_mib(out / "eap_ig_patching_edge") == []  # one method's folder: 2 models × 2 tasks
    on_board = validate_mib(out, leaderboard=True)  # toy tasks and models are not MIB's
    assert len(on_board) == 9 and all("not one of MIB's tasks and models" in p for p in on_board)


def test_renamed_to_mibs_names_the_leaderboard_check_compares_shapes(results, tmp_path):
    chosen = [p for p in results if p.name == "seq_digits.json"]
    package_mib(chosen, tmp_path / "s", methods=["eap"], rename={"seq_digits": "ioi", "toy-tasks": "gpt2",
                                                                   "toy-sequences": "qwen2.5"})
    problems = validate_mib(tmp_path / "s", leaderboard=True)
    assert problems == [
        f"{tmp_path}/s/eap_patching_edge/ioi_gpt2: a graph of 2 layers × 4 heads (d_model 96), but MIB's gpt2 has "
        "12 × 12 (d_model 768).",
        f"{tmp_path}/s/eap_patching_edge/ioi_qwen2.5: a graph of 2 layers × 4 heads (d_model 64), but MIB's qwen2.5 "
        "has 24 × 14 (d_model 896).",
        f"{tmp_path}/s/eap_patching_edge: covers 2 model(s) (gpt2, qwen2.5) and 1 task(s) (ioi); MIB requires at least "
        "2 models and 2 tasks."]


def test_the_packager_replaces_only_its_own_files_and_writes_all_or_nothing(results, tmp_path, monkeypatch):
    out = tmp_path / "s"
    package_mib(results, out, methods=["eap"])
    target = out / "eap_patching_edge" / "seq-digits_toy-tasks" / "importances.json"
    before = target.read_text()
    package_mib(results, out, methods=["eap"])  # its own earlier package: replaced
    assert target.read_text() == before
    target.write_text('{"cfg": {}}')  # now someone else's file
    with pytest.raises(CircuitbenchError, match=rf"{target} exists and was not written by export-mib; .*--force"):
        package_mib(results, out, methods=["eap"])
    assert target.read_text() == '{"cfg": {}}'
    package_mib(results, out, methods=["eap"], force=True)
    assert target.read_text() == before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(CircuitbenchError, match=r"--out .*notes: holds files and is not a MIB submission folder"):
        package_mib(results, foreign)
    calls = []

    def failing(result, method):  # the third file fails: nothing of this package may appear
        calls.append(method)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(result, method)

    real = mib_submission.export_mib
    monkeypatch.setattr(mib_submission, "export_mib", failing)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        package_mib(results, fresh)
    assert [p.name for p in fresh.iterdir()] == []  # no file, no staging folder left


def test_results_without_edge_scores_or_in_one_folder_are_refused(results, tmp_path):
    with pytest.raises(CircuitbenchError, match=r"--method acdc: no result holds its edge scores \(edge methods in "
                                                r"them: eap, eap_ig\)"):
        package_mib(results, tmp_path / "s", methods=["acdc"])
    digits = next(p for p in results if p.name == "seq_digits.json")
    months = next(p for p in results if p.name == "seq_months.json" and p.parent == digits.parent)
    with pytest.raises(CircuitbenchError, match=r"both would be eap_patching_edge/same_toy-\w+/importances\.json"):
        package_mib([digits, months], tmp_path / "s", rename={"seq_digits": "same", "seq_months": "same"})
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_export_mib_and_validate_mib_verbs(results, tmp_path, capsys):
    out = tmp_path / "cli"
    seq = [str(p) for p in results if p.name.startswith("seq_")]  # induction ran eap alone
    code, stdout, err = cli(capsys, "export-mib", *seq, "--out", str(out), "--method", "eap_ig")
    assert code == 0, err
    assert "wrote 4 importance files" in stdout and "1 method × 2 tasks × 2 models" in stdout
    code, stdout, err = cli(capsys, "validate-mib", str(out))
    assert code == 0 and "0 problems; a valid MIB submission" in stdout
    code, stdout, err = cli(capsys, "validate-mib", str(out), "--leaderboard")
    assert code == 1 and stdout.count("problem: ") == 4
    code, stdout, err = cli(capsys, "export-mib", str(results[0]), "--out", str(out), "--name", "nonsense")
    assert code == 2 and "--name 'nonsense': give OURS=MIB" in err


# ---- the validator on folders built by hand ------------------------------------------------------

G = ComponentGraph(2, 2)  # EAP-IG's graph of cfg n_layers 2, n_heads 2 (MLPs always)
CFG = {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8}


def _graph_json(scores=None, in_graph=(), cfg=CFG):
    """A graph file as EAP-IG's Graph.to_json writes it (every node and edge)."""
    scores = scores or {}
    return {"cfg": dict(cfg), "nodes": {n: {"in_graph": False} for n in G.nodes},
            "edges": {e: {"score": float(scores.get(e, 0.0)), "in_graph": e in in_graph} for e in G.edges}}


def _submission(root, files_per_pair=None, pairs=(("ioi", "gpt2"), ("ioi", "llama3"), ("mcqa", "gpt2"))):
    """A method folder of <task>_<model> folders, each with one importance file unless told."""
    for task, model in pairs:
        folder = root / f"{task}_{model}"
        folder.mkdir(parents=True)
        for name, content in (files_per_pair or {"importances.json": _graph_json(
                {e: i + 1 for i, e in enumerate(G.edges)})}).items():
            (folder / name).write_text(json.dumps(content))
    return root


def test_a_hand_built_submission_in_mibs_documented_format_is_valid(tmp_path):
    assert validate_mib(_submission(tmp_path / "method")) == []


def test_node_level_importances_rank_the_nodes(tmp_path):
    scored = _graph_json()  # every edge 0, as a node-level attribution leaves them
    for i, node in enumerate(G.sources):
        scored["nodes"][node]["score"] = float(i)
    assert validate_mib(_submission(tmp_path / "method", {"importances.json": scored})) == []


def test_eap_igs_pt_files_are_read(tmp_path):
    n_fwd, n_bwd = len(G.sources), len(G.destinations)
    scores = torch.arange(n_fwd * n_bwd, dtype=torch.float32).reshape(n_fwd, n_bwd)
    root = tmp_path / "method"
    for pair in ("ioi_gpt2", "mcqa_llama3"):  # EAP-IG's Graph.to_pt dict
        (root / pair).mkdir(parents=True)
        torch.save({"cfg": CFG, "src_nodes": G.sources, "dst_nodes": G.destinations, "edges_scores": scores,
                    "edges_in_graph": torch.zeros(n_fwd, n_bwd, dtype=torch.bool),
                    "nodes_in_graph": torch.zeros(n_fwd, dtype=torch.bool)}, root / pair / "importances.pt")
    assert validate_mib(root) == []
    torch.save({"cfg": CFG, "src_nodes": G.sources, "dst_nodes": G.destinations, "edges_scores": scores[:, :-1],
                "edges_in_graph": torch.zeros(n_fwd, n_bwd, dtype=torch.bool),
                "nodes_in_graph": torch.zeros(n_fwd, dtype=torch.bool)}, root / "ioi_gpt2" / "importances.pt")
    assert validate_mib(root) == [f"{root}/ioi_gpt2/importances.pt: edges_scores: [{n_fwd}, {n_bwd - 1}], "
                                  f"expected a tensor of shape [{n_fwd}, {n_bwd}] (EAP-IG's [n_forward, n_backward] "
                                  "for the cfg)."]


def _sized_circuits(n_edges_each):
    """9 binary circuits (EAP-IG JSON) with these numbers of edges in the graph."""
    return {f"circuit_{k}.json": _graph_json(in_graph=set(G.edges[:n])) for k, n in enumerate(n_edges_each)}


def test_nine_sized_circuits_each_at_or_under_its_share_of_edges(tmp_path):
    n = G.n_edges
    limits = [int(f * n) for f in CIRCUIT_FRACTIONS]  # MIB: int(p · N)
    assert validate_mib(_submission(tmp_path / "ok", _sized_circuits(limits))) == []
    too_big = list(limits)
    too_big[6] += 1  # the 10 % circuit one edge over
    problems = validate_mib(_submission(tmp_path / "bad", _sized_circuits(too_big), pairs=(("ioi", "gpt2"),
                                                                                            ("mcqa", "llama3"))))
    assert problems == [f"{tmp_path}/bad/ioi_gpt2: no circuit at or under 10 % of the {n} edges (≤ {limits[6]}); the "
                        f"smallest left, circuit_6.json, has {limits[6] + 1}. MIB needs one circuit per size.",
                        f"{tmp_path}/bad/mcqa_llama3: no circuit at or under 10 % of the {n} edges (≤ {limits[6]}); "
                        f"the smallest left, circuit_6.json, has {limits[6] + 1}. MIB needs one circuit per size."]


def _one_pair_changed(change):
    def build(root):
        _submission(root)
        path = root / "ioi_gpt2" / "importances.json"
        raw = json.loads(path.read_text())
        change(raw, root)
        if raw is not None:
            path.write_text(json.dumps(raw))
        return root
    return build


E = "input->a0.h0<q>"


@pytest.mark.parametrize("build, problem", [
    (_one_pair_changed(lambda g, r: g["nodes"].update({"a0.h0": True})),
     "ioi_gpt2/importances.json: nodes['a0.h0']: each node must be {\"in_graph\": true|false, …}"),
    (_one_pair_changed(lambda g, r: g["edges"][E].pop("score")),
     f"ioi_gpt2/importances.json: edges['{E}']: each edge must be {{\"score\": a finite number"),
    (_one_pair_changed(lambda g, r: g["edges"].update({"a1.h0->a0.h0<q>": {"score": 1.0, "in_graph": False}})),
     "ioi_gpt2/importances.json: edges['a1.h0->a0.h0<q>']: not edges of the cfg's graph."),
    (_one_pair_changed(lambda g, r: g["cfg"].pop("d_model")),
     "ioi_gpt2/importances.json: cfg.d_model: missing; MIB's loader builds a neuron-level graph"),
    (_one_pair_changed(lambda g, r: g["cfg"].update(n_heads="2")),
     "ioi_gpt2/importances.json: cfg.n_heads: Input should be a valid integer"),
    (_one_pair_changed(lambda g, r: g.pop("nodes")),
     "ioi_gpt2/importances.json: not an EAP-IG graph file: MIB's loader needs the keys cfg, nodes and edges"),
    (_one_pair_changed(lambda g, r: [e.update(score=0.5) for e in g["edges"].values()]),
     "ioi_gpt2/importances.json: every edge (and node) has the same score"),
    (_one_pair_changed(lambda g, r: (r / "ioi_gpt2" / "second.json").write_text(json.dumps(g))),
     "ioi_gpt2: holds 2 circuit files; MIB takes one file of importance scores or 9 circuits"),
    (_one_pair_changed(lambda g, r: (r / "ioi_gpt2" / "notes.txt").write_text("x")),
     "ioi_gpt2/notes.txt: not a .json or .pt circuit file"),
    (_one_pair_changed(lambda g, r: (r / "README.md").write_text("x")),
     "README.md: a file among the task/model folders"),
    (_one_pair_changed(lambda g, r: (r / "ioi-gpt2").mkdir()), "ioi-gpt2: not named <task>_<model>"),
    (_one_pair_changed(lambda g, r: g["cfg"].update(n_layers=3) or g["edges"].clear() or g["nodes"].clear()
                       or g["edges"].update({E: {"score": 1.0, "in_graph": False},
                                             "input->logits": {"score": 0.0, "in_graph": False}})),
     "mcqa_gpt2: model gpt2 has a graph of 2 × 2 here but 3 × 2 in"),
    (lambda root: _submission(root, pairs=(("ioi", "gpt2"), ("mcqa", "gpt2"))),
     ": covers 1 model(s) (gpt2) and 2 task(s) (ioi, mcqa); MIB requires at least 2 models and 2 tasks."),
])
def test_each_mistake_is_one_problem_naming_it(tmp_path, build, problem):
    root = build(tmp_path / "method")
    problems = validate_mib(root)
    assert len(problems) == 1 and problem in problems[0], problems
    assert problems[0].startswith(str(root))


def test_a_path_that_is_no_folder_is_an_error(tmp_path):
    with pytest.raises(CircuitbenchError, match="not a folder; give a MIB submission folder"):
        validate_mib(tmp_path / "missing")
