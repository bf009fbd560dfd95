"""The table of bad invocations and spec files every CLI verb must refuse cleanly: exit code 2,
no traceback, and a message naming the offending flag, file or field. Used by
tests/test_bad_inputs.py, and by benchmarks/bad_inputs_report.py for before/after tables."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from circuitbench.models.toy import ZOO_DIR

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
    "unaligned_patching.yaml": "name: unaligned_patching\ngenerator: {name: ioi}\nmetrics: [logit_diff]\n"
                               "aligned_counterfactual: false\n",
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
    failed = {"schema_version": 2, "status": "failed",
              "error": {"type": "RuntimeError", "message": "boom", "user_error": False},
              "task": {"name": "t", "version": 1, "spec_hash": "h", "content_hash": "c", "spec": {}, "split": "test",
                       "main_metric": "m"},
              "model": {"name": "m", "source": "s", "init": "pretrained", "dtype": "float32"},
              "run": {"seed": 0, "device": "cpu", "started_at": "now", "duration_s": 0.0, "peak_memory_mb": 1.0,
                      "versions": {}, "git": None}}
    (root / "failed.json").write_text(json.dumps(failed))


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
    ("yaml-unaligned-patching", [*RUN, "--task", "{tmp}/unaligned_patching.yaml", "--model", "toy-tasks", "--methods",
                                 "ablation,activation_patching"], "methods ['activation_patching'] patch clean and "
                                                                  "corrupted activations position by position"),
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
]
