"""What a researcher sees first (issue 16): no faithfulness number where the heads have no
measurable effect, random-init models marked in every renderer, a permutation null beside every
overlap figure, non-trivial shipped circuits, numeric leaderboard CSVs, files written with the
umask, and no overwriting of committed tables or shipped weights without --force."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from circuitbench.circuits.circuit import RANDOM_INIT, Circuit
from circuitbench.circuits.faithfulness import NOISE_Z, paired_gap, undefined_reason
from circuitbench.circuits.overlap import compare
from circuitbench.circuits.overlap_metrics import OverlapSettings
from circuitbench.models.toy import ZOO_DIR
from circuitbench.results.store import load_result
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import METRICS

from helpers import cli

ROOT = Path(__file__).resolve().parents[2]
LEADERBOARDS = ROOT / "leaderboards"
NUMBER = re.compile(r"faithfulness -?\d")  # "faithfulness 118.16": a number where there should be none


def _ctx() -> MethodContext:
    return MethodContext(batch_size=8, metric="logit_diff", sum_shards=lambda x: x)


# ---- undefined faithfulness ---------------------------------------------------------------------

def test_paired_gap_is_the_standard_error_of_the_per_prompt_differences():
    rng = np.random.default_rng(0)
    full = rng.normal(1.0, 1.0, 50)
    empty = full - rng.normal(0.3, 0.5, 50)  # correlated runs: the paired stderr is far below the unpaired one
    m_full, m_empty, stderr, n = paired_gap(full, empty, _ctx())
    diff = full - empty
    assert n == 50 and m_full == pytest.approx(full.mean()) and m_empty == pytest.approx(empty.mean())
    assert stderr == pytest.approx(diff.std(ddof=1) / np.sqrt(50))
    assert stderr < np.sqrt(full.var(ddof=1) / 50 + empty.var(ddof=1) / 50) / 1.5


@pytest.mark.parametrize("gap, stderr, defined", [(0.3, 0.05, True), (0.0003, 0.0003, False), (0.1, 0.049, True),
                                                  (0.1, 0.051, False), (0.0, 0.0, False)])
def test_faithfulness_is_undefined_within_noise(gap, stderr, defined):
    reason = undefined_reason(-0.0447, -0.0447 - gap, stderr, 16, "ablating every head (zero)", "logit_diff", -0.0447)
    assert (reason is None) == defined == (gap >= NOISE_Z * stderr and gap > 0)
    if not defined:
        assert ("within noise" in reason) if gap else ("does not change" in reason)


def test_a_run_stores_null_faithfulness_exactly_when_the_gap_is_within_noise(capsys, tmp_path, tiny_models):
    """Whatever a random-init model's numbers are, the stored decision follows from them; the
    summary prints a faithfulness number only when it is defined."""
    code, out, err = cli(capsys, "run", "--task", "ioi", "--model", str(tiny_models["gpt2"]), "--init", "random",
                         "--n", "8", "--methods", "attribution_patching", "--out", str(tmp_path), "-q")
    assert code == 0, err
    c = load_result(tmp_path / f"gpt2{RANDOM_INIT}" / "ioi.json").circuit
    within = abs(c.m_full - c.m_empty) < NOISE_Z * c.gap_stderr
    assert (c.faithfulness is None) == within == (c.faithfulness_undefined is not None)
    assert (c.cpr is None and c.cmd is None) if within else c.faithfulness == pytest.approx(
        (c.m_circuit - c.m_empty) / (c.m_full - c.m_empty))
    assert bool(NUMBER.search(out)) != within


def _undefined(result):
    """The result as a model with no measurable effect would give it."""
    c = result.circuit.model_copy(update={
        "faithfulness": None, "cpr": None, "cmd": None, "curve": [], "by_ablation": {"mean_counterfactual": None},
        "faithfulness_undefined": "|m(M) − m(∅)| = 0.0003 is within noise", "gap_stderr": 0.002,
        "candidates": [k.model_copy(update={"faithfulness": None}) for k in result.circuit.candidates]})
    return result.model_copy(update={"circuit": c})


def test_undefined_faithfulness_is_never_rendered_as_a_number(capsys, tmp_path):
    from circuitbench.pipeline.grid import UnitOutcome
    from circuitbench.results.store import save_result
    from circuitbench.tables.console import print_run_summary
    from circuitbench.tables.leaderboard import build
    from circuitbench.tables.report import build_report

    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8", "--out",
                       str(tmp_path / "r"), "-q", "--methods", "induction,ablation")
    assert code == 0, err
    path = tmp_path / "r" / "toy-induction-2l" / "induction.json"
    result = _undefined(load_result(path))
    save_result(result, path)
    print_run_summary([UnitOutcome("toy-induction-2l", "induction", path, result, False)])
    out = capsys.readouterr().out
    assert "faithfulness undefined (|m(M) − m(∅)| = 0.0003 is within noise" in " ".join(out.split())
    assert not NUMBER.search(out) and "CPR" not in out
    page = (tmp_path / "rep").joinpath("report.html")
    build_report(result, tmp_path / "rep")
    assert "Faithfulness undefined" in page.read_text() and "faithfulness.png" not in os.listdir(tmp_path / "rep")
    build(tmp_path / "r", tmp_path / "lb")
    csv = pd.read_csv(tmp_path / "lb" / "induction.csv")
    assert csv["faithfulness"].isna().all() and csv["faithfulness_undefined"].str.contains("within noise").all()
    assert re.search(r"\| undefined +\|", (tmp_path / "lb" / "induction.md").read_text())


# ---- random-init marking ------------------------------------------------------------------------

def test_random_init_models_are_marked_in_every_renderer(capsys, tmp_path, tiny_models):
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
    code, out, _ = cli(capsys, "overlap", *files, "--json")
    assert all(RANDOM_INIT in label for label in json.loads(out)["labels"])
    code, _, _ = cli(capsys, "report", files[0], "--out", str(tmp_path / "report"))
    page = (tmp_path / "report" / "report.html").read_text()
    assert code == 0 and f"gpt2{RANDOM_INIT}" in page and "class='badge'>random init" in page
    assert "class='baseline'" in page and "random-init weights" in page
    code, _, _ = cli(capsys, "leaderboard", "--results", str(results / "1"), "--out", str(tmp_path / "lb"))
    assert code == 0
    md, index = (tmp_path / "lb" / "README.md").read_text(), (tmp_path / "lb" / "index.html").read_text()
    assert "## Random-init baselines" in md and "Sanity checks, not findings" in md and f"gpt2{RANDOM_INIT}" in md
    assert "<h2>Random-init baselines</h2>" in index and "class='badge'" in index
    csv = pd.read_csv(tmp_path / "lb" / "ioi.csv")
    assert csv["model"].tolist() == [f"gpt2{RANDOM_INIT}"] and csv["baseline"].tolist() == [True]
    assert "Random-init baselines" in (tmp_path / "lb" / "ioi.html").read_text()


# ---- permutation null ---------------------------------------------------------------------------

def test_permutation_null_matches_the_exact_within_layer_distribution():
    """Two circuits of 4 heads, both in layer 0 of a 4 × 8 model, sharing 3. Uniform over 32 heads
    that is rare (hypergeometric p = 113/35960); shuffled within layer 0 the shared count K is
    hypergeometric(8, 4, 4), so the null's mean Jaccard is E[K / (8 − K)] and p = P(K ≥ 3) = 17/70."""
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
    code, out, _ = cli(capsys, "overlap", *files, "--json", "--permutations", "50", "--shape", "2,4")
    result = json.loads(out)
    assert result["p_value"]["jaccard"][0][1] is not None and result["null_mean"]["jaccard"][1][0] is not None
    assert result["p_value"]["jaccard"][0][0] is None  # no null on the diagonal


# ---- non-trivial shipped circuits ---------------------------------------------------------------

SHIPPED = {"toy-tasks": 8, "toy-induction-2l": 8}  # heads of the shipped toys the suite tasks default to


@pytest.mark.parametrize("task", ["ioi", "seq_digits", "seq_numwords", "seq_months", "seq_days", "seq_letters",
                                  "seq_sentence", "x2", "arith_k", "fibonacci", "sorting", "induction"])
def test_shipped_rules_pick_some_but_not_all_heads_of_the_shipped_toys(task):
    rule = load_task(task).circuit
    assert rule is not None and rule.threshold is None
    for heads in SHIPPED.values():
        expected = min(rule.top_k, heads) if rule.top_k is not None else max(1, round(rule.fraction * heads))
        assert 0 < expected < heads
        scores = np.random.default_rng(0).normal(size=(2, heads // 2))
        assert len(Circuit.from_scores(scores, rule, "m").heads) == expected


def test_committed_toy_leaderboards_hold_non_trivial_circuits():
    sizes = {"toy-tasks": 8, "toy-induction-2l": 8}
    seen = 0
    for csv in LEADERBOARDS.glob("*.csv"):
        table = pd.read_csv(csv)
        for _, row in table[table["model"].isin(sizes)].iterrows():
            assert 0 < row["circuit_size"] < sizes[row["model"]], (csv.name, row["model"])
            seen += 1
    assert seen >= 13  # toy-tasks on the 12 suite tasks, toy-induction-2l on induction


# ---- numeric CSV columns ------------------------------------------------------------------------

def test_committed_leaderboard_csvs_hold_numbers():
    csvs = sorted(LEADERBOARDS.glob("*.csv"))
    assert len(csvs) >= 12
    for csv in csvs:
        raw = csv.read_text()
        assert "±" not in raw, csv.name
        table = pd.read_csv(csv)
        metrics = [c for c in table.columns if c in METRICS]
        assert metrics, csv.name
        for col in metrics + [f"{m}_stderr" for m in metrics] + ["faithfulness", "cpr", "cmd"]:
            if col in table and table[col].notna().any():
                assert pd.api.types.is_numeric_dtype(table[col]), (csv.name, col)
        assert pd.api.types.is_integer_dtype(table["n"]) and (table["n"] > 0).all()


def test_csv_numbers_are_the_results_numbers(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8", "--out",
                       str(tmp_path / "r"), "-q", "--methods", "induction")
    assert code == 0, err
    assert cli(capsys, "leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "lb"))[0] == 0
    row = pd.read_csv(tmp_path / "lb" / "induction.csv").iloc[0]
    result = load_result(tmp_path / "r" / "toy-induction-2l" / "induction.json")
    for name, value in result.metrics.items():
        assert row[name] == pytest.approx(value, rel=1e-5)
        assert row[f"{name}_stderr"] == pytest.approx(result.metrics_stderr[name], rel=1e-5)
    assert row["n"] == result.task.n_prompts == 8 and row["circuit_size"] == len(result.circuit.heads)


# ---- file modes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_are_written_with_the_umask(capsys, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--out",
                           str(tmp_path / "r"), "-q", "--methods", "induction")
        assert code == 0, err
        result = tmp_path / "r" / "toy-induction-2l" / "induction.json"
        assert cli(capsys, "leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "lb"))[0] == 0
        assert cli(capsys, "report", str(result), "--out", str(tmp_path / "rep"))[0] == 0
    finally:
        os.umask(old)
    written = [result, *(tmp_path / "lb").iterdir(), *(tmp_path / "rep").iterdir()]
    assert len(written) >= 8
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}


# ---- no overwriting without --force; outputs under results/ -------------------------------------

def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_leaderboard_refuses_a_folder_of_committed_tables(capsys, tmp_path, monkeypatch):
    code, _, _ = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--out",
                     str(tmp_path / "r"), "-q", "--methods", "induction")
    assert code == 0
    before = _digest(LEADERBOARDS)
    code, _, err = cli(capsys, "leaderboard", "--results", str(tmp_path / "r"), "--out", str(LEADERBOARDS))
    assert code == 2 and "committed files" in err and "--force" in err
    assert _digest(LEADERBOARDS) == before
    # a git checkout of our own: refused, then regenerated with --force
    repo = tmp_path / "repo"
    (repo / "tables").mkdir(parents=True)
    (repo / "tables" / "README.md").write_text("committed\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "tables"], check=True)
    args = ["leaderboard", "--results", str(tmp_path / "r"), "--out", str(repo / "tables")]
    assert cli(capsys, *args)[0] == 2 and (repo / "tables" / "README.md").read_text() == "committed\n"
    assert cli(capsys, *args, "--force")[0] == 0 and "induction" in (repo / "tables" / "README.md").read_text()
    # the default --out is a results folder
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "leaderboard", "--results", "r")[0] == 0
    assert (tmp_path / "results" / "leaderboard" / "index.html").is_file()


def test_train_zoo_never_replaces_the_shipped_weights_without_force(capsys, tmp_path, monkeypatch):
    shipped = ZOO_DIR / "toy-induction-2l"
    before = _digest(shipped)
    code, _, err = cli(capsys, "train-zoo", "toy-induction-2l", "--out", str(shipped), "--steps", "2")
    assert code == 2 and "shipped" in err and "--force" in err
    assert _digest(shipped) == before
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train-zoo", "toy-induction-2l", "--steps", "2")
    assert code == 0, err
    assert (tmp_path / "results" / "zoo" / "toy-induction-2l" / "model.safetensors").is_file()
    assert _digest(shipped) == before


# ---- --help and --version -----------------------------------------------------------------------

def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_option_is_documented_and_there_is_a_version(capsys):
    import click
    import typer

    import circuitbench
    from circuitbench.cli import app

    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) >= 15
    undocumented = [f"{' '.join(path)} {p.opts[0]}" for path, command in commands for p in command.params
                    if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not undocumented
    for path, _ in commands:
        code, out, _ = cli(capsys, *path, "--help")
        assert code == 0 and "<bool>" not in out and "BOOLEAN" not in out, path
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and circuitbench.__version__ in out
