"""Third-party generators and metrics: registered from a module outside the package (by
--plugin and by the `circuitbench.plugins` entry-point group) and used by a YAML task."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's fenced code block that starts with `first_line` (the worked plugin example)."""
    for block in re.findall(r"```\w*\n(.*?)```", README.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return block.split("\n", 1)[1]
    raise AssertionError(f"README has no code block starting with {first_line!r}")


PLUGIN = readme_block("# copy_plugin.py")
TASK = readme_block("# copy_task.yaml")


def child_env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def plugin_files(tmp_path: Path) -> tuple[Path, Path]:
    plugin = tmp_path / "copy_plugin.py"
    plugin.write_text(PLUGIN)
    task = tmp_path / "copy_task.yaml"
    task.write_text(TASK)
    return plugin, task


def test_yaml_task_runs_with_a_plugin_generator_and_metric(tmp_path, plugin_files):
    plugin, task = plugin_files
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "circuitbench", "run", "--task", str(task), "--model", "toy-induction-2l",
           "--plugin", str(plugin), "--out", str(out), "--batch-size", "4", "-q", "--no-cache"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "toy-induction-2l" / "copy_task.json").read_text())
    assert result["status"] == "complete" and result["task"]["n_prompts"] == 10
    assert result["task"]["spec"]["generator"] == {"name": "copy_words", "length": 6}
    assert result["run"]["plugins"] == [str(plugin.resolve())]
    assert len(result["head_scores"]["activation_patching"]) == 2

    # the plugin metric's value, recomputed here from the model's logits
    import circuitbench as cb
    from circuitbench.prompts.encoding import encode_task

    cb.load_plugins([str(plugin)])
    spec = cb.load_task(str(task))
    model = cb.load_model("toy-induction-2l", device="cpu")
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    logits = model.run(data.tokens)
    by_hand = logits[torch.arange(len(data)), data.positions["END"], data.answer].double().mean()
    assert abs(result["metrics"]["answer_logit"] - float(by_hand)) < 1e-4
    # the model copies: the answer is predicted (the toy is an induction model)
    assert result["metrics"]["accuracy"] > 0.5


def test_unknown_plugin_name_is_one_clear_error(tmp_path, plugin_files):
    _, task = plugin_files
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "validate", str(task)], capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown generator 'copy_words'" in proc.stderr and "unknown metric 'answer_logit'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "validate", str(task), "--plugin", "no_such_plugin"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 2 and "no_such_plugin" in proc.stderr and "Traceback" not in proc.stderr


def test_entry_point_plugins_load_without_a_flag(tmp_path, plugin_files):
    """An installed distribution declaring `circuitbench.plugins` is loaded on first lookup."""
    plugin, task = plugin_files
    site = tmp_path / "site"
    (site / "copy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "copy_plugin.py").write_text(plugin.read_text())
    metadata = "Metadata-Version: 2.1\nName: copy-plugin\nVersion: 0.1\n"
    (site / "copy_plugin-0.1.dist-info" / "METADATA").write_text(metadata)
    (site / "copy_plugin-0.1.dist-info" / "entry_points.txt").write_text("[circuitbench.plugins]\ncopy = copy_plugin\n")
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "ls", "generators"], capture_output=True, text=True,
                          env=child_env(site), timeout=120)
    assert proc.returncode == 0 and "copy_words" in proc.stdout and "copy a word list" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "validate", str(task), "--model", "toy-induction-2l"],
                          capture_output=True, text=True, env=child_env(site), timeout=120)
    assert proc.returncode == 0 and "kept 10 of 10, dropped 0" in proc.stdout, proc.stderr


@pytest.mark.parametrize("exit_call, shown", [("sys.exit(3)", "sys.exit(3)"), ("sys.exit(0)", "sys.exit(0)"),
                                              ("sys.exit('bye')", "sys.exit('bye')"),
                                              ("raise SystemExit", "sys.exit()")])
def test_a_plugin_calling_sys_exit_at_import_is_one_clear_error(capsys, tmp_path, exit_call, shown):
    """Issue 21: `sys.exit(3)` at a plugin's import exited 3 with no message (and sys.exit(0) ran nothing, exit 0)."""
    from helpers import cli

    plugin = tmp_path / f"exits_{abs(hash(exit_call))}.py"
    plugin.write_text(f"import sys\n{exit_call}\n")
    code, out, err = cli(capsys, "validate", "induction", "--plugin", str(plugin))
    assert code == 2 and "Traceback" not in out + err
    assert plugin.name in err and f"called {shown}" in err, err
    # as a module name too
    sys.path.insert(0, str(tmp_path))
    try:
        code, _, err = cli(capsys, "validate", "induction", "--plugin", plugin.stem)
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 2 and plugin.stem in err and f"called {shown}" in err, err
