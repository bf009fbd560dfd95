"""The table of bad invocations and spec files every CLI verb must refuse cleanly: exit code 2,
no traceback, and a message naming the offending flag, file or field. Used by
tests/test_bad_inputs.py, and by benchmarks/bad_inputs_report.py for before/after tables."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from circuitbench.models.toy import ZOO_DIR
from circuitbench.results.schema import SCHEMA_VERSION

GOOD_TASK = "name: {name}\ngenerator: {{name: induction}}\nmetrics: [induction_loss]\n"

# Files the cases refer to as {name}: built fresh for every case under one temporary folder.
FILES: dict[str, str] = {
    "a_file": "just text\n",
    "wrong_name.yaml": GOOD_TASK.format(name="another_name"),
    "unknown_field.yaml": GOOD_TASK.format(name="unknown_field") + "n_promts: 10\n",
    "not_yaml.yaml": "name: not_yaml\ngenerator: [unclosed\n",
    "a_list.yaml": "- 1\n- 2\n",
    "bad_param.yaml": "name: bad_param\ngenerator: {name: fibonacci, length: 2}\nmetrics: [logit_diff]\n",
    "unknown_gen.yaml": "name: unknown_gen\ngenerator: {name: fibonaci}\nmetrics: [logit_diff]\n",
    "unknown_metric.yaml": "name: unknown_metric\ngenerator: {name: fibonacci}\nmetrics: [logit_dif]\n",
    "answer_metric.yaml": "name: answer_metric\ngenerator: {name: induction}\nmetrics: [logit_diff]\n",
    "nan_threshold.yaml": GOOD_TASK.format(name="nan_threshold") + "methods: [induction]\ncircuit: {threshold: .nan}\n",
    "two_rules.yaml": GOOD_TASK.format(name="two_rules") + "methods: [induction]\ncircuit: {top_k: 2, fraction: 0.5}\n",
    "bad_option.yaml": GOOD_TASK.format(name="bad_option") + "methods: [activation_patching]\n"
                       "method_options:\n  activation_patching: {direction: sideways}\n",
    "undefined_position.yaml": GOOD_TASK.format(name="undefined_position") + "methods: [activation_patching]\n"
                               "method_options:\n  activation_patching: {positions: [S2]}\n",
    "tracing_answer_metric.yaml": GOOD_TASK.format(name="tracing_answer_metric") + "methods: [causal_tracing]\n"
                                  "method_options:\n  causal_tracing: {metric: logit_diff}\n",
    "zero_prompts.yaml": GOOD_TASK.format(name="zero_prompts") + "n_prompts: 0\n",
    "unaligned_sequence.yaml": "name: unaligned_sequence\ngenerator: {name: ioi}\n"
                               "metrics: [logit_diff, sequence_loss]\naligned_counterfactual: false\n",
    "main_metric.yaml": GOOD_TASK.format(name="main_metric") + "main_metric: sequence_loss\n",
    "report_split.yaml": GOOD_TASK.format(name="report_split") + "report_splits: [test]\n",
    "bad_name.yaml": GOOD_TASK.format(name="Bad-Name"),
    "huge_seed.yaml": GOOD_TASK.format(name="huge_seed") + "seed: 1180591620717411303424\n",
    "inc_a/dup.yaml": GOOD_TASK.format(name="dup"),
    "inc_b/dup.yaml": GOOD_TASK.format(name="dup"),
    "inc_c/twin.yaml": GOOD_TASK.format(name="twin"),
    "inc_c/twin.yml": GOOD_TASK.format(name="twin"),
    "list.json": "[[0, 1], [1, 2]]\n",
    "not_json.json": "{heads: [[0, 1]]\n",
    "no_heads.json": '{"components": ["a0.h1"]}\n',
    "bad_heads.json": '{"heads": [[0, "x"]]}\n',
    "outside.json": '{"heads": [[5, 0]], "n_layers": 2, "n_heads": 4}\n',
    "inside.json": '{"heads": [[0, 1], [1, 2]], "n_layers": 2, "n_heads": 4}\n',
    "bare_a.json": '{"heads": [[0, 1], [1, 2]]}\n',
    "bare_b.json": '{"heads": [[0, 1], [1, 3]]}\n',
    "not_a_result.json": '{"status": "complete"}\n',
    "plugins/broken_plugin.py": "raise RuntimeError('this plugin is broken')\n",
    # tasks from data files (the `file` generator): YAML + data, one mistake each
    **{f"data_{name}.yaml": f"name: data_{name}\ngenerator: {{name: file, path: {data}}}\nmetrics: [{metric}]\n"
       for name, data, metric in (
           ("missing", "nowhere.jsonl", "accuracy"), ("bad_json", "bad_json.jsonl", "accuracy"),
           ("no_prompt", "no_prompt.jsonl", "sequence_loss"), ("no_answer", "no_answer.jsonl", "accuracy"),
           ("bad_split", "bad_split.jsonl", "accuracy"), ("typo", "typo.jsonl", "accuracy"),
           ("lost_position", "lost_position.jsonl", "accuracy"), ("bad_column", "bad_column.csv", "accuracy"),
           ("no_distractor", "no_distractor.jsonl", "logit_diff"))},
    "bad_json.jsonl": '{"prompt": "a b", "answer": " c"}\n{"prompt": "a d", "answer": " c"\n',
    "no_prompt.jsonl": '{"text": "a b"}\n',
    "no_answer.jsonl": '{"prompt": "a b", "answer": " c"}\n{"prompt": "a d"}\n',
    "bad_split.jsonl": '{"prompt": "a b", "answer": " c", "split": "dev"}\n',
    "typo.jsonl": '{"prompt": "a b", "answer": " c", "distracter": " d"}\n',
    "lost_position.jsonl": '{"prompt": "a b", "answer": " c", "positions": {"IO": " Mary"}}\n',
    "bad_column.csv": "prompt,answer,split,positons\na b, c,test,\n",
    "no_distractor.jsonl": '{"prompt": "a b", "answer": " c"}\n',
    "no_config_dir/readme.txt": "nothing here\n",
    # plugins and silently wrong (issue 21)
    "plugins/exits_at_import.py": "import sys\nsys.exit(3)\n",
    "plugins/bad_metrics.py": "import torch\nimport circuitbench as cb\n"
                              "cb.register_metric('wide_metric', lambda logits, batch: torch.ones(len(batch), 3), "
                              "higher_is_better=True, needs_answer=False)\n"
                              "cb.register_metric('nan_metric', lambda logits, batch: torch.full((len(batch),), "
                              "float('nan')), higher_is_better=True, needs_answer=False)\n",
    **{f"{m}_metric.yaml": f"name: {m}_metric\ngenerator: {{name: induction}}\nmetrics: [induction_loss, {m}_metric]\n"
       "methods: [previous_token]\n" for m in ("wide", "nan")},
    **{f"data_{kind}.yaml": f"name: data_{kind}\ngenerator: {{name: file, path: {kind}.jsonl}}\nmetrics: [accuracy]\n"
       for kind in ("loop", "dir", "fifo")},
    # typed files (issue 21): shapes beyond any model, a reference outside the toy, plugin metrics that misbehave
    "heads_huge.json": '{"heads": [[0, 0]], "n_layers": 200000, "n_heads": 12}\n',
    "ref_outside.json": '{"heads": [[7, 0]]}\n',
    "plugins/broken_overlap_metrics.py": "import math\nfrom circuitbench.plugins import register_overlap_metric\n\n\n"
                                         "def _raises(a, b):\n    raise ValueError('no overlap today')\n\n\n"
                                         "register_overlap_metric('broken_raises', _raises)\n"
                                         "register_overlap_metric('broken_text', lambda a, b: 'high')\n"
                                         "register_overlap_metric('broken_nan', lambda a, b: math.nan)\n",
}


def build_files(root: Path, tiny_gpt2: Path | None = None) -> None:
    """Write FILES under root, plus broken model directories made from the shipped toy (and from
    a tiny saved GPT-2 when given) and a failed RunResult."""
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    toy = ZOO_DIR / "toy-sort-1l"
    for broken in ("truncated_toy", "bad_meta_toy", "no_tokenizer_toy"):
        shutil.copytree(toy, root / broken)
    weights = root / "truncated_toy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "bad_meta_toy" / "circuitbench_toy.json").write_text("{not json")
    (root / "no_tokenizer_toy" / "tokenizer.json").unlink()
    tl = ZOO_DIR / "tracr-hist"  # a TransformerLens-format checkpoint
    for broken in ("bad_cfg_tl", "truncated_tl", "rotary_tl"):
        shutil.copytree(tl, root / broken)
    (root / "bad_cfg_tl" / "cfg.json").write_text('{"n_layers": 1, "d_model": ')
    weights = root / "truncated_tl" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = json.loads((tl / "cfg.json").read_text())
    (root / "rotary_tl" / "cfg.json").write_text(json.dumps({**cfg, "positional_embedding_type": "rotary"}))
    for name, config in (("bad_json_hf", "{model_type: gpt2"), ("no_type_hf", '{"n_layer": 2}')):
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
    if tiny_gpt2 is not None:
        shutil.copytree(tiny_gpt2, root / "no_weights_hf")
        for weights in (root / "no_weights_hf").glob("*.safetensors"):
            weights.unlink()
    failed = {"schema_version": SCHEMA_VERSION, "status": "failed",
              "error": {"type": "RuntimeError", "message": "boom", "user_error": False},
              "task": {"name": "t", "version": 1, "spec_hash": "h", "content_hash": "c", "spec": {}, "split": "test",
                       "main_metric": "m"},
              "model": {"name": "m", "source": "s", "init": "pretrained", "dtype": "float32"},
              "run": {"seed": 0, "device": "cpu", "started_at": "now", "duration_s": 0.0, "peak_memory_mb": 1.0,
                      "versions": {}, "git": None}}
    (root / "failed.json").write_text(json.dumps(failed))
    # plugins and silently wrong (issue 21): paths that are no regular file
    for name in ("loop.jsonl", "loop.yaml"):
        (root / name).symlink_to(root / name)
    (root / "dir.jsonl").mkdir()
    (root / "dir.yaml").mkdir()
    os.mkfifo(root / "fifo.jsonl")
    _typed_files(root)  # typed files (issue 21)


def complete_result(**updates: object) -> dict:
    """A complete RunResult as JSON (2 layers × 2 heads, an edge circuit of `eap`, whose sidecar is
    t.eap.edges.json), with top-level fields replaced by `updates`."""
    result = {
        "schema_version": SCHEMA_VERSION, "status": "complete",
        "task": {"name": "t", "version": 1, "spec_hash": "h", "content_hash": "c", "spec": {}, "split": "test",
                 "main_metric": "logit_diff", "n_prompts": 4},
        "model": {"name": "m", "source": "s", "init": "pretrained", "dtype": "float32", "n_layers": 2, "n_heads": 2,
                  "has_mlp": True},
        "run": {"seed": 0, "batch_size": 4, "device": "cpu", "started_at": "2025-01-01T00:00:00", "duration_s": 0.0,
                "peak_memory_mb": 1.0, "versions": {}, "git": None},
        "metrics": {"logit_diff": 1.0},
        "circuit": {"method": "eap", "rule": {"top_k": 2}, "level": "edge", "heads": [[0, 0]],
                    "edges": ["input->a0.h0<q>", "a0.h0->logits"]},
        "edge_scores": {"eap": {"file": "t.eap.edges.json", "n_edges": 0}},
    }
    return {**result, **updates}


def _typed_files(root: Path) -> None:
    """Graph files, edge-score sidecars and results, each with one mistake (typed files, issue 21)."""
    from circuitbench.circuits.graph_files import graph_json
    from circuitbench.models.graph import ComponentGraph

    good = graph_json(ComponentGraph(2, 2), {"input->a0.h0<q>": 0.5}, ["input->a0.h0<q>", "a0.h0->logits"])
    edge = "input->a0.h0<q>"

    def variant(change) -> dict:
        g = json.loads(json.dumps(good))
        change(g)
        return g

    graphs = {
        "ok": good,
        "edges_list": variant(lambda g: g.update(edges=[[k, v] for k, v in g["edges"].items()])),
        "nodes_list": variant(lambda g: g.update(nodes=list(g["nodes"]))),
        "score_text": variant(lambda g: g["edges"][edge].update(score="high")),
        "score_nan": variant(lambda g: g["edges"][edge].update(score=float("nan"))),
        "in_graph_text": variant(lambda g: g["edges"][edge].update(in_graph="yes")),
        "unknown_node": variant(lambda g: g["nodes"].update({"head7": {"in_graph": True}})),
        "node_outside": variant(lambda g: g["nodes"].update({"a5.h0": {"in_graph": True}})),
        "negative": variant(lambda g: g["cfg"].update(n_layers=-1)),
        "zero_heads": variant(lambda g: g["cfg"].update(n_heads=0)),
        "huge": {"cfg": {"n_layers": 200000, "n_heads": 1}, "nodes": {},
                 "edges": {"input->a0.h0<q>": {"score": 1.0, "in_graph": True}}},  # 150 bytes: 16 TB of graph
    }
    for name, g in graphs.items():
        (root / f"graph_{name}.json").write_text(json.dumps(g))
    for name, change in (("sidecar_no_edges", lambda g: g.pop("edges")),
                         ("sidecar_no_score", lambda g: g["edges"][edge].pop("score"))):
        (root / name).mkdir()
        (root / name / "t.json").write_text(json.dumps(complete_result()))
        (root / name / "t.eap.edges.json").write_text(json.dumps(variant(change)))
    for version in (1, 99, -5):
        (root / f"schema_{version}.json").write_text(json.dumps(complete_result(schema_version=version)))
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):  # as a hand edit writes them: NaN, Infinity
        (root / f"{name}_metric.json").write_text(json.dumps(complete_result(metrics={"logit_diff": value})))


RUN = ["run", "--out", "{tmp}/out", "-q"]
TOY = ["--model", "toy-induction-2l"]
IND = ["--task", "induction"]
# (case id, arguments with {tmp} for the case folder, text the message must hold)
CASES: list[tuple[str, list[str], str]] = [
    # run: names and options
    ("run-unknown-task", [*RUN, "--task", "fibonaci", *TOY], "Did you mean 'fibonacci'"),
    ("run-unknown-model", [*RUN, *IND, "--model", "toy-induction-2"], "Did you mean 'toy-induction-2l'"),
    ("run-n-zero", [*RUN, *IND, *TOY, "--n", "0"], "--n"),
    ("run-n-words", [*RUN, *IND, *TOY, "--n", "many"], "--n"),
    ("run-batch-size-words", [*RUN, *IND, *TOY, "--batch-size", "lots"], "--batch-size"),
    ("run-batch-size-zero", [*RUN, *IND, *TOY, "--batch-size", "0"], "--batch-size"),
    ("run-init", [*RUN, *IND, *TOY, "--init", "sideways"], "--init"),
    ("run-unknown-method", [*RUN, *IND, *TOY, "--methods", "inductoin"], "Did you mean 'induction'"),
    ("run-dtype", [*RUN, *IND, *TOY, "--dtype", "float8"], "--dtype"),
    ("run-device", [*RUN, *IND, *TOY, "--device", "tpu"], "--device"),
    ("run-split", [*RUN, *IND, *TOY, "--split", "dev"], "--split"),
    ("run-device-map", [*RUN, *IND, *TOY, "--device-map", "everywhere"], "--device-map"),
    ("run-empty-task", [*RUN, "--task", "", *TOY], "--task"),
    ("run-empty-model", [*RUN, *IND, "--model", ""], "--model"),
    ("run-comma-task", [*RUN, "--task", ",", *TOY], "--task"),
    ("run-huge-seed", [*RUN, *IND, *TOY, "--seed", "1180591620717411303424"], "--seed"),
    ("run-negative-seed", [*RUN, *IND, *TOY, "--seed", "-1"], "--seed"),
    ("run-unknown-option", [*RUN, *IND, *TOY, "--bogus"], "--bogus"),
    ("run-missing-task", [*RUN, *TOY], "--task"),
    # run: paths
    ("run-out-is-a-file", ["run", *IND, *TOY, "--out", "{tmp}/a_file", "-q"], "--out"),
    ("run-out-unwritable", ["run", *IND, *TOY, "--out", "/proc/circuitbench-results", "-q"], "--out"),
    ("run-out-under-a-file", ["run", *IND, *TOY, "--out", "{tmp}/a_file/results", "-q"], "--out"),
    ("run-cache-dir-is-a-file", [*RUN, *IND, *TOY, "--cache-dir", "{tmp}/a_file"], "Cache directory"),
    ("run-include-path-missing", [*RUN, *IND, *TOY, "--include-path", "{tmp}/nowhere"], "--include-path"),
    ("run-plugin-missing-module", [*RUN, *IND, *TOY, "--plugin", "no_such_plugin_module"], "no_such_plugin_module"),
    ("run-plugin-missing-file", [*RUN, *IND, *TOY, "--plugin", "{tmp}/missing.py"], "missing.py"),
    ("run-plugin-broken", [*RUN, *IND, *TOY, "--plugin", "{tmp}/plugins/broken_plugin.py"], "this plugin is broken"),
    # run: model directories
    ("model-no-such-dir", [*RUN, *IND, "--model", "./no/such/dir"], "no such directory"),
    ("model-dir-without-config", [*RUN, *IND, "--model", "{tmp}/no_config_dir"], "neither config.json"),
    ("model-truncated-weights", [*RUN, "--task", "sorting", "--model", "{tmp}/truncated_toy"], "truncated"),
    ("model-broken-toy-json", [*RUN, "--task", "sorting", "--model", "{tmp}/bad_meta_toy"], "circuitbench_toy.json"),
    ("model-no-tokenizer", [*RUN, "--task", "sorting", "--model", "{tmp}/no_tokenizer_toy"], "tokenizer.json"),
    ("model-config-not-json", [*RUN, *IND, "--model", "{tmp}/bad_json_hf"], "not valid JSON"),
    ("model-config-no-model-type", [*RUN, *IND, "--model", "{tmp}/no_type_hf"], "model_type"),
    ("model-hub-offline", [*RUN, *IND, "--model", "EleutherAI/pythia-410m"], "cannot be reached"),
    ("model-no-weights", [*RUN, "--task", "ioi", "--model", "{tmp}/no_weights_hf", "--n", "2"], "cannot load weights"),
    ("model-random-toy", [*RUN, *IND, *TOY, "--init", "random"], "--init random"),
    ("task-vocab-mismatch", [*RUN, "--task", "fibonacci", *TOY], "would be dropped"),
    # task files
    ("yaml-name-mismatch", [*RUN, "--task", "{tmp}/wrong_name.yaml", *TOY], "must match the file name"),
    ("yaml-unknown-field", [*RUN, "--task", "{tmp}/unknown_field.yaml", *TOY], "n_promts: unknown field"),
    ("yaml-invalid", [*RUN, "--task", "{tmp}/not_yaml.yaml", *TOY], "not valid YAML"),
    ("yaml-a-list", [*RUN, "--task", "{tmp}/a_list.yaml", *TOY], "YAML mapping"),
    ("yaml-generator-param", [*RUN, "--task", "{tmp}/bad_param.yaml", *TOY], "generator.fibonacci.length"),
    ("yaml-unknown-generator", [*RUN, "--task", "{tmp}/unknown_gen.yaml", *TOY], "unknown generator 'fibonaci'"),
    ("yaml-unknown-metric", [*RUN, "--task", "{tmp}/unknown_metric.yaml", *TOY], "Did you mean 'logit_diff'"),
    ("yaml-answer-metric", [*RUN, "--task", "{tmp}/answer_metric.yaml", *TOY], "need an answer token"),
    ("yaml-nan-threshold", [*RUN, "--task", "{tmp}/nan_threshold.yaml", *TOY], "circuit.threshold"),
    ("yaml-two-rules", [*RUN, "--task", "{tmp}/two_rules.yaml", *TOY], "exactly one of"),
    ("yaml-method-option", [*RUN, "--task", "{tmp}/bad_option.yaml", *TOY],
     "method_options.activation_patching.direction"),
    ("yaml-undefined-position", [*RUN, "--task", "{tmp}/undefined_position.yaml", *TOY], "positions ['S2']"),
    ("yaml-tracing-answer-metric", [*RUN, "--task", "{tmp}/tracing_answer_metric.yaml", *TOY],
     "metric='logit_diff' needs an answer token"),
    # (position-by-position methods on unaligned prompts without spans: tests/prompts/test_unaligned_counterfactuals.py)
    ("yaml-unaligned-sequence", [*RUN, "--task", "{tmp}/unaligned_sequence.yaml", *TOY],
     "metrics ['sequence_loss'] score a corrupted run against the clean tokens position by position"),
    ("yaml-zero-prompts", [*RUN, "--task", "{tmp}/zero_prompts.yaml", *TOY], "n_prompts"),
    ("yaml-main-metric", [*RUN, "--task", "{tmp}/main_metric.yaml", *TOY], "main_metric"),
    ("yaml-report-split", [*RUN, "--task", "{tmp}/report_split.yaml", *TOY], "report_splits"),
    ("yaml-bad-name-shows-pattern", [*RUN, "--task", "{tmp}/bad_name.yaml", *TOY], "^[a-z][a-z0-9_]*$"),
    ("yaml-huge-seed", [*RUN, "--task", "{tmp}/huge_seed.yaml", *TOY], "seed"),
    ("data-file-missing", [*RUN, "--task", "{tmp}/data_missing.yaml", *TOY], "nowhere.jsonl not found"),
    ("data-invalid-json", [*RUN, "--task", "{tmp}/data_bad_json.yaml", *TOY], "bad_json.jsonl line 2: not valid JSON"),
    ("data-no-prompt", [*RUN, "--task", "{tmp}/data_no_prompt.yaml", *TOY],
     "no_prompt.jsonl line 1: prompt: Field required; unknown field 'text'"),
    ("data-no-answer", [*RUN, "--task", "{tmp}/data_no_answer.yaml", *TOY],
     "no_answer.jsonl line 2: no answer, but line 1 has one"),
    ("data-unknown-split", [*RUN, "--task", "{tmp}/data_bad_split.yaml", *TOY], "bad_split.jsonl line 1: split:"),
    ("data-unknown-field", [*RUN, "--task", "{tmp}/data_typo.yaml", *TOY], "Did you mean 'distractor'"),
    ("data-position-not-found", [*RUN, "--task", "{tmp}/data_lost_position.yaml", *TOY],
     "lost_position.jsonl line 1: position IO: ' Mary' is not in 'a b'"),
    ("data-csv-unknown-column", [*RUN, "--task", "{tmp}/data_bad_column.yaml", *TOY],
     "bad_column.csv line 1: unknown column 'positons'"),
    ("data-no-distractor", [*RUN, "--task", "{tmp}/data_no_distractor.yaml", *TOY],
     "metrics ['logit_diff'] compare the answer with a distractor"),
    ("include-path-duplicate", [*RUN, "--task", "dup", *TOY, "--include-path", "{tmp}/inc_a", "--include-path",
                                "{tmp}/inc_b"], "defined twice"),
    ("include-path-yaml-and-yml", [*RUN, "--task", "twin", *TOY, "--include-path", "{tmp}/inc_c"], "defined twice"),
    # validate, ls
    ("validate-n-zero", ["validate", "seq_days", "--n", "0"], "--n"),
    ("validate-unknown-task", ["validate", "nonexistent_task"], "Unknown task"),
    ("validate-bad-tokenizer", ["validate", "fibonacci", "--tokenizer", "{tmp}/nowhere"], "--tokenizer"),
    ("validate-unknown-model", ["validate", "fibonacci", "--model", "gpt2-smal"], "Did you mean 'gpt2-small'"),
    ("ls-unknown", ["ls", "widgets"], "choose one of"),
    # overlap
    ("overlap-one-file", ["overlap", "{tmp}/inside.json"], "at least two"),
    ("overlap-no-match", ["overlap", "{tmp}/*.nothing", "{tmp}/inside.json"], "no file matches"),
    ("overlap-missing-file", ["overlap", "{tmp}/missing.json", "{tmp}/inside.json"], "missing.json"),
    ("overlap-json-list", ["overlap", "{tmp}/list.json", "{tmp}/inside.json"], "JSON object"),
    ("overlap-not-json", ["overlap", "{tmp}/not_json.json", "{tmp}/inside.json"], "cannot read circuit JSON"),
    ("overlap-no-heads", ["overlap", "{tmp}/no_heads.json", "{tmp}/inside.json"], '"heads"'),
    ("overlap-bad-heads", ["overlap", "{tmp}/bad_heads.json", "{tmp}/inside.json"], "[layer, head] pairs"),
    ("overlap-heads-outside", ["overlap", "{tmp}/outside.json", "{tmp}/inside.json"], "outside a model"),
    ("overlap-bins-zero", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--bins", "0"], "--bins"),
    ("overlap-rbo-p", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--rbo-p", "2"], "--rbo-p"),
    ("overlap-top-n", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--top-n", "0"], "--top-n"),
    ("overlap-alignment", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--alignment", "x"], "--alignment"),
    ("overlap-unknown-metric", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--metric", "jacard"],
     "Did you mean 'jaccard'"),
    ("overlap-plot-is-a-dir", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--plot", "{tmp}"], "--plot"),
    ("overlap-bad-shape", ["overlap", "{tmp}/bare_a.json", "{tmp}/bare_b.json", "--shape", "3"], "--shape"),
    ("overlap-explicit-metric-needs-shape", ["overlap", "{tmp}/bare_a.json", "{tmp}/bare_b.json", "--metric",
                                             "hypergeometric_p"], "no model shape"),
    ("overlap-shape-too-small", ["overlap", "{tmp}/bare_a.json", "{tmp}/bare_b.json", "--shape", "1,2"],
     "outside a model"),
    # report, leaderboard, compare
    ("report-missing", ["report", "{tmp}/missing.json"], "not a readable RunResult"),
    ("report-not-a-result", ["report", "{tmp}/not_a_result.json"], "not a readable RunResult"),
    ("report-failed-unit", ["report", "{tmp}/failed.json"], "the unit failed"),
    ("leaderboard-no-results", ["leaderboard", "--results", "{tmp}/nowhere", "--out", "{tmp}/board"], "--results"),
    ("leaderboard-out-is-a-file", ["leaderboard", "--results", "{tmp}", "--out", "{tmp}/a_file"], "--out"),
    ("compare-neither", ["compare", "--model", "toy-tasks"], "give either"),
    # train, dynamics, zoo, cache
    ("train-arch", ["train", "--task", "induction", "--arch", "nope", "--out", "{tmp}/t"], "Unknown --arch"),
    ("train-noise-half", ["train", "--task", "induction", "--noise-site", "resid", "--out", "{tmp}/t"],
     "--noise-scale"),
    ("train-noise-site", ["train", "--task", "induction", "--noise-site", "x", "--noise-scale", "1", "--out",
                          "{tmp}/t"], "--noise-site"),
    ("train-layers-zero", ["train", "--task", "induction", "--layers", "0", "--out", "{tmp}/t"], "--layers"),
    ("train-out-is-a-file", ["train", "--task", "induction", "--steps", "2", "--out", "{tmp}/a_file"], "--out"),
    ("train-unknown-task", ["train", "--task", "fibonaci", "--out", "{tmp}/t"], "Did you mean 'fibonacci'"),
    ("train-steps-words", ["train", "--task", "induction", "--steps", "abc", "--out", "{tmp}/t"], "--steps"),
    ("dynamics-no-checkpoints", ["dynamics", "--model", "{tmp}/no_config_dir"], "checkpoints"),
    ("train-zoo-unknown", ["train-zoo", "nope"], "Unknown zoo model"),
    ("cache-clear-negative-age", ["cache", "clear", "--older-than", "-1"], "--older-than"),
    ("import-tracr-unknown-program", ["import-tracr", "revers", "--vocab", "a,b", "--max-seq-len", "3", "--out",
                                      "{tmp}/t"], "Did you mean 'reverse'"),
    ("import-tracr-empty-vocab-item", ["import-tracr", "reverse", "--vocab", "a,,b", "--max-seq-len", "3", "--out",
                                       "{tmp}/t"], "--vocab"),
    ("import-tracr-max-seq-len-zero", ["import-tracr", "reverse", "--vocab", "a,b", "--max-seq-len", "0", "--out",
                                       "{tmp}/t"], "--max-seq-len"),
    ("import-tracr-bos-in-vocab", ["import-tracr", "reverse", "--vocab", "a,BOS", "--max-seq-len", "3", "--out",
                                   "{tmp}/t"], "--bos"),
    ("import-tracr-out-not-empty", ["import-tracr", "reverse", "--vocab", "a,b", "--max-seq-len", "3", "--out",
                                    "{tmp}/inc_a"], "--force"),
    ("import-tracr-numerical", ["import-tracr", "frac_prevs", "--vocab", "a,b", "--max-seq-len", "3", "--out",
                                "{tmp}/t"], "numerical"),
    ("import-tracr-no-function", ["import-tracr", "{tmp}/a_file.py:f", "--vocab", "a,b", "--max-seq-len", "3",
                                  "--out", "{tmp}/t"], "no such file"),
    ("run-tl-bad-config", ["run", "--task", "induction", "--model", "{tmp}/bad_cfg_tl"], "cfg.json"),
    ("run-tl-truncated", ["run", "--task", "induction", "--model", "{tmp}/truncated_tl"], "truncated"),
    ("run-tl-rotary", ["run", "--task", "induction", "--model", "{tmp}/rotary_tl"], "positional_embedding_type"),
    # plugins and silently wrong (issue 21)
    ("plugin-exits-at-import", ["validate", "induction", "--plugin", "{tmp}/plugins/exits_at_import.py"],
     "called sys.exit(3)"),
    ("plugin-metric-wrong-shape", [*RUN, "--task", "{tmp}/wide_metric.yaml", *TOY, "--plugin",
                                   "{tmp}/plugins/bad_metrics.py", "--n", "4", "--no-cache"],
     "returned shape [4, 3]"),
    ("plugin-metric-nan", [*RUN, "--task", "{tmp}/nan_metric.yaml", *TOY, "--plugin", "{tmp}/plugins/bad_metrics.py",
                           "--n", "4", "--no-cache"], "returned NaN/inf for 4 of 4 prompts"),
    ("data-path-symlink-loop", ["validate", "{tmp}/data_loop.yaml"], "symlink loop"),
    ("data-path-directory", ["validate", "{tmp}/data_dir.yaml"], "is a directory"),
    ("data-path-fifo", ["validate", "{tmp}/data_fifo.yaml"], "not a regular file (a FIFO)"),
    ("task-path-symlink-loop", ["validate", "{tmp}/loop.yaml"], "symlink loop"),
    ("run-task-path-symlink-loop", [*RUN, "--task", "{tmp}/loop.yaml", *TOY], "symlink loop"),
    ("task-path-directory", ["validate", "{tmp}/dir.yaml"], "is a directory"),
    # typed files (issue 21): graph files, sidecars, results of other schema versions, references, plugin returns
    *[(f"overlap-graph-{case}", ["overlap", f"{{tmp}}/graph_{name}.json", "{tmp}/graph_ok.json"], text)
      for case, name, text in (
        ("edges-list", "edges_list", "graph_edges_list.json: edges: must be a JSON object"),
        ("nodes-list", "nodes_list", "graph_nodes_list.json: nodes: must be a JSON object"),
        ("score-text", "score_text", "edges['input->a0.h0<q>'].score: Input should be a valid number (got 'high')"),
        ("score-nan", "score_nan", "edges['input->a0.h0<q>'].score: Input should be a finite number"),
        ("in-graph-text", "in_graph_text", "edges['input->a0.h0<q>'].in_graph: Input should be a valid boolean"),
        ("unknown-node", "unknown_node", "nodes['head7']: not a node of this graph"),
        ("node-outside-cfg", "node_outside", "nodes['a5.h0']: not a node of this graph (2 layers × 2 heads"),
        ("negative-layers", "negative", "cfg.n_layers: Input should be greater than or equal to 1 (got -1)"),
        ("zero-heads", "zero_heads", "cfg.n_heads: Input should be greater than or equal to 1 (got 0)"),
        ("absurd-layers", "huge", "n_layers 200000 × n_heads 1 make a graph of 160,000,600,001 edges (reading it "
                                  "needs about 16.3 TB)"))],
    *[(f"report-graph-{case}", ["report", f"{{tmp}}/graph_{name}.json", "--out", f"{{tmp}}/report_{name}"], text)
      for case, name, text in (("unknown-node", "unknown_node", "nodes['head7']: not a node"),
                               ("node-outside-cfg", "node_outside", "nodes['a5.h0']: not a node"),
                               ("negative-layers", "negative", "cfg.n_layers"),
                               ("edges-list", "edges_list", "edges: must be a JSON object"))],
    ("overlap-heads-absurd-shape", ["overlap", "{tmp}/heads_huge.json", "{tmp}/heads_huge.json"],
     "heads_huge.json: n_layers 200000 × n_heads 12 = 2,400,000 heads"),
    ("overlap-shape-absurd", ["overlap", "{tmp}/bare_a.json", "{tmp}/bare_b.json", "--shape", "100000,1000"],
     "--shape 100000,1000: n_layers 100000 × n_heads 1000"),
    ("overlap-permutations-absurd", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--permutations",
                                     "1000000000"], "--permutations 1000000000: 1,000,000,000 shuffles"),
    ("report-sidecar-no-edges", ["report", "{tmp}/sidecar_no_edges/t.json", "--out", "{tmp}/report_s1"],
     "t.eap.edges.json: edges: missing"),
    ("report-sidecar-no-score", ["report", "{tmp}/sidecar_no_score/t.json", "--out", "{tmp}/report_s2"],
     "t.eap.edges.json: edges['input->a0.h0<q>'].score: missing"),
    ("export-sidecar-no-edges", ["circuit", "export", "{tmp}/sidecar_no_edges/t.json", "--out", "{tmp}/export.json"],
     "t.eap.edges.json: edges: missing"),
    ("export-sidecar-no-score", ["circuit", "export", "{tmp}/sidecar_no_score/t.json", "--out", "{tmp}/export.json"],
     "t.eap.edges.json: edges['input->a0.h0<q>'].score: missing"),
    ("overlap-sidecar-no-score", ["overlap", "{tmp}/sidecar_no_score/t.json", "{tmp}/graph_ok.json"],
     "t.eap.edges.json: edges['input->a0.h0<q>'].score: missing"),
    ("report-schema-1", ["report", "{tmp}/schema_1.json"],
     f"schema_1.json: schema_version: 1, not the current {SCHEMA_VERSION}"),
    ("export-schema-99", ["circuit", "export", "{tmp}/schema_99.json", "--out", "{tmp}/export.json"],
     f"schema_version: 99, not the current {SCHEMA_VERSION}"),
    ("recovery-schema-minus-5", ["recovery", "{tmp}/schema_-5.json"],
     f"schema_version: -5, not the current {SCHEMA_VERSION}"),
    ("overlap-schema-99", ["overlap", "{tmp}/schema_99.json", "{tmp}/inside.json"],
     f"schema_99.json: schema_version: 99, not the current {SCHEMA_VERSION}"),
    ("overlap-nan-metric", ["overlap", "{tmp}/nan_metric.json", "{tmp}/inside.json"],
     "nan_metric.json: metrics.logit_diff: not a finite number"),
    ("report-nan-metric", ["report", "{tmp}/nan_metric.json"], "metrics.logit_diff: not a finite number"),
    ("export-inf-metric", ["circuit", "export", "{tmp}/inf_metric.json", "--out", "{tmp}/export.json"],
     "metrics.logit_diff: not a finite number"),
    ("recovery-nan-metric", ["recovery", "{tmp}/nan_metric.json"], "metrics.logit_diff: not a finite number"),
    *[(f"overlap-plugin-metric-{case}", ["overlap", "{tmp}/inside.json", "{tmp}/inside.json", "--plugin",
                                         "{tmp}/plugins/broken_overlap_metrics.py", "--metric", f"broken_{case}"], text)
      for case, text in (("raises", "Overlap metric 'broken_raises' (a plugin) raised ValueError"),
                         ("text", "Overlap metric 'broken_text' (a plugin) returned a str ('high'), not a number"),
                         ("nan", "Overlap metric 'broken_nan' (a plugin) returned nan"))],
    ("run-reference-outside-model", [*RUN, *IND, *TOY, "--reference", "{tmp}/ref_outside.json", "--no-cache"],
     "ref_outside.json: heads: a7.h0 lie outside toy-induction-2l (2 layers × 4 heads"),
    # --- issue 21, import-tracr: reserved and split vocabulary values, sizes bounded before compute ---
    *[(f"import-tracr-vocab-{case}", ["import-tracr", "reverse", "--vocab", vocab, "--max-seq-len", "3", "--out",
                                      "{tmp}/tracr_vocab"], text)
      for case, vocab, text in (("pad", "<pad>,a", "--vocab '<pad>': collides with the tokenizer's pad token"),
                                ("unk", "<unk>,a", "--vocab '<unk>': collides with the tokenizer's unknown-word"),
                                ("compiler-pad", "compiler_pad,a", "--vocab 'compiler_pad': collides with tracr's"),
                                ("space", "a b,c", "--vocab value 'a b' is not one word"),
                                ("punctuation", "a.b,c", "splits it into ['a', '.', 'b']"),
                                ("negative", "-1,2", "splits it into ['-', '1']"))],
    ("import-tracr-bos-empty", ["import-tracr", "reverse", "--vocab", "a,b", "--bos", "", "--max-seq-len", "3",
                                "--out", "{tmp}/tracr_bos"], "--bos '': the BOS token must be one word"),
    ("import-tracr-max-seq-len-200", ["import-tracr", "reverse", "--vocab", "a,b,c", "--max-seq-len", "200", "--out",
                                      "{tmp}/tracr_big"], "widest MLP layer 40,200 units"),
    ("import-tracr-max-seq-len-absurd", ["import-tracr", "reverse", "--vocab", "a,b,c", "--max-seq-len",
                                         "1000000000", "--out", "{tmp}/tracr_big"], "too large to compile here"),
    ("import-tracr-n-prompts-absurd", ["import-tracr", "hist", "--vocab", "a,b", "--max-seq-len", "2", "--n-prompts",
                                       "1000000000", "--out", "{tmp}/tracr_big"], "--n-prompts 1000000000: give 0"),
]
