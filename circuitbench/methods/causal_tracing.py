"""ROME-style causal tracing (Meng et al. 2022): corrupt token embeddings with noise, then
restore one (layer, position) state at a time from the clean run (or, the other direction, patch
one corrupted state into the clean run) and record the effect on the answer.

The map is [n_layers, n_positions] per state kind (residual stream = block output, attention
output, MLP output), averaged over prompts with its standard deviation. Positions are aligned
on the right: column j is END − (P−1−j), P the shortest prompt without BOS; a column that is the
same named position (IO, S2, …) in every prompt carries that name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from circuitbench.encoding import Batch
from circuitbench.errors import CircuitbenchError
from circuitbench.methods import METHODS, Method, MethodContext
from circuitbench.methods.patching import metric_per_copy, oriented_metric
from circuitbench.metrics import METRICS

if TYPE_CHECKING:
    from circuitbench.encoding import EncodedPrompts
    from circuitbench.models import LoadedModel

Kind = Literal["resid", "attn", "mlp"]
STATE_HOOKS = {"resid": "blocks.{layer}.hook_out", "attn": "blocks.{layer}.attn.hook_out", "mlp": "blocks.{layer}.mlp.hook_out"}


class TracingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise: Literal["gaussian", "random_embeddings", "shuffled"] = "gaussian"
    noise_scale: float = Field(3.0, gt=0, description="Gaussian std as a multiple of the token-embedding std")
    corrupt: Literal["all"] | list[str] = Field("all", description="'all' tokens after BOS, or named positions (the subject)")
    kinds: list[Kind] = Field(default_factory=lambda: ["resid", "attn", "mlp"], min_length=1)
    directions: list[Literal["restore", "noise"]] = Field(default_factory=lambda: ["restore"], min_length=1)
    metric: str | None = Field(None, description="default: answer_prob if the task has answers, else the main metric")
    seed: int = 0


class TraceMap(BaseModel):
    """Indirect effect per (layer, position): mean and std over prompts."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    direction: str
    noise: str
    metric: str
    layers: list[int]
    positions: list[str]
    mean: list[list[float]]
    std: list[list[float]]
    baseline_clean: float
    baseline_corrupted: float


def _corrupt_mask(batch: Batch, corrupt: Literal["all"] | list[str]) -> torch.Tensor:
    b, p = batch.tokens.shape
    if corrupt == "all":
        pos = torch.arange(p)[None, :]
        return (pos >= 1) & (pos < batch.lengths[:, None])
    mask = torch.zeros(b, p, dtype=torch.bool)
    for name in corrupt:
        mask[torch.arange(b), batch.positions[name]] = True
    return mask


def _noised_embeddings(embed: torch.Tensor, mask: torch.Tensor, opts: TracingOptions, scale: float,
                       table: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[batch, pos, d_model] embeddings with the masked positions corrupted."""
    out = embed.clone()
    m = mask.to(embed.device)
    if opts.noise == "gaussian":
        noise = torch.randn(embed.shape, generator=gen).to(embed.device, embed.dtype) * scale * opts.noise_scale
        out = torch.where(m[..., None], embed + noise, embed)
    elif opts.noise == "random_embeddings":
        ids = torch.randint(0, table.shape[0], embed.shape[:2], generator=gen)
        out = torch.where(m[..., None], table[ids].to(embed.device, embed.dtype), embed)
    else:  # shuffled: permute the corrupted positions' embeddings within each prompt
        for row in range(embed.shape[0]):
            idx = m[row].nonzero()[:, 0]
            perm = idx[torch.randperm(len(idx), generator=gen)]
            out[row, idx] = embed[row, perm]
    return out


def _columns(data: "EncodedPrompts") -> tuple[int, list[str]]:
    width = int(data.lengths.min()) - 1
    if width < 1:
        raise CircuitbenchError("causal_tracing needs prompts of at least 2 tokens")
    labels = []
    for j in range(width):
        offset = width - 1 - j
        label = "END" if offset == 0 else f"END-{offset}"
        for name, pos in data.positions.items():
            if name != "END" and bool(((data.lengths - 1 - pos) == offset).all()):
                label = name
        labels.append(label)
    return width, labels


def causal_tracing(model: "LoadedModel", data: "EncodedPrompts", ctx: MethodContext) -> dict[str, TraceMap]:
    # models/ imports the spec, which imports the method registry: import model mechanics lazily
    from circuitbench.models.forward import block_output_formats

    opts = TracingOptions.model_validate(ctx.options)
    metric = opts.metric or ("answer_prob" if data.has_answer else ctx.metric)
    METRICS.get(metric)
    if opts.corrupt != "all":
        missing = [p for p in opts.corrupt if p not in data.positions]
        if missing:
            raise CircuitbenchError(f"causal_tracing: positions {missing} are not defined by this task ({sorted(data.positions)})")
    hook_dict = model.bridge.hook_dict
    kinds = [k for k in opts.kinds if STATE_HOOKS[k].format(layer=0) in hook_dict]
    if not kinds:
        raise CircuitbenchError(f"causal_tracing: model '{model.name}' exposes none of the states {opts.kinds}")
    width, labels = _columns(data)
    n_layers = model.n_layers
    table = model.bridge.embed.W_E.detach() if hasattr(model.bridge, "embed") else None
    if table is None:
        raise CircuitbenchError(f"causal_tracing: cannot find the token embedding of '{model.name}'")
    scale = float(table.float().std())
    gen = torch.Generator().manual_seed(opts.seed)
    # effects[(kind, direction)] -> list of [batch, n_layers, width] arrays
    effects: dict[tuple[str, str], list[torch.Tensor]] = {(k, d): [] for k in kinds for d in opts.directions}
    base_clean: list[torch.Tensor] = []
    base_corr: list[torch.Tensor] = []
    state_names = {STATE_HOOKS[k].format(layer=l) for k in kinds for l in range(n_layers)}
    state_names |= {f"blocks.{l}.hook_in" for l in range(n_layers)}  # block inputs, to resume part-way
    formats = block_output_formats(model, data.tokens)
    for batch in data.batches(ctx.batch_size):
        tokens = batch.tokens.to(model.device)
        mask = _corrupt_mask(batch, opts.corrupt)
        with torch.inference_mode():
            _, embed_cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n == "hook_embed")
        noised = _noised_embeddings(embed_cache["hook_embed"], mask, opts, scale, table, gen)
        noise_hook = ("hook_embed", lambda x, hook, _n=noised: _n.to(x.dtype))
        with torch.inference_mode():
            clean_logits, clean_cache = _run_cached_with_hook(model, tokens, state_names, None)
            corr_logits, corr_cache = _run_cached_with_hook(model, tokens, state_names, noise_hook)
        m_clean = oriented_metric(metric, clean_logits, batch).cpu()
        m_corr = oriented_metric(metric, corr_logits, batch).cpu()
        base_clean.append(m_clean)
        base_corr.append(m_corr)
        ends = batch.end
        rows = torch.arange(len(batch))
        for kind in kinds:
            for direction in opts.directions:
                # restore: corrupted run, clean state put back; noise: clean run, corrupted state put in
                source = clean_cache if direction == "restore" else corr_cache
                base = corr_cache if direction == "restore" else clean_cache
                baseline = m_corr if direction == "restore" else m_clean
                out = torch.zeros(len(batch), n_layers, width)
                for layer in range(n_layers):
                    name = STATE_HOOKS[kind].format(layer=layer)
                    src = source[name]

                    def edit(x: torch.Tensor, col, _src=src) -> None:  # x: [batch, pos, d_model]
                        pos = ends - (width - 1 - col)
                        x[rows, pos] = _src[rows, pos].to(x.dtype)

                    values = metric_per_copy(model, batch, metric, layer, base[f"blocks.{layer}.hook_in"], name,
                                             list(range(width)), edit, formats)
                    out[:, layer, :] = (values.float() - baseline[None, :]).T
                effects[(kind, direction)].append(out)
        ctx.advance(len(batch))
    maps = {}
    clean_mean = float(torch.cat(base_clean).mean())
    corr_mean = float(torch.cat(base_corr).mean())
    for (kind, direction), parts in effects.items():
        stacked = torch.cat(parts).double()
        if not torch.isfinite(stacked).all():
            raise CircuitbenchError(f"causal_tracing produced NaN/inf effects on '{model.name}'; try --dtype float32.")
        maps[f"{kind}/{direction}"] = TraceMap(
            kind=kind, direction=direction, noise=opts.noise, metric=metric, layers=list(range(n_layers)),
            positions=labels, mean=stacked.mean(0).tolist(),
            std=(stacked.std(0, unbiased=True) if len(stacked) > 1 else torch.zeros_like(stacked[0])).tolist(),
            baseline_clean=clean_mean, baseline_corrupted=corr_mean,
        )
    return maps


def _run_cached_with_hook(model: "LoadedModel", tokens: torch.Tensor, names: set[str], hook) -> tuple[torch.Tensor, dict]:
    cache: dict[str, torch.Tensor] = {}

    def saver(name: str):
        def save(x: torch.Tensor, hook) -> torch.Tensor:
            cache[name] = x.detach()  # keyed by our name: the bridge may rename hook points
            return x
        return save

    hooks = ([hook] if hook is not None else []) + [(n, saver(n)) for n in sorted(names)]
    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, cache


# Not split across data-parallel processes: the noise comes from one generator drawn batch after
# batch, the position columns follow the shortest prompt of the whole set, and the maps carry a
# std over prompts; the main process runs it on all prompts (see runner.score_heads).
METHODS.add("causal_tracing", Method(causal_tracing, "ROME-style noise + restore map per (layer, position)",
                                     options=TracingOptions, produces="traces", shardable=False))
