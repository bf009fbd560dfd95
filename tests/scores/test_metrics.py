import math

import torch

from circuitbench.prompts.encoding import Batch
from circuitbench.specs.registries import METRICS


def make_batch() -> tuple[torch.Tensor, Batch]:
    # 2 prompts, 3 positions, vocab 4; END = position 1 for prompt 0, 2 for prompt 1
    logits = torch.zeros(2, 3, 4)
    logits[0, 1] = torch.tensor([1.0, 3.0, 0.0, 2.0])  # answer 1 is top
    logits[1, 2] = torch.tensor([0.0, 1.0, 4.0, 2.0])  # answer 3 is 2nd
    tokens = torch.tensor([[0, 2, 0], [0, 1, 2]])
    batch = Batch(tokens=tokens, corrupted=None, lengths=torch.tensor([2, 3]), answer=torch.tensor([1, 3]),
                  distractor=torch.tensor([3, 1]), positions={"END": torch.tensor([1, 2])},
                  score_mask=torch.tensor([[False, True, False], [False, False, True]]))
    return logits, batch


def test_answer_metrics_match_hand_computation():
    logits, batch = make_batch()
    def get(name):
        return METRICS.get(name).compute(logits, batch).tolist()
    assert get("logit_diff") == [1.0, 1.0]
    assert get("accuracy") == [1.0, 0.0]
    assert get("answer_rank") == [1.0, 2.0]
    z0 = math.exp(1) + math.exp(3) + 1 + math.exp(2)
    z1 = 1 + math.exp(1) + math.exp(4) + math.exp(2)
    prob = get("answer_prob")
    assert abs(prob[0] - math.exp(3) / z0) < 1e-6 and abs(prob[1] - math.exp(2) / z1) < 1e-6
    loss = get("loss")
    assert abs(loss[0] + math.log(math.exp(3) / z0)) < 1e-5


def test_sequence_losses_use_masks():
    logits, batch = make_batch()
    # prompt 1 scored target is token 2 at position 2, predicted from logits at position 1 (all zero)
    induction = METRICS.get("induction_loss").compute(logits, batch).tolist()
    assert abs(induction[1] - math.log(4)) < 1e-6
    # prompt 0: target token 2 at position 1 predicted from position 0 (uniform) -> log 4
    assert abs(induction[0] - math.log(4)) < 1e-6
    seq = METRICS.get("sequence_loss").compute(logits, batch).tolist()
    # prompt 1: targets at positions 1 (uniform: log 4) and 2 (from logits[1,1] uniform: log 4)
    assert abs(seq[1] - math.log(4)) < 1e-6


def test_corrupted_runs_are_scored_against_clean_targets():
    logits, batch = make_batch()
    batch.corrupted = torch.tensor([[0, 3, 0], [0, 3, 3]])
    corrupted = batch.as_corrupted()
    assert torch.equal(corrupted.tokens, batch.corrupted) and torch.equal(corrupted.target_tokens, batch.tokens)
    # logits put all mass on token 2 at every position: the clean targets (2) are cheap, the corrupted (3) dear
    peaked = torch.full((2, 3, 4), -20.0)
    peaked[..., 2] = 20.0
    assert METRICS.get("induction_loss").compute(peaked, corrupted).max() < 1e-6
