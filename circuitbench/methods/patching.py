"""Head patching: exact activation patching, ablations and attribution patching.

Exact patching reuses the base run's cached residual stream: for a head in layer l the forward
re-enters at block l (blocks before it are skipped, see models/forward.py), and several heads of
one layer are patched at once, one per copy of the batch along the batch dimension. The naive
loop (one full forward per head) gives the same numbers; the tests check it.

Scores are normalised so that 1 means "this head alone carries the whole clean-vs-corrupted
difference": noising (corrupted head output into the clean run) scores (m_clean − m_patched) /
(m_clean − m_corrupted); denoising (clean into the corrupted run) scores (m_patched −
m_corrupted) / (m_clean − m_corrupted).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.encoding import Batch
from circuitbench.errors import CircuitbenchError
from circuitbench.methods import METHODS, Method, MethodContext
from circuitbench.metrics import METRICS

if TYPE_CHECKING:
    from circuitbench.encoding import EncodedPrompts
    from circuitbench.models import LoadedModel

# Rows (prompt copies) per patched forward: bounds the logits tensor [rows, pos, vocab]; when
# only END logits are unembedded (answer metrics) the tensor is [rows, 1, vocab] and more fit.
MAX_ROWS = 64
MAX_ROWS_END_ONLY = 256


class PatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    direction: Literal["noising", "denoising"] = "noising"
    positions: Literal["all"] | list[str] = Field("all", description="'all' or named positions, e.g. [END, S2]")


class AblationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["zero", "mean", "resample"] = "mean"
    positions: Literal["all"] | list[str] = "all"


class AttributionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ig_steps: int = Field(0, ge=0, le=256, description="0: plain attribution patching; >0: integrated gradients")


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def oriented_metric(metric: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch] per-prompt value of `metric`, oriented so that higher = better."""
    m = METRICS.get(metric)
    values = m.fn(logits, batch)
    return values if m.higher_is_better else -values


def metric_values(ctx: MethodContext, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch] per-prompt value of the task's main metric, oriented so higher = better."""
    return oriented_metric(ctx.metric, logits, batch)


def end_only_logits(metric: str, batch: Batch) -> tuple[list, Batch]:
    """For answer metrics, which read logits at END only: a hook that unembeds just the END row
    of each prompt (the vocabulary projection of every position is most of a small model's
    forward), and the batch re-indexed to match. Other metrics: no hook, the batch as it is."""
    if not METRICS.get(metric).needs_answer:
        return [], batch

    def take_end(x: torch.Tensor, hook) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, batch.end.to(x.device)][:, None]

    return [("unembed.hook_in", take_end)], replace(batch, positions={**batch.positions, "END": torch.zeros_like(batch.end)})


def rows_per_forward(metric: str) -> int:
    return MAX_ROWS_END_ONLY if METRICS.get(metric).needs_answer else MAX_ROWS


def repeat_batch(batch: Batch, copies: int) -> Batch:
    """The batch stacked `copies` times (copy-major: row c * B + b)."""
    rep = lambda t: t.repeat(copies, *([1] * (t.dim() - 1)))
    return Batch(
        tokens=rep(batch.tokens), corrupted=None if batch.corrupted is None else rep(batch.corrupted),
        lengths=rep(batch.lengths), answer=rep(batch.answer), distractor=rep(batch.distractor),
        positions={k: rep(v) for k, v in batch.positions.items()}, score_mask=rep(batch.score_mask),
        targets=None if batch.targets is None else rep(batch.targets),
    )


def as_corrupted(batch: Batch) -> Batch:
    return batch.as_corrupted()


def position_mask(batch: Batch, positions: Literal["all"] | list[str]) -> torch.Tensor:
    """[batch, pos] bool: where head outputs are patched."""
    b, p = batch.tokens.shape
    if positions == "all":
        return torch.arange(p)[None, :] < batch.lengths[:, None]
    mask = torch.zeros(b, p, dtype=torch.bool)
    for name in positions:
        if name not in batch.positions:
            raise CircuitbenchError(f"position '{name}' is not defined by this task (it has {sorted(batch.positions)})")
        mask[torch.arange(b), batch.positions[name]] = True
    return mask


def check_positions(data: "EncodedPrompts", positions: Literal["all"] | list[str], method: str) -> None:
    if positions != "all":
        missing = [p for p in positions if p not in data.positions]
        if missing:
            raise CircuitbenchError(
                f"Method '{method}' patches at positions {missing}, which this task does not define "
                f"(it has {sorted(data.positions)}). Set positions in method_options."
            )


@dataclass
class RunCache:
    """What one base run leaves behind: per-layer block inputs and head outputs (hook_z)."""

    resid: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model]
    z: list[torch.Tensor]  # [n_layers] x [batch, pos, n_heads, d_head]
    logits: torch.Tensor


def run_and_cache(model: "LoadedModel", tokens: torch.Tensor) -> RunCache:
    names = {f"blocks.{l}.hook_in" for l in range(model.n_layers)} | {z_hook(l) for l in range(model.n_layers)}
    with torch.inference_mode():
        logits, cache = model.bridge.run_with_cache(tokens.to(model.device), names_filter=lambda n: n in names)
    return RunCache(
        resid=[cache[f"blocks.{l}.hook_in"] for l in range(model.n_layers)],
        z=[cache[z_hook(l)] for l in range(model.n_layers)],
        logits=logits,
    )


@dataclass
class BaseRun:
    """An unpatched run of one batch, as the patching methods use it."""

    resid: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] block inputs
    z: list[torch.Tensor]  # [n_layers] x [batch, pos, n_heads, d_head]
    metric: torch.Tensor  # [batch] the main metric, oriented so higher = better


Input = Literal["clean", "corrupted"]
BASE_RUNS = "base_runs"  # activation-cache group: resid.L, z.L and metric.<id> of every prompt


def _input_batch(batch: Batch, which: Input) -> Batch:
    return batch if which == "clean" else batch.as_corrupted()


def base_run_bytes(model: "LoadedModel", data: "EncodedPrompts") -> int:
    cfg = model.bridge.cfg
    per_position = model.n_layers * (cfg.d_model + model.n_heads * cfg.d_head)
    element = torch.empty((), dtype=getattr(torch, model.dtype)).element_size()
    return int(data.tokens.numel() * per_position * element)


def _collect_base_runs(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext, which: Input) -> dict[str, torch.Tensor]:
    """The base runs of every prompt, as the activation cache stores them: resid.L and z.L
    [n, width, ...] and metric.<id> [n] (raw, as the metric returns it).

    Batches run at the full width, so the pad positions hold the pad tokens' real activations
    too: a batch of any size then reads exactly what it would compute itself (resample ablation
    does read another prompt's positions, pads included)."""
    n, width = data.tokens.shape
    inputs = data.tokens if which == "clean" else data.corrupted
    assert inputs is not None
    out: dict[str, torch.Tensor] = {}
    values = []
    start = 0
    for batch in data.batches(ctx.batch_size):
        scored = _input_batch(batch, which)
        run = run_and_cache(model, inputs[start : start + len(batch)])
        values.append(METRICS.get(ctx.metric).fn(run.logits[:, : scored.tokens.shape[1]], scored).cpu())
        for name, layers in (("resid", run.resid), ("z", run.z)):
            for layer, t in enumerate(layers):
                key = f"{name}.{layer}"
                if key not in out:
                    out[key] = torch.empty(n, width, *t.shape[2:], dtype=t.dtype)
                out[key][start : start + len(batch)] = t.cpu()
        start += len(batch)
    out[f"metric.{ctx.metric}"] = torch.cat(values)
    return out


def _stored_base_runs(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext, which: Input) -> dict[str, torch.Tensor] | None:
    """All prompts' base runs from the activation cache, computed and stored on a miss; None
    when there is no cache or the entry would not fit (then runs are computed per batch)."""
    entry = ctx.activations
    if entry is None:
        return None
    stored = entry.read(which, BASE_RUNS, [f"metric.{ctx.metric}"])
    if stored is None:
        if not entry.room_for(base_run_bytes(model, data)):
            return None
        stored = _collect_base_runs(model, data, ctx, which)
        entry.save(which, BASE_RUNS, stored)
    return stored


def base_runs(
    model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext, inputs: tuple[Input, ...]
) -> Iterator[tuple[Batch, dict[Input, BaseRun]]]:
    """Per batch of `ctx.batch_size`: the batch and its unpatched runs on each of `inputs`.

    With an activation cache (ctx.activations) every prompt's runs are read from it, or
    computed once and stored, so a second method (or run) does no base forwards; without one
    they are computed batch by batch."""
    stored = {which: _stored_base_runs(model, data, ctx, which) for which in inputs}
    higher = METRICS.get(ctx.metric).higher_is_better
    start = 0
    for batch in data.batches(ctx.batch_size):
        stop, width = start + len(batch), batch.tokens.shape[1]
        runs: dict[Input, BaseRun] = {}
        for which in inputs:
            kept = stored[which]
            if kept is None:
                scored = _input_batch(batch, which)
                run = run_and_cache(model, scored.tokens)
                runs[which] = BaseRun(run.resid, run.z, metric_values(ctx, run.logits, scored))
                continue
            rows = lambda name, _kept=kept: _kept[name][start:stop, :width].to(model.device)
            metric = kept[f"metric.{ctx.metric}"][start:stop]
            runs[which] = BaseRun(resid=[rows(f"resid.{l}") for l in range(model.n_layers)],
                                  z=[rows(f"z.{l}") for l in range(model.n_layers)],
                                  metric=metric if higher else -metric)
        yield batch, runs
        start = stop


def metric_per_copy(
    model: "LoadedModel",
    batch: Batch,
    metric: str,
    layer: int,
    resid: torch.Tensor,
    hook_name: str,
    items: list,
    edit: Callable[[torch.Tensor, object], None],
    formats: list[tuple[str, int]],
) -> torch.Tensor:
    """[len(items), batch] higher-is-better metric of the batch re-run once per item, resuming at
    block `layer` from `resid` (the base run's block input, [batch, pos, d_model]) with
    `edit(x, item)` applied in place to that copy's activation `x` at `hook_name`.

    Copies are stacked along the batch axis, as many per forward as `rows_per_forward` allows,
    and blocks before `layer` are skipped: this is what makes exact patching fast."""
    from circuitbench.models.forward import resume_hook, skip_blocks_before

    b = len(batch)
    group = max(1, min(len(items), rows_per_forward(metric) // max(b, 1)))
    out = torch.zeros(len(items), b, dtype=torch.float64)
    for first in range(0, len(items), group):
        chunk = items[first : first + group]
        g = len(chunk)
        rep = repeat_batch(batch, g)

        def patch(x: torch.Tensor, hook, _chunk=chunk) -> torch.Tensor:
            x = x.clone().view(len(_chunk), b, *x.shape[1:])
            for c, item in enumerate(_chunk):
                edit(x[c], item)
            return x.view(len(_chunk) * b, *x.shape[2:])

        unembed_hooks, scored = end_only_logits(metric, rep)
        hooks = [resume_hook(layer, resid.repeat(g, 1, 1)), (hook_name, patch), *unembed_hooks]
        with torch.inference_mode(), skip_blocks_before(model, layer, formats):
            logits = model.bridge.run_with_hooks(rep.tokens.to(model.device), fwd_hooks=hooks)
        out[first : first + g] = oriented_metric(metric, logits, scored).double().cpu().view(g, b)
    return out


def patched_head_metrics(
    model: "LoadedModel",
    batch: Batch,
    base: RunCache | BaseRun,
    source_z: Callable[[int], torch.Tensor],
    mask: torch.Tensor,
    ctx: MethodContext,
    formats: list[tuple[str, int]],
) -> torch.Tensor:
    """[n_layers, n_heads] sum over the batch's prompts of the metric when that head's output
    (at `mask` positions) is replaced by `source_z(layer)` [batch, pos, n_heads, d_head]."""
    mask_dev = mask.to(model.device)[:, :, None]
    rows = []
    for layer in range(model.n_layers):
        src = source_z(layer)

        def edit(z: torch.Tensor, head, _src=src) -> None:  # z: [batch, pos, n_heads, d_head]
            z[:, :, head] = torch.where(mask_dev, _src[:, :, head].to(z.dtype), z[:, :, head])

        values = metric_per_copy(model, batch, ctx.metric, layer, base.resid[layer], z_hook(layer),
                                 list(range(model.n_heads)), edit, formats)
        rows.append(values.sum(1))
    return torch.stack(rows)


def naive_head_metrics(
    model: "LoadedModel", batch: Batch, source_z: Callable[[int], torch.Tensor], mask: torch.Tensor, ctx: MethodContext
) -> torch.Tensor:
    """The reference loop: one full forward per head. Same contract as patched_head_metrics."""
    out = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    for layer in range(model.n_layers):
        src = source_z(layer)
        for h in range(model.n_heads):
            def patch(z: torch.Tensor, hook, _h=h, _src=src) -> torch.Tensor:
                z = z.clone()
                z[:, :, _h] = torch.where(mask[:, :, None].to(z.device), _src[:, :, _h].to(z.dtype), z[:, :, _h])
                return z

            with torch.inference_mode():
                logits = model.bridge.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=[(z_hook(layer), patch)])
            out[layer, h] = metric_values(ctx, logits, batch).double().sum()
    return out


def _normalise(patched: torch.Tensor, m_clean: float, m_corr: float, direction: str, model_name: str) -> np.ndarray:
    gap = m_clean - m_corr
    if abs(gap) < 1e-9:
        raise CircuitbenchError(
            f"Clean and corrupted prompts give the same metric on '{model_name}' ({m_clean:.4g}): patching "
            "scores are undefined. The model may not do the task at all; check the metrics first."
        )
    if direction == "noising":
        return ((m_clean - patched) / gap).numpy()
    return ((patched - m_corr) / gap).numpy()


def activation_patching(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext) -> np.ndarray:
    from circuitbench.models.forward import block_output_formats

    opts = PatchingOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "activation_patching")
    formats = block_output_formats(model, data.tokens) if len(data) else []  # a shard may be empty
    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    m_clean = m_corr = 0.0
    for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted")):
        clean, corrupt = batch, as_corrupted(batch)
        clean_run, corrupt_run = runs["clean"], runs["corrupted"]
        m_clean += float(clean_run.metric.double().sum())
        m_corr += float(corrupt_run.metric.double().sum())
        base_batch, base, source = (clean, clean_run, corrupt_run) if opts.direction == "noising" else (corrupt, corrupt_run, clean_run)
        mask = position_mask(batch, opts.positions)
        total += patched_head_metrics(model, base_batch, base, lambda l, s=source: s.z[l], mask, ctx, formats)
        ctx.advance(len(batch))
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    return _normalise(total / n, m_clean / n, m_corr / n, opts.direction, model.name)


def _ablation_source(kind: str, run: BaseRun, mean_z: list[torch.Tensor] | None) -> Callable[[int], torch.Tensor]:
    if kind == "zero":
        return lambda l: torch.zeros_like(run.z[l])
    if kind == "mean":
        assert mean_z is not None
        return lambda l: mean_z[l][: run.z[l].shape[1]].unsqueeze(0).expand_as(run.z[l])
    # resample: each prompt takes the head output of the next prompt in the batch
    return lambda l: run.z[l].roll(1, dims=0)


def mean_head_outputs(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext, corrupted: bool = False) -> list[torch.Tensor]:
    """Per-layer [pos, n_heads, d_head] mean of hook_z over the task's clean (or corrupted)
    prompts, each position averaged over the prompts long enough to have it. `data` may be one
    process's shard: `sum_shards` adds the sums of all shards before dividing."""
    width = data.tokens.shape[1]
    d_head = int(model.bridge.cfg.d_head)
    sums = [torch.zeros(width, model.n_heads, d_head, dtype=torch.float64) for _ in range(model.n_layers)]
    counts = torch.zeros(width, dtype=torch.float64)
    which: Input = "corrupted" if corrupted else "clean"
    for batch, runs in base_runs(model, data, ctx, (which,)):
        run = runs[which]
        p = batch.tokens.shape[1]
        valid = (torch.arange(p)[None, :] < batch.lengths[:, None]).double()
        for l, z in enumerate(run.z):
            sums[l][:p] += (z.double().cpu() * valid[:, :, None, None]).sum(0)
        counts[:p] += valid.sum(0)
    sums, counts = ctx.sum_shards((sums, counts))
    return [(s / counts.clamp(min=1)[:, None, None]).float().to(model.device) for s in sums]


def ablation(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext) -> np.ndarray:
    """Score = drop of the (higher-is-better) main metric when the head is ablated."""
    from circuitbench.models.forward import block_output_formats

    opts = AblationOptions.model_validate(ctx.options)
    check_positions(data, opts.positions, "ablation")
    formats = block_output_formats(model, data.tokens) if len(data) else []  # a shard may be empty
    mean_z = mean_head_outputs(model, data, ctx) if opts.kind == "mean" else None
    total = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    m_clean = 0.0
    for batch, runs in base_runs(model, data, ctx, ("clean",)):
        run = runs["clean"]
        m_clean += float(run.metric.double().sum())
        source = _ablation_source(opts.kind, run, mean_z)
        total += patched_head_metrics(model, batch, run, source, position_mask(batch, opts.positions), ctx, formats)
        ctx.advance(len(batch))
    total, m_clean, n = ctx.sum_shards((total, m_clean, len(data)))
    return (m_clean / n - total / n).numpy()


def attribution_patching(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext) -> np.ndarray:
    """score ≈ −(z_corr − z_clean) · ∂m/∂z summed over positions and d_head, normalised like
    noising activation patching. With ig_steps > 0 the gradient is averaged along the straight
    path between the corrupted and clean block-0 inputs (EAP-IG style)."""
    opts = AttributionOptions.model_validate(ctx.options)
    n_layers = model.n_layers
    total = torch.zeros(n_layers, model.n_heads, dtype=torch.float64)
    m_clean = m_corr = 0.0
    params = [p for p in model.bridge.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for batch, runs in base_runs(model, data, ctx, ("clean", "corrupted")):
            clean, clean_run, corrupt_run = batch, runs["clean"], runs["corrupted"]
            m_clean += float(clean_run.metric.double().sum())
            m_corr += float(corrupt_run.metric.double().sum())
            alphas = [1.0] if opts.ig_steps == 0 else [(k + 0.5) / opts.ig_steps for k in range(opts.ig_steps)]
            grads = [torch.zeros_like(z, dtype=torch.float64) for z in clean_run.z]
            for alpha in alphas:
                for l, g in enumerate(_z_gradients(model, clean, clean_run.resid[0], corrupt_run.resid[0], alpha, ctx)):
                    grads[l] += g.double() / len(alphas)
            valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(model.device)
            for l in range(n_layers):
                delta = (corrupt_run.z[l] - clean_run.z[l]).double() * valid[:, :, None, None]
                total[l] += (delta * grads[l]).sum((0, 1, 3)).cpu()
            ctx.advance(len(batch))
    finally:
        for p in params:
            p.requires_grad_(True)
    total, m_clean, m_corr, n = ctx.sum_shards((total, m_clean, m_corr, len(data)))
    gap = (m_clean - m_corr) / n
    if abs(gap) < 1e-9:
        raise CircuitbenchError(f"Clean and corrupted prompts give the same metric on '{model.name}': attribution scores are undefined.")
    return (-(total / n) / gap).numpy()


def _z_gradients(model: "LoadedModel", batch: Batch, resid_clean: torch.Tensor, resid_corr: torch.Tensor,
                 alpha: float, ctx: MethodContext) -> list[torch.Tensor]:
    """∂(sum of the metric)/∂z per layer, on the clean prompts with the block-0 input set to
    corr + alpha·(clean − corr) (alpha = 1: the clean run itself)."""
    kept: list[torch.Tensor] = []

    def start(x: torch.Tensor, hook) -> torch.Tensor:
        mixed = resid_corr + alpha * (resid_clean - resid_corr)
        return mixed.detach().clone().to(x.dtype).requires_grad_(True)

    def keep(z: torch.Tensor, hook) -> torch.Tensor:
        z.retain_grad()
        kept.append(z)
        return z

    hooks = [("blocks.0.hook_in", start)] + [(z_hook(l), keep) for l in range(model.n_layers)]
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(batch.tokens.to(model.device), fwd_hooks=hooks)
        metric_values(ctx, logits, batch).sum().backward()
    return [z.grad.detach() if z.grad is not None else torch.zeros_like(z) for z in kept]


METHODS.add("activation_patching", Method(activation_patching, "exact head patching (noising/denoising), normalised",
                                          needs_corrupted=True, options=PatchingOptions))
METHODS.add("ablation", Method(ablation, "metric drop when a head is zero/mean/resample ablated", options=AblationOptions))
METHODS.add("attribution_patching", Method(attribution_patching, "gradient approximation of noising patching (optional IG)",
                                           needs_corrupted=True, options=AttributionOptions))
