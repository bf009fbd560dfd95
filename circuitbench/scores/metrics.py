"""Task metric implementations (declared in builtin.py), computed per prompt from logits so that
means, standard errors and data-parallel gathers all work on the same numbers.

Answer metrics read the logits at END (the position whose next token is the answer); sequence
metrics average next-token losses over the batch's score mask.
"""
from __future__ import annotations

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.prompts.encoding import Batch


def _end_logits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch, vocab] logits at each prompt's END position, in float32."""
    rows = torch.arange(len(batch), device=logits.device)
    return logits[rows, batch.end.to(logits.device)].float()


def _pick(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return values.gather(-1, ids.to(values.device)[:, None])[:, 0]


def logit_diff(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    end = _end_logits(logits, batch)
    return _pick(end, batch.answer) - _pick(end, batch.distractor)


def accuracy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    end = _end_logits(logits, batch)
    return (end.argmax(-1) == batch.answer.to(end.device)).float()


def answer_prob(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return _pick(_end_logits(logits, batch).softmax(-1), batch.answer)


def answer_rank(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """1 = the answer is the top prediction."""
    end = _end_logits(logits, batch)
    return (end > _pick(end, batch.answer)[:, None]).sum(-1).float() + 1


def loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the answer at END, in nats."""
    return -_pick(_end_logits(logits, batch).log_softmax(-1), batch.answer)


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos] next-token loss of tokens[:, t] given the prefix; column 0 is 0."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = tokens[:, 1:].to(logp.device)
    nll = -logp.gather(-1, target[..., None])[..., 0]
    return torch.nn.functional.pad(nll, (1, 0))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.device).float()
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def sequence_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token loss over every real token after BOS."""
    positions = torch.arange(batch.tokens.shape[1])[None, :]
    valid = (positions >= 1) & (positions < batch.lengths[:, None])
    return _masked_mean(token_losses(logits, batch.target_tokens), valid)


def scored_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token loss over the task's scored tokens (for induction: the repeat, after
    its first token, which nothing in context predicts)."""
    return _masked_mean(token_losses(logits, batch.target_tokens), batch.score_mask)


CONTRACT = "a metric returns one finite value per prompt, shape [batch]"


def per_prompt_values(name: str, values: object, n: int) -> torch.Tensor:
    """What metric `name` returned for a batch of `n` prompts, as a [n] tensor; anything else (a
    [batch, k] tensor, a scalar, a string) is a CircuitbenchError naming the metric, what it
    returned and the shape expected, never averaged into a number."""
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values)  # numpy arrays and lists of floats are fine
        except (TypeError, ValueError, RuntimeError):
            raise CircuitbenchError(f"Metric '{name}' returned a {type(values).__name__}, expected a tensor of shape "
                                    f"[{n}]: {CONTRACT}.") from None
    if values.dtype == torch.bool or values.dtype in (torch.bfloat16, torch.float16):
        values = values.float()  # a metric computed in the model's half precision: means and sums in float32+
    if tuple(values.shape) != (n,) or values.is_complex():
        raise CircuitbenchError(f"Metric '{name}' returned shape {list(values.shape)} ({values.dtype}) for a batch of "
                                f"{n} prompts, expected shape [{n}]: {CONTRACT} (reduce any other dimension inside "
                                "the metric, e.g. .mean(-1)).")
    return values
