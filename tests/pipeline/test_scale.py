"""Scale-out (issue 7): data parallel over torchrun processes, kill-and-resume, --device-map auto.

The data-parallel tests launch real processes (`python -m torch.distributed.run`, i.e. torchrun,
2 processes on gloo) and compare the JSON they write with a one-process run of the same units.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitbench
from circuitbench.errors import CircuitbenchError
from circuitbench.parallel import Processes
from circuitbench.pipeline.grid import run
from circuitbench.results.schema import RunResult
from circuitbench.results.store import load_result
from circuitbench.specs.options import RunOptions

from helpers import cli  # the in-process CLI runner

REPO = Path(circuitbench.__file__).resolve().parents[1]
TOL = 1e-5


def child_env() -> dict[str, str]:
    """Children import this checkout's circuitbench, offline, one thread each (2 processes share
    the machine's cores)."""
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", COLUMNS="200")
    return env


@pytest.fixture
def one_thread():
    """In-process runs on one thread, like the children: toy models are made of tiny ops, and on a
    busy 2-core machine a second OpenMP thread costs far more in waiting than it gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    # --standalone: rendezvous on a free local port, so concurrent test runs do not collide.
    # --n-prompts, not --n: torchrun's own parser takes --n as an ambiguous prefix of its options.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "circuitbench", "run", *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)


def assert_same_result(single: RunResult, parallel: RunResult) -> None:
    assert parallel.task == single.task  # same prompts kept, same drops, same hashes
    assert parallel.model == single.model
    for field in ("metrics", "metrics_stderr", "metrics_corrupted"):
        one, many = getattr(single, field), getattr(parallel, field)
        assert one.keys() == many.keys()
        for name in one:
            assert abs(one[name] - many[name]) < TOL, (field, name, one[name], many[name])
    assert single.head_scores.keys() == parallel.head_scores.keys()
    for method, scores in single.head_scores.items():
        np.testing.assert_allclose(parallel.head_scores[method], scores, atol=TOL, rtol=0, err_msg=method)
    assert single.traces.keys() == parallel.traces.keys()
    for key, trace in single.traces.items():
        for part in ("mean", "std"):
            np.testing.assert_allclose(parallel.traces[key][part], trace[part], atol=TOL, rtol=0, err_msg=key)
    if single.circuit is None:
        assert parallel.circuit is None
    else:
        assert parallel.circuit is not None and parallel.circuit.heads == single.circuit.heads
        f_single, f_parallel = single.circuit.faithfulness, parallel.circuit.faithfulness
        for name in ("value", "m_circuit", "m_full", "m_empty", "cpr", "cmd"):
            a, b = getattr(f_single, name), getattr(f_parallel, name)
            assert (a is None and b is None) or abs(a - b) < TOL, (name, a, b)
        np.testing.assert_allclose(f_parallel.curve, f_single.curve, atol=TOL, rtol=0)


def compare_runs(tmp_path: Path, tasks: str, model: str, n: int, batch_size: int, methods: str) -> list[RunResult]:
    """One-process run (in this process) vs 2 torchrun processes; returns the parallel results."""
    one, two = tmp_path / "one", tmp_path / "two"
    options = RunOptions(out=str(one), n_prompts=n, batch_size=batch_size, methods=methods.split(","))
    outcomes = run(tasks.split(","), [model], options)
    proc = torchrun("--task", tasks, "--model", model, "--out", str(two), "-q", "--n-prompts", str(n),
                    "--batch-size", str(batch_size), "--methods", methods)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == len(outcomes)  # one summary: the main process's
    parallel = []
    for outcome in outcomes:
        result = load_result(two / outcome.path.relative_to(one))
        assert result is not None
        assert result.run.world_size == 2 and outcome.result.run.world_size == 1  # two ranks really ran
        assert_same_result(outcome.result, result)
        parallel.append(result)
    return parallel


# --- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch, world", [(24, 8, 2), (20, 8, 2), (8, 8, 2), (5, 2, 3), (64, 32, 4), (1, 32, 2)])
def test_shards_are_contiguous_whole_batches_covering_every_prompt(n, batch, world):
    bounds = [Processes(rank, world).shard_bounds(n, batch) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start  # contiguous, in rank order: gathering keeps prompt order
    for start, stop in bounds:
        assert start % batch == 0 and (stop % batch == 0 or stop == n)  # a one-process batch is never split
    sizes = [-(-(stop - start) // batch) for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1  # balanced in batches


def test_subset_is_a_shard_of_the_same_prompt_set():
    from circuitbench.models.vocabulary import load_vocabulary
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    vocab, unk, n_ctx, _ = load_vocabulary("toy-induction-2l")
    data = encode_task(load_task("induction").model_copy(update={"n_prompts": 10}), vocab, unk, n_ctx)
    shard = data.subset(4, 10)
    assert len(shard) == 6 and shard.texts == data.texts[4:]
    assert torch.equal(shard.tokens, data.tokens[4:]) and shard.tokens.shape[1] == data.tokens.shape[1]
    assert shard.prompt_hash == data.prompt_hash and shard.report is data.report
    assert torch.equal(shard.batch(0, 2).tokens, data.batch(4, 6).tokens)
    assert len(data.subset(10, 10)) == 0 and data.subset(10, 10).batches(4) == []


def test_one_process_is_the_identity():
    one = Processes()
    value = (torch.ones(2), 3.0, {"a": 1})
    assert one.sum(value) is value and one.gather(value) == [value]
    assert one.from_main(lambda: 7) == 7 and one.shard_bounds(10, 4) == (0, 10)


# --- data parallel: 2 torchrun processes == 1 process ----------------------------------------


def test_two_processes_match_one_process_induction(tmp_path, one_thread):
    """Sequence task on the shipped toy: 24 prompts in batches of 8 (shards of 1 and 2 batches),
    exact and attribution patching, detectors, a circuit with its faithfulness curve (mean
    ablation: the means are summed across shards)."""
    [result] = compare_runs(tmp_path, "induction", "toy-induction-2l", n=24, batch_size=8,
                            methods="activation_patching,attribution_patching,previous_token,induction")
    assert result.task.n_prompts == 24 and result.circuit is not None and result.circuit.faithfulness.curve


def test_two_processes_match_one_process_sorting(tmp_path, one_thread):
    """Answer task on the shipped sorting toy: one batch for two processes (rank 1's shard is
    empty), mean ablation, causal tracing (run by the main process, handed to the other)."""
    [result] = compare_runs(tmp_path, "sorting", "toy-sort-1l", n=8, batch_size=8,
                            methods="activation_patching,ablation,causal_tracing")
    assert result.metrics["accuracy"] > 0.5 and result.traces and result.circuit is not None


@pytest.mark.slow
def test_two_processes_match_one_process_answer_tasks_on_hf_model(tmp_path, tiny_models, one_thread):
    """Answer tasks on a tiny HF GPT-2: named-position methods (attention_to END->IO), causal
    tracing, attribution patching, uneven and empty shards."""
    model = str(tiny_models["gpt2"])
    compare_runs(tmp_path / "ioi", "ioi", model, n=20, batch_size=8,
                 methods="activation_patching,attention_to,causal_tracing")
    compare_runs(tmp_path / "sorting", "sorting", model, n=8, batch_size=8,
                 methods="attribution_patching,ablation,previous_token")


def test_data_parallel_refuses_device_map_before_any_collective(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under a launcher; refused before accelerate is asked
    with pytest.raises(CircuitbenchError, match="cannot be combined with 2 data-parallel processes"):
        run("induction", "toy-induction-2l", RunOptions(device_map="auto", out=str(tmp_path)))


# --- kill mid-run, resume ------------------------------------------------------------------------

UNIT_YAML = """\
name: {name}
generator: {{name: induction, min_len: 8, max_len: 24, n_symbols: 48}}
n_prompts: {n}
seed: {seed}
metrics: [induction_loss, sequence_loss]
methods: [{methods}]
circuit: {{method: {circuit}, top_k: 5}}
"""


def write_units(folder: Path) -> list[str]:
    """unit_a: quick; unit_b: several seconds of exact patching, so a kill lands inside it."""
    folder.mkdir()
    units = {
        "unit_a": dict(n=8, seed=1, methods="induction", circuit="induction"),
        "unit_b": dict(n=96, seed=2, methods="activation_patching, attribution_patching",
                       circuit="activation_patching"),
        "unit_c": dict(n=8, seed=3, methods="previous_token", circuit="previous_token"),
    }
    for name, fields in units.items():
        (folder / f"{name}.yaml").write_text(UNIT_YAML.format(name=name, **fields))
    return list(units)


def test_killed_run_resumes_only_unfinished_units(tmp_path, capsys, one_thread):
    tasks_dir, out = tmp_path / "tasks", tmp_path / "results"
    units = write_units(tasks_dir)
    args = ["run", "--task", ",".join(units), "--model", "toy-induction-2l", "--include-path", str(tasks_dir),
            "--out", str(out), "--batch-size", "8"]
    first = out / "toy-induction-2l" / "unit_a.json"
    proc = subprocess.Popen([sys.executable, "-m", "circuitbench", *args, "-q"], env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.poll() is None, f"run ended before its first unit was written: {proc.stderr.read()!r}"
        assert time.monotonic() < deadline, "first unit never written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()

    # Units run in the order given; the killed one left nothing half-written behind.
    written = sorted(p.name for p in (out / "toy-induction-2l").glob("*.json"))
    assert written == ["unit_a.json"]
    before, mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert RunResult.model_validate_json(before).status == "complete"

    code, stdout, _ = cli(capsys, *args, "--resume")
    assert code == 0, stdout
    assert first.read_bytes() == before and first.stat().st_mtime_ns == mtime  # not rerun, not rewritten
    # the summary marks the kept unit and counts it; the other two are (re)done
    assert "unit_a (kept)" in stdout and "unit_b " in stdout and "unit_c " in stdout
    assert " ".join(f"wrote 3 results to {out / 'toy-induction-2l'}/ (1 kept from earlier (--resume))".split()) in \
        " ".join(stdout.split())
    for name in ("unit_b", "unit_c"):
        path = out / "toy-induction-2l" / f"{name}.json"
        assert load_result(path).status == "complete"
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".json"]  # no temp files left



# --- --device-map auto ------------------------------------------------------------------------


def test_device_map_auto_loads_same_model_and_is_recorded(tmp_path, tiny_models, capsys, one_thread):
    from circuitbench.models.loading import load_model

    path = str(tiny_models["gpt2"])
    plain = load_model(path, device="cpu")
    mapped = load_model(path, device="cpu", device_map="auto")
    assert mapped.device_map == "auto" and plain.device_map is None and mapped.device.type == "cpu"
    tokens = torch.randint(0, 50000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert (plain.bridge(tokens) - mapped.bridge(tokens)).abs().max() < 1e-4

    code, stdout, _ = cli(capsys, "run", "--task", "sorting", "--model", path, "--n", "8", "--methods",
                          "previous_token",
                       "--device-map", "auto", "--out", str(tmp_path), "-q")
    assert code == 0, stdout
    result = load_result(tmp_path / "gpt2" / "sorting.json")
    assert result.run.device_map == "auto" and result.run.world_size == 1


def test_patching_on_a_disk_offloaded_model_matches_and_keeps_accelerate_hooks(tmp_path, gpt2_tokenizer, one_thread):
    """A model dispatched by accelerate carries hooks on every module (here: block 1 offloaded to
    disk). Exact patching skips early blocks by swapping their forward; the hooks must come back,
    or a later full forward runs block 1 on meta weights."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoModelForCausalLM

    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.catalog import load_task

    config = AutoConfig.for_model("gpt2", n_layer=3, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    gpt2_tokenizer.save_pretrained(tmp_path / "m")
    plain = load_model(str(tmp_path / "m"), device="cpu")
    placement = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
                 "transformer.h.0": "cpu",
                 "transformer.h.1": "disk", "transformer.h.2": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", device_map=placement,
                                              offload_folder=str(tmp_path / "off"),
                                              attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "m"), hf_model=hf, tokenizer=plain.vocab.tokenizer,
                                                 device="cpu")
    bridge.eval()
    offloaded = dataclasses.replace(plain, bridge=bridge)
    hooked = bridge.blocks[1].original_component
    assert hasattr(hooked, "_hf_hook") and "forward" in hooked.__dict__

    data = encode_task(load_task("sorting").model_copy(update={"n_prompts": 8}), plain.vocab, plain.unk_id, plain.n_ctx)
    expected = run_methods(plain, data, ["activation_patching"], MethodRun(4))["activation_patching"]
    got = run_methods(offloaded, data, ["activation_patching"], MethodRun(4))["activation_patching"]
    np.testing.assert_allclose(got.heads, expected.heads, atol=1e-5)
    assert "forward" in hooked.__dict__  # the accelerate hook is back in place
    with torch.inference_mode():
        assert (bridge(data.tokens) - plain.bridge(data.tokens)).abs().max() < 1e-4


def test_memory_check_suggests_device_map_with_several_gpus(monkeypatch):
    from circuitbench.models import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10 * 2**30)  # 10 GB per device
    with pytest.raises(CircuitbenchError) as err:
        memory.check_fits("big", 6_000_000_000, "bfloat16", torch.device("cuda", 0))  # ~13 GB
    assert "--device-map auto (spreads the model over the 4 GPUs: 40.0 GB free together)" in str(err.value)
    memory.check_fits("big", 6_000_000_000, "bfloat16", torch.device("cuda", 0), device_map="auto")  # fits on 4
    with pytest.raises(CircuitbenchError) as err:
        memory.check_fits("huge", 20_000_000_000, "bfloat16", torch.device("cuda", 0), device_map="auto")
    assert "on all devices together (--device-map auto)" in str(err.value)
    assert "--device-map auto (" not in str(err.value)


def test_bad_device_map_is_one_message(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--device-map",
                       "everywhere",
                       "--out", str(tmp_path))
    assert code == 2 and "--device-map" in err and "'auto'" in err and "Traceback" not in err
