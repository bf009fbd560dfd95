"""Logits of a few vocabulary columns at one position per row (models/answer_logits.py): the full
forward's logits there, after the model's own post-processing (Gemma-2's soft-capping), and exact
patching that unembeds only the answers and distractors equals patching that unembeds everything."""
import pytest
import torch

from circuitbench.models.answer_logits import answer_columns, answer_columns_reproduce
from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores import interventions
from circuitbench.scores.interventions import patched_node_metrics, position_mask, record_base_run
from circuitbench.scores.methods.context import MethodContext
from circuitbench.specs.catalog import load_task


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_columns_at_one_position_are_the_full_forward_s_logits(tiny_models, more_tiny_models, arch):
    model = load_model(str(tiny_models[arch] if arch in tiny_models else more_tiny_models(arch)), device="cpu")
    assert answer_columns_reproduce(model)
    tokens = torch.randint(0, 1000, (3, 8), generator=torch.Generator().manual_seed(0))
    positions, columns = torch.tensor([7, 3, 5]), torch.tensor([11, 262, 999, 50000])
    full = model.run(tokens)
    with answer_columns(model, positions, columns) as calls:
        part = model.run(tokens)
    assert calls and part.shape == (3, 1, 4)
    assert torch.allclose(part[:, 0], full[torch.arange(3), positions][:, columns], atol=1e-5)


def test_patching_with_answer_columns_equals_patching_with_the_whole_vocabulary(tiny_models, monkeypatch):
    model = load_model(str(tiny_models["gpt2"]), device="cpu")
    data = encode_task(load_task("ioi").model_copy(update={"n_prompts": 6}), model.vocab, model.unk_id, model.n_ctx)
    batch, ctx = data.batch(0, 6), MethodContext(batch_size=8, metric="logit_diff")
    (_, clean), (_, corrupt) = record_base_run(model, batch.tokens), record_base_run(model, batch.as_corrupted().tokens)
    mask = position_mask(batch, "all")
    used = []
    real = interventions.answer_columns
    monkeypatch.setattr(interventions, "answer_columns", lambda *a: used.append(1) or real(*a))
    columns = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], lambda l: corrupt.mlp[l], mask, ctx)
    assert used
    monkeypatch.setattr(interventions, "answer_columns_reproduce", lambda m: False)
    vocabulary = patched_node_metrics(model, batch, clean, lambda l: corrupt.z[l], lambda l: corrupt.mlp[l], mask, ctx)
    assert float((columns - vocabulary).abs().max()) <= 1e-5 and float(vocabulary.abs().max()) > 0
