"""scores/evaluation.py: per-prompt metric values on clean and corrupted prompts."""
from __future__ import annotations

import torch

from circuitbench.scores.evaluation import evaluate


def test_corrupted_values_alone_skip_the_clean_forwards(monkeypatch):
    """Another counterfactual of the same clean prompts needs only its corrupted values: the same
    numbers as a full evaluation, with half the forwards."""
    from circuitbench.models.loaded import LoadedModel
    from circuitbench.models.loading import load_model
    from circuitbench.prompts.encoding import encode_task
    from circuitbench.specs.catalog import load_task

    model = load_model("toy-induction-2l", device="cpu")
    data = encode_task(load_task("induction").model_copy(update={"n_prompts": 12}), model.vocab, model.unk_id,
                       model.n_ctx)
    forwards = []
    original = LoadedModel.run
    monkeypatch.setattr(LoadedModel, "run", lambda self, tokens, *a, **k: forwards.append(1) or original(
        self, tokens, *a, **k))
    clean, corrupted = evaluate(model, data, ["induction_loss"], batch_size=4)
    full = len(forwards)
    none, only = evaluate(model, data, ["induction_loss"], batch_size=4, clean=False)
    assert none == {} and len(forwards) - full == full // 2 == 3
    assert torch.equal(only["induction_loss"], corrupted["induction_loss"]) and len(clean["induction_loss"]) == 12
