"""The shared intervention engine every node method and faithfulness run on.

- `base_runs`: each batch's unpatched clean / corrupted runs (block inputs, head outputs, the
  main metric), read from the activation cache when there is one.
- `metric_per_copy`: the batch re-run once per edit, re-entering at the edited layer from the
  cached residual stream (blocks before it are skipped) with several edits stacked along the
  batch axis, and only END unembedded for answer metrics. `patched_node_metrics` runs it per layer
  and, where the sources match the base run up to some position (a counterfactual's shared
  prefix), only on the positions after it (models/prefix.py). This is what makes exact patching
  fast; the naive loop (one full forward per head, `naive_head_metrics`) gives the same numbers and
  the tests check it.
- `ablated_batches`: the one place a typed ablation (scores/ablations.py: Zero, Mean, Counterfactual,
  Resample) becomes the tensors that replace a run's activations, batch by batch: zeros,
  position-wise means (`position_means`), each prompt's counterfactual run, or its resample
  partner's clean run (`resample_partners`). `ablated_nodes_metric` / `ablated_nodes_values`: the
  metric with every head and MLP outside a set ablated (faithfulness); the ablation method and
  edge faithfulness take their replacements from `ablated_batches` too.

Every metric here is oriented so that higher is better.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models import hooks
from circuitbench.models.answer_logits import answer_columns, answer_columns_reproduce
from circuitbench.models.end_queries import end_attention, end_queries_reproduce, last_attention_sites
from circuitbench.models.hooks import Site
from circuitbench.models.known_attention import attention_from_heads, known_attention, known_heads_attention
from circuitbench.models.loaded import Hook, LoadedModel
from circuitbench.models.prefix import KeyValuePrefix
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.ablations import Ablation, Counterfactual, Mean, Resample, Zero
from circuitbench.scores.alignment import align_counterfactual, gather_positions
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import Positions
from circuitbench.specs.registries import METRICS

# Rows (prompt copies) per patched forward: bounds the logits tensor [rows, pos, vocab]; when
# only END logits are unembedded (answer metrics) the tensor is [rows, 1, vocab] and more fit.
MAX_ROWS = 64
MAX_ROWS_END_ONLY = 256
MAX_TOKENS_CPU = 512  # see rows_per_forward
Input = Literal["clean", "corrupted"]
Layout = Literal["clean", "corrupted", "own"]  # whose positions base_runs gives the runs in (see there)
ANSWER_COLUMN_METRICS = frozenset({"logit_diff"})  # metrics that read only the answer and distractor logits
BASE_RUNS = "base_runs"  # activation-cache group: resid_pre.L, z.L, mlp_out.L and metric.<id> of every prompt
log = logging.getLogger(__name__)


def oriented_metric(metric: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch] per-prompt value of `metric`, oriented so that higher = better."""
    m = METRICS.get(metric)
    values = m.compute(logits, batch)
    return values if m.higher_is_better else -values


def end_only_logits(metric: str, batch: Batch, model: LoadedModel | None = None,
                    touched: Iterable[Site] = ()) -> tuple[list[Hook], Batch]:
    """For answer metrics, which read logits at END only: a hook that unembeds just the END row
    of each prompt (the vocabulary projection of every position is most of a small model's
    forward), and the batch re-indexed to match. Other metrics: no hook, the batch as it is.

    Given the model, the last block's MLP runs on END alone too, unless another hook of the
    forward reads or edits it (`touched`): nothing after it reads another position, and its
    [batch, 1, d_model] output broadcasts over the residual add (END exact; the other positions of
    the last block's output are never read)."""
    if not METRICS.get(metric).needs_answer:
        return [], batch

    def take_end(x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model] -> [batch, 1, d_model]
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, batch.end.to(x.device)][:, None]

    end_first = replace(batch, positions={**batch.positions, "END": torch.zeros_like(batch.end)})
    edits: list[Hook] = [(hooks.unembed_in(), take_end)]
    if model is not None and model.has_mlp:
        last = model.n_layers - 1
        late = {hooks.resid_mid(last), hooks.mlp_in(last), hooks.mlp_out(last), hooks.resid_post(last)}
        if not late & set(touched):
            edits.append((hooks.mlp_in(last), take_end))
    return edits, end_first


def rows_per_forward(metric: str, device: torch.device | None = None, width: int = 1) -> int:
    """Rows (prompt copies) per patched forward of prompts `width` tokens wide. On CPU at most
    MAX_TOKENS_CPU tokens: the MLP's elementwise work on [tokens, d_mlp] then stays in cache, and
    larger stacks gain nothing on the matrix products (measured on GPT-2 small, `make bench-peers`)."""
    rows = MAX_ROWS_END_ONLY if METRICS.get(metric).needs_answer else MAX_ROWS
    if device is not None and device.type == "cpu":
        rows = min(rows, max(1, MAX_TOKENS_CPU // max(width, 1)))
    return rows


def position_mask(batch: Batch, positions: Positions) -> torch.Tensor:
    """[batch, pos] bool: where activations are patched ('all': every real token)."""
    b, p = batch.tokens.shape
    if positions == "all":
        return torch.arange(p)[None, :] < batch.lengths[:, None]
    mask = torch.zeros(b, p, dtype=torch.bool)
    for name in positions:
        if name not in batch.positions:
            raise CircuitbenchError(f"position '{name}' is not defined by this task (it has {sorted(batch.positions)})")
        mask[torch.arange(b), batch.positions[name]] = True
    return mask


def check_positions(data: EncodedPrompts, positions: Positions, method: str) -> None:
    if positions != "all":
        missing = [p for p in positions if p not in data.positions]
        if missing:
            raise CircuitbenchError(
                f"Method '{method}' patches at positions {missing}, which this task does not define "
                f"(it has {sorted(data.positions)}). Set positions in method_options."
            )


@dataclass
class BaseRun:
    """An unpatched run of one batch, as the methods use it."""

    resid: list[torch.Tensor]  # [n_layers] x [batch, pos, d_model] block inputs
    z: list[torch.Tensor]  # [n_layers] x [batch, pos, n_heads, d_head] head outputs
    metric: torch.Tensor | None = None  # [batch] the main metric, oriented so higher = better
    mlp: list[torch.Tensor] | None = None  # [n_layers] x [batch, pos, d_model] MLP outputs (None: no MLPs)


def base_run_sites(model: LoadedModel) -> list[Site]:
    sites = [hooks.resid_pre(l) for l in range(model.n_layers)] + [hooks.head_outputs(l) for l in range(model.n_layers)]
    return sites + ([hooks.mlp_out(l) for l in range(model.n_layers)] if model.has_mlp else [])


def record_base_run(model: LoadedModel, tokens: torch.Tensor,
                    edits: Sequence[Hook] = ()) -> tuple[torch.Tensor, BaseRun]:
    """(logits, the run's block inputs, head outputs and MLP outputs) of one unpatched forward
    (`edits`: hooks that do not change those, e.g. end_only_logits's)."""
    logits, cache = model.run_with_cache(tokens, base_run_sites(model), edits)
    n = model.n_layers
    return logits, BaseRun(resid=[cache[hooks.resid_pre(l)] for l in range(n)],
                           z=[cache[hooks.head_outputs(l)] for l in range(n)],
                           mlp=[cache[hooks.mlp_out(l)] for l in range(n)] if model.has_mlp else None)


def record_scored_run(model: LoadedModel, scored: Batch, metric: str,
                      tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, BaseRun]:
    """(the raw per-prompt `metric` [batch], the run) of one unpatched forward of `scored` (or of
    `tokens`, as wide or wider), unembedding only END for answer metrics: the vocabulary
    projection of every position is a large share of a small model's forward."""
    sites = base_run_sites(model)
    unembed_hooks, end_batch = end_only_logits(metric, scored, model, sites)
    logits, run = record_base_run(model, scored.tokens if tokens is None else tokens, unembed_hooks)
    return METRICS.get(metric).compute(logits[:, : scored.tokens.shape[1]], end_batch), run


def _input_batch(batch: Batch, which: Input) -> Batch:
    return batch if which == "clean" else batch.as_corrupted()


def base_run_bytes(model: LoadedModel, data: EncodedPrompts) -> int:
    per_position = model.n_layers * (model.d_model * (1 + int(model.has_mlp)) + model.n_heads * model.d_head)
    element = torch.empty((), dtype=getattr(torch, model.dtype)).element_size()
    return int(data.tokens.numel() * per_position * element)


def _collect_base_runs(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
                       which: Input) -> dict[str, torch.Tensor]:
    """The base runs of every prompt, as the activation cache stores them: resid_pre.L and z.L
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
        raw, run = record_scored_run(model, _input_batch(batch, which), ctx.metric, inputs[start : start + len(batch)])
        values.append(raw.cpu())
        named = {hooks.resid_pre(l): t for l, t in enumerate(run.resid)}
        named.update({hooks.head_outputs(l): t for l, t in enumerate(run.z)})
        named.update({hooks.mlp_out(l): t for l, t in enumerate(run.mlp or [])})
        for site, t in named.items():
            key = str(site)
            if key not in out:
                out[key] = torch.empty(n, width, *t.shape[2:], dtype=t.dtype)
            out[key][start : start + len(batch)] = t.cpu()
        start += len(batch)
    out[f"metric.{ctx.metric}"] = torch.cat(values)
    return out


def _stored_base_runs(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
                      which: Input) -> dict[str, torch.Tensor] | None:
    """All prompts' base runs from the activation cache, computed and stored on a miss; None
    when there is no cache or the entry would not fit (then runs are computed per batch)."""
    entry = ctx.cache_entry
    if entry is None:
        return None
    required = [f"metric.{ctx.metric}"] + ([str(hooks.mlp_out(0))] if model.has_mlp else [])
    stored = entry.read(which, BASE_RUNS, required)
    if stored is None:
        if not entry.room_for(base_run_bytes(model, data)):
            return None
        stored = _collect_base_runs(model, data, ctx, which)
        entry.save(which, BASE_RUNS, stored)
    return stored


def base_runs(
    model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, inputs: tuple[Input, ...],
    layout: Layout = "clean",
) -> Iterator[tuple[Batch, dict[Input, BaseRun]]]:
    """Per batch of `ctx.batch_size`: the batch and its unpatched runs on each of `inputs`.

    With an activation cache entry (ctx.cache_entry) every prompt's runs are read from it, or
    computed once and stored, so a second method (or run) does no base forwards; without one
    they are computed batch by batch.

    Counterfactuals of another length with spans (unaligned): `layout` "clean" gives the corrupted
    run re-indexed into the clean prompt's positions, span to span (scores/alignment.py), so that
    methods combining the runs position by position work unchanged; "corrupted" the clean run in
    the corrupted prompt's positions (denoising); "own" each run as it ran. A run's metric is
    always its own forward's (the corrupted prompt's own END). Aligned prompts: every layout is "own"."""
    stored = {which: _stored_base_runs(model, data, ctx, which) for which in inputs}
    moved: Input | None = {"clean": "corrupted", "corrupted": "clean", "own": None}[layout]
    if data.aligned or data.spans is None:
        moved = None  # nothing to align (prompts without spans are refused by the methods that need it)
    higher = METRICS.get(ctx.metric).higher_is_better
    start = 0
    for batch in data.batches(ctx.batch_size):
        stop, width = start + len(batch), batch.tokens.shape[1]
        runs: dict[Input, BaseRun] = {}
        for which in inputs:
            kept = stored[which]
            if kept is None:
                raw, run = record_scored_run(model, _input_batch(batch, which), ctx.metric)
                run.metric = raw if higher else -raw
                runs[which] = run
                continue
            rows = lambda site, _kept=kept: _kept[str(site)][start:stop, :width].to(model.device)  # noqa: E731
            metric = kept[f"metric.{ctx.metric}"][start:stop]
            runs[which] = BaseRun(resid=[rows(hooks.resid_pre(l)) for l in range(model.n_layers)],
                                  z=[rows(hooks.head_outputs(l)) for l in range(model.n_layers)],
                                  metric=metric if higher else -metric,
                                  mlp=[rows(hooks.mlp_out(l)) for l in range(model.n_layers)] if model.has_mlp
                                  else None)
        if moved is not None and moved in runs:
            into = batch if moved == "corrupted" else batch.as_corrupted()
            runs[moved] = in_layout(into, runs[moved], span_names=data.span_names, texts=data.texts[start:stop],
                                    first=data.offset + start)
        yield batch, runs
        start = stop


def in_layout(batch: Batch, run: BaseRun, **naming) -> BaseRun:
    """`run` of `batch`'s counterfactuals re-indexed into `batch`'s own positions along
    align_counterfactual (block inputs, head and MLP outputs gathered along pos; the metric kept):
    the same run when the batch is aligned. `naming`: align_counterfactual's error-naming args."""
    if batch.corrupted_lengths is None:
        return run
    index = align_counterfactual(batch, **naming)
    return BaseRun(resid=[gather_positions(r, index) for r in run.resid], z=[gather_positions(z, index) for z in run.z],
                   metric=run.metric, mlp=None if run.mlp is None else [gather_positions(m, index) for m in run.mlp])


def _end_queries(model: LoadedModel, batch: Batch, metric: str, sites: list[Site]) -> bool:
    """Whether forwards of `batch` may compute the last block's query at END only
    (models/end_queries.py): an answer metric, END the last column of every row, no edit inside
    the last block's attention, and a model where that reproduces the full forward."""
    return (METRICS.get(metric).needs_answer and len(batch) > 0
            and bool((batch.end == batch.tokens.shape[1] - 1).all())
            and not set(sites) & last_attention_sites(model) and end_queries_reproduce(model))


def _answer_columns(model: LoadedModel, batch: Batch, metric: str, sites: list[Site]) -> torch.Tensor | None:
    """The vocabulary columns forwards of `batch` need to unembed (models/answer_logits.py): the
    answers' and distractors' for a metric that reads only those (the logit difference), when no
    edit touches the unembedding's input and the model reproduces its logits so; None: all."""
    if metric not in ANSWER_COLUMN_METRICS or not len(batch) or hooks.unembed_in() in sites:
        return None
    if bool((batch.answer < 0).any()) or bool((batch.distractor < 0).any()) or not answer_columns_reproduce(model):
        return None
    return torch.unique(torch.cat([batch.answer, batch.distractor]))


def metric_per_copy(
    model: LoadedModel,
    batch: Batch,
    metric: str,
    layer: int,
    resid: torch.Tensor,
    site: Site | list[Site],
    items: list,
    edit: Callable[[torch.Tensor, object, Site], None],
    prefix: KeyValuePrefix | None = None,
    attention: Callable[[list], torch.Tensor] | None = None,
) -> torch.Tensor:
    """[len(items), batch] higher-is-better metric of the batch re-run once per item, resuming at
    block `layer` from `resid` (the base run's block input, [batch, pos, d_model]) with
    `edit(x, item, site)` applied in place to that copy's activation `x` at each of `site` (one
    site, or several at or after `layer`, e.g. a window of layers).

    Copies are stacked along the batch axis, as many per forward as `rows_per_forward` allows,
    and blocks before `layer` are skipped: this is what makes exact patching fast. With `prefix`
    (LoadedModel.prefix_forwards), `batch` and `resid` are the positions after it (Batch.suffix).
    `attention(chunk)` [len(chunk) * batch, pos, d_model], when given: block `layer`'s attention
    output in each copy of `chunk` (copy-major), known beforehand, so that attention is not
    computed (models/known_attention.py; `site` then holds no head-output site of that block)."""
    sites = [site] if isinstance(site, Site) else list(site)
    b = len(batch)
    # the last block's queries at END only (unless its attention is given whole)
    end_queries = _end_queries(model, batch, metric, sites) and not (attention is not None
                                                                     and layer == model.n_layers - 1)
    columns = _answer_columns(model, batch, metric, sites)
    group = max(1, min(len(items), rows_per_forward(metric, model.device, batch.tokens.shape[1]) // max(b, 1)))
    group = -(-len(items) // -(-len(items) // group))  # as many forwards, evenly filled (13 items: 5 4 4, not 6 6 1)
    out = torch.zeros(len(items), b, dtype=torch.float64)
    for first in range(0, len(items), group):
        chunk = items[first : first + group]
        g = len(chunk)
        rep = batch.repeated(g)

        def patch_at(at: Site, _chunk=chunk) -> Callable[[torch.Tensor], torch.Tensor]:
            def patch(x: torch.Tensor) -> torch.Tensor:
                x = x.clone().view(len(_chunk), b, *x.shape[1:])
                for c, item in enumerate(_chunk):
                    edit(x[c], item, at)
                return x.view(len(_chunk) * b, *x.shape[2:])
            return patch

        unembed_hooks, scored = end_only_logits(metric, rep, model, sites)
        edits: list[Hook] = [(at, patch_at(at)) for at in sites]
        given = nullcontext() if attention is None else known_attention(model, layer, attention(chunk))
        unembed = nullcontext()
        if columns is not None:  # only the answer's and distractor's logits at END
            unembed = answer_columns(model, rep.end, columns)
            scored = replace(scored, answer=torch.searchsorted(columns, rep.answer),
                             distractor=torch.searchsorted(columns, rep.distractor))
        with given, end_attention(model) if end_queries else nullcontext(), unembed:
            logits = model.run_with_hooks(rep.tokens, [*edits, *unembed_hooks],
                                          resume=(layer, resid.repeat(g, 1, 1)), prefix=prefix)
        out[first : first + g] = oriented_metric(metric, logits, scored).double().cpu().view(g, b)
    return out


ZSource = Callable[[int], torch.Tensor]  # layer -> [batch, pos, n_heads, d_head] replacement head outputs
MlpSource = Callable[[int], torch.Tensor]  # layer -> [batch, pos, d_model] replacement MLP output
MLP = "mlp"  # the item that patches a block's MLP output (heads are their index)


@dataclass
class SuffixGroup:
    """Prompts of a batch whose patched forwards start at position `start` (0: every position),
    with the keys and values of the positions before it."""

    rows: torch.Tensor  # [k] indices into the batch
    start: int
    batch: Batch  # Batch.suffix(rows, start)
    prefix: KeyValuePrefix | None

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, ...] -> [k, pos - start, ...]"""
        return x[self.rows.to(x.device)][:, self.start:]


def suffix_groups(model: LoadedModel, batch: Batch, mask: torch.Tensor, unchanged_before: torch.Tensor | None,
                  metric: str) -> list[SuffixGroup]:
    """The batch's prompts grouped by the first position a patch can change: the first `mask`
    position at or after `unchanged_before` (or END, when there is none). Positions before it keep
    their base-run activations in every patched forward (causal attention), so those forwards run
    only the positions after it, from the prefix's keys and values. One group at position 0 when the
    caller knows of no unchanged prefix, the metric reads more than END, or the model cannot."""
    everything = [SuffixGroup(torch.arange(len(batch)), 0, batch, None)]
    if unchanged_before is None or not METRICS.get(metric).needs_answer or not model.prefix_forwards():
        return everything
    columns = torch.arange(batch.tokens.shape[1])[None, :]
    can_change = mask.cpu() & (columns >= unchanged_before[:, None])
    first = torch.where(can_change.any(1), can_change.to(torch.int8).argmax(1), batch.end)
    start = torch.minimum(first, batch.end)  # END is always computed
    groups = []
    for s in sorted(set(start.tolist())):
        rows = torch.nonzero(start == s).flatten()
        prefix = model.key_value_prefix(batch.tokens[rows, :s]) if s > 0 else None
        groups.append(SuffixGroup(rows, s, batch.suffix(rows, s), prefix))
    return groups


def changed_suffix_groups(model: LoadedModel, batch: Batch, changes: Iterable[torch.Tensor],
                          metric: str) -> list[SuffixGroup]:
    """suffix_groups for patches that add `changes` (each [batch, pos, ...], e.g. an edge's delta):
    each prompt's forwards start at the first position where one of them is not zero (a
    counterfactual's shared prefix gives exact zeros), so nothing before it can differ."""
    changed = torch.zeros(batch.tokens.shape, dtype=torch.bool)
    for change in changes:
        changed |= change.ne(0).flatten(2).any(-1).cpu()
    return suffix_groups(model, batch, changed, torch.zeros(len(batch), dtype=torch.long), metric)


def _node_edit(src: torch.Tensor, src_mlp: torch.Tensor | None,
               mask: torch.Tensor) -> Callable[[torch.Tensor, object, Site], None]:
    """metric_per_copy's edit: item h puts head h's `src` [batch, pos, n_heads, d_head] in place at
    `mask` [batch, pos] positions, item MLP the block's MLP output `src_mlp` [batch, pos, d_model]."""
    where = mask[:, :, None]

    def edit(x: torch.Tensor, item: object, site: Site) -> None:
        if site.kind == "z" and item != MLP:  # x: [batch, pos, n_heads, d_head]
            x[:, :, item] = torch.where(where, src[:, :, item].to(x.dtype), x[:, :, item])
        elif site.kind == "mlp_out" and item == MLP:  # x: [batch, pos, d_model]
            assert src_mlp is not None
            x[:] = torch.where(where, src_mlp.to(x.dtype), x)
    return edit


def _given_attention(model: LoadedModel, layer: int, base_z: torch.Tensor, src_z: torch.Tensor,
                     mask: torch.Tensor) -> Callable[[list], torch.Tensor]:
    """metric_per_copy's `attention` for patching heads of block `layer`: the base run's attention
    output, plus in a copy of head h that head's change (src − base at `mask` positions) through
    its output projection; MLP copies keep the base run's attention. base_z, src_z [batch, pos, n_heads, d_head]."""
    w_o = model.attention_weights(layer).output.to(base_z.dtype)  # [n_heads, d_head, d_model]
    base = attention_from_heads(model, layer, base_z)  # [batch, pos, d_model]
    change = torch.where(mask[:, :, None, None], src_z.to(base_z.dtype) - base_z, 0)

    def given(chunk: list) -> torch.Tensor:
        out = base.repeat(len(chunk), 1, 1).view(len(chunk), *base.shape)
        for c, item in enumerate(chunk):
            if item != MLP:
                out[c] += change[:, :, item] @ w_o[item]
        return out.view(-1, *base.shape[1:])
    return given


def patched_node_metrics(
    model: LoadedModel, batch: Batch, base: BaseRun, source_z: ZSource, source_mlp: MlpSource | None,
    mask: torch.Tensor, ctx: MethodContext, unchanged_before: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n_layers, n_heads (+ 1)] sum over the batch's prompts of the metric when one head's output
    (or, in the last column when `source_mlp` is given, the block's MLP output) is replaced at
    `mask` positions. A block's MLP is one more copy in the forwards that patch its heads.

    `unchanged_before` [batch]: positions before which the sources equal the base run (e.g. where
    a counterfactual's tokens still match, `Batch.first_difference`); the forwards then skip them
    (see suffix_groups). Where the model allows (models/known_attention.py), the patched block's own
    attention is not recomputed: its output is the base run's with the one head's term changed."""
    parts = suffix_groups(model, batch, mask, unchanged_before, ctx.metric)
    given = known_heads_attention(model)
    rows = []
    for layer in range(model.n_layers):
        src = source_z(layer)
        src_mlp = source_mlp(layer) if source_mlp is not None else None
        items: list = list(range(model.n_heads))
        sites = [] if given else [hooks.head_outputs(layer)]
        if src_mlp is not None:
            items.append(MLP)
            sites.append(hooks.mlp_out(layer))
        total = torch.zeros(len(items), dtype=torch.float64)
        for part in parts:
            cut_mask = part.cut(mask.to(model.device))
            edit = _node_edit(part.cut(src), None if src_mlp is None else part.cut(src_mlp), cut_mask)
            attention = _given_attention(model, layer, part.cut(base.z[layer]), part.cut(src), cut_mask) if given \
                else None
            total += metric_per_copy(model, part.batch, ctx.metric, layer, part.cut(base.resid[layer]), sites, items,
                                     edit, prefix=part.prefix, attention=attention).sum(1)
        rows.append(total)
        ctx.advance_heads(model.n_heads)
    return torch.stack(rows)


def naive_head_metrics(model: LoadedModel, batch: Batch, source_z: ZSource, mask: torch.Tensor,
                       ctx: MethodContext) -> torch.Tensor:
    """The reference loop: one full forward per head. Same numbers as patched_node_metrics's heads."""
    out = torch.zeros(model.n_layers, model.n_heads, dtype=torch.float64)
    for layer in range(model.n_layers):
        src = source_z(layer)
        for h in range(model.n_heads):
            def patch(z: torch.Tensor, _h=h, _src=src) -> torch.Tensor:
                z = z.clone()
                z[:, :, _h] = torch.where(mask[:, :, None].to(z.device), _src[:, :, _h].to(z.dtype), z[:, :, _h])
                return z

            logits = model.run_with_hooks(batch.tokens, [(hooks.head_outputs(layer), patch)])
            out[layer, h] = oriented_metric(ctx.metric, logits, batch).double().sum()
    return out


View = Callable[[BaseRun], list[torch.Tensor]]  # the activations of a run an ablation replaces, each [batch, pos, ...]


def node_view(run: BaseRun) -> list[torch.Tensor]:
    """What node ablation replaces: per layer the head outputs [batch, pos, n_heads, d_head], then
    (when the model has MLPs) per layer the MLP outputs [batch, pos, d_model]."""
    return [*run.z, *(run.mlp or [])]


def input_and_node_view(run: BaseRun) -> list[torch.Tensor]:
    """node_view with the input embedding (block 0's input [batch, pos, d_model]) first: what node
    ablation replaces when the input node is out of the circuit."""
    return [run.resid[0], *node_view(run)]


def node_parts(model: LoadedModel, values: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """node_view's tensors apart: (per-layer head outputs, per-layer MLP outputs or None)."""
    n = model.n_layers
    return values[:n], (values[n:] if model.has_mlp else None)


def _zero_run(model: LoadedModel, batch_size: int, width: int) -> BaseRun:
    """A run whose every activation is zero (expanded views: no memory per prompt)."""
    dtype = getattr(torch, model.dtype)

    def zeros(*shape: int) -> torch.Tensor:  # [batch_size, width, *shape]
        return torch.zeros(1, width, *shape, dtype=dtype, device=model.device).expand(batch_size, width, *shape)

    n = model.n_layers
    return BaseRun(resid=[zeros(model.d_model)] * n, z=[zeros(model.n_heads, model.d_head)] * n,
                   mlp=[zeros(model.d_model)] * n if model.has_mlp else None)


def position_means(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, over: Input,
                   view: View = node_view) -> list[torch.Tensor]:
    """Per tensor of `view`, its [pos, ...] float32 mean over the task's clean (or corrupted)
    prompts, each position averaged over the prompts long enough to have it. `data` may be one
    process's shard: `sum_shards` adds the sums of all shards before dividing."""
    width = data.tokens.shape[1]
    sums: list[torch.Tensor] = []
    counts = torch.zeros(width, dtype=torch.float64)
    for batch, runs in base_runs(model, data, ctx, (over,), layout="own"):  # means by absolute position
        p = batch.tokens.shape[1]
        lengths = _input_batch(batch, over).lengths  # a counterfactual may have another length
        valid = (torch.arange(p)[None, :] < lengths[:, None]).double()
        for i, t in enumerate(view(runs[over])):
            part = (t.double() * valid.to(t.device).view(*valid.shape, *[1] * (t.dim() - 2))).sum(0)
            if i == len(sums):
                sums.append(torch.zeros(width, *part.shape[1:], dtype=torch.float64, device=part.device))
            sums[i][:p] += part
        counts[:p] += valid.sum(0)
    if not sums:  # a shard with no prompts still adds its (zero) sums to the others'
        sums = [torch.zeros(width, *t.shape[2:], dtype=torch.float64, device=t.device)
                for t in view(_zero_run(model, 0, width))]
    sums, counts = ctx.sum_shards((sums, counts))
    per = counts.clamp(min=1)
    return [(s / per.to(s.device).view(-1, *[1] * (s.dim() - 1))).float().to(model.device) for s in sums]


def mean_head_outputs(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
                      corrupted: bool = False) -> list[torch.Tensor]:
    """Per-layer [pos, n_heads, d_head] mean of the head outputs over the clean (or corrupted)
    prompts (see position_means)."""
    return position_means(model, data, ctx, "corrupted" if corrupted else "clean", lambda run: run.z)


def resample_partners(data: EncodedPrompts, seed: int) -> torch.Tensor:
    """[n] for each prompt of the whole set, the prompt whose clean run replaces its own (-1: none):
    a seeded derangement (a local torch.Generator) within each group of prompts with the same length
    and named positions, so positions align, no pad activation leaks in, and the pairing depends on
    neither the batch size nor how a data-parallel launch shards the prompts."""
    whole = data.full_set
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(whole)):
        key = (int(whole.lengths[i]), *(int(v[i]) for _, v in sorted(whole.positions.items())))
        groups.setdefault(key, []).append(i)
    gen = torch.Generator().manual_seed(seed)
    partners = torch.full((len(whole),), -1, dtype=torch.long)
    for members in groups.values():  # in order of first appearance: deterministic
        if len(members) > 1:
            cycle = torch.tensor(members)[torch.randperm(len(members), generator=gen)]
            partners[cycle] = cycle.roll(-1)  # one cycle through the group: nobody is their own partner
    return partners


def _rows(run: BaseRun, keep: torch.Tensor, width: int) -> BaseRun:
    """The run of the kept prompts (`keep`: [batch] bool), trimmed to their width."""
    keep_dev = keep.to(run.z[0].device)
    return BaseRun(resid=[r[keep_dev][:, :width] for r in run.resid], z=[z[keep_dev][:, :width] for z in run.z],
                   metric=None if run.metric is None else run.metric[keep.to(run.metric.device)],
                   mlp=None if run.mlp is None else [m[keep_dev][:, :width] for m in run.mlp])


def _needs_corrupted(ablation: Ablation, data: EncodedPrompts) -> None:
    if data.corrupted is None:
        raise CircuitbenchError(f"circuit.ablation {ablation.name} needs corrupted prompts; this task has none. "
                                "Use mean_clean or zero.")


@dataclass(frozen=True)
class Ablated:
    """One batch under an ablation."""

    batch: Batch  # the batch's prompts (Resample: those with a partner; may be none)
    values: list[torch.Tensor]  # `view` of what replaces their run, each [batch, pos, ...] (zeros, means: expanded)
    clean: BaseRun | None  # their clean run (when asked for), rows as in `batch`
    skipped: int = 0  # the batch's prompts left out (Resample: no partner of their template)


def ablated_batches(ablation: Ablation, model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
                    view: View = node_view, clean: bool = False) -> Iterator[Ablated]:
    """Per batch of ctx.batch_size, what `ablation` puts in place of `view` of each prompt's run
    (and, with `clean`, the prompt's clean run): zeros; position-wise means over the clean or
    counterfactual prompts (position_means); the prompt's own counterfactual run; or the clean run of
    its resample partner (resample_partners), prompts with none left out. The one place an ablation
    becomes tensors."""
    inputs: tuple[Input, ...] = ("clean",) if clean else ()
    partners: torch.Tensor | None = None
    fill: Callable[[Batch, dict[Input, BaseRun], torch.Tensor | None], list[torch.Tensor]]
    match ablation:
        case Zero():
            def fill(batch, runs, _partners):
                template = runs["clean"] if "clean" in runs else _zero_run(model, len(batch), batch.tokens.shape[1])
                return [torch.zeros_like(t) for t in view(template)]
        case Mean(over=over):
            which: Input = "corrupted" if over == "counterfactual" else "clean"
            if which == "corrupted":
                _needs_corrupted(ablation, data)
            means = position_means(model, data, ctx, which, view)

            def fill(batch, runs, _partners):
                w = batch.tokens.shape[1]
                return [m[:w].unsqueeze(0).expand(len(batch), w, *m.shape[1:]) for m in means]
        case Counterfactual():
            _needs_corrupted(ablation, data)
            if not data.aligned and data.spans is None:
                raise CircuitbenchError("circuit.ablation counterfactual patches each prompt's counterfactual position "
                                        "by position; this task's counterfactuals may have another token length and "
                                        "have no spans to align them by. Use mean_counterfactual.")
            inputs += ("corrupted",)

            def fill(batch, runs, _partners):
                return view(runs["corrupted"])
        case Resample(seed=seed):
            drawn = resample_partners(data, seed)
            paired = int((drawn >= 0).sum())
            if paired == 0:
                raise CircuitbenchError("Resample ablation needs prompts that share a token length and named positions "
                                        "with another prompt; this task has none. Use a mean or zero ablation.")
            if paired < len(drawn):
                log.info("resample ablation: %d of %d prompts have a partner of the same length and positions; the "
                         "others are left out", paired, len(drawn))
            partners = drawn[data.offset : data.offset + len(data)]

            def fill(batch, runs, own):
                tokens = data.full_set.tokens[own][:, : batch.tokens.shape[1]]
                return view(record_base_run(model, tokens)[1])
        case _:
            raise TypeError(f"not an ablation: {ablation!r}")
    batches = base_runs(model, data, ctx, inputs) if inputs else ((b, {}) for b in data.batches(ctx.batch_size))
    start = 0
    for batch, runs in batches:
        stop = start + len(batch)
        own, skipped = None, 0
        if partners is not None:  # Resample: only the prompts with a partner
            own = partners[start:stop]
            keep = own >= 0
            own, skipped = own[keep], int((~keep).sum())
            batch = batch.select(keep)
            runs = {which: _rows(run, keep, batch.tokens.shape[1]) for which, run in runs.items()}
        start = stop
        values = fill(batch, runs, own) if len(batch) else []
        yield Ablated(batch, values, runs.get("clean"), skipped)


def ablated_nodes_metric(
    model: LoadedModel, data: EncodedPrompts, keep: set[tuple[int, int]], keep_mlps: set[int] | None,
    ablation: Ablation, ctx: MethodContext, keep_input: bool = True,
) -> float:
    """Mean (higher-is-better) main metric with every head not in `keep` (and, unless `keep_mlps`
    is None, every MLP whose layer is not in it; unless `keep_input`, the input embedding) replaced
    as `ablation` says (ablated_batches). `data` may be one process's shard."""
    values = ablated_nodes_values(model, data, keep, keep_mlps, ablation, ctx, keep_input)
    total, n = ctx.sum_shards((float(values.sum()), len(values)))
    return total / n


def ablated_nodes_values(
    model: LoadedModel, data: EncodedPrompts, keep: set[tuple[int, int]], keep_mlps: set[int] | None,
    ablation: Ablation, ctx: MethodContext, keep_input: bool = True,
) -> torch.Tensor:
    """[prompts] float64 per-prompt values of `ablated_nodes_metric`, on this process's prompts (all
    of them; Resample: those with a partner), in order (the paired per-prompt differences give
    faithfulness its noise level)."""
    drop = {l: [h for h in range(model.n_heads) if (l, h) not in keep] for l in range(model.n_layers)}
    drop_mlps = [] if keep_mlps is None or not model.has_mlp else [l for l in range(model.n_layers)
                                                                   if l not in keep_mlps]
    values = []
    view = node_view if keep_input else input_and_node_view
    for ablated in ablated_batches(ablation, model, data, ctx, view=view):
        if not len(ablated.batch):
            continue
        fill_z, fill_mlp = node_parts(model, ablated.values[int(not keep_input):])
        edits: list[Hook] = []
        if not keep_input:  # every block reads the replaced embedding, as when all of the input's edges are patched
            edits.append((hooks.resid_pre(0), lambda x, _fill=ablated.values[0]: _fill[:, : x.shape[1]].to(
                x.dtype).expand_as(x).clone()))
        for layer, heads in drop.items():
            if not heads:
                continue

            def ablate(z: torch.Tensor, _fill=fill_z[layer], _heads=heads) -> torch.Tensor:
                z = z.clone()
                z[:, :, _heads] = _fill[:, : z.shape[1], _heads].to(z.dtype)
                return z

            edits.append((hooks.head_outputs(layer), ablate))
        for layer in drop_mlps:
            assert fill_mlp is not None

            def ablate_mlp(x: torch.Tensor, _fill=fill_mlp[layer]) -> torch.Tensor:
                return _fill[:, : x.shape[1]].to(x.dtype).expand_as(x).clone()

            edits.append((hooks.mlp_out(layer), ablate_mlp))
        unembed_hooks, scored = end_only_logits(ctx.metric, ablated.batch)
        logits = model.run_with_hooks(ablated.batch.tokens, edits + unembed_hooks)
        values.append(oriented_metric(ctx.metric, logits, scored).double().cpu())
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def single_node_ablations(
    model: LoadedModel, data: EncodedPrompts, ablation: Ablation, ctx: MethodContext, nodes: list[str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the full model's per-prompt metric [prompts], {node: per-prompt metric with that node alone
    replaced as `ablation` says, at every position [prompts]}) on this process's prompts, higher is
    better. Nodes are heads ('a0.h1') and MLPs ('m0'); each is one copy in metric_per_copy's stacked
    forwards, resumed at its layer from the clean run: the same numbers as ablated_nodes_values with
    every other node kept, in a fraction of the forwards."""
    by_layer: dict[int, list] = {}
    for node in nodes:
        if node.startswith("m"):
            by_layer.setdefault(int(node[1:]), []).append(MLP)
        else:
            layer, head = node[1:].split(".h")
            by_layer.setdefault(int(layer), []).append(int(head))
    full, alone = [], {node: [] for node in nodes}
    for ablated in ablated_batches(ablation, model, data, ctx, clean=True):
        if not len(ablated.batch):
            continue
        assert ablated.clean is not None and ablated.clean.metric is not None
        full.append(ablated.clean.metric.double().cpu())
        fill_z, fill_mlp = node_parts(model, ablated.values)
        everywhere = torch.ones(ablated.batch.tokens.shape, dtype=torch.bool, device=model.device)
        for layer, items in sorted(by_layer.items()):
            sites = [hooks.head_outputs(layer)] + ([hooks.mlp_out(layer)] if MLP in items else [])
            edit = _node_edit(fill_z[layer], fill_mlp[layer] if fill_mlp is not None else None, everywhere)
            values = metric_per_copy(model, ablated.batch, ctx.metric, layer, ablated.clean.resid[layer], sites,
                                     items, edit)
            for item, row in zip(items, values):
                alone[f"m{layer}" if item == MLP else f"a{layer}.h{item}"].append(row)
    empty = torch.zeros(0, dtype=torch.float64)
    return (torch.cat(full) if full else empty), {n: torch.cat(v) if v else empty for n, v in alone.items()}
