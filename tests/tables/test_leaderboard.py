"""tables/leaderboard.py: tables hold the runs' numbers (CSV columns numeric, equal to the results'),
stale, copied, failed or other-schema results are flagged apart, undefined faithfulness is never a
number, random-init models are listed as baselines, the committed leaderboards hold non-trivial
circuits, and a folder of committed tables is not overwritten without --force."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import circuitbench as cb
from circuitbench.circuits.circuit import RANDOM_INIT
from circuitbench.results.store import load_result, save_result
from circuitbench.specs.registries import METRICS
from circuitbench.tables.leaderboard import build

from helpers import cli, with_undefined_faithfulness

ROOT = Path(__file__).resolve().parents[2]
LEADERBOARDS = ROOT / "leaderboards"


def test_leaderboard_tables_hold_the_results(results, tmp_path):
    out, task = results
    summary = build(out, tmp_path, (str(task.parent),))
    result = load_result(out / "toy-induction-2l" / "induction.json")
    md = (tmp_path / "induction.md").read_text()
    assert f"{result.metrics['induction_loss']:.3f} ± {result.metrics_stderr['induction_loss']:.3f}" in md
    assert f"{result.circuit.faithfulness.value:.3f}" in md and "induction_loss ↓" in md
    # the verdict first, f with its interval, the stability of the chosen set with its range
    c = result.circuit
    low, high = c.panel[c.faithfulness.ablation].ci
    assert f"| {c.verdict} " in md and f"{c.faithfulness.value:.3f} [{low:.3f}, {high:.3f}]" in md
    assert md.index("verdict") < md.index("faithfulness (closest to 1 is best)") and "faithfulness ↑" not in md
    if c.stability is not None:
        assert f"{c.stability.jaccard:.3f} [{c.stability.range[0]:.3f}, {c.stability.range[1]:.3f}]" in md
    csv = (tmp_path / "induction.csv").read_text()
    assert csv.splitlines()[0].startswith("model,verdict,") or ",verdict," in csv.splitlines()[0]
    overview = (tmp_path / "README.md").read_text()
    assert "toy-induction-2l" in overview and f"{result.metrics['induction_loss']:.3f}" in overview
    page = (tmp_path / "index.html").read_text()
    assert "<table" in page and "onclick" in page
    assert summary["flagged"] == 0


def test_csv_numbers_are_the_results_numbers(tmp_path):
    result = cb.run("induction", "toy-induction-2l", out=tmp_path / "r", n_prompts=8, methods=["induction"])
    assert isinstance(result, cb.RunResult)
    build(tmp_path / "r", tmp_path / "lb")
    row = pd.read_csv(tmp_path / "lb" / "induction.csv").iloc[0]
    for name, value in result.metrics.items():
        assert row[name] == pytest.approx(value, rel=1e-5)
        assert row[f"{name}_stderr"] == pytest.approx(result.metrics_stderr[name], rel=1e-5)
    assert row["n"] == result.task.n_prompts == 8 and row["circuit_size"] == len(result.circuit.heads)


def test_stale_result_is_flagged_not_mixed(results, tmp_path):
    out, _ = results
    current = load_result(out / "toy-induction-2l" / "induction.json")
    save_result(current, tmp_path / "res" / "toy-induction-2l" / "induction.json")
    stale = current.model_copy(update={"task": current.task.model_copy(update={"content_hash": "0000000000000000"}),
                                       "model": current.model.model_copy(update={"name": "old-model"})})
    save_result(stale, tmp_path / "res" / "old-model" / "induction.json")
    (tmp_path / "res" / "broken").mkdir()
    (tmp_path / "res" / "broken" / "induction.json").write_text("{not json")
    summary = build(tmp_path / "res", tmp_path / "lb")
    assert summary["flagged"] == 2 and summary["models"] == ["toy-induction-2l"]
    readme = (tmp_path / "lb" / "README.md").read_text()
    table, flagged = readme.split("## Not included")
    assert "old-model" not in table and "old-model" in flagged and "stale" in flagged and "unreadable" in flagged


def test_undefined_faithfulness_is_never_rendered_as_a_number(results, tmp_path):
    out, _ = results
    result = with_undefined_faithfulness(load_result(out / "toy-induction-2l" / "induction.json"))
    save_result(result, tmp_path / "r" / "toy-induction-2l" / "induction.json")
    build(tmp_path / "r", tmp_path / "lb")
    csv = pd.read_csv(tmp_path / "lb" / "induction.csv")
    assert csv["faithfulness"].isna().all() and csv["faithfulness_undefined"].str.contains("within noise").all()
    assert re.search(r"\| undefined +\|", (tmp_path / "lb" / "induction.md").read_text())


def test_random_init_models_are_listed_as_baselines(random_init_results, tmp_path):
    build(random_init_results, tmp_path / "lb")
    md, index = (tmp_path / "lb" / "README.md").read_text(), (tmp_path / "lb" / "index.html").read_text()
    assert "## Random-init baselines" in md and "Sanity checks, not findings" in md and f"gpt2{RANDOM_INIT}" in md
    assert "<h2>Random-init baselines</h2>" in index and 'class="badge"' in index
    csv = pd.read_csv(tmp_path / "lb" / "ioi.csv")
    assert csv["model"].tolist() == [f"gpt2{RANDOM_INIT}"] and csv["baseline"].tolist() == [True]
    assert "Random-init baselines" in (tmp_path / "lb" / "ioi.html").read_text()


# ---- the committed leaderboards -----------------------------------------------------------------

def test_committed_toy_leaderboards_hold_non_trivial_circuits():
    sizes = {"toy-tasks": 8, "toy-induction-2l": 8}
    seen = 0
    for csv in LEADERBOARDS.glob("*.csv"):
        table = pd.read_csv(csv)
        for _, row in table[table["model"].isin(sizes)].iterrows():
            assert 0 < row["circuit_size"] < sizes[row["model"]], (csv.name, row["model"])
            seen += 1
    assert seen >= 13  # toy-tasks on the 12 suite tasks, toy-induction-2l on induction


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


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_leaderboard_refuses_a_folder_of_committed_tables(capsys, tmp_path, monkeypatch):
    cb.run("induction", "toy-induction-2l", out=tmp_path / "r", n_prompts=4, methods=["induction"])
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


# ---- what a leaderboard reads (issue 21) --------------------------------------------------------

def test_a_unit_is_listed_once_whatever_copies_lie_beside_it(results, tmp_path):
    import shutil

    from circuitbench.tables.leaderboard import collect

    out, _ = results
    folder = tmp_path / "res" / "toy-induction-2l"
    folder.mkdir(parents=True)
    for name in ("induction.json", "induction (copy).json", "induction.json.bak", "induction-old.json"):
        shutil.copy(out / "toy-induction-2l" / "induction.json", folder / name)
    shutil.copytree(folder, tmp_path / "res" / "toy-induction-2l (copy)")  # a copied folder
    (folder / "induction.eap.edges.json").write_text('{"cfg": {"n_layers": 2, "n_heads": 4}, "nodes": {}, '
                                                     '"edges": {}}')  # an edge-score sidecar: no result
    rows, flagged = collect(tmp_path / "res")
    assert len(rows) == 1 and rows["file"].tolist() == [str(folder / "induction.json")]
    assert sorted(flagged["file"]) == sorted(str(p) for p in (
        folder / "induction (copy).json", folder / "induction-old.json",
        tmp_path / "res" / "toy-induction-2l (copy)" / "induction.json",
        tmp_path / "res" / "toy-induction-2l (copy)" / "induction (copy).json",
        tmp_path / "res" / "toy-induction-2l (copy)" / "induction-old.json"))
    assert flagged["flag"].str.startswith("not at its own path").all()
    assert f"a copy of {folder / 'induction.json'}" in flagged["flag"].iloc[0]
    summary = build(tmp_path / "res", tmp_path / "lb")
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert summary["flagged"] == 5 and "unreadable" not in readme and "edges" not in readme.split("## Not included")[1]
    scores = (tmp_path / "lb" / "induction.md").read_text().split("### Diagnostics")[0]
    assert scores.count("| toy-induction-2l ") == 1  # one row (its report link names it again)


def test_other_schema_versions_and_non_finite_numbers_are_flagged_never_shown(results, tmp_path):
    import json

    from circuitbench.results.schema import SCHEMA_VERSION
    from circuitbench.tables.leaderboard import collect

    out, _ = results
    raw = json.loads((out / "toy-induction-2l" / "induction.json").read_text())
    for name, change in (("v1", {"schema_version": 1}), ("v99", {"schema_version": 99}),
                         ("vminus5", {"schema_version": -5}),
                         ("nan", {"metrics": {**raw["metrics"], "induction_loss": float("nan")}}),
                         ("inf", {"metrics": {**raw["metrics"], "sequence_loss": float("inf")}}),
                         ("current", {})):
        folder = tmp_path / "res" / name
        folder.mkdir(parents=True)
        (folder / "induction.json").write_text(json.dumps({**raw, **change, "model": {**raw["model"], "name": name}}))
    rows, flagged = collect(tmp_path / "res")
    assert rows["model"].tolist() == ["current"]
    reasons = dict(zip(flagged["model"], flagged["flag"]))
    assert reasons["v1"].startswith(f"schema_version: 1, not the current {SCHEMA_VERSION}")
    assert reasons["v99"].startswith("schema_version: 99") and reasons["vminus5"].startswith("schema_version: -5")
    assert reasons["nan"] == "metrics.induction_loss: not a finite number (NaN or infinite)"
    assert reasons["inf"] == "metrics.sequence_loss: not a finite number (NaN or infinite)"
    build(tmp_path / "res", tmp_path / "lb")
    table, apart = (tmp_path / "lb" / "README.md").read_text().split("## Not included")
    assert "v99" not in table and "v99" in apart and not re.search(r"\b(nan|inf)\b", table.lower())


# ---- leaderboards people read (issue 26) --------------------------------------------------------

def _node_names(circuit) -> list[str]:
    """The circuit's components as the overview names them, computed here from the result's fields."""
    return [f"a{layer}.h{head}" for layer, head in circuit.heads] + [f"m{layer}" for layer in circuit.mlps]


@pytest.fixture(scope="module")
def board(results, random_init_results, tmp_path_factory) -> Path:
    """A results folder with a unit of each section: a trained toy (induction), a known-answer task
    (tracr_hist on its compiled model) and a random-init baseline (ioi on the tiny GPT-2)."""
    import shutil

    out, _ = results
    folder = tmp_path_factory.mktemp("board")
    shutil.copytree(out / "toy-induction-2l", folder / "toy-induction-2l",
                    ignore=lambda _, names: [n for n in names if n.startswith("ind_trace")])
    shutil.copytree(random_init_results / f"gpt2{RANDOM_INIT}", folder / f"gpt2{RANDOM_INIT}")
    cb.run("tracr_hist", "tracr-hist", out=folder)
    return folder


def test_each_overview_row_is_its_units_result(board, tmp_path):
    from page_check import check_page_shell

    build(board, tmp_path / "lb")
    page = check_page_shell(tmp_path / "lb" / "index.html")
    seen = {}
    for section in ("Trained models", "Known answers", "Random-init baselines"):
        (table,) = page.section_tables(section)
        for record, cells in zip(page.records(table), page.tables[table]["cells"]):
            link = [link for cell in cells for link in cell["links"] if link.endswith("report.html")]
            _, folder, task, _ = link[0].split("/")
            r = load_result(board / folder / f"{task}.json")
            c = r.circuit
            seen[(folder, task)] = section
            assert record["task"] == r.task.name and record["model"].startswith(r.model.label)
            assert record["verdict"] == c.verdict and int(record["size"]) == len(c.heads) + len(c.mlps)
            assert record["circuit"] == ", ".join(_node_names(c))
            f = c.faithfulness
            if f.value is None:
                assert record["faithfulness (closest to 1 is best)"] == "undefined"
            else:
                low, high = c.panel[f.ablation].ci
                assert record["faithfulness (closest to 1 is best)"] == f"{f.value:.3f} [{low:.3f}, {high:.3f}]"
            main = r.task.main_metric
            assert record["main metric"].split()[0] == main  # one model per task here: nothing withheld
            assert record["value"] == f"{r.metrics[main]:.3f} ± {r.metrics_stderr[main]:.3f}"
            if section == "Known answers":
                found = r.recovery[c.method]
                assert record["recall ↑"] == (f"{found.recall:.3f} ({round(found.recall * found.n_reference)} of "
                                              f"{found.n_reference})")
            else:
                assert "recall ↑" not in record
    assert seen == {("toy-induction-2l", "induction"): "Trained models", ("tracr-hist", "tracr_hist"): "Known answers",
                    (f"gpt2{RANDOM_INIT}", "ioi"): "Random-init baselines"}
    md = (tmp_path / "lb" / "README.md").read_text()
    assert md.index("## Trained models") < md.index("## Known answers") < md.index("## Random-init baselines")


def test_every_page_is_a_document_whose_links_resolve(board, tmp_path):
    from page_check import check_page_shell, local_targets

    build(board, tmp_path / "lb")
    pages = sorted((tmp_path / "lb").rglob("*.html"))
    reports = [p for p in pages if p.name == "report.html"]
    assert len(reports) == 3 and len(pages) == 3 + 3 + 1  # a report and a task page per unit, the overview
    for path in pages:
        page = check_page_shell(path)
        targets = local_targets(path, page)
        assert targets, path
        for target in targets:
            assert target.is_file(), (path, target)
        if path.name == "report.html":  # pictures beside the report, not embedded; back to the overview
            assert not any(link.startswith("data:") for link in page.links)
            assert (tmp_path / "lb" / "index.html").resolve() in targets
    index = check_page_shell(tmp_path / "lb" / "index.html")
    assert {t.name for t in local_targets(tmp_path / "lb" / "index.html", index)} >= {
        "induction.html", "tracr_hist.html", "ioi.html", "report.html"}
    # the Markdown overview's links resolve too
    for link in re.findall(r"\]\(([^)]+)\)", (tmp_path / "lb" / "README.md").read_text()):
        assert (tmp_path / "lb" / link).is_file(), link


def test_task_pages_list_components_and_keep_diagnostics_apart(board, tmp_path):
    from page_check import check_page_shell

    build(board, tmp_path / "lb")
    r = load_result(board / "toy-induction-2l" / "induction.json")
    page = check_page_shell(tmp_path / "lb" / "induction.html")
    scores, diagnostics = page.section_tables("Trained models")
    (row,) = page.records(scores)
    assert row["circuit"] == ", ".join(_node_names(r.circuit))  # every component, never cut
    assert "faithfulness (closest to 1 is best)" in row and "faithfulness ↑" not in page.tables[scores]["headers"]
    assert not any(h.startswith("ρ") for h in page.tables[scores]["headers"])  # a diagnostic is no score
    rho = [h for h in page.tables[diagnostics]["headers"] if h.startswith("ρ")]
    assert len(rho) == len(r.method_agreement) and not any("↑" in h or "↓" in h for h in rho)
    # the legend names only what the page shows
    headers = {h for t in page.tables for h in t["headers"]}
    for term in page.terms:
        assert term in headers or (term == "ρ" and rho), term
    assert "answer_prob ↑" not in page.terms and "logit_diff ↑" not in page.terms


def test_a_note_is_printed_once(board, tmp_path):
    from circuitbench.tables.leaderboard import BASELINE_NOTE

    build(board, tmp_path / "lb")
    once = BASELINE_NOTE.replace("`", "")
    for name in ("index.html", "ioi.html"):
        text = (tmp_path / "lb" / name).read_text()
        assert text.count(once) == 1, name
    for name in ("README.md", "ioi.md"):
        assert (tmp_path / "lb" / name).read_text().count(BASELINE_NOTE) == 1, name
    assert "Sanity checks" not in (tmp_path / "lb" / "induction.html").read_text()  # no baseline on that page


@pytest.fixture(scope="module")
def ioi_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("ioi")
    return cb.run("ioi", "toy-tasks", out=out, n_prompts=8, methods=["previous_token"])


def _two_models(result, folder: Path, tokenizers: tuple[str, str]) -> Path:
    """The same ioi result as two models' units, loaded with these tokenizers."""
    for name, tokenizer in zip(("model-a", "model-b"), tokenizers):
        model = result.model.model_copy(update={"name": name, "source": f"/models/{name}", "tokenizer": tokenizer})
        save_result(result.model_copy(update={"model": model}), folder / name / "ioi.json")
    return folder


def _scores_headers(path: Path) -> list[str]:
    from page_check import read_page

    page = read_page(path)
    (scores, _) = page.section_tables("Trained models")
    return page.tables[scores]["headers"]


def _main_cells(path: Path) -> list[str]:
    from page_check import read_page

    page = read_page(path)
    (table,) = page.section_tables("Trained models")
    return [row["main metric"] for row in page.records(table)]


def test_logit_units_are_compared_only_within_a_vocabulary(ioi_result, tmp_path):
    shipped = "toy word-level (shipped with the checkpoint)"  # each checkpoint's own vocabulary
    different = _two_models(ioi_result, tmp_path / "different", (shipped, shipped))
    shared = _two_models(ioi_result, tmp_path / "shared", ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m"))
    build(different, tmp_path / "lb1", reports=False)
    headers = _scores_headers(tmp_path / "lb1" / "ioi.html")
    assert "logit_diff ↑" not in headers and "loss ↓" not in headers
    assert {"accuracy ↑", "answer_prob ↑", "answer_rank ↓"} <= set(headers)
    assert all(cell.startswith("accuracy") for cell in _main_cells(tmp_path / "lb1" / "index.html"))
    tables = (tmp_path / "lb1" / "ioi.md").read_text().split("## Legend")[0].split("## Trained models")[1]
    assert "logit_diff" not in tables
    build(shared, tmp_path / "lb2", reports=False)
    assert {"logit_diff ↑", "loss ↓"} <= set(_scores_headers(tmp_path / "lb2" / "ioi.html"))
    assert all(cell == "logit_diff ↑" for cell in _main_cells(tmp_path / "lb2" / "index.html"))
    # asked for: compared anyway (the CLI's --compare-logits)
    build(different, tmp_path / "lb3", reports=False, compare_logits=True)
    assert "logit_diff ↑" in _scores_headers(tmp_path / "lb3" / "ioi.html")
    csv = pd.read_csv(tmp_path / "lb1" / "ioi.csv")  # the numbers file keeps every figure, with the vocabulary
    assert csv["logit_diff"].notna().all() and csv["vocabulary"].nunique() == 2


def test_cli_compare_logits(ioi_result, capsys, tmp_path):
    shipped = "toy word-level (shipped with the checkpoint)"
    different = _two_models(ioi_result, tmp_path / "r", (shipped, shipped))
    args = ["leaderboard", "--results", str(different), "--out", str(tmp_path / "lb")]
    assert cli(capsys, *args)[0] == 0 and "logit_diff ↑" not in _scores_headers(tmp_path / "lb" / "ioi.html")
    assert cli(capsys, *args, "--compare-logits")[0] == 0
    assert "logit_diff ↑" in _scores_headers(tmp_path / "lb" / "ioi.html")


def test_committed_leaderboards_are_pages_whose_links_resolve():
    from page_check import check_page_shell, local_targets

    index = check_page_shell(LEADERBOARDS / "index.html")
    targets = local_targets(LEADERBOARDS / "index.html", index)
    reports = [t for t in targets if t.name == "report.html"]
    assert reports and all(t.is_file() for t in targets)
    units = sum(len(t["rows"]) for t in index.tables)
    assert len(set(reports)) == units  # one row and one report per (model, task) unit
    for task_page in {t for t in targets if t.name != "report.html"}:
        check_page_shell(task_page)
