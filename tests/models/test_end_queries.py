"""The last block's query at END only (models/end_queries.py): the metric equals the full
forward's, from position 0 and from a key/value prefix, and exact patching with it equals
exact patching without it; attention it does not reproduce (rotary) is refused."""
import pytest
import torch

from circuitbench.models import end_queries, hooks
from circuitbench.models.end_queries import end_attention, end_queries_reproduce
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores import interventions
from circuitbench.scores.interventions import (
    oriented_metric,
    patched_node_metrics,
    position_mask,
    record_base_run,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.catalog import load_task


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 12}), model.vocab, model.unk_id, model.n_ctx)
    whole = data.batch(0, len(data))
    longest = whole.lengths == whole.lengths.max()  # END is every row's last column
    return model, whole.select(torch.nonzero(longest).flatten()[:5])


def test_end_query_metric_equals_the_full_forward(gpt2):
    model, batch = gpt2
    assert end_queries_reproduce(model) and bool((batch.end == batch.tokens.shape[1] - 1).all())
    full = oriented_metric("logit_diff", model.run(batch.tokens), batch)
    with end_attention(model) as calls:
        logits = model.run_with_hooks(batch.tokens)
    assert calls and torch.allclose(oriented_metric("logit_diff", logits, batch), full, atol=1e-5)
    # resumed at the last block after a 4-token prefix, as patched forwards run
    last = model.n_layers - 1
    _, cache = model.run_with_cache(batch.tokens, [hooks.resid_pre(last)])
    prefix = model.key_value_prefix(batch.tokens[:, :4])
    with end_attention(model):
        part = model.run_with_hooks(batch.tokens[:, 4:], resume=(last, cache[hooks.resid_pre(last)][:, 4:]),
                                    prefix=prefix)
    assert torch.allclose(oriented_metric("logit_diff", part, batch.suffix(torch.arange(len(batch)), 4)), full,
                          atol=1e-5)


def test_patching_with_end_queries_equals_patching_without(gpt2, monkeypatch):
    model, batch = gpt2
    ctx = MethodContext(batch_size=8, metric="logit_diff")
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, "all")
    used = []
    real = end_queries.end_attention
    monkeypatch.setattr(interventions, "end_attention", lambda m: used.append(1) or real(m))
    fast = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], lambda l: corrupt.mlp[l], mask, ctx,
                                batch.first_difference())
    assert used
    monkeypatch.setattr(interventions, "end_queries_reproduce", lambda m: False)
    every = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], lambda l: corrupt.mlp[l], mask, ctx,
                                 batch.first_difference())
    assert float((fast - every).abs().max()) <= 1e-5 and float(every.abs().max()) > 0


def test_rotary_attention_keeps_every_query(tiny_models):
    assert not end_queries_reproduce(load_model(str(tiny_models["llama"]), device="cpu"))
