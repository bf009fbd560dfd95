"""Evaluating a task's metrics: per-prompt values on clean and corrupted prompts, mean ± stderr,
and the same metrics on other splits side by side.

Under a launcher every process evaluates its shard of the prompts and every process gets all
values, in prompt order (see parallel.py)."""
from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.parallel import ONE_PROCESS, Processes
from circuitbench.progress import ProgressFn, Steps, no_progress
from circuitbench.prompts.base import excerpt
from circuitbench.prompts.encoding import Batch, EncodedPrompts, encode_task
from circuitbench.registry import entry_label, exits_as_errors
from circuitbench.scores.metrics import CONTRACT, per_prompt_values
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import TaskSpec


class SplitMetrics(BaseModel):
    """A task's metrics on one split."""

    model_config = ConfigDict(extra="forbid")
    n_prompts: int = Field(description="prompts evaluated on this split (after drops)")
    metrics: dict[str, float] = Field(description="metric id -> mean over prompts")
    metrics_stderr: dict[str, float | None] = Field(
        description="metric id -> standard error of the mean; None: undefined (a single prompt has no spread)")


def evaluate(
    model: LoadedModel, data: EncodedPrompts, metric_names: list[str], batch_size: int,
    progress: ProgressFn = no_progress, processes: Processes = ONE_PROCESS, clean: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-prompt metric values [n] on clean (unless `clean` is false: then {}, no clean forward) and
    (if defined) corrupted prompts."""
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    clean_values: dict[str, list[torch.Tensor]] = {m: [] for m in metric_names}
    corrupt: dict[str, list[torch.Tensor]] = {m: [] for m in metric_names}
    steps = Steps(progress, "metrics", len(shard))
    for start, batch in zip(range(0, len(shard), batch_size), shard.batches(batch_size)):
        if clean:
            logits = model.run(batch.tokens)
            for m in metric_names:
                clean_values[m].append(_metric_values(m, logits, batch, shard, start, "clean"))
        if batch.corrupted is not None:
            cb = batch.as_corrupted()
            logits_c = model.run(cb.tokens)
            for m in metric_names:
                corrupt[m].append(_metric_values(m, logits_c, cb, shard, start, "corrupted"))
        steps.advance(len(batch))
    joined = lambda parts: torch.cat(parts) if parts else torch.zeros(0)  # noqa: E731  (a shard may be empty)
    clean_joined = processes.concat({m: joined(v) for m, v in clean_values.items()}) if clean else {}
    if data.corrupted is None:
        return clean_joined, {}
    return clean_joined, processes.concat({m: joined(v) for m, v in corrupt.items()})


def _metric_values(name: str, logits: torch.Tensor, batch: Batch, shard: EncodedPrompts, start: int,
                   what: str) -> torch.Tensor:
    """Metric `name` on one batch (prompts start.. of the shard), checked: one value per prompt, and
    finite wherever the logits are (NaN/inf from the model itself is summarise's to explain)."""
    metric = METRICS.get(name)
    with exits_as_errors(entry_label("metric", name, metric.fn)):
        values = per_prompt_values(name, metric.compute(logits, batch), len(batch)).cpu()
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad and bool(torch.isfinite(logits).all()):
        first = shard.offset + start + bad[0]
        raise CircuitbenchError(
            f"Metric '{name}' returned NaN/inf for {len(bad)} of {len(batch)} prompts of a batch of {what} prompts "
            f"(prompt {first}: {excerpt(shard.texts[start + bad[0]])!r}) although the model's logits are finite: "
            f"{CONTRACT}. Fix the metric (e.g. guard divisions and logs of zero).")
    return values


def mean_stderr(values: torch.Tensor) -> tuple[float, float | None]:
    """(mean, standard error of the mean) of per-prompt values; the standard error is None (undefined)
    for a single prompt, which has no spread (never 0, which would claim an exact mean)."""
    v = values.double()
    mean = float(v.mean())
    stderr = float(v.std(unbiased=True) / len(v) ** 0.5) if len(v) > 1 else None
    return mean, stderr


SITE_WORDS = {"embed": "the token embeddings", "attn_out": "the attention output of block {layer}",
              "mlp_out": "the MLP output of block {layer}", "resid_post": "the residual stream after block {layer}"}


def nonfinite_error(quantity: str, model: LoadedModel, tokens: torch.Tensor) -> CircuitbenchError:
    """An error naming the quantity that is NaN/inf, where the model's activations first go
    non-finite on `tokens` (one forward), and what to do about it."""
    site = model.first_nonfinite_site(tokens)
    where = ("its activations are finite (the NaN/inf arises in the scoring itself)" if site is None else
             f"activations first go non-finite at {SITE_WORDS[site.kind].format(layer=site.layer)} ({site})")
    advice = ("the weights hold NaN/inf or overflow even in float32: check the checkpoint" if model.dtype == "float32"
              else f"it runs in {model.dtype}: try --dtype float32, or check the checkpoint")
    return CircuitbenchError(f"{quantity} is not finite on model '{model.name}': {where}; {advice}.")


def summarise(values: dict[str, torch.Tensor], model: LoadedModel, tokens: torch.Tensor,
              what: str) -> tuple[dict[str, float], dict[str, float | None]]:
    """(means, standard errors; None for one prompt) per metric; a non-finite value is an error naming
    the metric and where the model first goes non-finite on `tokens` (a few of the prompts it was
    computed on)."""
    means: dict[str, float] = {}
    stderrs: dict[str, float | None] = {}
    for name, v in values.items():
        if v.dim() != 1:  # values read from a cache written before metrics were checked
            raise CircuitbenchError(f"Metric '{name}' gave values of shape {list(v.shape)} on the {what} prompts: "
                                    f"{CONTRACT}. Clear the cache (circuitbench cache clear) and run again.")
        means[name], stderrs[name] = mean_stderr(v)
        if not (math.isfinite(means[name]) and math.isfinite(stderrs[name] if stderrs[name] is not None else 0.0)):
            raise nonfinite_error(f"Metric '{name}' on the {what} prompts", model, tokens)
    return means, stderrs


def evaluate_report_splits(
    spec: TaskSpec, model: LoadedModel, batch_size: int, progress: ProgressFn = no_progress,
    processes: Processes = ONE_PROCESS,
) -> dict[str, SplitMetrics]:
    """The task's metrics on each of its `report_splits` (same prompt count and seed): a model
    that memorised its training progressions scores high on train and low on test."""
    out: dict[str, SplitMetrics] = {}
    for split in spec.report_splits:
        data = encode_task(spec.model_copy(update={"split": split}), model.vocab, model.unk_id, model.n_ctx)
        clean, _ = evaluate(model, data.without_corrupted(), spec.metrics, batch_size, progress, processes)
        means, stderrs = summarise(clean, model, data.tokens[:4], f"{split}-split")
        out[split] = SplitMetrics(n_prompts=len(data), metrics=means, metrics_stderr=stderrs)
    return out
