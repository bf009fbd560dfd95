"""circuits/recovery_intervals.py: bootstrap intervals of recovery equal a naive loop that writes
each resample as a prompt file of its own, encodes it and runs the methods by hand; and
`circuitbench recovery` shows each figure with its interval."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.recovery import load_reference, node_recovery, recovery
from circuitbench.circuits.recovery_intervals import percentile_interval, recovery_intervals, wanted
from circuitbench.models.loading import load_model
from circuitbench.models.toy import ZOO_DIR
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import MethodRun
from circuitbench.specs.catalog import load_task, load_task_file
from circuitbench.specs.registries import METHODS
from circuitbench.specs.task import CircuitRule

from helpers import cli


def test_intervals_equal_a_naive_loop_over_resampled_prompt_files(tmp_path):
    model = load_model("planted-detect-abc", device="cpu")
    reference = load_reference(ZOO_DIR / "planted-detect-abc" / "circuit.json")
    spec = load_task("planted_detect_abc").model_copy(update={"n_prompts": 10})
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    methods, rule, n_resamples, seed = ["activation_patching", "ablation", "previous_token"], CircuitRule(top_k=2), 5, 7
    got_heads, got_nodes = recovery_intervals(model, data, methods, reference, rule, MethodRun(batch_size=4),
                                              n_resamples=n_resamples, seed=seed)

    by_prompt = {json.loads(line)["prompt"]: json.loads(line)
                 for line in (ZOO_DIR / "planted-detect-abc" / "prompts.jsonl").read_text().splitlines()}
    records = [by_prompt[text.strip()] for text in data.texts]
    heads: dict[str, list] = {m: [] for m in methods}
    nodes: dict[str, list] = {m: [] for m in methods}
    for b, rows in enumerate(np.random.default_rng(seed).integers(0, len(records), size=(n_resamples,
                                                                                         len(records)))):
        lines = [json.dumps({**records[i], "key": f"row{k}", "split": "test"}) for k, i in enumerate(rows)]
        (tmp_path / f"r{b}.jsonl").write_text("\n".join(lines) + "\n")
        (tmp_path / f"r{b}.yaml").write_text(
            f"name: r{b}\ngenerator: {{name: file, path: r{b}.jsonl}}\nn_prompts: all\nmetrics: [logit_diff]\n")
        sample = encode_task(load_task_file(tmp_path / f"r{b}.yaml"), model.vocab, model.unk_id, model.n_ctx)
        assert len(sample) == len(records)
        for method in methods:
            out = METHODS.get(method).run(model, sample, MethodContext(batch_size=4))
            scores = np.asarray(out.heads)
            heads[method].append(recovery(scores, Circuit.from_scores(scores, rule, method).heads, reference))
            if out.nodes:
                nodes[method].append(node_recovery(out.node_scores(), reference))
    for method in methods:
        for quantity in ("precision", "recall", "auroc", "average_precision"):
            values = [getattr(r, quantity) for r in heads[method] if getattr(r, quantity) is not None]
            want = tuple(np.percentile(values, [2.5, 97.5])) if values else None
            assert getattr(got_heads[method], quantity) == pytest.approx(want, abs=1e-9), (method, quantity)
    assert got_heads["activation_patching"].precision[0] < got_heads["activation_patching"].precision[1]  # it varies
    assert set(got_nodes) == {m for m in methods if nodes[m]} == {"activation_patching", "ablation"}
    for method in got_nodes:
        want = tuple(np.percentile([r.auroc for r in nodes[method]], [2.5, 97.5]))
        assert got_nodes[method].auroc == pytest.approx(want, abs=1e-9)
    assert got_heads["activation_patching"].n_resamples == n_resamples and got_heads["previous_token"].seed == seed


def test_percentiles_skip_undefined_values_and_small_runs_opt_in():
    assert percentile_interval([None, None]) is None
    assert percentile_interval([0.5, None, 0.5]) == (0.5, 0.5)
    low, high = percentile_interval(list(np.linspace(0, 1, 41)))
    assert low == pytest.approx(0.025) and high == pytest.approx(0.975)
    assert wanted(30_000, 128) and not wanted(30_000, 128, world_size=2)
    assert not wanted(124_000_000, 128) and not wanted(30_000, 1)


def test_the_recovery_table_shows_each_figure_with_its_interval(capsys, tmp_path):
    from bad_inputs import complete_result

    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "auroc": 0.75, "average_precision": 0.7,
              "n_reference": 2, "n_circuit": 2}
    ci = {"precision": [0.25, 0.75], "recall": [0.5, 0.5], "f1": [0.3, 0.6], "auroc": None,
          "average_precision": [0.6, 0.8], "n_resamples": 30, "seed": 0}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(complete_result(recovery={"eap": scores}, recovery_ci={"eap": ci}, circuit=None,
                                               edge_scores={})))
    code, out, err = cli(capsys, "recovery", str(path), "--markdown", str(tmp_path / "rec.md"))
    assert code == 0, err
    table = (tmp_path / "rec.md").read_text()
    assert "| 0.50 [0.25, 0.75] |" in table and re.search(r"\| +0.75 \|", table)  # AUROC: no interval
    assert "0.50 [0.25, 0.75]" in out and " CI" not in table
