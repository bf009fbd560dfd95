"""Models with known circuits (the tracr zoo, and a program imported at test time): every result
carries recovery scores, at least one method recovers every known circuit, and what patching
cannot see is said rather than passed off as a complete circuit."""
from __future__ import annotations

import pytest

from circuitbench.results.store import load_result

from helpers import cli

ZOO = {"tracr_reverse": "tracr-reverse", "tracr_hist": "tracr-hist", "tracr_sort_unique": "tracr-sort-unique",
       "tracr_detect_abc": "tracr-detect-abc"}


def run_known(capsys, tmp_path, task: str, model: str):
    code, out, err = cli(capsys, "run", "--task", task, "--model", model, "--out", str(tmp_path), "-q", "--no-cache")
    assert code == 0, err[-2000:]
    return load_result(tmp_path / model / f"{task}.json"), out


@pytest.mark.parametrize("task", sorted(ZOO))
def test_some_default_method_recovers_every_tracr_circuit(capsys, tmp_path, task):
    result, out = run_known(capsys, tmp_path, task, ZOO[task])
    assert result.reference is not None and result.reference.source.endswith("circuit.json")
    assert result.recovery and max(r.recall for r in result.recovery.values()) == 1.0
    kept = result.recovery[result.circuit.method]
    assert kept.recall == 1.0 and kept.precision == 1.0  # the most faithful circuit is the known one
    assert set(result.circuit.faithfulness.by_ablation) == {"mean_counterfactual", "zero"}
    # the run summary has a recall column for a unit with a reference: all of it found
    assert "recall" in out and f"1.00 ({kept.n_reference} of {kept.n_reference})" in out
    # node level: the MLPs are scored and some method ranks every reference node (heads and MLPs) first
    nodes = len(result.reference.heads) + len(result.reference.mlps)
    assert result.reference.mlps and {r.n_reference for r in result.node_recovery.values()} == {nodes}
    assert max(r.recall for r in result.node_recovery.values()) == 1.0


def test_a_head_that_reads_only_the_length_is_found_and_what_patching_misses_is_said(capsys, tmp_path):
    """tracr reverse: head 0.0 reads only the sequence length; same-length counterfactuals leave its
    output unchanged, so patching and attribution cannot see it. Ablation can; method auto keeps
    ablation's circuit, and the result says which reference head patching cannot see."""
    result, out = run_known(capsys, tmp_path, "tracr_reverse", "tracr-reverse")
    assert result.reference.invisible == [(0, 0)]
    assert any("a0.h0 have identical clean and counterfactual outputs" in w for w in result.warnings)
    assert result.recovery["activation_patching"].recall == 0.5 and result.recovery["ablation"].recall == 1.0
    assert result.circuit.method == "ablation" and (0, 0) in map(tuple, result.circuit.heads)
    patching = next(c for c in result.circuit.candidates if c.method == "activation_patching")
    # the incomplete circuit is not called faithful
    assert patching.faithfulness < 0.99 < result.circuit.faithfulness.value


def test_imported_program_then_a_file_task_gives_recovery(capsys, tmp_path):
    """A RASP program not in the zoo: import it, point a `file` task at the prompts it wrote, run."""
    model_dir = tmp_path / "count_model"
    code, _, err = cli(capsys, "import-tracr", "count_less_freq", "--vocab", "a,b,c", "--max-seq-len", "4", "--out",
                       str(model_dir))
    assert code == 0, err[-2000:]
    task = tmp_path / "length_task.yaml"
    task.write_text(f"name: length_task\ngenerator: {{name: file, path: {model_dir / 'prompts.jsonl'}}}\n"
                    "n_prompts: all\nmetrics: [logit_diff, accuracy]\nmethods: [ablation, activation_patching]\n"
                    "circuit: {top_k: 2}\n")
    code, _, err = cli(capsys, "run", "--task", str(task), "--model", str(model_dir), "--out", str(tmp_path / "r"),
                       "-q", "--no-cache")
    assert code == 0, err[-2000:]
    result = load_result(tmp_path / "r" / "count_model" / "length_task.json")
    assert result.metrics["accuracy"] == 1.0 and result.recovery
    assert result.reference.heads and max(r.recall for r in result.recovery.values()) == 1.0
