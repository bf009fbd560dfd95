"""tables/console.py: what the terminal shows: the run summary gives no faithfulness number where
it is undefined, and random-init models carry their mark (and the legend) in every table."""
from __future__ import annotations

import re
from pathlib import Path

import circuitbench as cb
from circuitbench.circuits.circuit import RANDOM_INIT
from circuitbench.pipeline.grid import UnitOutcome
from circuitbench.results.store import load_result
from circuitbench.tables.console import console, print_run_summary, summary_row

from helpers import cli, with_undefined_faithfulness

NUMBER = re.compile(r"faithfulness -?\d")  # "faithfulness 118.16": a number where there should be none


def test_undefined_faithfulness_is_never_printed_as_a_number(capsys, results):
    out, _ = results
    path = out / "toy-induction-2l" / "induction.json"
    result = with_undefined_faithfulness(load_result(path))
    capsys.readouterr()
    print_run_summary([UnitOutcome("toy-induction-2l", "induction", path, result, False)], details=True)
    printed = capsys.readouterr().out
    assert "faithfulness undefined (|m(M) − m(∅)| = 0.0003 is within noise" in " ".join(printed.split())
    assert not NUMBER.search(printed) and "CPR" not in printed
    # the summary table (the default): the cell says undefined, with no number beside it
    assert summary_row(UnitOutcome("toy-induction-2l", "induction", path, result, False))[-1] == "undefined"


def _two_models(results) -> list[UnitOutcome]:
    """Both tasks of the results fixture, as stored and as if from a second model."""
    out, _ = results
    outcomes = []
    for model in ("toy-induction-2l", "other-model"):
        for task in ("induction", "ind_trace"):
            path = out / "toy-induction-2l" / f"{task}.json"
            result = load_result(path)
            result = result.model_copy(update={"model": result.model.model_copy(update={"name": model})})
            outcomes.append(UnitOutcome(model, task, path, result, False))
    return outcomes


def test_the_run_summary_is_one_table_per_model_with_a_row_per_task(capsys, monkeypatch, results):
    outcomes = _two_models(results)
    capsys.readouterr()
    monkeypatch.setattr(console, "width", 100)
    print_run_summary(outcomes)
    printed = capsys.readouterr().out
    lines = [line.rstrip() for line in printed.splitlines()]
    for model in ("toy-induction-2l", "other-model"):
        start = lines.index(f"{model} · 2 tasks")
        rows = [line.split()[0] for line in lines[start + 3:start + 5]]
        assert rows == ["induction", "ind_trace"], lines[start:start + 5]
    assert sum(line.split()[:1] == ["induction"] for line in lines) == 2  # one row per task per model
    assert "circuit from" not in printed and "top heads" not in printed  # the per-unit details are left out
    for o in outcomes:
        r, c = o.result, o.result.circuit
        task, n, metric, value, size, verdict, faith = summary_row(o)
        main = r.task.main_metric
        assert task == o.task and n == str(r.task.n_prompts) and metric == main
        shown, _, err = value.partition(" ± ")
        assert abs(float(shown) - r.metrics[main]) <= 0.005 and abs(float(err) - r.metrics_stderr[main]) <= 0.005
        n_heads = int(size.split()[0])
        assert n_heads == len(c.heads) and ("MLP" in size) == bool(c.mlps)
        assert verdict == (c.verdict or "not judged").replace("_", " ")
        f = c.faithfulness
        if f.value is None:
            assert faith == "undefined"
        else:
            figure = re.fullmatch(r"(-?[\d.]+)(?: \[(-?[\d.]+), (-?[\d.]+)\])?", faith)
            assert figure and abs(float(figure[1]) - f.value) <= 0.005
            ci = c.panel[f.ablation].ci if f.ablation in c.panel else None
            assert (figure[2] is None) == (ci is None)
            if ci is not None:
                assert abs(float(figure[2]) - ci[0]) <= 0.005 and abs(float(figure[3]) - ci[1]) <= 0.005
        assert f"{task} " in printed  # and the row is printed


def test_details_add_the_per_unit_figures(capsys, results):
    outcomes = _two_models(results)[:1]
    capsys.readouterr()
    print_run_summary(outcomes, details=True)
    printed = capsys.readouterr().out
    assert "metrics (★ main)" in printed and "toy-induction-2l / induction: circuit from" in printed


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


def test_a_repeated_log_message_is_printed_once(capsys):
    import logging

    from circuitbench.tables.console import show_logs

    show_logs(logging.INFO)
    log = logging.getLogger("circuitbench.scores.interventions")
    for _ in range(5):  # as a note logged per batch would be
        log.info("resample ablation: 62 of 64 prompts have a partner")
    log.info("resample ablation: 60 of 64 prompts have a partner")
    log.warning("resample ablation: 62 of 64 prompts have a partner")  # another level: said too
    err = capsys.readouterr().err
    assert err.count("62 of 64") == 2 and err.count("60 of 64") == 1


def test_the_summary_adds_recall_where_a_unit_has_a_reference(capsys, tmp_path):
    """A known-answer unit (tracr-hist: its circuit.json is the reference) gets a recall column equal
    to the recovery of its kept circuit's method; a unit without a reference leaves it out."""
    from circuitbench.tables.console import recall_cell, summary_table

    result = cb.run(cb.load_task("tasks/known_answers/tracr_hist.yaml"), "tracr-hist")
    outcome = UnitOutcome("tracr-hist", "tracr_hist", tmp_path / "tracr_hist.json", result, False)
    expected = result.recovery[result.circuit.method]
    n_found = round(expected.recall * expected.n_reference)
    assert recall_cell(outcome) == f"{expected.recall:.2f} ({n_found} of {expected.n_reference})"
    table = summary_table("tracr-hist", [outcome])
    assert [c.header for c in table.columns][-1] == "recall"
    bare = outcome.result.model_copy(update={"recovery": {}, "node_recovery": {}})
    table = summary_table("tracr-hist", [UnitOutcome("tracr-hist", "tracr_hist", outcome.path, bare, False)])
    assert "recall" not in [c.header for c in table.columns]
