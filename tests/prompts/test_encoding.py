import pytest

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.base import Prompt, PromptSet, Segment
from circuitbench.prompts.encoding import Vocabulary, encode_prompts, encode_task
from circuitbench.specs.catalog import load_task


def gpt2_vocab(tok) -> Vocabulary:
    return Vocabulary(tokenizer=tok, bos_id=tok.bos_token_id, pad_id=tok.eos_token_id, token_pool=list(range(50256)))


def test_fibonacci_default_spec_on_real_gpt2_bpe(gpt2_tokenizer):
    spec = load_task("fibonacci")
    data = encode_task(spec, gpt2_vocab(gpt2_tokenizer), None, 1024)
    assert len(data) + data.report.n_dropped == spec.n_prompts
    for i in range(len(data)):
        n = int(data.lengths[i])
        ids = data.tokens[i, :n].tolist()
        assert ids[0] == gpt2_tokenizer.bos_token_id
        assert data.positions["END"][i] == n - 1
        text = gpt2_tokenizer.decode(ids[1:])
        assert text == data.texts[i]
        # the answer token decodes to the true next Fibonacci number
        terms = [int(t) for t in text.replace(",", " ").split()]
        assert gpt2_tokenizer.decode([int(data.answer[i])]) == f" {terms[-1] + terms[-2]}"
        assert gpt2_tokenizer.decode([int(data.distractor[i])]) == f" {terms[-1]}"
        # LAST names the last number's token
        assert gpt2_tokenizer.decode([ids[int(data.positions['LAST'][i])]]).strip() == str(terms[-1])
        # corrupted prompt has the same token length (position-aligned patching)
        assert (data.corrupted[i, n:] == gpt2_tokenizer.eos_token_id).all()


def _prompt(answer: str) -> Prompt:
    return Prompt(segments=[Segment(text="The number is")], answer=answer, distractor=" one", split_key=answer)


def test_multi_token_answers_are_dropped_and_counted(gpt2_tokenizer):
    prompts = [_prompt(" two"), _prompt(" three"), _prompt(" antidisestablishmentarianism")]
    data = encode_prompts(PromptSet(task="t", split="test", seed=0, prompts=prompts), gpt2_vocab(gpt2_tokenizer),
                          has_answer=True, n_ctx=1024, max_drop_fraction=0.5)
    assert len(data) == 2
    assert data.report.reasons == {"answer is not a single token": 1}
    assert "antidisestablishmentarianism" in data.report.examples["answer is not a single token"][0]


def test_too_many_drops_stop_with_examples(gpt2_tokenizer):
    prompts = [_prompt(" antidisestablishmentarianism"), _prompt(" floccinaucinihilipilification"), _prompt(" two")]
    with pytest.raises(CircuitbenchError) as e:
        encode_prompts(PromptSet(task="t", split="test", seed=0, prompts=prompts), gpt2_vocab(gpt2_tokenizer),
                       has_answer=True, n_ctx=1024, max_drop_fraction=0.1)
    msg = str(e.value)
    assert "2 of 3" in msg and "not a single token" in msg and "antidisestablishmentarianism" in msg


def test_symbol_prompts_map_to_pool_and_score_mask():
    class NoText:
        def encode(self, text, add_special_tokens=False):
            raise AssertionError("symbol prompts do not tokenize text")

    vocab = Vocabulary(tokenizer=NoText(), bos_id=0, pad_id=1, token_pool=[10, 11, 12, 13, 14])
    p = Prompt(symbols=[2, 4, 2, 4], corrupted_symbols=[2, 4, 3, 0], symbol_positions={"REPEAT": 2},
               score_from="REPEAT", split_key="x")
    data = encode_prompts(PromptSet(task="t", split="test", seed=0, prompts=[p]), vocab, has_answer=False,
                          n_ctx=64, max_drop_fraction=0.0)
    assert data.tokens[0].tolist() == [0, 12, 14, 12, 14]
    assert data.corrupted[0].tolist() == [0, 12, 14, 13, 10]
    # scored targets: strictly after the first repeated token (index 3) -> only index 4
    assert data.score_mask[0].tolist() == [False, False, False, False, True]
    assert data.positions["REPEAT"].tolist() == [3]


def test_drop_examples_are_excerpts_of_long_prompts(gpt2_tokenizer):
    """Issue 21: a dropped 2 MB prompt was kept whole in the drop report (and so in the result)."""
    long = Prompt(segments=[Segment(text="The number is" + " x" * 1_000_000)], answer=" antidisestablishmentarianism",
                  distractor=" one", split_key="long")
    data = encode_prompts(PromptSet(task="t", split="test", seed=0, prompts=[_prompt(" two"), long]),
                          gpt2_vocab(gpt2_tokenizer), has_answer=True, n_ctx=10**7, max_drop_fraction=0.5)
    [example] = data.report.examples["answer is not a single token"]
    assert len(example) < 200 and "The number is x x" in example and "(2000013 characters)" in example, example
    assert "antidisestablishmentarianism" in example
