"""models/resolve.py: a hub model that is neither in the local HuggingFace cache nor reachable fails
before any unit starts — fast, with one message, exit 2 and nothing written — while a cached or
reachable one goes on; the cache is read from its folders, the hub probed with a short timeout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from circuitbench.errors import CircuitbenchError
from circuitbench.models import resolve
from circuitbench.models.resolve import check_available, hub_reachable, resolve_model, weights_cached

UNCACHED = "circuitbench-tests/not-a-real-model"  # a hub id no cache holds
MESSAGE = "not in the local HuggingFace cache"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "COLUMNS": "100", **extra}


def _run(tmp_path: Path, model: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "circuitbench", "run", "--task", "fibonacci", "--model", model,
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, env=_env(tmp_path, **env),
                          cwd=tmp_path, timeout=120)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("model", [UNCACHED, "gpt-neo-2.7B"])
def test_an_unreachable_hub_model_fails_at_once_with_one_message_and_writes_nothing(tmp_path, model):
    done, seconds = _run(tmp_path, model, HF_HUB_OFFLINE="1")
    printed = done.stdout + done.stderr
    assert done.returncode == 2, printed
    assert printed.count(MESSAGE) == 1 and "huggingface-cli download" in printed and "Traceback" not in printed
    assert "failed" not in printed and "ERROR" not in printed  # no failed unit, no log line besides the message
    assert not (tmp_path / "r").exists()  # no result file, not even the --out folder
    assert seconds < 2.0, f"took {seconds:.2f} s"


def test_without_offline_mode_an_unreachable_hub_is_found_out_within_the_timeout(tmp_path):
    # port 9 (discard) on this machine refuses at once: the hub of HF_ENDPOINT cannot be reached
    done, seconds = _run(tmp_path, UNCACHED, HF_ENDPOINT="http://127.0.0.1:9")
    printed = done.stdout + done.stderr
    assert done.returncode == 2 and printed.count(MESSAGE) == 1 and "cannot be reached" in printed, printed
    assert "HF_HUB_OFFLINE" not in printed and not (tmp_path / "r").exists()
    assert seconds < 2.0 + resolve.HUB_TIMEOUT_S, f"took {seconds:.2f} s"


def test_the_early_failure_imports_neither_torch_nor_transformer_lens(tmp_path):
    """What keeps the failure fast on any machine: nothing heavy is imported before the message."""
    code = ("import sys\nfrom circuitbench.cli import main\n"
            f"sys.argv = ['circuitbench', 'run', '--task', 'fibonacci', '--model', {UNCACHED!r}, '--out', 'r']\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print('exit', e.code, sorted(m for m in ('torch', 'transformer_lens', 'transformers') "
            "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert done.stdout.strip().splitlines()[-1] == "exit 2 []", done.stdout + done.stderr


def _cache_repo(cache: Path, repo: str, files: dict[str, str], revision: str = "main") -> None:
    """A repo in the layout huggingface_hub writes: refs/<revision> naming a snapshot folder."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    for name, text in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_cached_weights_are_found_in_the_cache_folders(cache):
    config = json.dumps({"model_type": "gpt2"})
    _cache_repo(cache, "org/single", {"config.json": config, "model.safetensors": "x"})
    _cache_repo(cache, "org/config-only", {"config.json": config})
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    _cache_repo(cache, "org/sharded", {"config.json": config, "model.safetensors.index.json": index,
                                       "model-1.safetensors": "x", "model-2.safetensors": "x"})
    _cache_repo(cache, "org/half", {"config.json": config, "model.safetensors.index.json": index,
                                    "model-1.safetensors": "x"})
    assert weights_cached("org/single", "main") and weights_cached("org/sharded", "main")
    assert not weights_cached("org/config-only", "main")  # a config alone is no model
    assert not weights_cached("org/half", "main")  # a shard missing
    assert not weights_cached("org/single", "other-branch")  # another revision is not cached
    assert not weights_cached("org/absent", "main")
    check_available(resolve_model("org/single"), "pretrained")  # cached: goes on, offline or not
    with pytest.raises(CircuitbenchError, match="its weights are not in the local HuggingFace cache"):
        check_available(resolve_model("org/half"), "pretrained")


def test_a_reachable_hub_lets_an_uncached_model_go_on(cache, monkeypatch):
    ref = resolve_model(UNCACHED)
    with pytest.raises(CircuitbenchError, match="cannot be reached"):
        check_available(ref, "pretrained")
    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=resolve.HUB_TIMEOUT_S: True)
    check_available(ref, "pretrained")  # a connected machine downloads it, as before


def test_random_init_of_a_registry_model_needs_nothing_from_the_hub(cache):
    check_available(resolve_model("gpt-neo-2.7B"), "random")  # architecture numbers in models.yaml
    with pytest.raises(CircuitbenchError, match="--init random needs the architecture"):
        check_available(resolve_model(UNCACHED), "random")


def test_local_checkpoints_need_no_check(cache):
    check_available(resolve_model("toy-tasks"), "pretrained")


def test_offline_mode_never_touches_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(resolve.socket, "create_connection", lambda *a, **k: pytest.fail("network used offline"))
    assert hub_reachable() is False


def test_the_hub_probe_gives_up_after_its_timeout_even_when_the_connect_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    def hang(*args, **kwargs):  # e.g. a DNS lookup without network
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(resolve.socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.3) is False
    assert time.perf_counter() - start < 1.5


def test_a_name_that_cannot_be_a_hub_id_is_one_clear_error(cache):
    with pytest.raises(CircuitbenchError, match=r"gpt2-smal/: not a registry model.*Did you mean 'gpt2-small'"):
        check_available(resolve_model("gpt2-smal/"), "pretrained")
