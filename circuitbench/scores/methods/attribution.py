"""Attribution patching of heads and MLPs: a gradient approximation of noising activation
patching, optionally with integrated gradients along the path from the corrupted to the clean
block-0 input.

- `attribution_patching`: heads and MLPs; `ig_steps: m` averages the gradients over α = k/m,
  k = 1…m (EAP-IG's node rule, get_scores_eap_ig), or the midpoints (k + ½)/m with
  `points: midpoint`.
- `nap` / `nap_ig`: node attribution patching as MIB evaluates it (EAP-IG's attribute_node with
  'EAP' / 'EAP-IG-inputs'): the same scores, with the input embedding scored as a node of its own
  (−Δembedding · ∂m/∂embedding), so node circuits may leave it out, as MIB's do."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.interventions import (
    BaseRun,
    base_runs,
    end_only_logits,
    in_layout,
    oriented_metric,
    record_scored_run,
)
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AttributionOptions, NapIgOptions
from circuitbench.scores.methods.outputs import MethodOutput
from circuitbench.specs.registries import METRICS


@dataclass
class _Pass:
    """One forward and backward on the clean prompts: the head outputs z and MLP outputs it ran
    with, their gradients, the gradient at the block-0 input, and its metric (higher is better)."""

    z: list[torch.Tensor]  # [n_layers] x [batch, pos, n_heads, d_head]
    mlp: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] (empty: no MLPs)
    z_grads: list[torch.Tensor]
    mlp_grads: list[torch.Tensor]
    input: torch.Tensor  # [batch, pos, d_model] the block-0 input it ran with
    input_grad: torch.Tensor  # [batch, pos, d_model] (zeros when not asked for)
    metric: torch.Tensor  # [batch]


def alphas_of(steps: int, points: str, first: int = 1) -> list[float]:
    """The integration points: none (plain attribution: the clean run itself, α = 1), EAP-IG's
    published α = k/m for k = first…first + m − 1 (nodes and ig_activations: k = 1…m; eap_ig's
    inputs: k = 0…m−1), or the midpoints (k + ½)/m."""
    if steps == 0:
        return [1.0]
    if points == "midpoint":
        return [(k + 0.5) / steps for k in range(steps)]
    return [k / steps for k in range(first, first + steps)]


def attribution_patching(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """score ≈ −(z_corr − z_clean) · ∂m/∂z summed over positions and d_head (an MLP: its output
    and d_model), normalised like noising activation patching. With ig_steps > 0 the gradient is
    averaged along the straight path between the corrupted and clean block-0 inputs.

    Plain attribution without an activation cache costs one corrupted forward and one clean
    forward with its backward: the clean base run is the gradient pass itself (its z and MLP
    outputs are recorded on the way), and answer metrics unembed END only."""
    opts = AttributionOptions.model_validate(ctx.options)
    return attribution(model, data, ctx, alphas_of(opts.ig_steps, opts.points), score_input=False)


def nap(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """Node attribution patching (MIB's NAP): attribution patching with the input scored as a node."""
    return attribution(model, data, ctx, [1.0], score_input=True)


def nap_ig(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    """MIB's NAP-IG: integrated gradients along the input embeddings, α = k/m for k = 1…m."""
    opts = NapIgOptions.model_validate(ctx.options)
    alphas = alphas_of(opts.steps, opts.points)
    return replace(attribution(model, data, ctx, alphas, score_input=True),
                   settings={"steps": opts.steps, "points": opts.points, "alphas": alphas})


def attribution(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, alphas: list[float],
                score_input: bool) -> MethodOutput:
    """−(a_corr − a_clean) · ∂m/∂a per node, the gradient averaged over `alphas` (the block-0 input
    at corr + α·(clean − corr); [1.0]: the clean run), normalised by |m_clean − m_corr|."""
    n_layers = model.n_layers
    total = torch.zeros(n_layers, model.n_heads, dtype=torch.float64)
    total_mlp = torch.zeros(n_layers, dtype=torch.float64)
    total_input = torch.zeros((), dtype=torch.float64)
    m_clean = m_corr = 0.0
    one_pass = alphas == [1.0] and ctx.cache_entry is None
    with model.frozen_weights():
        for batch, runs in _runs(model, data, ctx, one_pass):
            corrupt_run = runs["corrupted"]
            m_corr += float(corrupt_run.metric.double().sum())
            if one_pass:
                clean = _gradients(model, batch, None, None, 1.0, ctx, score_input)
                clean_z, clean_mlp, grads, mlp_grads = clean.z, clean.mlp, clean.z_grads, clean.mlp_grads
                input_grad = clean.input_grad.double()
                m_clean += float(clean.metric.double().sum())
            else:
                clean_run = runs["clean"]
                clean_z, clean_mlp = clean_run.z, clean_run.mlp or []
                m_clean += float(clean_run.metric.double().sum())
                grads = [torch.zeros_like(z, dtype=torch.float64) for z in clean_z]
                mlp_grads = [torch.zeros_like(m, dtype=torch.float64) for m in clean_mlp]
                input_grad = torch.zeros_like(clean_run.resid[0], dtype=torch.float64)
                for alpha in alphas:
                    step = _gradients(model, batch, clean_run.resid[0], corrupt_run.resid[0], alpha, ctx)
                    for l, g in enumerate(step.z_grads):
                        grads[l] += g.double() / len(alphas)
                    for l, g in enumerate(step.mlp_grads):
                        mlp_grads[l] += g.double() / len(alphas)
                    input_grad += step.input_grad.double() / len(alphas)
            valid = (torch.arange(batch.tokens.shape[1])[None, :] < batch.lengths[:, None]).to(model.device)
            if score_input:
                embedded = clean.input if one_pass else runs["clean"].resid[0]
                delta = (corrupt_run.resid[0] - embedded).double() * valid[:, :, None]
                total_input += float((delta * input_grad).sum())
            for l in range(n_layers):
                delta = (corrupt_run.z[l] - clean_z[l]).to(grads[l].dtype) * valid[:, :, None, None]
                total[l] += (delta * grads[l]).double().sum((0, 1, 3)).cpu()
            if clean_mlp and corrupt_run.mlp is not None:
                for l in range(n_layers):
                    delta = (corrupt_run.mlp[l] - clean_mlp[l]).to(mlp_grads[l].dtype) * valid[:, :, None]
                    total_mlp[l] += float((delta * mlp_grads[l]).double().sum())
            ctx.advance(len(batch))
    total, total_mlp, total_input, m_clean, m_corr, n = ctx.sum_shards(
        (total, total_mlp, total_input, m_clean, m_corr, len(data)))
    gap = abs(m_clean - m_corr) / n  # |gap|: the score's sign is the effect's own (patching.normalised_effect)
    if gap < 1e-9:
        raise CircuitbenchError(
            f"Clean and corrupted prompts give the same metric on '{model.name}': attribution scores are undefined.")
    heads = (-(total / n) / gap).numpy()
    return MethodOutput(heads=heads, mlps=(-(total_mlp / n) / gap).numpy() if model.has_mlp else None, nodes=True,
                        input=float(-(total_input / n) / gap) if score_input else None)


def _runs(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
          one_pass: bool) -> Iterator[tuple[Batch, dict[str, BaseRun]]]:
    """Per batch: the base runs attribution needs (one_pass: the corrupted run only)."""
    if not one_pass:
        yield from base_runs(model, data, ctx, ("clean", "corrupted"))
        return
    higher = METRICS.get(ctx.metric).higher_is_better
    for batch in data.batches(ctx.batch_size):
        raw, run = record_scored_run(model, batch.as_corrupted(), ctx.metric)
        run.metric = raw if higher else -raw
        yield batch, {"corrupted": in_layout(batch, run)}  # unaligned: span to span into the clean positions


def _gradients(model: LoadedModel, batch: Batch, resid_clean: torch.Tensor | None, resid_corr: torch.Tensor | None,
               alpha: float, ctx: MethodContext, score_input: bool = False) -> _Pass:
    """∂(sum of the metric)/∂z per layer [batch, pos, n_heads, d_head] and ∂/∂(MLP output) per
    layer [batch, pos, d_model] (and ∂/∂(block-0 input) with IG or `score_input`), on the clean
    prompts with the block-0 input set to corr +
    alpha·(clean − corr) (resid_clean None: the clean run itself, whose z and MLP outputs are
    then the clean ones)."""
    kept: list[torch.Tensor] = []
    kept_mlp: list[torch.Tensor] = []
    kept_input: list[torch.Tensor] = []

    def start(x: torch.Tensor) -> torch.Tensor:
        assert resid_clean is not None and resid_corr is not None
        mixed = resid_corr + alpha * (resid_clean - resid_corr)
        kept_input.append(mixed.detach().clone().to(x.dtype).requires_grad_(True))
        return kept_input[0]

    def clean_input(x: torch.Tensor) -> torch.Tensor:  # the clean run's own input, as a leaf: its gradient
        kept_input.append(x.detach().clone().requires_grad_(True))
        return kept_input[0]

    def keeper(into: list[torch.Tensor]):
        def keep(x: torch.Tensor) -> torch.Tensor:
            if not x.requires_grad:  # nothing upstream needs a gradient (the clean run, weights frozen)
                x = x.detach().requires_grad_(True)
            else:
                x.retain_grad()
            into.append(x)
            return x
        return keep

    edits: list[Hook] = [(hooks.head_outputs(l), keeper(kept)) for l in range(model.n_layers)]
    if model.has_mlp:
        edits += [(hooks.mlp_out(l), keeper(kept_mlp)) for l in range(model.n_layers)]
    unembed_hooks, scored = end_only_logits(ctx.metric, batch, model, [site for site, _ in edits])
    if resid_clean is not None:
        edits.insert(0, (hooks.resid_pre(0), start))
    elif score_input:
        edits.insert(0, (hooks.resid_pre(0), clean_input))
    with torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, edits + unembed_hooks, grad=True)
        oriented = oriented_metric(ctx.metric, logits, scored)
        oriented.sum().backward()
    grad = lambda xs: [x.grad.detach() if x.grad is not None else torch.zeros_like(x) for x in xs]  # noqa: E731
    if not kept_input:  # the input's gradient was not asked for
        kept_input.append(torch.zeros(*batch.tokens.shape, model.d_model, device=model.device))
    return _Pass(z=[z.detach() for z in kept], mlp=[m.detach() for m in kept_mlp], z_grads=grad(kept),
                 mlp_grads=grad(kept_mlp), input=kept_input[0].detach(), input_grad=grad(kept_input)[0],
                 metric=oriented.detach())
