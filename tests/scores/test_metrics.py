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


# Issue 21: what a metric returns is checked (one finite value per prompt), and one prompt has no spread.
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import circuitbench as cb  # noqa: E402
from circuitbench.results.store import load_result  # noqa: E402

from helpers import cli  # noqa: E402

BAD_METRICS = {
    "test_wide": (lambda logits, batch: torch.ones(len(batch), 3), ["returned shape [8, 3]", "expected shape [8]"]),
    "test_scalar": (lambda logits, batch: torch.tensor(1.0), ["returned shape []", "expected shape [8]"]),
    "test_listed": (lambda logits, batch: "high", ["returned a str", "expected"]),
    "test_nan": (lambda logits, batch: torch.arange(len(batch)) / (torch.arange(len(batch)) > 0),
                 ["returned NaN/inf for 1 of 8 prompts", "prompt 0"]),
}


@pytest.fixture(scope="module")
def bad_metrics():
    for name, (fn, _) in BAD_METRICS.items():
        if name not in METRICS:
            cb.register_metric(name, fn, higher_is_better=True, needs_answer=False)


def _task_with(tmp_path: Path, metric: str) -> Path:
    path = tmp_path / "with_metric.yaml"
    path.write_text(f"name: with_metric\ngenerator: {{name: induction}}\nmetrics: [induction_loss, {metric}]\n"
                    "methods: [previous_token]\n")
    return path


@pytest.mark.parametrize("metric", list(BAD_METRICS))
def test_a_metric_must_return_one_finite_value_per_prompt(capsys, tmp_path, bad_metrics, metric):
    """A plugin metric returning [batch, 3] was averaged and the result written complete."""
    code, _, err = cli(capsys, "run", "--task", str(_task_with(tmp_path, metric)), "--model", "toy-induction-2l",
                       "--n", "8", "--batch-size", "8", "--out", str(tmp_path / "r"), "-q", "--no-cache")
    assert code == 2 and "Traceback" not in err, err
    result = load_result(tmp_path / "r" / "toy-induction-2l" / "with_metric.json")
    assert result.status == "failed" and result.error.user_error and not result.metrics
    message = result.error.message
    assert f"Metric '{metric}'" in message and "one finite value per prompt" in message, message
    for part in BAD_METRICS[metric][1]:
        assert part in message, message
    assert "check the checkpoint" not in message  # the model's activations are fine: the metric is at fault


def test_one_prompt_has_no_standard_error_and_no_faithfulness(capsys, tmp_path):
    """`--n 1` reported stderr 0 and a defined faithfulness: with one prompt there is no spread."""
    code, out, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "1", "--out",
                         str(tmp_path), "--no-cache", "--methods", "previous_token,activation_patching", "--details")
    assert code == 0, err
    path = tmp_path / "toy-induction-2l" / "induction.json"
    raw = json.loads(path.read_text())
    assert raw["metrics_stderr"] == {"induction_loss": None, "sequence_loss": None}
    circuit = raw["circuit"]
    faithfulness = circuit["faithfulness"]
    assert faithfulness["value"] is None and faithfulness["gap_stderr"] is None
    assert set(faithfulness["by_ablation"].values()) == {None} and faithfulness["cpr"] is None
    assert "1 prompt" in faithfulness["undefined"]
    assert all(c["faithfulness"] is None for c in circuit["candidates"])
    assert "± n/a" in out and "± 0.000" not in out and "faithfulness undefined" in out
    code, _, err = cli(capsys, "report", str(path), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert "n/a" in (tmp_path / "report" / "report.html").read_text()


def test_two_prompts_have_a_standard_error(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--task", "induction", "--model", "toy-induction-2l", "--n", "2", "--out",
                       str(tmp_path), "--no-cache", "-q", "--methods", "previous_token,activation_patching")
    assert code == 0, err
    result = load_result(tmp_path / "toy-induction-2l" / "induction.json")
    assert all(isinstance(v, float) and v > 0 for v in result.metrics_stderr.values())
    f = result.circuit.faithfulness
    assert f.gap_stderr is not None and f.gap_stderr > 0
    assert (f.value is None) == (f.undefined is not None)
