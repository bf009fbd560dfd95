"""Faults that must end cleanly with nothing wrong kept: non-finite models, another model's
results under --resume or in the same folder, a result that cannot be written after the compute,
impossible prompt counts, surprising circuit rules, circuits from papers without a model shape."""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import circuitbench as cb
from circuitbench.errors import CircuitbenchError
from circuitbench.models.toy import ZOO_DIR
from circuitbench.results.store import load_result
from circuitbench.tables.leaderboard import build as build_leaderboard
from circuitbench.tables.report import write_report

from helpers import cli, library_log


def toy_copy(folder: Path, name: str = "toy-induction-2l", edit=None) -> Path:
    target = folder / name
    shutil.copytree(ZOO_DIR / name, target)
    if edit is not None:
        weights = load_file(str(target / "model.safetensors"))
        edit(weights)
        save_file(weights, str(target / "model.safetensors"))
    return target


def test_nan_weights_fail_the_unit_naming_the_metric_and_the_first_bad_layer(tmp_path):
    def nan_row(w):
        w["layers.1.attn.o.weight"][0] = float("nan")

    model = toy_copy(tmp_path / "m", edit=nan_row)
    result = cb.run("induction", str(model), out=tmp_path / "r", n_prompts=8, methods=["previous_token", "induction"],
                    fail_on_error=False)
    assert isinstance(result, cb.RunResult) and result.status == "failed" and result.metrics == {}
    path = tmp_path / "r" / "toy-induction-2l" / "induction.json"
    assert load_result(path).status == "failed"
    message = result.error.message
    assert "Metric 'induction_loss'" in message and "attention output of block 1" in message and "attn_out.1" in message
    assert "--dtype float32" not in message  # it already runs in float32
    # the failed unit is listed apart by the leaderboard and refused by report, both with one clear error
    with pytest.raises(CircuitbenchError, match=r"No current results .*1 flagged"):
        build_leaderboard(tmp_path / "r", tmp_path / "board")
    with pytest.raises(CircuitbenchError, match="the unit failed"):
        write_report(path)


def test_resume_never_keeps_another_models_result(tmp_path):
    a = toy_copy(tmp_path / "A")
    b = toy_copy(tmp_path / "B", edit=lambda w: w["layers.1.attn.o.weight"].mul_(0.5))
    options = dict(out=tmp_path / "r", n_prompts=8, methods=["induction"])
    cb.run("induction", str(a), **options)
    path = tmp_path / "r" / "toy-induction-2l" / "induction.json"
    first = path.read_bytes()
    # another directory with the same folder name: refused before any compute, with the fix
    with pytest.raises(CircuitbenchError) as refused:
        cb.run("induction", str(b), resume=True, **options)
    assert str(a) in str(refused.value) and "--out" in str(refused.value) and path.read_bytes() == first
    with pytest.raises(CircuitbenchError):  # without resume it would have overwritten A's result
        cb.run("induction", str(b), **options)
    assert path.read_bytes() == first
    # the same model, unchanged: kept byte for byte
    cb.run("induction", str(a), resume=True, **options)
    assert path.read_bytes() == first
    # retrained in place (same directory, other weights): recomputed, saying why
    weights = load_file(str(a / "model.safetensors"))
    weights["layers.1.attn.o.weight"].mul_(0.5)
    save_file(weights, str(a / "model.safetensors"))
    with library_log(logging.WARNING) as said:
        again = cb.run("induction", str(a), resume=True, **options)
    said = " ".join(said)
    assert "recomputing induction on toy-induction-2l" in said and "fingerprint" in said
    assert again.model.fingerprint != json.loads(first)["model"]["fingerprint"]
    assert load_result(path).model.fingerprint == again.model.fingerprint
    # another dtype: recomputed, saying why
    with library_log(logging.WARNING) as said:
        again = cb.run("induction", str(a), resume=True, dtype="bfloat16", **options)
    assert "dtype float32 ≠ bfloat16" in " ".join(said)
    assert again.model.dtype == "bfloat16" and load_result(path).model.dtype == "bfloat16"


def test_random_init_weights_get_their_own_folder(tmp_path, tiny_models):
    options = dict(out=tmp_path, n_prompts=2, methods=["previous_token"])
    pretrained = cb.run("ioi", str(tiny_models["gpt2"]), **options)
    random = cb.run("ioi", str(tiny_models["gpt2"]), init="random", seed=3, **options)
    assert pretrained.model.init == "pretrained" and random.model.init == "random" and random.model.init_seed == 3
    assert pretrained.model.fingerprint != random.model.fingerprint
    assert load_result(tmp_path / "gpt2" / "ioi.json").model == pretrained.model
    assert load_result(tmp_path / "gpt2@random-init" / "ioi.json").model == random.model


def test_a_result_that_cannot_be_written_is_kept_elsewhere(tmp_path, monkeypatch):
    from circuitbench.results import store

    real = store.write_atomic

    def disk_full(path, text):
        if "results" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(store, "write_atomic", disk_full)
    with pytest.raises(CircuitbenchError) as lost:
        cb.run("induction", "toy-induction-2l", out=tmp_path / "results", n_prompts=4, methods=["induction"])
    said = str(lost.value)
    assert "No space left on device" in said
    kept = Path(said.split("kept at ")[1].split(". ")[0].split()[0].rstrip(";"))
    assert load_result(kept).status == "complete" and load_result(kept).task.name == "induction"


def test_impossible_prompt_counts_answer_at_once_with_the_split_size(tmp_path):
    check = cb.validate_task("arith_k", n_prompts=1000)
    held = len(check.prompts.prompts)
    assert 0 < held < 1000
    assert f"holds {held} distinct prompts" in check.shortfall and "of the 1000 asked" in check.shortfall
    spec = tmp_path / "days_many.yaml"
    spec.write_text("name: days_many\ngenerator: {name: sequence, family: days, min_length: 3, max_length: 4}\n"
                    "n_prompts: 100000\nmetrics: [accuracy]\n")
    assert "of the 100000 asked" in cb.validate_task(str(spec)).shortfall


@pytest.mark.parametrize("rule, warning", [("{top_k: 20}", "top_k 20 exceeds the model's 8 heads"),
                                           ("{threshold: 1000.0}", "selects no head")])
def test_circuit_rules_that_select_everything_or_nothing_are_warned(tmp_path, rule, warning):
    spec = tmp_path / "rule_task.yaml"
    spec.write_text("name: rule_task\ngenerator: {name: induction}\nn_prompts: 8\nmetrics: [induction_loss]\n"
                    f"methods: [induction]\ncircuit: {rule}\n")
    result = cb.run(str(spec), "toy-induction-2l", out=tmp_path)
    assert warning in result.circuit.warnings[0]
    assert load_result(tmp_path / "toy-induction-2l" / "rule_task.json").circuit.warnings == result.circuit.warnings


def test_published_circuits_without_a_shape_compare_by_default(capsys, tmp_path):
    for name, heads in (("numerals", [[9, 1], [10, 7]]), ("numwords", [[9, 1], [4, 4]]), ("months", [[9, 1]])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"heads": heads}))
    files = [tmp_path / f"{n}.json" for n in ("numerals", "numwords", "months")]
    matrix = cb.overlap_matrix([cb.load_circuit(f) for f in files], sources=files)
    assert matrix.values["jaccard"][0][1] == pytest.approx(1 / 3) and matrix.values["overlap_coefficient"][0][2] == 1.0
    assert set(matrix.skipped) == {"hypergeometric_p", "spearman"} and "hypergeometric_p" not in matrix.metrics
    code, _, err = cli(capsys, "overlap", *map(str, files), "--json")  # the CLI says how to give them a shape
    assert code == 0 and "--shape" in err
    spec = cb.model_registry()["gpt2-small"]  # 12 × 12
    matrix = cb.overlap_matrix([cb.load_circuit(f).with_shape(spec.n_layers, spec.n_heads) for f in files],
                               sources=files)
    assert set(matrix.skipped) == {"spearman"} and 0 < matrix.values["hypergeometric_p"][0][1] < 0.05


def test_two_models_of_one_name_in_a_leaderboard_are_told_apart(tmp_path):
    for folder in ("A", "B"):
        model = toy_copy(tmp_path / folder,
                         edit=None if folder == "A" else lambda w: w["layers.1.attn.o.weight"].mul_(0.5))
        cb.run("induction", str(model), out=tmp_path / f"r{folder}", n_prompts=4, methods=["induction"])
    merged = tmp_path / "merged"
    shutil.copytree(tmp_path / "rA" / "toy-induction-2l", merged / "toy-induction-2l")
    shutil.copytree(tmp_path / "rB" / "toy-induction-2l", merged / "toy-induction-2l-b")
    build_leaderboard(merged, tmp_path / "board")
    table = (tmp_path / "board" / "induction.md").read_text()
    assert str(tmp_path / "A" / "toy-induction-2l") in table and str(tmp_path / "B" / "toy-induction-2l") in table


def test_resume_recomputes_a_result_scored_against_another_reference(tmp_path):
    options = dict(out=tmp_path / "r", n_prompts=8, methods=["induction"], cache=False)
    path = tmp_path / "r" / "toy-induction-2l" / "induction.json"
    assert cb.run("induction", "toy-induction-2l", **options).reference is None
    reference = tmp_path / "known.json"
    reference.write_text(json.dumps({"heads": [[1, 0], [1, 1]]}))
    # a reference given now: the result made without one has no recovery scores, so it is not kept
    with library_log(logging.WARNING) as said:
        scored = cb.run("induction", "toy-induction-2l", resume=True, reference=str(reference), **options)
    said = " ".join(said)
    assert "recomputing induction on toy-induction-2l" in said and "without a reference circuit" in said
    assert scored.reference is not None and scored.reference.heads == [(1, 0), (1, 1)] and scored.recovery
    assert load_result(path).reference == scored.reference
    first = path.read_bytes()
    cb.run("induction", "toy-induction-2l", resume=True, reference=str(reference), **options)
    assert path.read_bytes() == first
    reference.write_text(json.dumps({"heads": [[0, 1]]}))  # the same file, another circuit
    with library_log(logging.WARNING) as said:
        again = cb.run("induction", "toy-induction-2l", resume=True, reference=str(reference), **options)
    assert "the reference circuit changed" in " ".join(said)
    assert again.reference.heads == [(0, 1)] and load_result(path).reference.heads == [(0, 1)]
    with library_log(logging.WARNING) as said:  # and without it again
        again = cb.run("induction", "toy-induction-2l", resume=True, **options)
    assert "this run has no reference circuit" in " ".join(said)
    assert again.reference is None and load_result(path).reference is None


PLUGIN = '''import torch

from circuitbench.plugins import register_method, register_metric

VALUE = 1.0


def constant_scores(model, prompts, ctx):
    return torch.full((model.n_layers, model.n_heads), VALUE).numpy()


def constant_metric(logits, batch):
    return torch.full((logits.shape[0],), VALUE)


register_method("constant_scores", constant_scores, description="every head scores VALUE")
register_metric("constant_metric", constant_metric, higher_is_better=True, needs_answer=False)
'''


def test_resume_and_cache_recompute_when_a_plugins_code_changes(tmp_path):
    """A plugin method and metric edited between runs: --resume recomputes (saying why) and the
    cache does not serve the old metric values; unchanged, the result is kept byte for byte."""
    import os
    import subprocess
    import sys

    plugin = tmp_path / "constant_plugin.py"
    plugin.write_text(PLUGIN)
    task = tmp_path / "constant_task.yaml"
    task.write_text("name: constant_task\ngenerator: {name: induction}\nn_prompts: 6\n"
                    "metrics: [induction_loss, constant_metric]\nmethods: [constant_scores]\n")
    cmd = [sys.executable, "-m", "circuitbench", "run", "--task", str(task), "--model", "toy-induction-2l", "--plugin",
           str(plugin), "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"), "--resume", "-q"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    path = tmp_path / "r" / "toy-induction-2l" / "constant_task.json"

    def run() -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    run()
    first = load_result(path)
    assert first.metrics["constant_metric"] == 1.0 and first.head_scores["constant_scores"][0][0] == 1.0
    code = first.run.plugin_code["method:constant_scores"]
    assert code.file == str(plugin.resolve()) and code.code_sha256 and "metric:constant_metric" in first.run.plugin_code
    before = path.read_bytes()
    assert "recomputing" not in run().stderr and path.read_bytes() == before  # unchanged: kept

    plugin.write_text(PLUGIN.replace("VALUE = 1.0", "VALUE = 2.0"))
    proc = run()
    assert "recomputing constant_task on toy-induction-2l" in proc.stderr
    assert "the code of plugin" in proc.stderr and "constant_plugin.py" in proc.stderr
    again = load_result(path)
    assert again.head_scores["constant_scores"][0][0] == 2.0
    assert again.metrics["constant_metric"] == 2.0  # not the cached values of the old code
    assert again.run.plugin_code["method:constant_scores"].code_sha256 != code.code_sha256
