"""Named spans (prompts/spans.py) and their ids on encoded prompts (EncodedPrompts.span_names,
Batch.spans / corrupted_spans): each token's span agrees with its segment's own token count, and
the ids follow a batch through select, suffix, repeated and as_corrupted."""
import pytest
import torch

from circuitbench.prompts.base import Prompt, PromptSet, Segment
from circuitbench.prompts.encoding import Vocabulary, encode_prompts, encode_task
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.spans import segment_span_names, shared_span_names
from circuitbench.specs.catalog import load_task


@pytest.fixture(scope="module")
def vocab(gpt2_tokenizer):
    return Vocabulary(gpt2_tokenizer, gpt2_tokenizer.bos_token_id, gpt2_tokenizer.eos_token_id, [])


def test_segment_names_merge_unlabelled_runs_and_end():
    labels = [None, "IO", None, "S1", None, None, None, "S2", None, None, None]
    assert segment_span_names(labels) == ["before IO", "IO", "IO..S1", "S1", "S1..S2", "S1..S2", "S1..S2", "S2",
                                          "S2..END", "S2..END", "END"]
    assert segment_span_names([None, None, "LAST"]) == ["before LAST", "before LAST", "LAST"]  # END lies in LAST
    assert segment_span_names([None, None]) == ["before END", "END"]
    assert segment_span_names(["X", None, "Y", None, "X", None, "Y"]) == ["X", "X..Y", "Y", "Y..X", "X#2", "X..Y#2",
                                                                        "Y#2"]


def test_shared_names_put_other_structures_after_what_precedes_them():
    abba = ("BOS", "before IO", "IO", "IO..S1", "S1", "S2", "END")
    baba = ("BOS", "before S1", "S1", "S1..IO", "IO", "S2", "END")
    assert shared_span_names([baba, abba, abba]) == ("BOS", "before S1", "before IO", "IO", "IO..S1", "S1", "S1..IO",
                                                     "S2", "END")
    assert shared_span_names([abba]) == abba


def _independent_spans(tokenizer, prompt: Prompt, corrupted: bool) -> list[tuple[str | None, int]]:
    """(label, token count) of each segment, tokenized on its own."""
    segments = prompt.corrupted_segments if corrupted else prompt.segments
    return [(s.label, len(tokenizer.encode(s.text, add_special_tokens=False))) for s in segments]


def test_ioi_span_ids_match_each_segments_token_count(vocab, gpt2_tokenizer):
    spec = load_task("ioi").model_copy(update={"n_prompts": 24})
    prompts = generate_prompts(spec)
    data = encode_task(spec, vocab, None, 1024, prompts)
    assert len(data) == len(prompts.prompts) and data.spans is not None
    assert data.corrupted_spans is data.spans  # aligned: the same ids
    names = data.span_names
    assert {"BOS", "IO", "S1", "S2", "END", "S2..END"} <= set(names) and len(set(names)) == len(names)
    for i, prompt in enumerate(prompts.prompts):
        row = data.spans[i]
        expected = [names.index("BOS")]
        pieces = _independent_spans(gpt2_tokenizer, prompt, corrupted=False)
        for label, count in pieces:
            if label is not None:
                expected += [names.index(label)] * count
            else:  # an unlabelled run: one id for all of it, not any label's
                expected += [-2] * count
        n = int(data.lengths[i])
        assert len(expected) == n and bool((row[n:] == -1).all())
        got = row[:n].tolist()
        for pos, want in enumerate(expected):
            if want >= 0:
                assert got[pos] == want
            else:
                assert names[got[pos]] not in ("IO", "S1", "S2", "BOS")
        assert names[got[-1]] == "END" and pieces[-1][0] is None  # IOI ends in " to", unlabelled
        for label in ("IO", "S1", "S2"):  # a named position is the last token of its span
            at = torch.nonzero(row == names.index(label)).flatten()
            assert int(at.max()) == int(data.positions[label][i])


def _unequal_prompts() -> PromptSet:
    """Two IOI-shaped prompts whose counterfactual names are several tokens long."""
    def prompt(io: str, s: str, c: tuple[str, str, str]) -> Prompt:
        seg = lambda a, b, s_: [Segment(text="When"), Segment(text=f" {a}", label="IO"),  # noqa: E731
                                Segment(text=" and"), Segment(text=f" {b}", label="S1"),
                                Segment(text=" went to the store,"), Segment(text=f" {s_}", label="S2"),
                                Segment(text=" gave a drink"), Segment(text=" to")]
        return Prompt(segments=seg(io, s, s), corrupted_segments=seg(*c), answer=f" {io}", distractor=f" {s}",
                      split_key=io + s)
    return PromptSet(task="t", split="test", seed=0, prompts=[
        prompt("Mary", "John", ("Bartholomew", "Zebulon", "Anne")),
        prompt("Tom", "Kate", ("Sid", "Maximilian", "Ptolemy")),
    ])


def test_unaligned_corrupted_spans_follow_the_counterfactuals_own_tokens(vocab, gpt2_tokenizer):
    ps = _unequal_prompts()
    data = encode_prompts(ps, vocab, has_answer=True, n_ctx=1024, max_drop_fraction=0.0, aligned=False)
    names = data.span_names
    assert names == ("BOS", "before IO", "IO", "IO..S1", "S1", "S1..S2", "S2", "S2..END", "END")
    for i, prompt in enumerate(ps.prompts):
        pieces = _independent_spans(gpt2_tokenizer, prompt, corrupted=True)
        counts = [1] + [c for _, c in pieces[:-2]] + [pieces[-2][1], pieces[-1][1]]
        expected = sum(([k] * c for k, c in enumerate(counts)), [])
        n = int(data.corrupted_lengths[i])
        assert data.corrupted_spans[i, :n].tolist() == expected and bool((data.corrupted_spans[i, n:] == -1).all())
    assert not torch.equal(data.spans, data.corrupted_spans)


def test_batches_carry_spans_through_select_suffix_repeated_and_as_corrupted(vocab):
    data = encode_prompts(_unequal_prompts(), vocab, has_answer=True, n_ctx=1024, max_drop_fraction=0.0,
                          aligned=False)
    batch = data.batch(0, 2)
    width = batch.tokens.shape[1]
    assert batch.spans.shape == batch.corrupted_spans.shape == (2, width)
    assert width == int(torch.maximum(data.lengths, data.corrupted_lengths).max())
    swapped = batch.as_corrupted()
    assert torch.equal(swapped.spans, batch.corrupted_spans) and torch.equal(swapped.corrupted_spans, batch.spans)
    one = batch.select(torch.tensor([1]))
    w1 = max(int(data.lengths[1]), int(data.corrupted_lengths[1]))
    assert one.tokens.shape[1] == w1 and torch.equal(one.spans, data.spans[1:2, :w1])
    assert torch.equal(one.corrupted_spans, data.corrupted_spans[1:2, :w1])
    assert one.corrupted_lengths.tolist() == [int(data.corrupted_lengths[1])]
    tail = batch.suffix(torch.tensor([0, 1]), 3)
    assert torch.equal(tail.spans, batch.spans[:, 3:])
    assert torch.equal(tail.corrupted_spans, batch.corrupted_spans[:, 3:])
    rep = batch.repeated(3)
    assert torch.equal(rep.spans, batch.spans.repeat(3, 1)) and torch.equal(rep.corrupted_spans,
                                                                            batch.corrupted_spans.repeat(3, 1))
    shard, taken = data.subset(1, 2), data.take([1, 0])
    assert shard.span_names == taken.span_names == data.span_names
    assert torch.equal(taken.corrupted_spans, data.corrupted_spans[[1, 0]])
    assert data.without_corrupted().corrupted_spans is None


def test_symbol_tasks_have_no_spans(vocab):
    spec = load_task("induction").model_copy(update={"n_prompts": 2})
    pool_vocab = Vocabulary(vocab.tokenizer, vocab.bos_id, vocab.pad_id, list(range(1000, 3000)))
    data = encode_task(spec, pool_vocab, None, 1024)
    assert data.span_names == () and data.spans is None and data.batch(0, 2).spans is None
