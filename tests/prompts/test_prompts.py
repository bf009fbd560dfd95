from circuitbench.prompts.base import split_of
from circuitbench.prompts.fibonacci import FibonacciParams
from circuitbench.prompts.induction import InductionParams
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import GENERATORS


def _numbers(text: str) -> list[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def test_fibonacci_answer_is_true_next_term():
    params = FibonacciParams(name="fibonacci", length=6)
    prompts = GENERATORS.get("fibonacci").generate(params, 50, 0, "test")
    assert len(prompts) == 50
    for p in prompts:
        terms = _numbers(p.text)
        assert len(terms) == 6
        for i in range(2, 6):
            assert terms[i] == terms[i - 1] + terms[i - 2]
        assert int(p.answer) == terms[-1] + terms[-2]
        assert int(p.distractor) == terms[-1]
        corrupted = _numbers(p.corrupted_text)
        steps = {b - a for a, b in zip(corrupted, corrupted[1:])}
        assert len(steps) == 1 and len(corrupted) == 6  # arithmetic, same length


def test_splits_are_disjoint_and_deterministic():
    params = FibonacciParams(name="fibonacci", length=5, max_start=30)
    gen = GENERATORS.get("fibonacci")
    keys = {s: {p.split_key for p in gen.generate(params, 60, 0, s)} for s in ("train", "val", "test")}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["val"]) and not (keys["val"] & keys["test"])
    for split, ks in keys.items():
        assert all(split_of(k) == split for k in ks)
    again = [p.text for p in gen.generate(params, 60, 0, "test")]
    assert again == [p.text for p in gen.generate(params, 60, 0, "test")]
    assert again != [p.text for p in gen.generate(params, 60, 1, "test")]


def test_induction_prompts_repeat_and_counterfactual_does_not():
    params = InductionParams(name="induction", min_len=5, max_len=9, n_symbols=20)
    for p in GENERATORS.get("induction").generate(params, 30, 3, "test"):
        half = len(p.symbols) // 2
        assert p.symbols[:half] == p.symbols[half:]
        assert 5 <= half <= 9 and len(set(p.symbols[:half])) == half
        assert p.corrupted_symbols[:half] == p.symbols[:half]
        assert p.corrupted_symbols[half:] != p.symbols[half:]
        assert p.symbol_positions["REPEAT"] == half


def test_shipped_spec_generates_requested_count():
    spec = load_task("induction")
    gen = GENERATORS.get(spec.generator.name)
    assert len(gen.generate(spec.generator, spec.n_prompts, spec.seed, spec.split)) == spec.n_prompts


def test_all_prompts_of_a_huge_universe_stop_at_the_cap(monkeypatch):
    from circuitbench.prompts import base
    from circuitbench.prompts.sorting import SortingParams

    monkeypatch.setattr(base, "ALL_CAP", 300)
    prompts = GENERATORS.get("sorting").generate(SortingParams(name="sorting"), None, 0, "test")
    assert len(prompts) == 300 and len({p.split_key for p in prompts}) == 300
