"""Activation cache: a second run reuses the first one's unpatched forwards (none recomputed) and
gives the same numbers as an uncached run; anything that changes the numbers changes the key;
damaged entries are recomputed; `cache ls` / `cache clear`."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import circuitbench
from circuitbench.pipeline.grid import run
from circuitbench.results.schema import RunInfo
from circuitbench.scores.activation_cache import ActivationCache, cache_key, tokens_hash
from circuitbench.specs.options import RunOptions
from circuitbench.tables.console import size_text as _size

from helpers import cli  # the in-process CLI runner

TOY = "toy-induction-2l"
SORT = "toy-sort-1l"  # 1 layer, 1 head: the cheapest full run, where the model does not matter


@pytest.fixture
def base_forwards(monkeypatch) -> dict[str, int]:
    """Counts the unpatched forwards: evaluation (LoadedModel.run) and the patching methods'
    base runs (interventions.record_base_run), each call one batch."""
    import circuitbench.scores.interventions as interventions
    from circuitbench.models.loaded import LoadedModel

    counts = {"evaluate": 0, "base_runs": 0}
    forward, run_and_cache = LoadedModel.run, interventions.record_base_run

    def counted_forward(*args, **kwargs):
        counts["evaluate"] += 1
        return forward(*args, **kwargs)

    def counted_run_and_cache(*args, **kwargs):
        counts["base_runs"] += 1
        return run_and_cache(*args, **kwargs)

    monkeypatch.setattr(LoadedModel, "run", counted_forward)
    monkeypatch.setattr(interventions, "record_base_run", counted_run_and_cache)
    # the time estimate a run logs at its start (pipeline/plan.py) times two forwards of its own: they are
    # not the unit's work, so they are left out whatever the log level an earlier test left behind
    monkeypatch.setattr("circuitbench.pipeline.grid.announce", lambda *args, **kwargs: None)
    return counts


def run_toy(tmp_path: Path, name: str, model: str = TOY, **options):
    task = {TOY: "induction", SORT: "sorting"}[model]
    opts = RunOptions(**{"n_prompts": 12, "batch_size": 4, "out": str(tmp_path / name),
                         "cache_dir": str(tmp_path / "cache"), **options})
    return run(task, model, opts)[0].result


def assert_same_numbers(a, b, tol: float = 1e-6) -> None:
    assert a.metrics.keys() == b.metrics.keys() and a.head_scores.keys() == b.head_scores.keys()
    for name in a.metrics:
        assert abs(a.metrics[name] - b.metrics[name]) < tol
        assert abs(a.metrics_corrupted[name] - b.metrics_corrupted[name]) < tol
    for method in a.head_scores:
        assert np.abs(np.array(a.head_scores[method]) - np.array(b.head_scores[method])).max() < tol
    assert (a.circuit is None) == (b.circuit is None)
    if a.circuit is not None:
        assert a.circuit.heads == b.circuit.heads
        assert abs(a.circuit.faithfulness.value - b.circuit.faithfulness.value) < tol


def test_added_method_reuses_forwards_and_matches_uncached_run(tmp_path, base_forwards):
    from circuitbench.models.loading import load_model
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.options import effective_spec

    model = load_model(TOY, device="cpu")

    def unit(methods: list[str], **options):
        opts = RunOptions(**{"n_prompts": 8, "batch_size": 4, "methods": methods, "cache_dir": str(tmp_path / "cache"),
                             **options})
        # no circuit here: its ablation sweep is not cached work (the sorting runs below check faithfulness)
        # one counterfactual: a second one's prompt set is scored uncached (pipeline/counterfactuals.py)
        spec = effective_spec(load_task("induction"), opts).model_copy(update={"circuit": None, "counterfactuals": []})
        return run_unit(spec, model, opts.execution())

    first = unit(["activation_patching"])
    # evaluation and base runs computed once: 2 batches × (clean, corrupted) each
    assert base_forwards == {"evaluate": 4, "base_runs": 4}
    assert first.run.cache["misses"] == 4  # metrics and base runs, clean and corrupted

    base_forwards.update(evaluate=0, base_runs=0)
    # adding a method, at another batch size: not one unpatched forward is recomputed
    second = unit(["activation_patching", "attribution_patching"], batch_size=5)
    assert base_forwards == {"evaluate": 0, "base_runs": 0}
    # metrics + the base runs of 2 methods and of visibility (scores/visibility.py), clean and corrupted
    assert second.run.cache == {"hits": 8, "misses": 0}

    uncached = unit(["activation_patching", "attribution_patching"], cache=False)
    assert base_forwards["evaluate"] == 4 and base_forwards["base_runs"] > 0
    assert uncached.run.cache == {}
    assert_same_numbers(second, uncached)
    kept = np.array(first.head_scores["activation_patching"]) - np.array(second.head_scores["activation_patching"])
    assert np.abs(kept).max() < 1e-6
    # results written before the cache existed still load (run.cache defaults to {})
    old = json.loads(uncached.run.model_dump_json())
    del old["cache"]
    assert RunInfo.model_validate(old).cache == {}


def test_key_changes_miss_and_batch_size_does_not(tmp_path):
    methods = ["activation_patching"]
    run_toy(tmp_path, "a", SORT, methods=methods, n_prompts=8)
    assert run_toy(tmp_path, "b", SORT, methods=methods, n_prompts=8,
                   batch_size=8).run.cache["misses"] == 0  # batch size is not in the key
    store = ActivationCache(tmp_path / "cache")
    assert len(store.entries()) == 1
    for change in ({"seed": 1, "n_prompts": 8}, {"n_prompts": 6}, {"dtype": "bfloat16", "n_prompts": 8}):
        stats = run_toy(tmp_path, "c", SORT, methods=methods, **change).run.cache
        assert stats["misses"] == 4, change  # nothing of another key is reused
    keys = [e.manifest.key for e in store.entries()]
    assert len(keys) == 4 and {k.dtype for k in keys} == {"float32", "bfloat16"}
    assert len({k.prompt_hash for k in keys}) == 3  # seed and n change the prompts, dtype does not


def test_key_pins_weights_init_seed_and_tokens(tmp_path, tiny_models):
    from safetensors.torch import load_file, save_file

    from circuitbench.models.loading import load_model
    from circuitbench.models.toy import ZOO_DIR
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    # a toy checkpoint is identified by its weight bytes, not its name or path alone
    toy_dir = tmp_path / "toy"
    shutil.copytree(ZOO_DIR / TOY, toy_dir)
    model = load_model(str(toy_dir), device="cpu")
    data = encode_task(load_task("induction").model_copy(update={"n_prompts": 4}), model.vocab, model.unk_id,
                       model.n_ctx)
    before = cache_key(model, data)
    assert cache_key(model, data) == before  # deterministic
    weights = load_file(str(toy_dir / "model.safetensors"))
    first = next(iter(weights))
    weights[first] = weights[first] + 1e-3
    save_file(weights, str(toy_dir / "model.safetensors"))
    after = cache_key(load_model(str(toy_dir), device="cpu"), data)
    assert after.weights != before.weights and after.digest() != before.digest()

    # random init: the seed is part of the weights' identity
    keys = [cache_key(load_model(str(tiny_models["gpt2"]), init="random", seed=s, device="cpu"), data) for s in (0, 0,
                                                                                                                 1)]
    assert keys[0] == keys[1] and keys[0].weights != keys[2].weights and keys[2].init_seed == 1

    # same prompts, different token ids (another tokenizer): a different key
    data.tokens = data.tokens.clone()
    data.tokens[0, 1] += 1
    assert tokens_hash(data) != before.tokens_hash


def test_damaged_entry_is_recomputed_without_error(tmp_path, base_forwards):
    reference = run_toy(tmp_path, "ref", SORT, methods=["activation_patching"], n_prompts=8)
    entry_dir = ActivationCache(tmp_path / "cache").entries()[0].path
    target = entry_dir / "clean.base_runs.safetensors"
    good_size = target.stat().st_size
    with target.open("r+b") as f:  # a half-written file, as a killed process might leave
        f.truncate(good_size // 2)
    base_forwards.update(evaluate=0, base_runs=0)
    again = run_toy(tmp_path, "again", SORT, methods=["activation_patching"], n_prompts=8)
    assert again.run.cache["misses"] == 1  # only the damaged file was recomputed...
    # ...2 clean batches, no corrupted ones; and the panel's resample ablation runs its partners' batches for
    # m(M), m(∅) and m(C) (2 batches each: resample reads other prompts' runs, not cached work); the stability
    # of the chosen set reruns the kept method on 4 half-samples of 4 prompts (clean and corrupted: 8, uncached)
    assert base_forwards == {"evaluate": 0, "base_runs": 2 + 3 * 2 + 4 * 2}
    assert target.stat().st_size == good_size
    assert_same_numbers(reference, again)

    # an unreadable manifest: the whole entry is recomputed
    (entry_dir / "manifest.json").write_text("{not json")
    third = run_toy(tmp_path, "third", SORT, methods=["activation_patching"], n_prompts=8)
    assert third.run.cache["misses"] == 4
    assert_same_numbers(reference, third)



def test_cache_ls_and_clear(tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    options = dict(out=tmp_path / "res", n_prompts=8, methods=["activation_patching"])
    assert circuitbench.run("sorting", SORT, cache_dir=cache_dir, **options).run.cache["misses"] > 0
    assert circuitbench.run("sorting", SORT, cache=False, **options).run.cache == {}
    (entry,) = ActivationCache(cache_dir).entries()  # cache=False added nothing
    manifest = entry.manifest
    assert manifest is not None and manifest.hits >= 1
    manifest_bytes = len((entry.path / "manifest.json").read_bytes())
    assert entry.size_bytes == sum(r.bytes for r in manifest.files.values()) + manifest_bytes

    code, out, _ = cli(capsys, "cache", "ls", "--cache-dir", cache_dir)
    assert code == 0
    row = next(line for line in out.splitlines() if SORT in line)
    assert "sorting" in row and manifest.key.prompt_hash in row and "float32" in row and "activations, metrics" in row
    assert entry.size_bytes > 10_000 and f" {_size(entry.size_bytes)} " in row and "1 entry" in out

    assert "removed 0 entries" in cli(capsys, "cache", "clear", "--model", "gpt2-small", "--cache-dir", cache_dir)[1]
    assert "removed 0 entries" in cli(capsys, "cache", "clear", "--older-than", "1", "--cache-dir", cache_dir)[1]
    assert entry.path.exists()
    code, out, _ = cli(capsys, "cache", "clear", "--model", SORT, "--cache-dir", cache_dir)
    assert code == 0 and "removed 1 entry" in out and not entry.path.exists()
    assert "empty" in cli(capsys, "cache", "ls", "--cache-dir", cache_dir)[1]


def test_unwritable_cache_dir_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = cli(capsys, "run", "--task", "sorting", "--model", SORT, "--n", "4", "--out", str(tmp_path / "res"),
                       "--cache-dir", str(blocker / "cache"), "-q")
    assert code == 2 and "Traceback" not in err
    assert str(blocker / "cache") in err and "--no-cache" in err
    assert not (tmp_path / "res").exists()


def test_bad_cache_clear_option_is_a_usage_error(tmp_path, capsys):
    code, out, err = cli(capsys, "cache", "clear", "--older-than", "-1", "--cache-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in out + err and "--older-than" in out + err


def test_cached_base_runs_equal_computed_ones_for_resample_ablation(tmp_path):
    """Resample ablation reads another prompt's head outputs, pad positions included: cached
    base runs must hold exactly what a batch computes, at every position."""
    from circuitbench.models.loading import load_model
    from circuitbench.pipeline.unit import run_unit
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.options import effective_spec

    model = load_model(TOY, device="cpu")
    options = RunOptions(n_prompts=8, batch_size=4, methods=["ablation"], cache_dir=str(tmp_path / "cache"))
    spec = effective_spec(load_task("induction"), options).model_copy(
        update={"method_options": {"ablation": {"kind": "resample"}}, "circuit": None})
    lengths = encode_task(spec, model.vocab, model.unk_id, model.n_ctx).lengths
    assert len(set(lengths[:4].tolist())) > 1  # prompts of one batch differ in length: pads are read
    # filled in batches of 2, read in batches of 4: positions past a pair's own width are read too
    assert run_unit(spec, model, options.model_copy(update={"batch_size": 2}).execution()).run.cache["misses"] > 0
    cached = run_unit(spec, model, options.execution())
    uncached = run_unit(spec, model, options.model_copy(update={"cache": False}).execution())
    assert cached.run.cache["misses"] == 0
    diff = np.abs(np.array(cached.head_scores["ablation"]) - np.array(uncached.head_scores["ablation"])).max()
    assert diff < 1e-6


def _child_env() -> dict[str, str]:
    import os

    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")


def test_concurrent_runs_share_one_entry_without_false_corruption_reports(tmp_path):
    """Two processes run the same unit against one cache at once: both finish, neither reports a
    damaged or unwritten cache file, the manifest records every file with its true sha256, and a
    third run is served entirely from the cache."""
    import subprocess
    import sys


    cache_dir = tmp_path / "cache"

    def command(out: str, batch_size: int) -> list[str]:  # batch size is not in the key: the last bits may differ
        return [sys.executable, "-m", "circuitbench", "run", "--task", "induction", "--model", TOY, "--n", "24",
                "--batch-size", str(batch_size), "--methods", "activation_patching,attribution_patching,ablation",
                "--out", str(tmp_path / out), "--cache-dir", str(cache_dir), "-q"]

    procs = [subprocess.Popen(command(f"r{i}", (2, 5)[i]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_child_env()) for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        for word in ("damaged", "not written", "corrupt", "mismatch", "recomputing"):
            assert word not in err.lower(), err
    (entry,) = ActivationCache(cache_dir).entries()
    assert entry.manifest is not None
    names = {p.name for p in entry.path.glob("*.safetensors")}
    assert names and set(entry.manifest.files) == names
    for name, record in entry.manifest.files.items():
        content = (entry.path / name).read_bytes()
        assert record.bytes == len(content) and record.sha256 == hashlib.sha256(content).hexdigest()
    # the third run in a process of its own too: the cache key holds the process's plugin metrics, and an
    # earlier test in this worker may have left one registered
    third = subprocess.run(command("r3", 2), capture_output=True, text=True, timeout=120, env=_child_env())
    assert third.returncode == 0, third.stderr[-2000:]
    (written,) = (tmp_path / "r3").rglob("induction.json")
    cache = json.loads(written.read_text())["run"]["cache"]
    assert cache["misses"] == 0 and cache["hits"] > 0


def test_two_writers_of_one_entry_keep_each_others_records(tmp_path, caplog):
    """Two processes' views of one entry, opened before either wrote, write in turn: each change is
    merged into the manifest on disk, so no record is lost and none vouches for another's bytes."""
    import logging

    import torch

    from circuitbench.scores.activation_cache import CacheKey

    key = CacheKey(model="m", source="s", revision=None, weights="w", init="pretrained", init_seed=None,
                   dtype="float32", device="cpu", prompt_hash="p", tokens_hash="t", software={}, code="c")
    store = ActivationCache(tmp_path / "cache")
    a, b = store.entry(key, "task", 4), store.entry(key, "task", 4)
    a.save("clean", "metrics", {"m": torch.zeros(4)})
    b.save("clean", "metrics", {"m": torch.ones(4)})  # the same file, other bytes (another batch size's last bits)
    b.save("clean", "base_runs", {"z.0": torch.ones(4, 2)})
    a.save("corrupted", "metrics", {"m": torch.zeros(4)})  # the last write must not bring back a's view
    (entry,) = store.entries()
    assert entry.manifest is not None
    assert set(entry.manifest.files) == {"clean.metrics.safetensors", "clean.base_runs.safetensors",
                                         "corrupted.metrics.safetensors"}
    for name, record in entry.manifest.files.items():
        assert record.sha256 == hashlib.sha256((entry.path / name).read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING):
        third = store.entry(key, "task", 4)
        assert torch.equal(third.read("clean", "metrics", ["m"])["m"], torch.ones(4))
        assert third.read("clean", "base_runs", ["z.0"]) is not None
        assert a.read("clean", "metrics", ["m"]) is not None  # a reads what b wrote, without a warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert entry.path.joinpath("manifest.json").exists() and store.entries()[0].manifest.hits == 3


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_cache_files_and_folders_follow_the_umask(tmp_path, tiny_models, monkeypatch, umask, file_mode, dir_mode):
    import os
    import stat

    import circuitbench.models.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0, raising=False)  # remember the fresh model's digests too
    monkeypatch.setattr(fingerprint, "_memo", {}, raising=False)
    cache_dir = tmp_path / "cache"
    old = os.umask(umask)
    try:
        outcome = run(["ioi"], str(tiny_models["gpt2"]), RunOptions(
            n_prompts=2, batch_size=2, methods=["activation_patching"], out=str(tmp_path / "r"),
            cache_dir=str(cache_dir)))[0]
    finally:
        os.umask(old)
    assert outcome.result.status == "complete", outcome.result.error
    paths = [cache_dir, *cache_dir.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (dir_mode if (tmp_path / p).is_dir() else file_mode)}
    assert not wrong, wrong
    assert any(p.suffix == ".safetensors" for p in paths) and any(p.parent.name == "fingerprints" for p in paths)
