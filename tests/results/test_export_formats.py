"""`circuitbench circuit export --format auto-circuit | edge-pruning`: a result's edge scores and
edge circuit in other tools' formats, read back identical, each with its meaning in a sidecar;
never over a file another program wrote."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from circuitbench.circuits.autocircuit_files import read_prune_scores
from circuitbench.circuits.edge_pruning_files import read_edge_pruning
from circuitbench.circuits.score_meaning import sidecar_path
from circuitbench.results.store import read_result

from helpers import cli


@pytest.fixture(scope="module")
def result_path(tmp_path_factory):
    from circuitbench.cli import main

    out = tmp_path_factory.mktemp("export_formats")
    argv, sys.argv = sys.argv, ["circuitbench", "run", "--task", "ioi", "--model", "toy-tasks", "--n", "8", "--methods",
                                "eap,eap_ig", "--circuit-level", "edge", "--out", str(out), "--no-cache", "-q"]
    try:
        main()
    except SystemExit as e:
        assert not e.code
    finally:
        sys.argv = argv
    return out / "toy-tasks" / "ioi.json"


def test_auto_circuit_export_reads_back_identical_with_its_meaning(result_path, tmp_path, capsys):
    result = read_result(result_path)
    out = tmp_path / "scores.pt"
    code, stdout, err = cli(capsys, "circuit", "export", str(result_path), "--format", "auto-circuit", "--method",
                            "eap_ig", "--out", str(out))
    assert code == 0, err
    assert isinstance(torch.load(out, weights_only=True)["blocks.1.hook_resid_post"], torch.Tensor)
    back = read_prune_scores(out)
    assert np.array_equal(back.edges.scores, result.edge_score_arrays()["eap_ig"].scores)
    m = back.meaning
    assert m is not None and (m.method, m.kind, m.signed, m.ablation, m.metric, m.task, m.model) == (
        "eap_ig", "scores", True, "counterfactual", "logit_diff", "ioi", "toy-tasks")
    assert m.combined == result.score_combination  # ioi has two counterfactuals
    code, _, err = cli(capsys, "circuit", "export", str(result_path), "--format", "auto-circuit", "--method",
                       "eap_ig", "--out", str(out))
    assert code == 0, err  # its own earlier export: replaced


def test_edge_pruning_export_is_the_results_circuit(result_path, tmp_path, capsys):
    result = read_result(result_path)
    c = result.circuit
    out = tmp_path / "edges.json"
    code, stdout, err = cli(capsys, "circuit", "export", str(result_path), "--format", "edge-pruning", "--out",
                            str(out))
    assert code == 0, err
    pairs = json.loads(out.read_text())
    n_input = sum(e.startswith("input->") for e in c.edges)
    assert len(pairs) == len(c.edges) + n_input  # GPT-2's two embedding writers per input edge
    back = read_edge_pruning(out)
    assert sorted(back.edges) == sorted(c.edges) and back.meaning is not None
    assert back.meaning.kind == "membership" and back.meaning.method == c.method and back.meaning.rule == c.rule


def test_exports_never_replace_another_programs_file(result_path, tmp_path, capsys):
    out = tmp_path / "scores.pt"
    out.write_bytes(b"someone else's")
    code, _, err = cli(capsys, "circuit", "export", str(result_path), "--format", "auto-circuit", "--method", "eap",
                       "--out", str(out))
    assert code == 2 and "exists and is not a file `circuitbench circuit export --format auto-circuit` wrote" in err
    assert out.read_bytes() == b"someone else's" and not sidecar_path(out).exists()
    side = sidecar_path(tmp_path / "new.pt")
    side.write_text("{}")  # a foreign file where the sidecar would go
    code, _, err = cli(capsys, "circuit", "export", str(result_path), "--format", "auto-circuit", "--method", "eap",
                       "--out", str(tmp_path / "new.pt"))
    assert code == 2 and "(its sidecar)" in err and not (tmp_path / "new.pt").exists()
    code, _, err = cli(capsys, "circuit", "export", str(result_path), "--format", "acdc", "--out", str(out))
    assert code == 2 and "one of mib, auto-circuit, edge-pruning" in err
    code, _, err = cli(capsys, "circuit", "export", str(result_path), "--format", "auto-circuit", "--out",
                       str(tmp_path / "x.pt"), "--method", "attribution_patching")
    assert code == 2 and "holds no edge scores of it (edge methods in it: eap, eap_ig)" in err
