"""Faults that must end cleanly with nothing wrong kept: non-finite models, another model's
results under --resume or in the same folder, a result that cannot be written after the compute,
impossible prompt counts, surprising circuit rules, circuits from papers without a model shape."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from circuitbench.models.toy import ZOO_DIR
from circuitbench.results.store import load_result

from helpers import cli


def toy_copy(folder: Path, name: str = "toy-induction-2l", edit=None) -> Path:
    target = folder / name
    shutil.copytree(ZOO_DIR / name, target)
    if edit is not None:
        weights = load_file(str(target / "model.safetensors"))
        edit(weights)
        save_file(weights, str(target / "model.safetensors"))
    return target


def test_nan_weights_fail_the_unit_naming_the_metric_and_the_first_bad_layer(capsys, tmp_path):
    def nan_row(w):
        w["layers.1.attn.o.weight"][0] = float("nan")

    model = toy_copy(tmp_path / "m", edit=nan_row)
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", str(model), "--n", "8", "--out",
                       str(tmp_path / "r"), "-q", "--methods", "previous_token,induction")
    assert code == 2 and "Traceback" not in err
    result = load_result(tmp_path / "r" / "toy-induction-2l" / "induction.json")
    assert result.status == "failed" and result.metrics == {}
    message = result.error.message
    assert "Metric 'induction_loss'" in message and "attention output of block 1" in message and "attn_out.1" in message
    assert "--dtype float32" not in message  # it already runs in float32
    # the failed unit is listed apart by the leaderboard and refused by report, both cleanly
    code, _, err = cli(capsys, "leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "board"))
    assert code == 2 and "No current results" in err and "1 flagged" in err
    code, _, err = cli(capsys, "report", str(tmp_path / "r" / "toy-induction-2l" / "induction.json"))
    assert code == 2 and "the unit failed" in err


def test_resume_never_keeps_another_models_result(capsys, tmp_path):
    a = toy_copy(tmp_path / "A")
    b = toy_copy(tmp_path / "B", edit=lambda w: w["layers.1.attn.o.weight"].mul_(0.5))
    out = str(tmp_path / "r")
    base = ["run", "--task", "induction", "--n", "8", "--out", out, "-q", "--methods", "induction"]
    assert cli(capsys, *base, "--model", str(a))[0] == 0
    path = tmp_path / "r" / "toy-induction-2l" / "induction.json"
    first = path.read_bytes()
    # another directory with the same folder name: refused before any compute, with the fix
    code, _, err = cli(capsys, *base, "--model", str(b), "--resume")
    assert code == 2 and str(a) in err and "--out" in err and path.read_bytes() == first
    code, _, err = cli(capsys, *base, "--model", str(b))  # without --resume it would have overwritten A's result
    assert code == 2 and path.read_bytes() == first
    # the same model, unchanged: kept byte for byte
    assert cli(capsys, *base, "--model", str(a), "--resume")[0] == 0 and path.read_bytes() == first
    # retrained in place (same directory, other weights): recomputed, saying why
    weights = load_file(str(a / "model.safetensors"))
    weights["layers.1.attn.o.weight"].mul_(0.5)
    save_file(weights, str(a / "model.safetensors"))
    code, _, err = cli(capsys, *base[:-1], "induction", "--model", str(a), "--resume")
    assert code == 0 and "recomputing induction on toy-induction-2l" in err and "fingerprint" in err
    again = load_result(path)
    assert again.model.fingerprint != json.loads(first)["model"]["fingerprint"]
    # another dtype: recomputed, saying why
    code, _, err = cli(capsys, *base, "--model", str(a), "--resume", "--dtype", "bfloat16")
    assert code == 0 and "dtype float32 ≠ bfloat16" in err and load_result(path).model.dtype == "bfloat16"


def test_random_init_weights_get_their_own_folder(capsys, tmp_path, tiny_models):
    args = ["run", "--task", "ioi", "--n", "2", "--out", str(tmp_path), "-q", "--methods", "previous_token"]
    assert cli(capsys, *args, "--model", str(tiny_models["gpt2"]))[0] == 0
    assert cli(capsys, *args, "--model", str(tiny_models["gpt2"]), "--init", "random", "--seed", "3")[0] == 0
    pretrained = load_result(tmp_path / "gpt2" / "ioi.json")
    random = load_result(tmp_path / "gpt2@random-init" / "ioi.json")
    assert pretrained.model.init == "pretrained" and random.model.init == "random" and random.model.init_seed == 3
    assert pretrained.model.fingerprint != random.model.fingerprint


def test_a_result_that_cannot_be_written_is_kept_elsewhere(capsys, tmp_path, monkeypatch):
    from circuitbench.results import store

    real = store.write_atomic

    def disk_full(path, text):
        if "results" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(store, "write_atomic", disk_full)
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "4", "--out",
                       str(tmp_path / "results"), "-q", "--methods", "induction")
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    kept = Path(err.split("kept at ")[1].split(". ")[0].split()[0].rstrip(";"))
    assert load_result(kept).status == "complete" and load_result(kept).task.name == "induction"


def test_impossible_prompt_counts_answer_at_once_with_the_split_size(capsys, tmp_path):
    code, out, _ = cli(capsys, "validate", "arith_k", "--n", "1000", "--show", "0")
    assert code == 0 and "holds" in out and "of the 1000 asked" in out
    held = int(out.split("holds ")[1].split()[0])
    assert 0 < held < 1000
    spec = tmp_path / "days_many.yaml"
    spec.write_text("name: days_many\ngenerator: {name: sequence, family: days, min_length: 3, max_length: 4}\n"
                    "n_prompts: 100000\nmetrics: [accuracy]\n")
    code, out, _ = cli(capsys, "validate", str(spec), "--show", "0")
    assert code == 0 and "of the 100000 asked" in out


@pytest.mark.parametrize("rule, warning", [("{top_k: 20}", "top_k 20 exceeds the model's 8 heads"),
                                           ("{threshold: 1000.0}", "selects no head")])
def test_circuit_rules_that_select_everything_or_nothing_are_warned(capsys, tmp_path, rule, warning):
    spec = tmp_path / "rule_task.yaml"
    spec.write_text("name: rule_task\ngenerator: {name: induction}\nn_prompts: 8\nmetrics: [induction_loss]\n"
                    f"methods: [induction]\ncircuit: {rule}\n")
    code, out, err = cli(capsys, "run", "--task", str(spec), "--model", "toy-induction-2l", "--out", str(tmp_path),
                         "-q")
    assert code == 0 and warning in out
    assert warning in load_result(tmp_path / "toy-induction-2l" / "rule_task.json").circuit.warnings[0]


def test_published_circuits_without_a_shape_compare_by_default(capsys, tmp_path):
    for name, heads in (("numerals", [[9, 1], [10, 7]]), ("numwords", [[9, 1], [4, 4]]), ("months", [[9, 1]])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"heads": heads}))
    files = [str(tmp_path / f"{n}.json") for n in ("numerals", "numwords", "months")]
    code, out, err = cli(capsys, "overlap", *files, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["jaccard"][0][1] == pytest.approx(1 / 3) and result["overlap_coefficient"][0][2] == 1.0
    assert set(result["skipped"]) == {"hypergeometric_p", "spearman"} and "hypergeometric_p" not in result
    assert "--shape" in err
    code, out, _ = cli(capsys, "overlap", *files, "--json", "--model", "gpt2-small")  # 12 × 12
    result = json.loads(out)
    assert code == 0 and set(result["skipped"]) == {"spearman"} and 0 < result["hypergeometric_p"][0][1] < 0.05


def test_two_models_of_one_name_in_a_leaderboard_are_told_apart(capsys, tmp_path):
    for folder in ("A", "B"):
        model = toy_copy(tmp_path / folder,
                         edit=None if folder == "A" else lambda w: w["layers.1.attn.o.weight"].mul_(0.5))
        assert cli(capsys, "run", "--task", "induction", "--model", str(model), "--n", "4", "--out",
                   str(tmp_path / f"r{folder}"), "-q", "--methods", "induction")[0] == 0
    merged = tmp_path / "merged"
    shutil.copytree(tmp_path / "rA" / "toy-induction-2l", merged / "toy-induction-2l")
    shutil.copytree(tmp_path / "rB" / "toy-induction-2l", merged / "toy-induction-2l-b")
    assert cli(capsys, "leaderboard", "--results", str(merged), "--out", str(tmp_path / "board"))[0] == 0
    table = (tmp_path / "board" / "induction.md").read_text()
    assert str(tmp_path / "A" / "toy-induction-2l") in table and str(tmp_path / "B" / "toy-induction-2l") in table
