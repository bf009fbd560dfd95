import numpy as np
import torch

from circuitbench.models.loading import load_model
from circuitbench.prompts.encoding import encode_task
from circuitbench.scores.methods.detectors import duplicate_token_targets, induction_targets, previous_token_targets
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.catalog import load_task


def test_targets_by_hand():
    tokens = torch.tensor([[0, 5, 6, 5, 6]])
    lengths = torch.tensor([5])
    dup = duplicate_token_targets(tokens, lengths)[0]
    assert dup.nonzero().tolist() == [[3, 1], [4, 2]]
    ind = induction_targets(tokens, lengths)[0]
    assert ind.nonzero().tolist() == [[3, 2], [4, 3]]  # token after the earlier copy
    prev = previous_token_targets(tokens, torch.tensor([4]))[0]
    assert prev.nonzero().tolist() == [[1, 0], [2, 1], [3, 2]]  # padding query 4 excluded


def test_embedded_toy_has_induction_and_previous_token_heads():
    model = load_model("toy-induction-2l", device="cpu")
    spec = load_task("induction")
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    outputs = run_methods(model, data, ["induction", "previous_token"], MethodRun(batch_size=32))
    ind, prev = outputs["induction"].heads, outputs["previous_token"].heads
    top_layer, _ = np.unravel_index(ind.argmax(), ind.shape)
    assert top_layer == 1 and ind.max() > 0.5
    assert ind[1].max() > 3 * ind[0].max()
    prev_layer, _ = np.unravel_index(prev.argmax(), prev.shape)
    assert prev_layer == 0 and prev.max() > 0.5
