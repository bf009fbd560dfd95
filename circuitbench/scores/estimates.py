"""What each built-in method will cost, before it runs: forward-equivalents in the unit run_methods
measures them in (scores/cost.py: 1 = one forward of every prompt, batched at the run's batch size
at each batch's padded width; a backward counts 2; a forward resumed at block L of n counts
(n − L)/n; positions run after a cached key/value prefix their share).

Each formula follows how its method runs (the module named in its docstring) and is checked against
the meter in tests/scores/test_estimates.py. A method registers its estimator with
`method(..., cost="module:function")` (specs/registries.py); the signature is

    estimate(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str, options: dict)
        -> float | CostEstimate

with `metric` the task's main metric and `options` the task's `method_options.<name>` (unvalidated:
validate them with the method's own options model).
Counting forward passes over the data set, a backward as two, is how ACDC, EAP-IG and MIB compare
methods' costs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from circuitbench.scores.methods.options import (
    AblationOptions,
    AcdcOptions,
    AttributionOptions,
    EapIgOptions,
    EdgePatchingOptions,
    EdgePruningOptions,
    NapIgOptions,
    PatchingOptions,
    TracingOptions,
)

if TYPE_CHECKING:
    from circuitbench.models.loaded import LoadedModel
    from circuitbench.prompts.encoding import EncodedPrompts


@dataclass(frozen=True)
class CostEstimate:
    """An estimator's answer: forward-equivalents, and whether the figure is only an upper bound
    (a method whose work depends on what it finds, as ACDC's pruning)."""

    forwards: float
    upper_bound: bool = False


def _n_batches(data: EncodedPrompts, batch_size: int) -> int:
    return -(-len(data) // max(batch_size, 1))


def _blocks_after(model: LoadedModel, copies_per_layer: int) -> float:
    """Σ over layers L of `copies_per_layer` forwards resumed at block L: share (n − L)/n each."""
    n = model.n_layers
    return copies_per_layer * sum((n - layer) / n for layer in range(n))


def _node_copies(model: LoadedModel, mlps: bool = True) -> int:
    """Copies per layer of patched_node_metrics (scores/interventions.py): each head, and the MLP
    (unless `mlps` is false: heads only)."""
    return model.n_heads + int(model.has_mlp and mlps)


def detector_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """Attention detectors and IFR (scores/methods/detectors.py, ifr.py): one clean forward."""
    return 1.0


def gradient_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """eap and nap (edges.py, attribution.py): the corrupted forward, the clean one and its backward: 1 + 1 + 2."""
    return 4.0


def attribution_patching_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                              options: dict[str, Any]) -> float:
    """attribution.py: the two base runs; the clean one's backward (ig_steps 0), else one forward with
    its backward per integration step."""
    steps = AttributionOptions.model_validate(options).ig_steps
    return 4.0 if steps == 0 else 2.0 + 3.0 * steps


def nap_ig_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """attribution.py nap_ig: the two base runs, then per step one forward with its backward."""
    return 2.0 + 3.0 * NapIgOptions.model_validate(options).steps


def eap_ig_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """edges.py eap_ig: the clean base run (and the corrupted one, unless the inputs variant's α = 0
    step is it), then one forward with its backward per step — per interpolated layer output for the
    activations variant (the input, each attention layer, each MLP)."""
    opts = EapIgOptions.model_validate(options)
    if opts.variant == "inputs":
        shared = opts.points == "published" and data.corrupted_lengths is None
        return (1.0 if shared else 2.0) + 3.0 * opts.steps
    groups = 1 + model.n_layers * (1 + int(model.has_mlp))
    return 2.0 + 3.0 * opts.steps * groups


def _suffix_share(model: LoadedModel, data: EncodedPrompts, batch_size: int, positions: Any,
                  metric_reads_end: bool, span: int | None = None) -> tuple[float, float]:
    """(share of the positions the patched forwards run, prefix positions run once per batch), both in
    units of the prompts' positions: interventions._suffixes skips what precedes the first position a
    patch can change (the first difference between clean and counterfactual, at or after a patched
    position), given a metric read at END and a model that can resume from a key/value prefix.
    `span`: the patched positions are that span's (scores/span_edges.py)."""
    import torch

    from circuitbench.scores.interventions import position_mask  # torch: imported when a plan is made
    from circuitbench.scores.span_edges import SpanLayout

    total = suffix = prefix = 0.0
    resumable = metric_reads_end and data.corrupted_lengths is None and model.prefix_forwards()
    for batch in data.batches(max(batch_size, 1)):
        rows, width = batch.tokens.shape
        total += rows * width
        if not resumable:
            suffix += rows * width
            continue
        mask = position_mask(batch, positions) if span is None else SpanLayout.of(data.full_set).spans(batch) == span
        columns = torch.arange(width)[None, :]
        can_change = mask & (columns >= batch.first_difference()[:, None])
        first = [int(c.nonzero()[0]) if bool(c.any()) else int(e) for c, e in zip(can_change, batch.end)]
        starts = [min(f, int(e)) for f, e in zip(first, batch.end)]
        suffix += sum(width - s for s in starts)
        prefix += sum(starts)
    return suffix / max(total, 1.0), prefix / max(total, 1.0)


def activation_patching_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                             options: dict[str, Any]) -> float:
    """patching.py: the clean and corrupted base runs, then per layer L one copy per head (and the
    MLP) resumed at block L, over the positions from the first one the counterfactual changes."""
    from circuitbench.specs.registries import METRICS

    opts = PatchingOptions.model_validate(options)
    suffix, prefix = _suffix_share(model, data, batch_size, opts.positions, METRICS.get(metric).needs_answer)
    return 2.0 + prefix + suffix * _blocks_after(model, _node_copies(model, opts.mlps))


def ablation_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """ablation.py: the clean run, the ablation's values (mean and resample: a forward of the prompts;
    zero: none), then per layer L one copy per head (and the MLP) resumed at block L, all positions."""
    kind = AblationOptions.model_validate(options).kind
    return 1.0 + (0.0 if kind == "zero" else 1.0) + _blocks_after(model, _node_copies(model))


def causal_tracing_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """causal_tracing.py: per batch the clean run, then per noise sample the noised run and, per kind
    and direction, per layer one copy per traced position (the shortest prompt's length − 1) resumed
    at the first layer of its window."""
    opts = TracingOptions.model_validate(options).resolved()
    assert opts.samples is not None and opts.window is not None
    n = model.n_layers
    columns = max(int(data.lengths.min()) - 1, 1) if len(data) else 1
    per_layer = 0.0
    for kind in opts.kinds:  # a kind the model lacks (no MLP) is skipped by the method: an overestimate then
        size = 1 if kind == "resid" else opts.window
        per_layer += sum((n - max(0, min(layer - size // 2, n - size))) / n for layer in range(n))
    suffix, prefix = _noised_suffix_share(model, data, batch_size, opts.corrupt, metric)
    return 1.0 + prefix + opts.samples * (1.0 + len(opts.directions) * columns * per_layer * suffix)


def _noised_suffix_share(model: LoadedModel, data: EncodedPrompts, batch_size: int, corrupt: Any,
                         metric: str) -> tuple[float, float]:
    """(share of the positions causal tracing's patched forwards run, prefix positions run once per
    batch): they start at each prompt's first noised position (interventions.suffix_groups)."""
    import torch

    from circuitbench.scores.methods.causal_tracing import _corrupt_mask
    from circuitbench.specs.registries import METRICS

    if not METRICS.get(metric).needs_answer or not model.prefix_forwards():
        return 1.0, 0.0
    total = suffix = prefix = 0.0
    for batch in data.batches(max(batch_size, 1)):
        mask = _corrupt_mask(batch, corrupt)
        rows, width = batch.tokens.shape
        first = torch.where(mask.any(1), mask.to(torch.int8).argmax(1), batch.lengths)
        starts = torch.minimum(first, batch.end)
        total += rows * width
        suffix += float((width - starts).sum())
        prefix += float(starts.sum())
    return suffix / max(total, 1.0), prefix / max(total, 1.0)


def edge_patching_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """edges.py edge_patching: the two base runs, then one forward per edge from its destination's
    block (`positions: per_span`: and one per (edge, span) besides)."""
    from circuitbench.scores.methods.edges import edge_patching_cost as batch_forwards
    from circuitbench.scores.span_edges import SpanLayout
    from circuitbench.specs.registries import METRICS

    opts = EdgePatchingOptions.model_validate(options)
    per_batch = batch_forwards(model, data, batch_size) / _n_batches(data, batch_size)
    spans = [None, *range(len(SpanLayout.of(data.full_set)))] if opts.positions == "per_span" else [None]
    total = 2.0
    for span in spans:  # forwards resume at the first position the (span's) patch changes: patched_edge_metrics
        suffix, prefix = _suffix_share(model, data, batch_size, "all", METRICS.get(metric).needs_answer, span)
        total += prefix + suffix * per_batch
    return total


def acdc_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> CostEstimate:
    """acdc.py: the corrupted run and the full circuit, then per τ at most one circuit forward per edge
    tried — an upper bound (edges left dangling are not tried; several τ share circuits)."""
    opts = AcdcOptions.model_validate(options)
    thresholds = 1 if opts.tau is not None else len(set(opts.thresholds))
    return CostEstimate(2.0 + thresholds * model.component_graph().n_edges, upper_bound=True)


def edge_pruning_cost(model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                options: dict[str, Any]) -> float:
    """edge_pruning.py: per batch an ablation run and the circuit forwards of its setup, then `steps`
    steps of one batch each (a forward and its backward), cycling over the batches."""
    steps = EdgePruningOptions.model_validate(options).steps
    return 4.0 + 3.0 * steps / _n_batches(data, batch_size)
