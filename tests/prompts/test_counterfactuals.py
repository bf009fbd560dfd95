"""The counterfactual a task chooses in YAML: each option is a real counterfactual (destroys the
pattern, keeps the token statistics and every position), deterministic, and the default is what
it always was (the shipped tasks' prompt hashes are pinned in test_tasks.py)."""
import hashlib
from collections import Counter

import pytest

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.encoding import Vocabulary, encode_task
from circuitbench.prompts.generate import generate_prompts
from circuitbench.prompts.induction import InductionParams, bigrams
from circuitbench.prompts.ioi import IOIParams
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import GENERATORS
from circuitbench.specs.task import TaskSpec

INDUCTION = ("fresh_random", "shuffled_first_half", "permuted_positions")


def _induction(counterfactual: str, seed: int = 0, **params):
    p = InductionParams(name="induction", counterfactual=counterfactual, **{"min_len": 4, "max_len": 12,
                                                                           "n_symbols": 20, **params})
    return GENERATORS.get("induction").generate(p, 40, seed, "test")


@pytest.mark.parametrize("kind", INDUCTION)
def test_induction_counterfactuals_are_deterministic_and_keep_the_clean_prompts(kind):
    prompts = _induction(kind)
    assert len(prompts) == 40
    assert [p.model_dump() for p in prompts] == [p.model_dump() for p in _induction(kind)]
    assert [p.corrupted_symbols for p in prompts] != [p.corrupted_symbols for p in _induction(kind, seed=1)]
    # the clean prompts of a seed are the same whatever the counterfactual
    assert [p.symbols for p in prompts] == [p.symbols for p in _induction("fresh_random")]
    for p in prompts:
        assert len(p.corrupted_symbols) == len(p.symbols) and p.corrupted_symbols != p.symbols


@pytest.mark.parametrize("kind", ["shuffled_first_half", "permuted_positions"])
def test_shuffled_counterfactuals_repeat_no_bigram_and_keep_the_symbol_counts(kind):
    for p in _induction(kind, min_len={"shuffled_first_half": 3, "permuted_positions": 4}[kind]):
        half = p.symbol_positions["REPEAT"]
        clean, corrupted = p.symbols, p.corrupted_symbols
        pairs = bigrams(corrupted)
        assert Counter(corrupted) == Counter(clean)  # the same tokens, each twice
        assert len(set(pairs)) == len(pairs)  # nothing repeats in order: no induction to follow
        assert all(a != b for a, b in pairs)
        if kind == "shuffled_first_half":
            assert corrupted[:half] == clean[:half] and corrupted[half:] != clean[half:]
        else:
            assert not set(pairs) & set(bigrams(clean))  # not one bigram of the clean prompt
            assert corrupted[:half] != clean[:half]


def test_fresh_random_is_todays_counterfactual():
    for p in _induction("fresh_random"):
        half = p.symbol_positions["REPEAT"]
        assert p.corrupted_symbols[:half] == p.symbols[:half] and len(set(p.corrupted_symbols[half:])) == half


@pytest.mark.parametrize("kind, shortest", [("shuffled_first_half", 3), ("permuted_positions", 4)])
def test_too_short_halves_are_refused_for_the_shuffles(kind, shortest):
    with pytest.raises(ValueError, match=f"min_len >= {shortest}"):
        InductionParams(name="induction", counterfactual=kind, min_len=shortest - 1)
    assert len(_induction(kind, min_len=shortest, max_len=shortest)) >= 1


def test_unknown_counterfactual_names_the_choices(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: t\ngenerator: {name: induction, counterfactual: shuffled}\nmetrics: [induction_loss]\n")
    with pytest.raises(CircuitbenchError, match="generator.induction.counterfactual.*permuted_positions"):
        load_task(str(path))


def test_ioi_swapped_names_flips_the_answer(gpt2_tokenizer, tmp_path):
    vocab = Vocabulary(tokenizer=gpt2_tokenizer, bos_id=50256, pad_id=50256, token_pool=list(range(50256)))
    path = tmp_path / "ioi_swapped.yaml"
    path.write_text("name: ioi_swapped\ngenerator: {name: ioi, counterfactual: swapped_names}\nn_prompts: 32\n"
                    "metrics: [logit_diff]\n")
    spec = load_task(str(path))
    data = encode_task(spec, vocab, None, 1024)
    default = encode_task(load_task("ioi").model_copy(update={"n_prompts": 32}), vocab, None, 1024)
    assert data.report.n_dropped == 0 and len(data) == 32
    assert data.texts == default.texts  # the same clean prompts as the abc counterfactual
    for i in range(len(data)):
        clean, corrupted = data.tokens[i].tolist(), data.corrupted[i].tolist()
        io, s1, s2 = (int(data.positions[k][i]) for k in ("IO", "S1", "S2"))
        # IO and S exchanged at every mention, nothing else changed
        assert corrupted[io] == clean[s1] == clean[s2] and corrupted[s1] == corrupted[s2] == clean[io]
        assert all(corrupted[p] == clean[p] for p in range(int(data.lengths[i])) if p not in (io, s1, s2))
        assert int(data.answer[i]) == clean[io] and int(data.distractor[i]) == clean[s1]


def test_ioi_params_accept_both_counterfactuals():
    assert IOIParams(name="ioi").counterfactual == "abc"
    with pytest.raises(ValueError):
        IOIParams(name="ioi", counterfactual="same_names")


# (spec hash, prompt-set hash) of the shipped tasks: the prompt hashes from before counterfactuals became a
# choice; the spec hashes since the tasks' circuits became `method: auto` with ablation among their methods
# (ioi's since its rule became `fraction: 0.25`, a non-trivial circuit on the 8-head toys; both since circuit
# rules gained `panel`, and since both list a second counterfactual, issue 23; same prompts).
PINNED = {"induction": ("854a3ead8c1335ec", "c6b86ce3db5740d6"), "ioi": ("441246ef81a01196", "1c864438d69bf92b")}


@pytest.mark.parametrize("task", sorted(PINNED))
def test_default_counterfactual_leaves_the_shipped_tasks_unchanged(task):
    spec = load_task(task)
    prompts = generate_prompts(spec)
    assert (spec.spec_hash(), hashlib.sha256(prompts.model_dump_json().encode()).hexdigest()[:16]) == PINNED[task]


SEVERAL = ["induction", "ioi", "seq_days", "seq_digits", "seq_letters", "seq_months", "seq_sentence"]


@pytest.mark.parametrize("task", SEVERAL)
def test_every_counterfactual_of_a_shipped_task_draws_the_same_clean_prompts_and_changes_them(task):
    """Several counterfactuals compare one clean prompt set with each: the generator must draw the clean
    prompts, answers and split keys independently of the counterfactual, and every counterfactual must differ
    from its clean prompt."""
    spec = load_task(task)
    assert len(spec.counterfactuals) >= 2
    sets = {name: generate_prompts(spec.with_counterfactual(name)).prompts for name in spec.counterfactuals}
    first = sets[spec.counterfactuals[0]]
    for name, prompts in sets.items():
        assert [(p.text, p.answer, p.split_key) for p in prompts] == [(p.text, p.answer, p.split_key) for p in first]
        assert all((p.corrupted_text or str(p.corrupted_symbols)) != (p.text if p.segments else str(p.symbols))
                   for p in prompts), name
    a, b = (sets[n] for n in spec.counterfactuals[:2])
    assert sum(x.corrupted_text != y.corrupted_text or x.corrupted_symbols != y.corrupted_symbols
               for x, y in zip(a, b)) == len(a)  # the two counterfactuals differ on every prompt


def test_the_offset_counterfactual_is_an_in_order_run_of_the_family_starting_elsewhere():
    from circuitbench.prompts.sequence import FAMILIES

    spec = load_task("seq_months").with_counterfactual("offset")
    months = FAMILIES["months"]
    for p in generate_prompts(spec).prompts:
        items = p.corrupted_text.split(" ")
        start = months.index(items[0])
        assert items == [months[(start + i) % 12] for i in range(len(items))]
        assert start != p.meta["start"]


def test_counterfactuals_name_values_of_the_generators_parameter():
    base = load_task("seq_months").model_dump()
    with pytest.raises(ValueError, match="'sideways' is not a counterfactual of generator 'sequence'"):
        type(load_task("seq_months")).model_validate({**base, "counterfactuals": ["shuffled", "sideways"]})
    with pytest.raises(ValueError, match="lists a name twice"):
        type(load_task("seq_months")).model_validate({**base, "counterfactuals": ["shuffled", "shuffled"]})
    with pytest.raises(ValueError, match="counterfactuals starts with"):
        type(load_task("seq_months")).model_validate({**base, "generator": {**base["generator"],
                                                                           "counterfactual": "offset"}})
    with pytest.raises(ValueError, match="has no `counterfactual` parameter"):
        TaskSpec.model_validate({"name": "t", "generator": {"name": "records", "records": [
            {"prompt": "a b", "corrupted": "b a", "answer": " c"}]}, "metrics": ["loss"],
            "counterfactuals": ["x", "y"]})
