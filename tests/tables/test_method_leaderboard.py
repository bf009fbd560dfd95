"""The method leaderboard (`leaderboard --by method`) on real quick runs on two tracr zoo models:
ranks follow the documented key (recomputed here from the results' own fields), intervals appear
where the results hold them, a method missing on a model is shown missing (never 0), a method its
guard refused is listed with the reason, costs are the results' own, and the CLI writes the board."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import circuitbench as cb
from circuitbench.results.store import read_result, save_result
from circuitbench.specs.catalog import load_task
from circuitbench.tables.method_leaderboard import MISSING, method_table, overview, read_results, shown

from helpers import cli

NODE = ["activation_patching", "ablation", "attribution_patching"]


@pytest.fixture(scope="module")
def board_results(tmp_path_factory) -> Path:
    """tracr-reverse: three node methods (node circuit), eap and edge_patching (edge circuit);
    tracr-hist: ablation alone, eap, and edge_patching refused by max_forwards = 1."""
    out = tmp_path_factory.mktemp("method_results")
    hist = load_task("tracr_hist")
    runs = {
        "node": ("tracr_reverse", "tracr-reverse", NODE, "node"),
        "edge": ("tracr_reverse", "tracr-reverse", ["eap", "edge_patching"], "edge"),
        "hist_node": ("tracr_hist", "tracr-hist", ["ablation"], "node"),
        "hist_eap": ("tracr_hist", "tracr-hist", ["eap"], "edge"),
        "hist_refused": (hist.model_copy(update={"method_options": {"edge_patching": {"max_forwards": 1}}}),
                         "tracr-hist", ["edge_patching"], "edge"),
    }
    for folder, (task, model, methods, level) in runs.items():
        result = cb.run(task, model, methods=methods, circuit_level=level, cache=False, fail_on_error=False)
        save_result(result, out / folder / model / f"{result.task.name}.json")
    return out


@pytest.fixture(scope="module")
def board(board_results):
    results, flagged = read_results(board_results)
    assert not flagged and len(results) == 5
    rows, superseded = method_table(results)
    assert not superseded
    return rows, {Path(f).parent.parent.name: r for f, r in results}


def _raw(result, method):
    """(recall, auroc, cpr, cmd, forwards) of a method straight from its result."""
    recovered = result.edge_recovery.get(method) or result.node_recovery.get(method)
    figures = result.circuit.faithfulness.by_method.get(method, {})
    return (recovered.recall, recovered.auroc, figures.get("cpr"), figures.get("cmd"),
            result.method_costs[method].forwards)


def test_ranks_follow_recall_then_auroc_then_cpr_then_cmd_then_cost(board):
    rows, results = board
    for folder in ("node", "edge"):
        result = results[folder]
        methods = list(result.node_scores if folder == "node" else result.edge_scores)
        raw = {m: _raw(result, m) for m in methods}

        def key(m):  # higher recall, AUROC, CPR first; lower CMD, forwards first; missing last
            signs = (-1, -1, -1, 1, 1)
            return tuple(x for v, s in zip(raw[m], signs) for x in ((1, 0.0) if v is None else (0, s * v)))

        expected = {m: 1 + sum(key(o) < key(m) for o in methods) for m in methods}
        got = rows[(rows["model"] == "tracr-reverse") & (rows["level"] == folder)]
        assert dict(zip(got["method"], got["rank"].astype(int))) == expected
        assert list(got["rank"]) == sorted(got["rank"])  # shown in rank order
    node = rows[(rows["model"] == "tracr-reverse") & (rows["level"] == "node")].set_index("method")
    # ablation sees head 0.0 (which reads only the length: invisible to patching), so it leads
    assert node.loc["ablation", "rank"] == 1 and node.loc["ablation", "recall"] == 1.0


def test_intervals_appear_where_the_results_hold_them(board):
    rows, results = board
    unit = rows[rows["model"] == "tracr-reverse"]
    table = shown(unit).set_index("method")
    node = results["node"]
    for method in NODE:
        low, high = node.node_recovery_ci[method].recall
        assert table.loc[method, "recall ↑"] == f"{node.node_recovery[method].recall:.3f} [{low:.3f}, {high:.3f}]"
    for method in ("eap", "edge_patching"):  # edge recovery has no bootstrap interval
        assert "[" not in table.loc[method, "recall ↑"] and table.loc[method, "recall ↑"] != MISSING
    kept = node.circuit.method
    low, high = node.circuit.faithfulness.cpr_ci
    assert table.loc[kept, "CPR ↑"].endswith(f"[{low:.3f}, {high:.3f}]") and node.circuit.verdict
    assert table.loc[kept, "verdict"] == node.circuit.verdict
    others = [m for m in NODE if m != kept]
    assert all("[" not in table.loc[m, "CPR ↑"] and table.loc[m, "verdict"] == "" for m in others)


def test_a_method_missing_on_a_model_is_missing_and_a_refused_one_says_why(board):
    rows, _ = board
    hist = rows[rows["model"] == "tracr-hist"]
    assert "activation_patching" not in set(hist["method"])
    cells = overview(rows, "node").set_index("method")
    assert cells.loc["activation_patching", "tracr_hist · tracr-hist"] == MISSING
    refused = hist[hist["method"] == "edge_patching"].iloc[0]
    assert refused["note"].startswith("refused:") and "max_forwards" in refused["note"] and pd.isna(refused["rank"])
    assert pd.isna(refused["recall"]) and pd.isna(refused["forwards"])  # missing, not 0
    text = shown(hist).set_index("method").loc["edge_patching"]
    assert text["recall ↑"] == MISSING and text["forwards ↓"] == MISSING and text["rank"] == ""
    assert overview(rows, "node").columns.tolist()[:2] == ["method", "mean rank ↓"]
    assert overview(rows, "edge").set_index("method").loc["edge_patching", "tracr_hist · tracr-hist"] == "refused"


def test_costs_are_the_results_own_and_exact_patching_costs_more_than_eap(board):
    rows, results = board
    unit = rows[rows["model"] == "tracr-reverse"].set_index("method")
    for folder, methods in (("node", NODE), ("edge", ["eap", "edge_patching"])):
        for method in methods:
            cost = results[folder].method_costs[method]
            assert unit.loc[method, "forwards"] == cost.forwards and unit.loc[method, "seconds"] == cost.seconds
    # EAP: corrupted forward + clean forward + its backward (2); exact patching: one forward per edge
    assert unit.loc["eap", "forwards"] == pytest.approx(4.0)
    assert unit.loc["edge_patching", "forwards"] > 2 * unit.loc["eap", "forwards"]
    assert unit.loc["attribution_patching", "forwards"] == pytest.approx(4.0)


def test_cli_writes_the_method_board_and_keeps_the_leaderboards_output_rules(capsys, board_results, tmp_path):
    out = tmp_path / "board"
    args = ["leaderboard", "--by", "method", "--results", str(board_results), "--out", str(out)]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    text = (out / "methods.md").read_text()
    assert "## tracr_reverse · tracr-reverse" in text and "refused: " in text and "Overview: edges" in text
    assert (out / "methods.html").is_file() and "method leaderboard" in stdout
    from page_check import check_page_shell

    page = check_page_shell(out / "methods.html")  # head, viewport, one element per line
    assert page.tables and all(len(row) == len(t["headers"]) for t in page.tables for row in t["rows"])
    assert not list(out.glob("*.csv"))  # leaderboards/*.csv are the task board's; this board writes none
    assert cli(capsys, *args)[0] == 0  # its own earlier output: replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    code, _, err = cli(capsys, "leaderboard", "--by", "method", "--results", str(board_results), "--out",
                       str(foreign))
    assert code == 2 and "--force" in err and (foreign / "notes.txt").read_text() == "mine\n"
    code, _, err = cli(capsys, "leaderboard", "--by", "model", "--results", str(board_results), "--out", str(out))
    assert code == 2 and "--by 'model'" in err


def test_a_result_read_back_keeps_its_costs(board_results):
    result = read_result(board_results / "edge" / "tracr-reverse" / "tracr_reverse.json")
    assert set(result.method_costs) == {"eap", "edge_patching"}
    assert all(c.forwards > 0 and c.calls > 0 and c.prompts == result.task.n_prompts
               for c in result.method_costs.values())
