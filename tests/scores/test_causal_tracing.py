"""Causal tracing's patched forwards start at the first noised position (scores/methods/causal_tracing.py):
the same maps as forwards over every position."""
import numpy as np
import pytest

from circuitbench.models.end_queries import end_queries_reproduce
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)
    return model, data


def _maps(model, data):
    options = {"causal_tracing": {"corrupt": ["S1"], "kinds": ["resid", "attn", "mlp"], "window": 2,
                                  "directions": ["restore", "noise"], "samples": 2, "noise": "gaussian"}}
    run = MethodRun(4, metric="logit_diff", method_options=options)
    return {k: np.array(v.mean) for k, v in run_methods(model, data, ["causal_tracing"], run)["causal_tracing"]
            .traces.items()}


def test_forwards_from_the_first_noised_position_equal_forwards_over_every_position(tiny, monkeypatch):
    model, data = tiny
    model.prefix_forwards(), end_queries_reproduce(model)  # the models' self-checks record prefixes of their own
    starts = []
    record = model.key_value_prefix
    monkeypatch.setattr(model, "key_value_prefix", lambda tokens: starts.append(tokens.shape[1]) or record(tokens))
    from_prefix = _maps(model, data)
    # the prefix is what precedes the subject's first mention (S1), never a noised position
    assert starts and set(starts) == set(data.positions["S1"].tolist())
    monkeypatch.setattr(model, "prefix_forwards", lambda: False)
    everywhere = _maps(model, data)
    assert from_prefix.keys() == everywhere.keys() and len(everywhere) == 6
    for key, expected in everywhere.items():
        assert np.abs(from_prefix[key] - expected).max() <= 1e-5, key
        assert np.abs(expected).max() > 0, key
