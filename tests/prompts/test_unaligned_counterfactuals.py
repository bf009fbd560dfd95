"""Counterfactuals of another token length (`aligned_counterfactual: false`): kept instead of
dropped, metrics on the corrupted prompts read each prompt's own last token, methods that do not
line positions up still run, and those that patch position by position are refused before any
compute when a counterfactual lacks its clean prompt's spans (these records' counterfactuals are
unlabelled; tests/scores/test_alignment.py runs patching on counterfactuals that have them)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loading import load_model
from circuitbench.models.vocabulary import load_vocabulary
from circuitbench.pipeline.unit import run_unit
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.scoring import check_methods
from circuitbench.specs.catalog import load_task
from circuitbench.specs.options import ExecutionOptions, RunOptions, effective_spec

NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Alice", "Paul", "Kate", "Anne"]
# The counterfactual's template varies: as long as the clean prompt, longer, shorter.
CORRUPTED = ["When {a} and {b} went to the store, {c} gave a drink to",
             "While {a} and {b} were working at the store, {c} gave a drink to",
             "{a} and {b} went to the store. {c} gave it to"]


def records(n: int = 24) -> list[dict]:
    out = []
    for i in range(n):
        io, s = NAMES[i % 12], NAMES[(i + 1 + i // 12) % 12]
        a, b, c = [x for x in NAMES if x not in (io, s)][i % 5: i % 5 + 3]
        out.append({"prompt": f"When {io} and {s} went to the store, {s} gave a drink to", "answer": f" {io}",
                    "distractor": f" {s}", "corrupted": CORRUPTED[i % 3].format(a=a, b=b, c=c), "split": "test",
                    "key": str(i), "positions": {"IO": f" {io}", "S2": {"text": f" {s}", "occurrence": -1}}})
    return out


def write_task(folder: Path, extra: str = "", methods: str = "[]", metrics: str = "[logit_diff, accuracy]") -> Path:
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    path = folder / "unaligned.yaml"
    path.write_text(f"name: unaligned\ngenerator: {{name: file, path: d.jsonl}}\nn_prompts: all\nmetrics: {metrics}\n"
                    f"methods: {methods}\n{extra}")
    return path


UNALIGNED = "aligned_counterfactual: false\n"


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-tasks", device="cpu")


def test_by_default_other_lengths_are_dropped_and_counted(tmp_path):
    vocab, unk, n_ctx, _ = load_vocabulary("toy-tasks")
    data = encode_task(load_task(str(write_task(tmp_path, "max_drop_fraction: 0.7\n"))), vocab, unk, n_ctx)
    assert len(data) == 8 and dict(data.report.reasons) == {"clean and corrupted prompts differ in token length": 16}
    assert data.aligned


def test_declared_unaligned_keeps_them_with_their_own_lengths(tmp_path):
    vocab, unk, n_ctx, _ = load_vocabulary("toy-tasks")
    spec = load_task(str(write_task(tmp_path, UNALIGNED)))
    assert spec.model_dump()["aligned_counterfactual"] is False
    data = encode_task(spec, vocab, unk, n_ctx)
    assert len(data) == 24 and data.report.n_dropped == 0 and not data.aligned
    assert data.lengths.tolist() == [15] * 24  # <bos> + 14 words and commas
    assert sorted(set(data.corrupted_lengths.tolist())) == [13, 15, 16]
    for i in range(24):
        n = int(data.corrupted_lengths[i])
        assert int(data.corrupted[i, n - 1]) == int(data.tokens[i, 14])  # both end in "to"
        assert bool((data.corrupted[i, n:] == vocab.pad_id).all())
    batch = data.batch(0, 3)
    assert batch.tokens.shape[1] == 16  # wide enough for the longest corrupted prompt
    corrupted = batch.as_corrupted()
    assert corrupted.end.tolist() == (data.corrupted_lengths[:3] - 1).tolist() and set(corrupted.positions) == {"END"}
    assert batch.as_corrupted().lengths.tolist() == data.corrupted_lengths[:3].tolist()


def test_default_specs_do_not_show_the_flag(tmp_path):
    spec = load_task(str(write_task(tmp_path)))
    assert "aligned_counterfactual" not in spec.model_dump() and spec.aligned_counterfactual
    unaligned = load_task(str(write_task(tmp_path, UNALIGNED)))
    assert unaligned.spec_hash() != spec.spec_hash() and unaligned.content_hash() != spec.content_hash()


@pytest.mark.parametrize("methods, metrics, message", [
    ("[]", "[logit_diff, sequence_loss]", "metrics ['sequence_loss'] score a corrupted run"),
])
def test_position_by_position_comparisons_are_refused_when_the_task_loads(tmp_path, methods, metrics, message):
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(write_task(tmp_path, UNALIGNED, methods, metrics)))
    assert message in str(e.value) and "unaligned.yaml" in str(e.value)


def test_run_options_bring_patching_back_only_where_spans_align(tmp_path):
    spec = load_task(str(write_task(tmp_path, UNALIGNED, "[ablation]")))
    patching = effective_spec(spec, RunOptions(methods=["activation_patching"]))  # known once the prompts are encoded
    vocab, unk, n_ctx, _ = load_vocabulary("toy-tasks")
    with pytest.raises(CircuitbenchError, match="Method 'activation_patching' on task 'unaligned': prompt 0"):
        check_methods(patching, encode_task(spec, vocab, unk, n_ctx))


def test_check_methods_refuses_patching_on_unaligned_prompts(tmp_path):
    vocab, unk, n_ctx, _ = load_vocabulary("toy-tasks")
    spec = load_task(str(write_task(tmp_path, UNALIGNED)))
    data = encode_task(spec, vocab, unk, n_ctx)
    check_methods(spec.model_copy(update={"methods": ["ablation", "attention_to"]}), data)
    with pytest.raises(CircuitbenchError, match=r"Method 'activation_patching' on task 'unaligned': prompt 0 \('When "
                                                r".*'\): its counterfactual has no span 'IO' \(it has BOS, END\)"):
        check_methods(spec.model_copy(update={"methods": ["activation_patching"]}), data)


def _alone(model, tokens: list[int], answer: int, distractor: int) -> float:
    logits = model.run(torch.tensor([tokens]))[0, -1]
    return float(logits[answer] - logits[distractor])


def test_run_reads_each_corrupted_prompt_at_its_own_end(tmp_path, toy):
    extra = UNALIGNED + "circuit: {top_k: 3, ablation: mean_counterfactual, curve: false}\n"
    spec = load_task(str(write_task(tmp_path, extra, "[ablation, attention_to, previous_token]")))
    results = [run_unit(spec, toy, ExecutionOptions(batch_size=b)) for b in (5, 24)]
    data = encode_task(spec, toy.vocab, toy.unk_id, toy.n_ctx)
    expected = []
    for i in range(len(data)):
        n = int(data.corrupted_lengths[i])
        expected.append(_alone(toy, data.corrupted[i, :n].tolist(), int(data.answer[i]), int(data.distractor[i])))
    for result in results:
        assert result.status == "complete" and result.task.n_prompts == 24 and result.task.n_dropped == 0
        assert math.isclose(result.metrics_corrupted["logit_diff"], sum(expected) / len(expected), abs_tol=1e-4)
        assert set(result.head_scores) == {"ablation", "attention_to", "previous_token"}
        assert result.circuit is not None and math.isfinite(result.circuit.faithfulness.value)
    a, b = (r.head_scores["ablation"] for r in results)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
    assert math.isclose(results[0].circuit.faithfulness.value, results[1].circuit.faithfulness.value, abs_tol=1e-4)


def test_counterfactual_means_count_each_corrupted_prompt_up_to_its_own_length(tmp_path, toy):
    from circuitbench.models import hooks
    from circuitbench.scores.interventions import mean_head_outputs
    from circuitbench.scores.methods.context import MethodContext

    spec = load_task(str(write_task(tmp_path, UNALIGNED)))
    data = encode_task(spec, toy.vocab, toy.unk_id, toy.n_ctx)
    means = mean_head_outputs(toy, data, MethodContext(batch_size=7), corrupted=True)
    width = data.tokens.shape[1]
    sums = torch.zeros(width, toy.n_heads, toy.d_head, dtype=torch.float64)
    counts = torch.zeros(width, dtype=torch.float64)
    for i in range(len(data)):
        n = int(data.corrupted_lengths[i])
        _, cache = toy.run_with_cache(data.corrupted[i : i + 1, :n], [hooks.head_outputs(1)])
        sums[:n] += cache[hooks.head_outputs(1)][0].double().cpu()
        counts[:n] += 1
    assert torch.allclose(means[1].double().cpu(), sums / counts.clamp(min=1)[:, None, None], atol=1e-4)
