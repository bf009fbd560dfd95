"""Leaderboards and reports from real (small) runs: tables hold the runs' numbers, every plot
type renders a valid PNG, stale results are flagged apart."""

import pytest

from circuitbench.pipeline.grid import run
from circuitbench.results.store import load_result, save_result
from circuitbench.specs.options import RunOptions
from circuitbench.tables.leaderboard import build
from circuitbench.tables.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    run("induction", "toy-induction-2l", RunOptions(n_prompts=12, out=str(out), batch_size=12))
    spec_opts = RunOptions(n_prompts=6, out=str(out), methods=["previous_token", "causal_tracing"])
    # a second task on the toy: causal tracing maps for the report
    import yaml

    task = tmp_path_factory.mktemp("tasks") / "ind_trace.yaml"
    task.write_text(yaml.safe_dump({"name": "ind_trace", "generator": {"name": "induction", "n_symbols": 40},
                                    "metrics": ["induction_loss"], "methods": ["previous_token", "causal_tracing"],
                                    "circuit": {"top_k": 2}}))
    run(str(task), "toy-induction-2l", spec_opts)
    return out, task


def test_leaderboard_tables_hold_the_results(results, tmp_path):
    out, task = results
    summary = build(out, tmp_path, (str(task.parent),))
    result = load_result(out / "toy-induction-2l" / "induction.json")
    md = (tmp_path / "induction.md").read_text()
    assert f"{result.metrics['induction_loss']:.3f} ± {result.metrics_stderr['induction_loss']:.3f}" in md
    assert f"{result.circuit.faithfulness:.3f}" in md and "induction_loss ↓" in md
    csv = (tmp_path / "induction.csv").read_text()
    assert csv.splitlines()[0].startswith("model,")
    overview = (tmp_path / "README.md").read_text()
    assert "toy-induction-2l" in overview and f"{result.metrics['induction_loss']:.3f}" in overview
    page = (tmp_path / "index.html").read_text()
    assert "<table" in page and "onclick" in page
    assert summary["flagged"] == 0


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


def test_every_plot_type_renders(results, tmp_path):
    out, _ = results
    files = build_report(load_result(out / "toy-induction-2l" / "induction.json"), tmp_path / "a")
    names = {f.name for f in files}
    assert {"heads_induction.png", "heads_activation_patching.png", "faithfulness.png", "report.html"} <= names
    files += build_report(load_result(out / "toy-induction-2l" / "ind_trace.json"), tmp_path / "b")
    assert any(f.name.startswith("trace_") for f in files)
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG and f.stat().st_size > 2000
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == sum(1 for f in files if f.parent.name == "a" and f.suffix == ".png")


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
    assert (tmp_path / "lb" / "induction.md").read_text().count("toy-induction-2l") == 1


def test_other_schema_versions_and_non_finite_numbers_are_flagged_never_shown(results, tmp_path):
    import json
    import re

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
