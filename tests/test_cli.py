import json
import subprocess
import sys

import pytest

from circuitbench.results.schema import RunResult
from circuitbench.results.store import load_result

from helpers import cli


def test_run_toy_end_to_end_and_resume(capsys, tmp_path):
    out = tmp_path / "res"
    code, stdout, _ = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l",
                          "--n", "12", "--out", str(out), "-q")
    assert code == 0, stdout
    path = out / "toy-induction-2l" / "induction.json"
    result = RunResult.model_validate(json.loads(path.read_text()))
    assert result.status == "complete" and result.task.n_prompts == 12 and result.task.n_dropped == 0
    assert result.model.n_layers == 2 and result.model.init == "pretrained"
    assert result.run.peak_memory_mb > 0 and result.run.versions["torch"]
    assert result.metrics["induction_loss"] < result.metrics_corrupted["induction_loss"]
    assert len(result.head_scores["induction"]) == 2 and len(result.head_scores["induction"][0]) == 4
    heads = set(map(tuple, result.circuit.heads)) if result.circuit else set()
    # method auto: on this toy, the previous-token head and the induction heads
    assert (0, 2) in heads and len(heads & {(1, h) for h in range(4)}) >= 3
    # method auto keeps the candidate whose worst case |1 − f| over the ablation panel is smallest
    kept = next(k for k in result.circuit.candidates if k.method == result.circuit.method)
    assert kept.worst_case == min(k.worst_case for k in result.circuit.candidates)
    assert result.circuit.faithfulness.value is not None and result.circuit.faithfulness.cpr is not None
    assert "induction_loss" in stdout


def test_fibonacci_on_toy_vocab_is_refused_with_counts(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "fibonacci", "--model", "toy-induction-2l", "--out", str(tmp_path),
                       "-q")
    assert code == 2 and "Traceback" not in err
    assert "would be dropped" in err and "outside the model's vocabulary" in err
    # the unit is recorded as failed (a user mistake), so --resume retries it and leaderboards list it apart
    failed = load_result(tmp_path / "toy-induction-2l" / "fibonacci.json")
    assert failed.status == "failed" and failed.error.user_error and "would be dropped" in failed.error.message
    assert failed.metrics == {} and failed.task.spec["name"] == "fibonacci"
    assert set(failed.run.options) == {"batch_size", "cache_dir", "threads", "max_memory"}
    assert failed.run.overrides == {}


def test_a_failed_units_message_is_printed_once(capsys, tmp_path):
    """Not as a log line and again in the summary: once, in the summary's table of failed units."""
    code, out, err = cli(capsys, "run", "--task", "fibonacci,induction", "--model", "toy-induction-2l", "--n", "6",
                         "--methods", "previous_token", "--out", str(tmp_path))
    failed = load_result(tmp_path / "toy-induction-2l" / "fibonacci.json")
    assert code == 2 and "would be dropped" in failed.error.message
    printed = " ".join((out + err).split())  # the table wraps the message over lines
    assert printed.count("would be dropped") == 1 and "ERROR" not in err
    assert "1 of 2 units failed" in printed


def test_resume_skips_finished_units_byte_identical(capsys, tmp_path):
    args = ["run", "--task", "induction", "--model", "toy-induction-2l", "--n", "8", "--out", str(tmp_path), "-q"]
    assert cli(capsys, *args)[0] == 0
    path = tmp_path / "toy-induction-2l" / "induction.json"
    before = path.read_bytes()
    code, stdout, _ = cli(capsys, *args, "--resume")
    assert code == 0 and "--resume" in stdout
    assert path.read_bytes() == before
    # a different spec (n) is not "finished": it reruns
    assert cli(capsys, *args[:-3], "--n", "9", "--out", str(tmp_path), "-q", "--resume")[0] == 0
    assert load_result(path).task.n_prompts == 9


def test_random_init_hf_model_run(capsys, tmp_path, tiny_models):
    code, stdout, _ = cli(capsys, "run", "--task", "fibonacci", "--model", str(tiny_models["gpt_neo"]),
                          "--n", "8", "--out", str(tmp_path), "-q", "--methods", "previous_token")
    assert code == 0, stdout
    result = load_result(tmp_path / "gpt_neo" / "fibonacci.json")
    assert result.task.n_dropped == 0 and 0.0 <= result.metrics["accuracy"] <= 1.0
    assert "previous_token" in result.head_scores and result.run.batch_size == 32


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "--task", "fibonaci", "--model", "toy-induction-2l"], "Did you mean 'fibonacci'"),
        (["run", "--task", "induction", "--model", "toy-induction-2"], "Did you mean 'toy-induction-2l'"),
        (["run", "--task", "induction", "--model", "toy-induction-2l", "--n", "0"], "--n"),
        (["run", "--task", "induction", "--model", "toy-induction-2l", "--batch-size", "lots"], "--batch-size"),
        (["run", "--task", "induction", "--model", "toy-induction-2l", "--init", "sideways"], "--init"),
        (["run", "--task", "induction", "--model", "toy-induction-2l", "--methods", "inductoin"],
         "Did you mean 'induction'"),
        (["ls", "widgets"], "choose one of"),
    ],
)
def test_bad_input_exit_2_one_message(capsys, tmp_path, args, expected):
    code, _, err = cli(capsys, *args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert code == 2, err
    assert expected in err and "Traceback" not in err


def test_bad_yaml_field_via_cli(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ngenerator: {name: fibonacci}\nmetrics: [accuracy]\nmetric: [x]\n")
    code, _, err = cli(capsys, "validate", str(bad))
    assert code == 2 and "bad.yaml" in err and "metric: unknown field" in err


def test_validate_reports_tokenizer_drops(capsys, tiny_models):
    code, out, _ = cli(capsys, "validate", "fibonacci", "--tokenizer", str(tiny_models["gpt2"]))
    assert code == 0 and "kept 64 of 64, dropped 0" in out
    code, out, _ = cli(capsys, "validate", "induction", "--model", "toy-induction-2l")
    assert code == 0 and "dropped 0" in out


def test_ls_lists_registry(capsys):
    code, out, _ = cli(capsys, "ls", "models")
    assert code == 0 and "gpt-neo-2.7B" in out and "pythia-2.8b" in out
    code, out, _ = cli(capsys, "ls", "methods")
    assert code == 0 and "previous_token" in out


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "circuitbench.cli", "run", "--task", "nope", "--model", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Unknown task 'nope'" in proc.stderr


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    from circuitbench import files

    path = tmp_path / "r.json"
    path.write_text("old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(path, "new")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_results_do_not_depend_on_batch_size():
    from circuitbench.models.loading import load_model
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.options import ExecutionOptions

    model = load_model("toy-induction-2l", device="cpu")
    spec = load_task("induction").model_copy(update={"n_prompts": 20})
    # cache off: a cached second run would reuse the first one's forwards instead of testing batching
    results = [run_unit(spec, model, ExecutionOptions(batch_size=bs)) for bs in (1, 7, "auto")]
    assert results[2].run.batch_size >= 1
    for other in results[1:]:
        for name, value in results[0].metrics.items():
            assert abs(other.metrics[name] - value) < 1e-4
        for method, scores in results[0].head_scores.items():
            diff = max(abs(a - b) for ra, rb in zip(scores, other.head_scores[method]) for a, b in zip(ra, rb))
            assert diff < 1e-4


def test_mistyped_model_name_suggests_registry_name(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "fibonacci", "--model", "gpt2-smal", "--out", str(tmp_path))
    assert code == 2 and "Did you mean 'gpt2-small'" in err and "Traceback" not in err


def test_method_needing_undefined_positions_fails_before_compute(capsys, tmp_path):
    spec = tmp_path / "ind_s2.yaml"
    spec.write_text("name: ind_s2\ngenerator: {name: induction}\nmetrics: [induction_loss]\n"
                    "methods: [activation_patching]\nmethod_options:\n  activation_patching: {positions: [S2]}\n")
    code, _, err = cli(capsys, "run", "--task", str(spec), "--model", "toy-induction-2l", "--out", str(tmp_path), "-q")
    assert code == 2 and "positions ['S2']" in err and "Traceback" not in err


def test_version_is_printed(capsys):
    import circuitbench

    code, out, _ = cli(capsys, "--version")
    assert code == 0 and circuitbench.__version__ in out
