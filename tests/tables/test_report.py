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
