"""The `file` generator: tasks from JSONL or CSV data, run end to end on the shipped word-level toy
(toy-tasks); named positions land on the right tokens; splits, counts, seeds and hashes behave
as for every generator; mistakes in the data name the file and line."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from circuitbench.errors import CircuitbenchError
from circuitbench.models.vocabulary import load_vocabulary
from circuitbench.prompts.base import split_of
from circuitbench.prompts.encoding import encode_task
from circuitbench.prompts.file import FIELDS
from circuitbench.prompts.generate import generate_prompts
from circuitbench.results.store import load_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import RunOptions, effective_spec

from helpers import cli

REPO = Path(__file__).resolve().parents[2]
NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Alice", "Paul", "Kate", "Anne"]
PLACES = ["store", "garden", "school", "park"]


def ioi_records(n: int = 40) -> list[dict]:
    """IOI records with ABC counterfactuals; S1/S2 name the same word, so they pick occurrences."""
    out = []
    for i in range(n):
        io, s = NAMES[i % 12], NAMES[(i * 5 + 1) % 12]
        if io == s:
            s = NAMES[(i + 3) % 12]
        a, b, c = [x for x in NAMES if x not in (io, s)][:3]
        place = PLACES[i % 4]
        first, second = (io, s) if i % 2 == 0 else (s, io)
        out.append({
            "prompt": f"When {first} and {second} went to the {place}, {s} gave a drink to",
            "answer": f" {io}", "distractor": f" {s}",
            "corrupted": f"When {a} and {b} went to the {place}, {c} gave a drink to",
            "key": f"r{i}",
            "positions": {"IO": f" {io}", "S1": {"text": f" {s}", "occurrence": 0},
                          "S2": {"text": f" {s}", "occurrence": -1}},
        })
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    columns = [f for f in FIELDS if any(f in r for r in records)]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in records:
            w.writerow([json.dumps(r[c]) if isinstance(r.get(c), dict) else r.get(c, "") for c in columns])
    return path


def task(folder: Path, data: str, extra: str = "", name: str = "from_data", metrics: str = "[logit_diff, accuracy]"):
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ngenerator: {{name: file, path: {data}}}\nn_prompts: all\nmetrics: {metrics}\n"
                    + extra)
    return path


@pytest.fixture(scope="module")
def toy_vocab():
    vocab, unk, n_ctx, _ = load_vocabulary("toy-tasks")
    return vocab, unk, n_ctx


def test_jsonl_task_encodes_with_positions_on_the_named_tokens(tmp_path, toy_vocab):
    records = ioi_records()
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "ioi.jsonl", records)
    spec = load_task(str(task(tmp_path, "data/ioi.jsonl")))  # relative to the YAML's folder
    assert spec.generator.path == str((tmp_path / "data" / "ioi.jsonl").resolve())
    assert spec.generator.format == "jsonl"
    assert spec.generator.sha256 == hashlib.sha256((tmp_path / "data" / "ioi.jsonl").read_bytes()).hexdigest()
    vocab, unk, n_ctx = toy_vocab
    data = encode_task(spec, vocab, unk, n_ctx)
    expected = [r for r in records if split_of(r["key"]) == "test"]
    assert data.report.n_dropped == 0 and len(data) == len(expected) > 3
    by_text = {r["prompt"]: r for r in expected}
    decode = vocab.tokenizer.decode
    for i, text in enumerate(data.texts):
        r = by_text[text]
        tokens, corrupted = data.tokens[i].tolist(), data.corrupted[i].tolist()
        io, s1, s2, end = (int(data.positions[k][i]) for k in ("IO", "S1", "S2", "END"))
        assert decode([tokens[io]]).strip() == r["answer"].strip() == decode([int(data.answer[i])]).strip()
        assert decode([tokens[s1]]).strip() == decode([tokens[s2]]).strip() == r["distractor"].strip()
        assert s1 < s2 and decode([tokens[end]]) == "to" and end == int(data.lengths[i]) - 1
        assert decode([corrupted[io]]).strip() not in (r["answer"].strip(), r["distractor"].strip())


def test_csv_gives_the_same_prompts_as_jsonl(tmp_path, toy_vocab):
    records = ioi_records()
    write_jsonl(tmp_path / "d.jsonl", records)
    write_csv(tmp_path / "d.csv", records)
    a = load_task(str(task(tmp_path, "d.jsonl", name="a")))
    b = load_task(str(task(tmp_path, "d.csv", name="b")))
    assert b.generator.format == "csv"
    pa, pb = generate_prompts(a).prompts, generate_prompts(b).prompts
    assert [p.model_dump(exclude={"meta"}) for p in pa] == [p.model_dump(exclude={"meta"}) for p in pb]
    assert [p.meta["line"] for p in pb] == [p.meta["line"] + 1 for p in pa]  # the CSV header is line 1


def test_splits_counts_and_seeds(tmp_path):
    records = ioi_records(60)
    records[0]["split"] = "val"
    records[1]["split"] = "test"
    spec = load_task(str(task(tmp_path, str(write_jsonl(tmp_path / "d.jsonl", records)))))
    splits = {}
    for split in ("train", "val", "test"):
        splits[split] = {p.split_key for p in generate_prompts(effective_spec(spec, RunOptions(split=split))).prompts}
    assert sum(map(len, splits.values())) == 60 and not splits["train"] & splits["test"]
    assert "r0" in splits["val"] and "r1" in splits["test"]  # explicit splits win over the hash
    assert all(split_of(k) == s for s, keys in splits.items() for k in keys if k not in ("r0", "r1"))
    everything = generate_prompts(spec).prompts
    first5 = generate_prompts(effective_spec(spec, RunOptions(n_prompts=5))).prompts
    assert [p.split_key for p in first5] == [p.split_key for p in everything[:5]]  # first k for any n >= k
    reseeded = generate_prompts(effective_spec(spec, RunOptions(seed=1))).prompts
    assert {p.split_key for p in reseeded} == {p.split_key for p in everything}
    assert [p.split_key for p in reseeded] != [p.split_key for p in everything]
    assert generate_prompts(spec).model_dump() == generate_prompts(load_task(str(tmp_path / "from_data.yaml"))) \
        .model_dump()


def test_spec_hash_follows_the_data_not_its_location(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ioi_records())
    spec = load_task(str(task(tmp_path, "d.jsonl")))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(data, moved / "d.jsonl")
    same = load_task(str(task(moved, "d.jsonl")))
    assert same.spec_hash() == spec.spec_hash() and same.content_hash() == spec.content_hash()
    assert same.generator.path != spec.generator.path
    write_jsonl(moved / "d.jsonl", ioi_records()[:-1])
    changed = load_task(str(moved / "from_data.yaml"))
    assert changed.spec_hash() != spec.spec_hash() and changed.content_hash() != spec.content_hash()
    # a spec loaded before the data changed refuses to generate from the new data
    with pytest.raises(CircuitbenchError, match="changed since the task was loaded"):
        generate_prompts(same)


def test_sha256_pins_the_data(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ioi_records())
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    path = tmp_path / "pinned.yaml"
    path.write_text(f"name: pinned\ngenerator: {{name: file, path: d.jsonl, sha256: {digest}}}\nmetrics: [accuracy]\n")
    assert load_task(str(path)).generator.sha256 == digest
    write_jsonl(data, ioi_records()[1:])
    with pytest.raises(CircuitbenchError, match=f"pins sha256: {digest}"):
        load_task(str(path))


def test_no_distractor_refuses_logit_diff_and_keeps_other_metrics(tmp_path, toy_vocab):
    records = [{k: v for k, v in r.items() if k != "distractor"} for r in ioi_records()]
    write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(CircuitbenchError, match=r"metrics \['logit_diff'\] compare the answer with a distractor"):
        load_task(str(task(tmp_path, "d.jsonl")))
    spec = load_task(str(task(tmp_path, "d.jsonl", metrics="[accuracy, answer_prob]")))
    data = encode_task(spec, *toy_vocab)
    assert data.has_answer and bool((data.distractor == -1).all()) and bool((data.answer >= 0).all())


def test_no_answers_make_a_sequence_task(tmp_path, toy_vocab):
    records = [{"prompt": r["prompt"], "key": r["key"]} for r in ioi_records()]
    write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(CircuitbenchError, match="need an answer token"):
        load_task(str(task(tmp_path, "d.jsonl", metrics="[accuracy]")))
    data = encode_task(load_task(str(task(tmp_path, "d.jsonl", metrics="[sequence_loss]"))), *toy_vocab)
    assert not data.has_answer and data.corrupted is None and set(data.positions) == {"END"}


def test_positions_ending_together_and_corrupted_positions(tmp_path, toy_vocab):
    records = [{"prompt": "When Mary and John went to the store, John gave a drink to", "answer": " Mary",
                "distractor": " John", "key": f"k{i}", "split": "test",
                "positions": {"IO": " Mary", "NAME": "Mary", "S2": {"text": "John", "occurrence": 1}},
                "corrupted": "When Tom and Sam went to the store, Alice gave a drink to",
                "corrupted_positions": {"IO": " Tom", "NAME": "Tom", "S2": " Alice" if i else " Sam"}}
               for i in range(4)]
    write_jsonl(tmp_path / "d.jsonl", records)
    data = encode_task(load_task(str(task(tmp_path, "d.jsonl", "max_drop_fraction: 0.5\n"))), *toy_vocab)
    assert len(data) == 3 and dict(data.report.reasons) == {"named positions of the clean and corrupted prompts "
                                                            "differ": 1}  # S2 on Sam: another token
    # <bos> When Mary and John went to the store , John gave ...
    assert data.positions["IO"].tolist() == data.positions["NAME"].tolist() == [2, 2, 2]
    assert data.positions["S2"].tolist() == [10, 10, 10]
    assert toy_vocab[0].tokenizer.decode([int(data.tokens[0, 10])]) == "John"


def test_shipped_example_runs_on_the_toy(capsys, tmp_path):
    example = REPO / "tasks" / "examples" / "ioi_from_file.yaml"
    code, out, err = cli(capsys, "validate", str(example), "--model", "toy-tasks", "--show", "1")
    assert code == 0, err
    assert "16 test prompts" in out and "kept 16 of 16, dropped 0" in out
    code, out, err = cli(capsys, "run", "--task", str(example), "--model", "toy-tasks", "--out", str(tmp_path), "-q")
    assert code == 0, err
    result = load_result(tmp_path / "toy-tasks" / "ioi_from_file.json")
    assert result is not None and result.status == "complete" and result.task.n_prompts == 16
    generator = result.task.spec["generator"]
    assert generator["sha256"] == hashlib.sha256((example.parent / "ioi_from_file.jsonl").read_bytes()).hexdigest()
    assert result.metrics["accuracy"] > 0.5 and result.metrics["logit_diff"] > result.metrics_corrupted["logit_diff"]
    assert set(result.head_scores) == {"attention_to", "activation_patching"}


def test_csv_task_runs_end_to_end(capsys, tmp_path):
    write_csv(tmp_path / "ioi.csv", ioi_records())
    path = task(tmp_path, "ioi.csv")
    code, out, err = cli(capsys, "run", "--task", str(path), "--model", "toy-tasks", "--out", str(tmp_path / "r"),
                         "-q", "--methods", "attention_to")
    assert code == 0, err
    result = load_result(tmp_path / "r" / "toy-tasks" / "from_data.json")
    n_test = sum(split_of(r["key"]) == "test" for r in ioi_records())
    assert result.task.n_prompts == n_test and result.task.n_dropped == 0 and result.metrics["accuracy"] > 0.5


@pytest.mark.parametrize("records, message", [
    ([{"prompt": "a b", "answer": " c"}, {"prompt": "a d"}], "line 2: no answer, but line 1 has one"),
    ([{"prompt": "a b", "answer": " c", "positions": {"X": "z"}}], "line 1: position X: 'z' is not in 'a b'"),
    ([{"prompt": "a b a", "answer": " c", "positions": {"X": "a"}}], 'occurs 2 times'),
    ([{"prompt": "a b a", "answer": " c", "positions": {"X": {"text": "a", "occurrence": 2}}}], "occurrence 2"),
    ([{"prompt": "a b", "answer": " c", "positions": {"END": "b"}}], "END is always the last token"),
    ([{"prompt": "a b", "positions": {"X": "a"}}, {"prompt": "a c"}], "line 2: positions [] differ from line 1"),
    ([{"prompt": "a b"}, {"prompt": "a b"}], "line 2: the same prompt (no key given) as line 1"),
    ([{"prompt": "a b", "distractor": " c"}], "line 1: a distractor without an answer"),
    ([{"prompt": "a b", "corrupted_positions": {"X": "a"}}], "corrupted_positions without a corrupted prompt"),
    ([{"prompt": "a b", "answr": " c"}], "line 1: unknown field 'answr'. Did you mean 'answer'?"),
    ([{"prompt": "a b", "split": "dev"}], "line 1: split: Input should be 'train', 'val' or 'test'"),
    ([{"prompt": ""}], "line 1: prompt: String should have at least 1 character"),
    ([["a b"]], "line 1: a record is a JSON object, got list"),
    ([], "no records"),
])
def test_data_mistakes_name_the_file_and_line(tmp_path, records, message):
    data = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(task(tmp_path, "d.jsonl", metrics="[sequence_loss]")))
    assert message in str(e.value) and str(data) in str(e.value) and "from_data.yaml" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("prompt,answr\na b, c\n", "line 1: unknown column 'answr'. Did you mean 'answer'?"),
    ("prompt,answer\na b, c,d\n", "line 2: more cells than the header's 2 columns"),
    ('prompt,positions\nx y,"{not json"\n', "line 2: positions: not a JSON object"),
    ("", "empty; a CSV data file starts with a header row"),
])
def test_csv_mistakes(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(task(tmp_path, "d.csv", metrics="[sequence_loss]")))
    assert message in str(e.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(CircuitbenchError, match="data file .*nowhere.jsonl not found"):
        load_task(str(task(tmp_path, "nowhere.jsonl")))
    (tmp_path / "d.txt").write_text('{"prompt": "a"}\n')
    with pytest.raises(CircuitbenchError, match="cannot tell the format"):
        load_task(str(task(tmp_path, "d.txt", metrics="[sequence_loss]")))
    path = tmp_path / "told.yaml"
    path.write_text("name: told\ngenerator: {name: file, path: d.txt, format: jsonl}\nmetrics: [sequence_loss]\n")
    assert [p.text for p in generate_prompts(effective_spec(load_task(str(path)), RunOptions(split=split_of("a"))))
            .prompts] == ["a"]


def test_an_empty_split_says_how_the_records_fall(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"a {i}", "split": "train"} for i in range(3)])
    spec = load_task(str(task(tmp_path, "d.jsonl", metrics="[sequence_loss]")))
    with pytest.raises(CircuitbenchError, match="has no test records \\(3 train, 0 val, 0 test\\)"):
        generate_prompts(spec)


def test_a_huge_dropped_prompt_stays_out_of_the_result_and_validate(capsys, tmp_path):
    """Issue 21: a dropped 2 MB prompt was kept whole in the result and echoed whole by validate."""
    records = [{"prompt": f"t{i} t{i + 1} t{i + 2} t{i} t{i + 1}", "answer": f" t{i + 2}", "split": "test"}
               for i in range(10)]
    records.append({"prompt": "t1 " + "zz" * 1_000_000, "answer": " t2", "split": "test"})
    write_jsonl(tmp_path / "big.jsonl", records)
    path = task(tmp_path, "big.jsonl", name="big", metrics="[accuracy]", extra="methods: [previous_token]\n")
    code, out, err = cli(capsys, "validate", str(path), "--model", "toy-induction-2l", "--show", "20")
    assert code == 0, err
    assert "kept 10 of 11, dropped 1" in out and "(2000003 characters)" in out
    assert len(out) + len(err) < 20_000, len(out) + len(err)
    code, _, err = cli(capsys, "run", "--task", str(path), "--model", "toy-induction-2l", "--out", str(tmp_path / "r"),
                       "-q", "--no-cache")
    assert code == 0, err
    written = tmp_path / "r" / "toy-induction-2l" / "big.json"
    assert written.stat().st_size < 50_000, written.stat().st_size
    result = load_result(written)
    assert result.task.n_dropped == 1
    [[example]] = result.task.dropped_examples.values()
    assert example.startswith("'t1 zzzz") and "(2000003 characters)" in example


@pytest.mark.parametrize("kind, message", [("loop", "symlink loop"), ("directory", "is a directory"),
                                           ("fifo", "not a regular file (a FIFO)")])
def test_a_data_path_that_is_no_regular_file_is_one_clear_error(tmp_path, kind, message):
    """Issue 21: a symlink loop as the data path ended in a traceback; a directory or FIFO was 'not found'."""
    data = tmp_path / "d.jsonl"
    if kind == "loop":
        data.symlink_to(data)
    elif kind == "directory":
        data.mkdir()
    else:
        os.mkfifo(data)
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(task(tmp_path, "d.jsonl")))
    assert message in str(e.value) and str(data) in str(e.value), str(e.value)


@pytest.mark.parametrize("kind, message", [("loop", "symlink loop"), ("directory", "is a directory"),
                                           ("fifo", "not a regular file (a FIFO)")])
def test_a_task_path_that_is_no_regular_file_is_one_clear_error(tmp_path, kind, message):
    """Issue 21: a task YAML path that is a symlink loop (or a directory, a FIFO) was an 'Unknown task', and a
    FIFO among an --include-path folder's tasks hung the command."""
    inc = tmp_path / "inc"
    inc.mkdir()
    path = inc / "odd.yaml"
    if kind == "loop":
        path.symlink_to(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(path))
    assert message in str(e.value) and str(path) in str(e.value), str(e.value)
    # through the catalog, in a child process (a FIFO read would block forever)
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "validate", "odd", "--include-path", str(inc)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr


def test_several_counterfactual_columns_feed_a_task_with_several_counterfactuals(tmp_path, toy_vocab):
    """A data file with `corrupted` (ABC names) and `corrupted_swapped` (IO and S exchanged): the
    generator draws either as the task's counterfactual, the clean prompts the same; a task listing
    both scores under each (JSONL and CSV alike)."""
    records = [{**r, "corrupted_swapped": r["prompt"].replace(r["answer"], " @").replace(r["distractor"], r["answer"])
                .replace(" @", r["distractor"])} for r in ioi_records()]
    write_jsonl(tmp_path / "ioi.jsonl", records)
    path = task(tmp_path, "ioi.jsonl", "counterfactuals: [corrupted, swapped]\nmethods: [activation_patching]\n"
                                       "circuit: {top_k: 2, method: activation_patching}\n")
    spec = load_task(str(path))
    abc, swapped = (generate_prompts(spec.with_counterfactual(name)).prompts for name in ("corrupted", "swapped"))
    test = [r for r in records if split_of(r["key"]) == "test"]
    assert [p.text for p in abc] == [p.text for p in swapped] and len(abc) == len(test)
    by_text = {r["prompt"]: r for r in test}
    assert all(p.corrupted_text == by_text[p.text]["corrupted"] for p in abc)
    assert all(p.corrupted_text == by_text[p.text]["corrupted_swapped"] for p in swapped)
    data = encode_task(spec.with_counterfactual("swapped"), *toy_vocab)
    assert len(data) == len(test) and data.report.n_dropped == 0

    import circuitbench as cb
    result = cb.run(str(path), "toy-tasks")
    assert [run.name for run in result.counterfactuals] == ["corrupted", "swapped"]
    assert "counterfactual:swapped" in result.circuit.panel

    csv_records = [{k: v for k, v in r.items() if k != "corrupted_swapped"} for r in records]
    write_csv(tmp_path / "ioi.csv", csv_records)
    lines = (tmp_path / "ioi.csv").read_text().splitlines()
    lines[0] += ",corrupted_swapped"
    lines[1:] = [line + "," + json.dumps(r["corrupted_swapped"]) for line, r in zip(lines[1:], records)]
    (tmp_path / "ioi.csv").write_text("\n".join(lines) + "\n")
    from_csv = load_task(str(task(tmp_path, "ioi.csv", "counterfactuals: [corrupted, swapped]\n", name="from_csv")))
    assert [p.corrupted_text for p in generate_prompts(from_csv.with_counterfactual("swapped")).prompts] == \
        [p.corrupted_text for p in swapped]


@pytest.mark.parametrize("records, extra, message", [
    ([{"prompt": "a b", "corrupted": "b a", "corrupted_x": "a a"}, {"prompt": "a c", "corrupted": "c a"}], "",
     "line 2: counterfactual columns [] differ from line 1's ['x']"),
    ([{"prompt": "a b", "corrupted_x": "a a"}], "", "corrupted_x without a corrupted prompt"),
    ([{"prompt": "a b", "corrupted": "b a", "corrupted_x": "a a"}], "counterfactuals: [corrupted, y]\n",
     "counterfactual 'y' has no column corrupted_y (counterfactual columns: corrupted, corrupted_x)"),
])
def test_counterfactual_column_mistakes_name_the_line_and_the_columns(tmp_path, records, extra, message):
    write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(CircuitbenchError, match=re.escape(message)):
        load_task(str(task(tmp_path, "d.jsonl", extra, metrics="[sequence_loss]")))
