"""The stability of the chosen set (circuits/stability.py): half-sample reruns of the kept method."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from circuitbench.circuits.stability import chosen_set_stability, half_samples
from circuitbench.specs.task import CircuitRule


@pytest.fixture(scope="module")
def toy():
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    model = load_model("toy-induction-2l", device="cpu")
    spec = load_task("induction").model_copy(update={"n_prompts": 16, "counterfactuals": []})
    spec = spec.model_copy(update={"generator": spec.generator_with("fresh_random")})
    return model, encode_task(spec, model.vocab, model.unk_id, model.n_ctx)


def test_a_resample_is_the_same_as_encoding_those_prompts(toy):
    model, data = toy
    rows = [5, 0, 5, 11]
    taken = data.take(rows)
    assert taken.texts == [data.texts[r] for r in rows]
    for i, r in enumerate(rows):
        n = int(data.lengths[r])
        assert taken.tokens[i, :n].tolist() == data.tokens[r, :n].tolist()
        assert taken.corrupted[i, :n].tolist() == data.corrupted[r, :n].tolist()
        assert {k: int(v[i]) for k, v in taken.positions.items()} == {k: int(v[r]) for k, v in data.positions.items()}
    assert taken.prompt_hash != data.prompt_hash and taken.whole is None and taken.offset == 0


def test_stability_is_the_mean_pairwise_jaccard_of_a_naive_rerun_loop(toy):
    """Rerun exact patching by hand on each half-sample (independent of the code under test: plain
    top-k of |score| over a python dict, sets, pairs) and compare."""
    from circuitbench.scores.scoring import MethodRun, run_methods

    model, data = toy
    rule = CircuitRule(top_k=3, method="activation_patching", stability_resamples=5)
    run = MethodRun(batch_size=8, metric="induction_loss")
    got = chosen_set_stability(model, [data], "activation_patching", rule, {"a1.h0"}, run, seed=3)
    circuits = []
    for rows in half_samples(len(data), 5, 3):
        assert len(rows) == 8 and len(set(rows.tolist())) == 8
        scores = run_methods(model, data.take(rows), ["activation_patching"], run)["activation_patching"].heads
        flat = {f"a{l}.h{h}": abs(scores[l, h]) for l in range(2) for h in range(4) if scores[l, h] != 0}
        circuits.append(set(sorted(flat, key=lambda k: -flat[k])[:3]))
    pairs = [len(a & b) / len(a | b) for a, b in itertools.combinations(circuits, 2)]
    assert got is not None and got.resamples == 5 and got.prompts == 8
    assert got.jaccard == pytest.approx(np.mean(pairs)) and got.range == (min(pairs), max(pairs))
    assert got.with_chosen == pytest.approx(np.mean([len(c & {"a1.h0"}) / len(c | {"a1.h0"}) for c in circuits]))


def test_a_method_scoring_noise_is_unstable_and_a_planted_head_is_stable(toy):
    """A plugin method whose per-prompt scores are noise (seeded by the prompt's tokens) plus a
    constant planted on one head: the top-1 circuit is the planted head on every half-sample
    (Jaccard 1); the top-3 circuit's other two heads are noise and change with the prompts."""
    from circuitbench.plugins import MethodOutput, method
    from circuitbench.scores.scoring import MethodRun
    from circuitbench.specs.registries import METHODS

    if "test_noise_scores" not in METHODS:
        @method("test_noise_scores", description="noise per prompt and a planted head")
        def noise_scores(model, prompts, ctx) -> MethodOutput:
            total = np.zeros((model.n_layers, model.n_heads))
            for i in range(len(prompts)):
                seed = zlib.crc32(prompts.tokens[i].numpy().tobytes())
                total += np.random.default_rng(seed).normal(size=total.shape)
            total /= len(prompts)
            total[1, 2] += 10.0
            return MethodOutput(heads=total)

    model, data = toy
    run = MethodRun(batch_size=8, metric="induction_loss")
    planted = chosen_set_stability(model, [data], "test_noise_scores", CircuitRule(top_k=1), {"a1.h2"}, run, seed=0)
    assert planted is not None and planted.jaccard == 1.0 and planted.with_chosen == 1.0
    noisy = chosen_set_stability(model, [data], "test_noise_scores", CircuitRule(top_k=3, stability_resamples=8),
                                 {"a1.h2"}, run, seed=0)
    assert noisy is not None and noisy.jaccard < 0.8 and noisy.range[0] < noisy.range[1]


def test_too_few_prompts_or_no_resamples_measure_nothing(toy):
    from circuitbench.scores.scoring import MethodRun

    model, data = toy
    run = MethodRun(batch_size=8, metric="induction_loss")
    rule = CircuitRule(top_k=2)
    assert chosen_set_stability(model, [data.take(list(range(7)))], "activation_patching", rule, set(), run, 0) is None
    off = CircuitRule(top_k=2, stability_resamples=0)
    assert chosen_set_stability(model, [data], "activation_patching", off, set(), run, 0) is None
