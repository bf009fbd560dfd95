"""circuitbench/pipeline/compare.py: the grid run (resumed), then the overlap of its circuits; the
same matrix as `overlap_matrix` over those circuits computed directly."""
from __future__ import annotations

import pytest
import yaml

from circuitbench.circuits.overlap import overlap_matrix
from circuitbench.circuits.overlap_settings import OverlapSettings
from circuitbench.errors import CircuitbenchError
from circuitbench.pipeline.compare import compare
from circuitbench.results.store import load_circuit
from circuitbench.specs.options import RunOptions

MODEL = "toy-induction-2l"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for name, symbols, rule in (("ind_a", 30, {"top_k": 4}), ("ind_b", 40, {"top_k": 3}), ("ind_none", 30, None)):
        spec = {"name": name, "generator": {"name": "induction", "n_symbols": symbols}, "n_prompts": 8,
                "metrics": ["induction_loss"], "methods": ["induction"]}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({**spec, **({"circuit": rule} if rule else {})}))
    return str(folder)


def test_compare_equals_overlap_matrix_of_the_units_circuits(tasks, tmp_path):
    options = RunOptions(out=str(tmp_path), cache=False)
    settings = OverlapSettings(permutations=30, seed=4)
    outcomes, matrix = compare(MODEL, ["ind_a", "ind_b"], options=options, settings=settings, include_paths=(tasks,))
    assert [(o.model, o.task, o.failed, o.skipped) for o in outcomes] == [(MODEL, "ind_a", False, False),
                                                                          (MODEL, "ind_b", False, False)]
    paths = [tmp_path / MODEL / "ind_a.json", tmp_path / MODEL / "ind_b.json"]
    assert [o.path for o in outcomes] == paths
    # the same as reading the written circuits back and calling the library's overlap directly
    direct = overlap_matrix([load_circuit(p) for p in paths], None, settings, sources=paths)
    assert matrix == direct
    assert matrix.metrics == ["jaccard", "overlap_coefficient", "hypergeometric_p", "spearman"]  # overlap's defaults
    assert matrix.values["jaccard"][0][1] == 0.75  # top 4 vs top 3 layer-1 induction heads
    # a second call resumes (the units are kept, not rerun) and names its metrics
    again, only = compare(MODEL, ["ind_a", "ind_b"], options=options, settings=settings, metrics=["jaccard"],
                          include_paths=(tasks,))
    assert all(o.skipped for o in again) and only.metrics == ["jaccard"]
    assert only.values["jaccard"] == direct.values["jaccard"]


def test_compare_wants_one_model_and_tasks_or_models_and_one_task(tasks, tmp_path):
    for kwargs in ({"model": MODEL}, {"model": MODEL, "tasks": ["ind_a"], "models": [MODEL], "task": "ind_a"}, {}):
        with pytest.raises(CircuitbenchError, match="give either --model M --tasks T1,T2 or --models M1,M2 --task T"):
            compare(**kwargs, options=RunOptions(out=str(tmp_path)), include_paths=(tasks,))
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_a_unit_without_a_circuit_is_named(tasks, tmp_path):
    with pytest.raises(CircuitbenchError, match=r"no circuit in \['toy-induction-2l/ind_none'\]"):
        compare(models=[MODEL], task="ind_none", options=RunOptions(out=str(tmp_path), cache=False),
                include_paths=(tasks,))
