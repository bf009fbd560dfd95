"""tables/report.py: a unit's report from real (small) runs: every plot type renders a valid PNG,
undefined faithfulness is said in words, never drawn or given as a number, and a random-init model
is marked as a baseline."""
from __future__ import annotations

import os

from circuitbench.circuits.circuit import RANDOM_INIT
from circuitbench.results.store import load_result
from circuitbench.tables.report import build_report

from helpers import with_undefined_faithfulness

PNG = b"\x89PNG\r\n\x1a\n"


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


def test_undefined_faithfulness_is_never_rendered_as_a_number(results, tmp_path):
    out, _ = results
    result = with_undefined_faithfulness(load_result(out / "toy-induction-2l" / "induction.json"))
    page = (tmp_path / "rep").joinpath("report.html")
    build_report(result, tmp_path / "rep")
    assert "Faithfulness undefined" in page.read_text() and "faithfulness.png" not in os.listdir(tmp_path / "rep")


def test_random_init_models_are_marked(random_init_results, tmp_path):
    build_report(load_result(random_init_results / f"gpt2{RANDOM_INIT}" / "ioi.json"), tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"gpt2{RANDOM_INIT}" in page and "class='badge'>random init" in page
    assert "class='baseline'" in page and "random-init weights" in page


def test_a_report_is_a_readable_document(results, tmp_path):
    from page_check import check_page_shell, local_targets

    out, _ = results
    result = load_result(out / "toy-induction-2l" / "induction.json")
    build_report(result, tmp_path / "one")  # `circuitbench report`: one self-contained file
    page = check_page_shell(tmp_path / "one" / "report.html")
    assert all(link.startswith("data:image/png;base64,") for link in page.links if not link.startswith("#"))
    # the leaderboard's: pictures beside the page, linked, and a way back
    build_report(result, tmp_path / "two", embed=False, back=(("../index.html", "overview"),))
    (tmp_path / "index.html").write_text("<!doctype html>\n")
    page = check_page_shell(tmp_path / "two" / "report.html")
    targets = local_targets(tmp_path / "two" / "report.html", page)
    assert (tmp_path / "index.html").resolve() in targets and all(t.is_file() for t in targets)
    assert {t.name for t in targets} >= {"heads_induction.png", "faithfulness.png"}
    # the circuit's components by the names the leaderboard uses, each note once
    c = result.circuit
    names = [f"a{layer}.h{head}" for layer, head in c.heads] + [f"m{layer}" for layer in c.mlps]
    text = (tmp_path / "two" / "report.html").read_text()
    assert ", ".join(names) in text
    for note in c.notes:
        assert text.count(note.replace("'", "&#x27;").replace('"', "&quot;")) <= 1
