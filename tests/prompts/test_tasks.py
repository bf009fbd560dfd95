"""Every shipped task: real GPT-2 BPE drops nothing; answers equal an independent computation;
counterfactuals differ where they should and stay aligned; splits are disjoint; prompts are
byte-identical across processes."""
import calendar
import json
import os
import subprocess
import sys

import pytest

from circuitbench.prompts.encoding import Vocabulary, encode_task
from circuitbench.prompts.generate import generate_prompts
from circuitbench.specs.catalog import all_tasks, load_task
from circuitbench.specs.options import RunOptions, effective_spec

SUITE = ["ioi", "seq_digits", "seq_numwords", "seq_months", "seq_days", "seq_letters", "seq_sentence",
         "x2", "arith_k", "fibonacci", "sorting", "induction"]
NUMWORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen twenty").split()


@pytest.fixture(scope="module")
def vocab(gpt2_tokenizer):
    return Vocabulary(tokenizer=gpt2_tokenizer, bos_id=50256, pad_id=50256, token_pool=list(range(50256)))


def test_suite_is_complete():
    assert set(SUITE) <= set(all_tasks())


@pytest.mark.parametrize("task", SUITE)
def test_default_spec_drops_nothing_under_gpt2_bpe(task, vocab):
    spec = load_task(task)
    data = encode_task(spec, vocab, None, 1024)
    assert data.report.n_dropped == 0, dict(data.report.reasons)
    assert len(data) >= 5
    if data.corrupted is not None:
        n = data.lengths
        for i in range(len(data)):
            assert (data.corrupted[i, : n[i]] != data.tokens[i, : n[i]]).any()  # differs where it should


def _splits(task: str, n: int | None = None) -> dict[str, list]:
    spec = load_task(task)
    out = {}
    for split in ("train", "val", "test"):
        s = effective_spec(spec, RunOptions(split=split, n_prompts=n))
        out[split] = generate_prompts(s).prompts
    return out


@pytest.mark.parametrize("task", SUITE)
def test_splits_disjoint(task):
    splits = _splits(task, n=5)
    texts = {k: {p.text for p in v} for k, v in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]


@pytest.mark.parametrize("task", ["x2", "arith_k"])
def test_progressions_hold_out_whole_starts(task):
    splits = _splits(task, n=10)
    starts = {k: {p.meta["start"] for p in v} for k, v in splits.items()}
    assert not starts["train"] & starts["test"] and not starts["val"] & starts["test"]


def test_ioi_answers_positions_and_abc(gpt2_tokenizer, vocab):
    spec = load_task("ioi")
    data = encode_task(spec, vocab, None, 1024)
    def dec(ids):
        return gpt2_tokenizer.decode(ids)
    orders = set()
    for i in range(len(data)):
        toks = data.tokens[i].tolist()
        io, s1, s2 = (dec([toks[int(data.positions[k][i])]]) for k in ("IO", "S1", "S2"))
        assert s1 == s2 != io
        assert dec([int(data.answer[i])]) == io and dec([int(data.distractor[i])]) == s1
        orders.add("ABBA" if data.positions["IO"][i] < data.positions["S1"][i] else "BABA")
        text = data.texts[i]
        assert text.count(io.strip()) == 1 and text.count(s1.strip()) == 2
        # ABC: the three name positions hold three other distinct names; all else is unchanged
        c = data.corrupted[i].tolist()
        names = {int(data.positions[k][i]) for k in ("IO", "S1", "S2")}
        corrupt_names = {dec([c[p]]) for p in names}
        assert len(corrupt_names) == 3 and not corrupt_names & {io, s1}
        assert all(c[p] == toks[p] for p in range(int(data.lengths[i])) if p not in names)
    assert orders == {"ABBA", "BABA"}


def _next_item(task: str, item: str) -> str:
    if task == "seq_digits":
        return str(int(item) + 1)
    if task == "seq_letters":
        return chr(ord(item) + 1)
    if task in ("seq_numwords", "seq_sentence"):
        return NUMWORDS[NUMWORDS.index(item) + 1]
    names = list(calendar.month_name)[1:] if task == "seq_months" else list(calendar.day_name)
    return names[(names.index(item) + 1) % len(names)]


@pytest.mark.parametrize("task", ["seq_digits", "seq_numwords", "seq_months", "seq_days", "seq_letters",
                                  "seq_sentence"])
def test_sequence_answers_are_next_item(task):
    wrapped = False
    for p in generate_prompts(load_task(task)).prompts:
        if task == "seq_sentence":
            items = [seg.text.strip() for seg in p.segments if seg.text.strip() in NUMWORDS]
        else:
            items = p.text.split()
        for a, b in zip(items, items[1:]):
            assert _next_item(task, a) == b
            wrapped |= (task == "seq_months" and a == "December")
        assert p.answer == " " + _next_item(task, items[-1]) and p.distractor == " " + items[-1]
        corrupted = [w for w in p.corrupted_text.replace(".", " ").split() if w in items]
        assert sorted(corrupted) == sorted(items) and corrupted != items and corrupted[0] == items[0]
    if task == "seq_months":
        assert wrapped  # December -> January is in the default (wrap: true) set
    if task == "seq_letters":
        assert all(p.answer != " A" for p in generate_prompts(load_task(task)).prompts)  # no wrap past Z


@pytest.mark.parametrize("task, rule", [("x2", lambda a, b: b == 2 * a), ("arith_k", lambda a, b: b == a + 2)])
def test_progression_answers(task, rule):
    for p in generate_prompts(load_task(task)).prompts:
        terms = [int(t) for t in p.text.replace(",", " ").split()]
        assert all(rule(a, b) for a, b in zip(terms, terms[1:]))
        assert rule(terms[-1], int(p.answer)) and int(p.distractor) == terms[-1]
        corrupted = [int(t) for t in p.corrupted_text.replace(",", " ").split()]
        assert sorted(corrupted) == sorted(terms) and corrupted != terms


def test_sorting_answers():
    for p in generate_prompts(load_task("sorting")).prompts:
        lhs, rhs = p.text.split("|")
        values, prefix = [int(t) for t in lhs.split()], [int(t) for t in rhs.split()]
        assert len(set(values)) == 5 and prefix == sorted(values)[: len(prefix)]
        assert int(p.answer) == sorted(values)[len(prefix)]
        c_lhs, c_rhs = p.corrupted_text.split("|")
        assert len(c_lhs.split()) == 5 and len(c_rhs.split()) == len(prefix)


def test_prompt_sets_are_byte_identical_across_processes():
    code = ("import json; from circuitbench.specs.catalog import load_task; "
            "from circuitbench.prompts.generate import generate_prompts; "
            f"print(json.dumps({{t: generate_prompts(load_task(t)).model_dump_json() for t in {SUITE!r}}}))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]


def test_every_task_runs_on_random_gpt2_small(tmp_path):
    from circuitbench.pipeline.grid import run
    from circuitbench.results.store import load_result

    text_tasks = [t for t in SUITE if t != "induction"]
    outcomes = run(text_tasks + ["induction"], "gpt2-small", RunOptions(n_prompts=4, init="random", out=str(tmp_path),
                                                                        methods=["previous_token"]))
    assert len(outcomes) == len(SUITE)
    hashes = {}
    for o in outcomes:
        result = load_result(o.path)
        assert result is not None and result.status == "complete" and result.task.n_dropped == 0
        assert len(result.head_scores["previous_token"]) == 12
        hashes[o.task] = result.task.prompt_hash
    again = run(["ioi"], "gpt2-small", RunOptions(n_prompts=4, init="random", out=str(tmp_path / "again"),
                                                  methods=["previous_token"]))
    assert again[0].result.task.prompt_hash == hashes["ioi"]
