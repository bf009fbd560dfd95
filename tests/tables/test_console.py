"""tables/console.py: what the terminal shows: the run summary gives no faithfulness number where
it is undefined, and random-init models carry their mark (and the legend) in every table."""
from __future__ import annotations

import re
from pathlib import Path

import circuitbench as cb
from circuitbench.circuits.circuit import RANDOM_INIT
from circuitbench.pipeline.grid import UnitOutcome
from circuitbench.results.store import load_result
from circuitbench.tables.console import print_run_summary

from helpers import cli, with_undefined_faithfulness

NUMBER = re.compile(r"faithfulness -?\d")  # "faithfulness 118.16": a number where there should be none


def test_undefined_faithfulness_is_never_printed_as_a_number(capsys, results):
    out, _ = results
    path = out / "toy-induction-2l" / "induction.json"
    result = with_undefined_faithfulness(load_result(path))
    capsys.readouterr()
    print_run_summary([UnitOutcome("toy-induction-2l", "induction", path, result, False)])
    printed = capsys.readouterr().out
    assert "faithfulness undefined (|m(M) − m(∅)| = 0.0003 is within noise" in " ".join(printed.split())
    assert not NUMBER.search(printed) and "CPR" not in printed


def test_random_init_models_are_marked_in_every_terminal_table(capsys, tmp_path, tiny_models):
    results = tmp_path / "results"
    for seed in ("1", "2"):
        code, out, err = cli(capsys, "run", "--task", "ioi", "--model", str(tiny_models["gpt2"]), "--init", "random",
                             "--seed", seed, "--n", "4", "--methods", "previous_token", "--out", str(results / seed))
        assert code == 0, err
        # terminal tables: the name with its mark, and the legend saying what it means
        assert f"gpt2{RANDOM_INIT}" in out and "seeded random weights, a baseline" in out
        assert re.search(r"(?m)^[│┃ ]*gpt2[ │┃]", out) is None  # never the bare name in a table row
    files = [str(results / s / f"gpt2{RANDOM_INIT}" / "ioi.json") for s in ("1", "2")]
    code, out, _ = cli(capsys, "overlap", *files)
    assert code == 0 and RANDOM_INIT in out
    matrix = cb.overlap_matrix([cb.load_circuit(Path(f)) for f in files], sources=files)
    assert all(RANDOM_INIT in label for label in matrix.labels)
