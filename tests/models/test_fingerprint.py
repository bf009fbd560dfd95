"""Local weights are identified by their content: weights replaced with the same size and mtime
(`cp -p`, `rsync -a`, a restored backup) are another model, for the fingerprint, the activation
cache and --resume alike. Each file's sha256 is remembered by its stamp, and recomputed when it
changes; nothing is written anywhere unless a memo folder (the cache root) is given."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import circuitbench.models.fingerprint as fingerprint
from circuitbench.models.fingerprint import file_digest, weights_fingerprint
from circuitbench.models.resolve import resolve_model
from circuitbench.results.store import load_result

from helpers import cli


def tiny_gpt2(path: Path, seed: int, tokenizer) -> Path:
    """A 1-layer GPT-2 of 16 dimensions saved with save_pretrained (random weights of `seed`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=50257)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def replace_keeping_stamp(source: Path, target: Path) -> None:
    """Copy `source`'s bytes over `target` and put back target's size-preserving stamp: its mtime
    (what `cp -p` / `rsync -a` of another file of the same size leave behind)."""
    before = target.stat()
    shutil.copy2(source, target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def fp(path: Path, memo_dir: Path | None = None) -> str:
    return weights_fingerprint(resolve_model(str(path)), "pretrained", None, memo_dir=memo_dir)


@pytest.fixture
def two_models(tmp_path, gpt2_tokenizer) -> tuple[Path, Path]:
    return tiny_gpt2(tmp_path / "a" / "tiny", 0, gpt2_tokenizer), tiny_gpt2(tmp_path / "b" / "tiny", 1, gpt2_tokenizer)


def test_weights_of_the_same_size_and_mtime_are_told_apart_by_content(two_models):
    a, b = two_models
    weights_a, weights_b = a / "model.safetensors", b / "model.safetensors"
    assert weights_a.stat().st_size == weights_b.stat().st_size
    stamp = weights_a.stat()
    os.utime(weights_b, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same name, size, mtime and config
    first = fp(a)
    assert fp(b) != first
    replace_keeping_stamp(weights_b, weights_a)  # a restored backup of the other weights
    assert fp(a) != first and fp(a) == fp(b)  # the same bytes: the same model


def test_file_digests_are_remembered_by_stamp_and_recomputed_when_it_changes(two_models, tmp_path, monkeypatch):
    a, b = two_models
    hashed: list[str] = []
    real = fingerprint.sha256_of_file
    monkeypatch.setattr(fingerprint, "sha256_of_file", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(fingerprint, "_memo", {})
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0)
    memo = tmp_path / "cache" / "fingerprints"

    first = fp(a, memo)
    n_files = len(hashed)
    assert "model.safetensors" in hashed and "config.json" in hashed and len(list(memo.glob("*.json"))) == n_files
    hashed.clear()
    assert fp(a, memo) == first and hashed == []  # this process remembers
    monkeypatch.setattr(fingerprint, "_memo", {})
    assert fp(a, memo) == first and hashed == []  # and so does the memo folder, across processes
    weights = a / "model.safetensors"
    stamp = weights.stat()
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # only the ctime changes
    assert fp(a, memo) == first and hashed == ["model.safetensors"]  # hashed again, same bytes
    hashed.clear()
    monkeypatch.setattr(fingerprint, "_memo", {})  # a new process: only the records on disk, of the old stamp
    replace_keeping_stamp(b / "model.safetensors", weights)
    assert fp(a, memo) != first and hashed == ["model.safetensors"]
    assert fp(a, memo) == fp(b, memo)  # the same bytes now


def test_a_file_changed_just_now_is_hashed_every_time(two_models, monkeypatch):
    a, _ = two_models
    hashed: list[str] = []
    real = fingerprint.sha256_of_file
    monkeypatch.setattr(fingerprint, "sha256_of_file", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(fingerprint, "_memo", {})
    file_digest(a / "config.json")
    file_digest(a / "config.json")  # written a moment ago: a change in the same clock tick would keep its stamp
    assert hashed == ["config.json", "config.json"]


def test_nothing_is_written_without_a_memo_folder(two_models, tmp_path, monkeypatch, capsys):
    a, _ = two_models
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0)
    before = sorted(p for p in tmp_path.rglob("*"))
    fp(a)
    code, _, err = cli(capsys, "run", "--task", "ioi", "--model", str(a), "--n", "2", "--methods", "previous_token",
                       "--out", str(tmp_path / "r"), "--no-cache", "-q")
    assert code == 0, err
    written = sorted(p for p in tmp_path.rglob("*") if p not in before)
    assert all(tmp_path / "r" in [p, *p.parents] for p in written), written  # the result, nothing under ~
    assert not any(home.iterdir())


def test_replaced_weights_of_the_same_stamp_are_never_served_from_the_cache_or_resume(two_models, tmp_path, capsys):
    """The issue's scenario: a unit cached and written, the weights replaced keeping size and mtime,
    then rerun with --resume and the cache: the numbers are the new weights', as a --no-cache run
    of them gives, not the old ones."""
    a, b = two_models
    args = ["run", "--task", "ioi", "--n", "4", "--batch-size", "2", "--methods", "activation_patching", "-q"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert cli(capsys, *args, "--model", str(a), "--out", str(tmp_path / "r"), *cache)[0] == 0
    path = tmp_path / "r" / "tiny" / "ioi.json"
    old = load_result(path)
    assert old.run.cache["misses"] > 0

    replace_keeping_stamp(b / "model.safetensors", a / "model.safetensors")
    code, _, err = cli(capsys, *args, "--model", str(a), "--out", str(tmp_path / "r"), *cache, "--resume")
    assert code == 0 and "recomputing ioi on tiny" in err and "fingerprint" in err
    new = load_result(path)
    # a new cache entry, filled as the first run filled its own (nothing of the old weights' entry read)
    assert new.model.fingerprint != old.model.fingerprint and new.run.cache == old.run.cache
    assert cli(capsys, *args, "--model", str(b), "--out", str(tmp_path / "truth"), "--no-cache")[0] == 0
    truth = load_result(tmp_path / "truth" / "tiny" / "ioi.json")
    for name, value in truth.metrics.items():
        assert new.metrics[name] == pytest.approx(value, abs=1e-5)
        assert new.metrics_corrupted[name] == pytest.approx(truth.metrics_corrupted[name], abs=1e-5)
    scores = np.array(new.head_scores["activation_patching"])
    assert np.allclose(scores, np.array(truth.head_scores["activation_patching"]), atol=1e-5)
    assert abs(new.metrics["logit_diff"] - old.metrics["logit_diff"]) > 1e-4  # the old model's numbers differ
