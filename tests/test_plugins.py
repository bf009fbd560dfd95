"""Third-party generators and metrics: registered from a module outside the package (by
--plugin and by the `circuitbench.plugins` entry-point group) and used by a YAML task."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PLUGINS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "plugins.md"


def page_block(first_line: str) -> str:
    """The plugins page's fenced code block that starts with `first_line` (the worked plugin example)."""
    for block in re.findall(r"```\w*\n(.*?)```", PLUGINS_PAGE.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return block.split("\n", 1)[1]
    raise AssertionError(f"{PLUGINS_PAGE} has no code block starting with {first_line!r}")


PLUGIN = page_block("# copy_plugin.py")
TASK = page_block("# copy_task.yaml")


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


# ---- one registration path (issue 22): plugins declare what built-ins declare ------------------

_PLUGIN_CALLS: list = []  # what the plugin method below was given


@pytest.fixture(scope="module")
def toy_prompts():
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    model = load_model("toy-induction-2l", device="cpu")
    return model, encode_task(load_task("induction").model_copy(update={"n_prompts": 12}), model.vocab, model.unk_id,
                              model.n_ctx)


def _second_of_two():
    """Rank 1 of 2 data-parallel processes, in this one process: its shard is the second half of the
    batches; its sums over processes are recorded and left as they are (this shard's numbers)."""
    from dataclasses import dataclass, field

    from circuitbench.parallel import Processes

    @dataclass(frozen=True)
    class SecondOfTwo(Processes):
        rank: int = 1
        world_size: int = 2
        summed: list = field(default_factory=list)

        def sum(self, value):
            self.summed.append(value)
            return value

    return SecondOfTwo()


def test_a_decorated_plugin_method_declares_progress_shards_and_edges_and_runs_like_a_builtin(toy_prompts):
    """A plugin method registered with @method(progress="heads", shardable=True,
    produces="edge_scores") runs through run_methods as a built-in edge method does: on this
    process's shard, its sums through the processes, its progress counted in head patches, its
    output checked against its declaration (edge scores, here EAP's own)."""
    from circuitbench.plugins import MethodOutput, method
    from circuitbench.scores.methods.edges import eap
    from circuitbench.scores.methods.options import EapOptions
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.registries import METHODS

    model, data = toy_prompts
    calls = _PLUGIN_CALLS
    if "test_plugin_eap" not in METHODS:
        @method("test_plugin_eap", description="EAP, from a plugin", needs_corrupted=True, aligns_positions=True,
                shardable=True, progress="heads", produces="edge_scores", options=EapOptions)
        def plugin_eap(model, prompts, ctx) -> MethodOutput:
            calls.append((prompts.offset, len(prompts), ctx.sum_shards))
            for _ in prompts.batches(ctx.batch_size):
                ctx.advance_heads(model.n_layers * model.n_heads)
            return eap(model, prompts, ctx)

        assert plugin_eap.__name__ == "plugin_eap"  # the decorator gives the function back
    entry, builtin = METHODS.get("test_plugin_eap"), METHODS.get("eap")
    assert (entry.shardable, entry.progress, entry.produces) == (True, "heads", "edge_scores")
    assert METHODS.plugin_code("test_plugin_eap")["module"] == __name__ and METHODS.plugin_code("eap") is None
    for declared in ("needs_corrupted", "needs_answer", "options", "produces", "shardable", "aligns_positions"):
        assert getattr(entry, declared) == getattr(builtin, declared), declared

    processes, reports = _second_of_two(), []
    run = MethodRun(batch_size=4, metric="induction_loss", processes=processes,
                    progress=lambda what, done, total: reports.append((what, done, total)))
    outputs = run_methods(model, data, ["test_plugin_eap", "eap"], run)
    # rank 1 of 2 owns the second half of the 3 batches: prompts 4..11, and sums through the processes
    assert [(offset, n) for offset, n, _ in calls] == [(4, 8)] and calls[0][2] == processes.sum
    assert len(processes.summed) == 2  # one sum per method (EAP adds its totals once), the plugin's like eap's
    ours, theirs = outputs["test_plugin_eap"], outputs["eap"]
    assert ours.heads is None and ours.traces is None and np.abs(theirs.edges.scores).max() > 0.01
    # settings the same but the memory plan, whose default budget follows the free memory of the moment
    same = lambda settings: {k: v for k, v in settings.items() if k != "memory"}  # noqa: E731
    assert np.array_equal(ours.edges.scores, theirs.edges.scores) and same(ours.settings) == same(theirs.settings)
    # progress: head patches, batch by batch (2 batches of this shard × 8 heads); eap counts prompts
    assert reports[0] == ("test_plugin_eap · heads × 2 batches", 0, 16) and reports[2][1:] == (16, 16)
    assert reports[3] == ("eap", 0, 8) and reports[-1] == ("eap", 8, 8)


def test_a_method_output_is_checked_against_its_declaration(toy_prompts):
    """`produces` is what the output is checked against: an edge method returning head scores is an
    error naming it; a plugin's bare [n_layers, n_heads] array is still head scores."""
    from circuitbench.errors import CircuitbenchError
    from circuitbench.plugins import register_method
    from circuitbench.scores.scoring import MethodRun, run_methods
    from circuitbench.specs.registries import METHODS

    model, data = toy_prompts
    heads = np.arange(model.n_layers * model.n_heads, dtype=np.float32).reshape(model.n_layers, model.n_heads)
    if "test_bare_heads" not in METHODS:
        register_method("test_bare_heads", lambda model, prompts, ctx: heads.tolist())
        register_method("test_no_edges", lambda model, prompts, ctx: heads, produces="edge_scores")
        register_method("test_wrong_shape", lambda model, prompts, ctx: heads[:, :2])
    entry = METHODS.get("test_bare_heads")  # register_method: the decorator's defaults
    assert (entry.shardable, entry.progress, entry.produces, entry.aligns_positions) == (False, "prompts",
                                                                                          "head_scores", False)
    output = run_methods(model, data, ["test_bare_heads"], MethodRun(4))["test_bare_heads"]
    assert output.heads.dtype == np.float64 and np.array_equal(output.heads, heads) and not output.nodes
    assert output.node_scores() == {f"a{l}.h{h}": float(heads[l, h]) for l in range(2) for h in range(4)}
    with pytest.raises(CircuitbenchError, match=r"Method 'test_no_edges' is declared to produce edge scores .* but "
                                                r"returned head scores"):
        run_methods(model, data, ["test_no_edges"], MethodRun(4))
    with pytest.raises(CircuitbenchError, match=r"'test_wrong_shape' returned head scores of shape \[2, 2\] .*"
                                                r"expected a float array of shape \[2, 4\]"):
        run_methods(model, data, ["test_wrong_shape"], MethodRun(4))
    with pytest.raises(CircuitbenchError, match="Method 'test_bad_declaration' declares produces='edges': not one of "
                                                "head_scores, node_scores"):
        register_method("test_bad_declaration", lambda model, prompts, ctx: heads, produces="edges")
