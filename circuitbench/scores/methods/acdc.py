"""ACDC: automatic circuit discovery by pruning edges from the logits backwards (Conmy et al. 2023,
"Towards Automated Circuit Discovery for Mechanistic Interpretability"), over our component graph
(models/graph.py) and run with the edge engine's circuit forward (scores/edges.py `circuit_logits`).

The loop, as ACDC's TLACDCExperiment.step defines it:

- Start from the full graph. Visit the node inputs (our graph's destinations) in reverse
  topological order: the logits, then per block from the last one the MLP's input, the heads' value,
  key, then query inputs (heads from the last to the first), as ACDC's reverse-sorted hooks do.
- A destination whose node has no outgoing edge left (its output no longer reaches the logits)
  loses every incoming edge untried (ACDC's `current_node_connected`: dangling nodes are removed).
- Otherwise each incoming edge is tried in ACDC's sender order (the latest block first, its MLP
  before its heads, heads from the first, the input embedding last): the edge is removed, i.e. it
  carries its source's counterfactual output, as every edge outside a circuit does; the loss of
  the circuit is measured over ALL prompts; the edge stays removed when the loss rose by less
  than τ (loss_new − loss_current < τ, ACDC's default signed comparison; `abs_value_threshold`
  compares |loss_new − loss_current|, ACDC's option of that name), and the current loss becomes
  the new one; otherwise it is restored.

The loss (option `loss`, ACDC's "metric"; `metric` names a registered task metric in method
options): `kl` (ACDC's default): KL(full model ‖ circuit) of the output distribution, at END for
answer metrics (ACDC's last-token KL), averaged over every real position for sequence metrics,
averaged over prompts, in nats. `task`: the task's main metric m, oriented higher-is-better, as the
loss −(mean over prompts of m).

Units of τ (`tau_units`). ACDC's τ is in the loss's own units (`raw`: nats, or metric units). By
default (`relative`) τ is a fraction of the empty circuit's loss rise: the loss is divided by
KL(full ‖ counterfactual run) for kl, by |m̄_clean − m̄_corrupted| for task (the normalisation of
the other edge scores), so one τ grid means the same on a random-init model (KLs of 1e-6 nats) and
on a trained one (τ_raw = τ · loss_scale, recorded in the settings).

What our graph does not have, so neither does this loop: ACDC's graph also holds the edges inside
a head or an MLP (q/k/v input → q/k/v, MLP input → output: patching a whole input at once); like
auto-circuit's ACDC we try only the residual edges, MIB's and EAP-IG's graph. Removing the
incoming edges of a dangling node is not re-measured (it changes nothing but rounding: the node's
output reaches no destination). Nodes left without incoming edges keep their outgoing ones, as in
ACDC (remove_redundant off; such an edge carries the counterfactual output anyway); a circuit
selected from the scores is pruned of dangling nodes as MIB prunes (ComponentGraph.prune).

Scores. ACDC gives a set of edges for one τ. To rank edges (CPR/CMD curves, ROC need a ranking)
it runs for each τ of `thresholds` and scores an edge by the LARGEST τ at which it is kept, 0 if it
is never kept. auto-circuit's acdc_prune_scores instead scores by the smallest τ at which an edge
is removed (∞ if never); the two agree when the kept sets shrink as τ grows (the usual case) and
this one stays finite. With `tau` (one threshold) the scores are τ on ACDC's circuit and 0 off it.
The loss of every circuit measured is remembered, so the runs for several τ share the forwards
of their common beginning: exact, the loop being deterministic.

Data parallel: every decision reads the loss over all prompts, each process's sum passed through
ctx.sum_shards; all processes then take the same decisions and call it equally often.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import HEAD, MLP, ComponentGraph
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import Batch, EncodedPrompts
from circuitbench.scores.edges import check_edges, circuit_logits, node_outputs
from circuitbench.scores.interventions import base_runs, oriented_metric
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.options import AcdcOptions
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput
from circuitbench.specs.registries import METRICS

Loss = Callable[[np.ndarray], float]  # present edges [n_src, n_dst] bool -> the circuit's loss (lower is better)


# --- the algorithm, over any loss -----------------------------------------------------------------
def trial_order(graph: ComponentGraph, destination: int) -> list[int]:
    """The sources feeding `destination`, in the order ACDC tries their edges: the latest block
    first, in each block the MLP before the heads and the heads from the first, the input last."""
    def key(i: int) -> tuple[int, int, int]:
        name = graph.sources[i]
        if (m := HEAD.match(name)) is not None:
            return -int(m.group(1)), 1, int(m.group(2))
        if (m := MLP.match(name)) is not None:
            return -int(m.group(1)), 0, 0
        return 1, 0, 0  # the input embedding
    return sorted(range(graph.n_upstream(graph.destinations[destination])), key=key)


def acdc_sweep(graph: ComponentGraph, loss: Loss, tau: float, abs_value_threshold: bool = False) -> np.ndarray:
    """[n_src, n_dst] bool: the edges ACDC keeps at threshold `tau` (module docstring), `loss`
    measuring each circuit tried (it is called once on the full graph, then once per edge tried)."""
    present = graph.real_edges.copy()
    current = loss(present)
    readers = graph.destination_readers  # [n_dst, n_src]; a key-value group's input: every head of the group
    for j in reversed(range(len(graph.destinations))):
        if readers[j].any() and not present[readers[j]].any():  # no reader reaches a destination: dangling
            present[:, j] = False
            continue
        for i in trial_order(graph, j):
            present[i, j] = False
            new = loss(present)
            change = abs(new - current) if abs_value_threshold else new - current
            if change < tau:
                current = new
            else:
                present[i, j] = True
    return present


def threshold_scores(graph: ComponentGraph, loss: Loss, thresholds: list[float],
                     abs_value_threshold: bool = False) -> tuple[np.ndarray, list[int]]:
    """([n_src, n_dst] each edge's largest τ of `thresholds` at which ACDC keeps it, 0 if never;
    the number of edges kept at each τ, in the order given)."""
    scores = np.zeros(graph.real_edges.shape)
    kept = []
    for tau in thresholds:
        present = acdc_sweep(graph, loss, tau, abs_value_threshold)
        scores = np.where(present, np.maximum(scores, tau), scores)
        kept.append(int(present.sum()))
    return scores, kept


# --- the loss of a circuit, from the edge engine ----------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Prepared:
    """One batch of this process's prompts with what every circuit forward on it needs."""

    batch: Batch
    replacement: torch.Tensor  # [batch, pos, n_src, d_model] every source's counterfactual output
    reference: torch.Tensor | None  # [batch, pos', d_vocab] float64 log-probs of the full model where KL is read
    valid: torch.Tensor  # [batch, pos'] 1.0 where KL is read


def _log_probs(logits: torch.Tensor, scored: Batch, at_end: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([batch, pos', d_vocab] float64 log-probs, [batch, pos'] weights) where KL is read: END for
    answer metrics (`circuit_logits` unembeds END alone: scored.end indexes it), else every real position."""
    if at_end:
        rows = torch.arange(logits.shape[0], device=logits.device)
        picked = logits[rows, scored.end.to(logits.device)][:, None]
        return picked.double().log_softmax(-1), torch.ones(picked.shape[:2], dtype=torch.float64, device=logits.device)
    valid = torch.arange(logits.shape[1])[None, :] < scored.lengths[:, None]
    return logits.double().log_softmax(-1), valid.to(logits.device, torch.float64)


def _kl(reference: torch.Tensor, log_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[batch] KL(reference ‖ log_probs) summed over the vocabulary, averaged over the valid positions."""
    per_position = (reference.exp() * (reference - log_probs)).sum(-1)
    return (per_position * valid).sum(1) / valid.sum(1)


class CircuitLoss:
    """The loss of an edge circuit over every prompt (module docstring) divided by `scale`, each
    circuit measured once: one circuit forward per batch (`circuit_logits`), the sum over this
    process's prompts passed through ctx.sum_shards. `forwards` counts the circuits measured,
    `calls` the circuits asked for."""

    def __init__(self, model: LoadedModel, graph: ComponentGraph, prepared: list[_Prepared],
                 ctx: MethodContext, n_prompts: int) -> None:
        self.model, self.graph, self.prepared, self.ctx, self.n_prompts = model, graph, prepared, ctx, n_prompts
        self.at_end = METRICS.get(ctx.metric).needs_answer
        self.memo: dict[bytes, float] = {}  # raw losses by circuit
        self.scale = 1.0
        self.forwards = self.calls = 0

    def __call__(self, present: np.ndarray) -> float:
        self.calls += 1
        return self.raw(present) / self.scale

    def raw(self, present: np.ndarray) -> float:
        """The loss in its own units: mean KL in nats, or −(mean oriented metric)."""
        key = np.packbits(present).tobytes()
        if key not in self.memo:
            self.memo[key] = self._measure(present)
            self.forwards += 1
        return self.memo[key]

    def _measure(self, present: np.ndarray) -> float:
        outside = torch.from_numpy(self.graph.real_edges & ~present)
        total = 0.0
        for part in self.prepared:
            logits, scored = circuit_logits(self.model, self.graph, part.batch, outside, part.replacement, self.ctx)
            if part.reference is not None:
                values = _kl(part.reference, _log_probs(logits, scored, self.at_end)[0], part.valid)
            else:
                values = -oriented_metric(self.ctx.metric, logits, scored)
            total += float(values.double().sum())
        return float(self.ctx.sum_shards(total)) / self.n_prompts


# --- the method ---------------------------------------------------------------------------------
def _n_batches(n_prompts: int, batch_size: int) -> int:
    return -(-n_prompts // max(batch_size, 1))


def acdc_cost(graph: ComponentGraph, n_thresholds: int, n_prompts: int, batch_size: int) -> int:
    """At most this many batch forwards: per τ the full graph and every edge tried once, plus the
    counterfactual base runs, each over every batch (the dangling edges ACDC skips and the circuits
    several τ share make the real count lower: MethodOutput.settings records it)."""
    return (n_thresholds * (graph.n_edges + 1) + 1) * _n_batches(n_prompts, batch_size)


def _refuse(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, opts: AcdcOptions, cost: int,
            n_thresholds: int) -> CircuitbenchError:
    """The refusal above max_forwards, with the time one circuit forward takes here."""
    graph = model.component_graph()
    first = data.batch(0, min(len(data), ctx.batch_size))
    replacement = torch.zeros(*first.tokens.shape, len(graph.sources), model.d_model, device=model.device,
                              dtype=getattr(torch, model.dtype))
    started = time.perf_counter()
    circuit_logits(model, graph, first, torch.from_numpy(graph.real_edges), replacement, ctx)
    seconds = time.perf_counter() - started
    return CircuitbenchError(
        f"acdc on '{model.name}': {graph.n_edges:,} edges × {n_thresholds} thresholds × "
        f"{_n_batches(len(data), ctx.batch_size)} batches of {len(data)} prompts: up to {cost:,} batch forwards "
        f"(≈ {cost * seconds / 3600:.1f} h here at {seconds:.2f} s per circuit forward), above "
        f"method_options.acdc.max_forwards = {opts.max_forwards:,}. Use eap or eap_ig (a few forwards), fewer "
        "thresholds (method_options.acdc.tau or thresholds), fewer prompts, or raise max_forwards.")


def acdc(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> MethodOutput:
    opts = AcdcOptions.model_validate(ctx.options)
    check_edges(model, "acdc")
    graph = model.component_graph()
    thresholds = [opts.tau] if opts.tau is not None else sorted(set(opts.thresholds))
    n_prompts = int(ctx.sum_shards(len(data)))
    cost = acdc_cost(graph, len(thresholds), n_prompts, ctx.batch_size)
    if cost > opts.max_forwards:
        raise _refuse(model, data, ctx, opts, cost, len(thresholds))
    at_end = METRICS.get(ctx.metric).needs_answer
    prepared: list[_Prepared] = []
    nothing = torch.zeros(graph.real_edges.shape, dtype=torch.bool)
    m_clean = m_corr = 0.0
    for batch, runs in base_runs(model, data, ctx, ("corrupted",)):
        corrupt = runs["corrupted"]
        assert corrupt.metric is not None
        m_corr += float(corrupt.metric.double().sum())
        replacement = node_outputs(model, corrupt)
        logits, scored = circuit_logits(model, graph, batch, nothing, replacement, ctx)  # the full model
        m_clean += float(oriented_metric(ctx.metric, logits, scored).double().sum())
        reference, valid = _log_probs(logits, scored, at_end)
        prepared.append(_Prepared(batch, replacement, reference if opts.loss == "kl" else None, valid))
    m_clean, m_corr = ctx.sum_shards((m_clean, m_corr))
    loss = CircuitLoss(model, graph, prepared, ctx, n_prompts)
    # the full graph's loss, from the forwards above: KL 0 exactly, −m̄_clean
    full = np.packbits(graph.real_edges).tobytes()
    loss.memo[full] = 0.0 if opts.loss == "kl" else -m_clean / n_prompts
    if opts.tau_units == "relative":  # the empty circuit's loss rise: KL(full ‖ counterfactual), or the metric gap
        empty = np.zeros_like(graph.real_edges)
        loss.scale = loss.raw(empty) if opts.loss == "kl" else abs(m_clean - m_corr) / n_prompts
        if loss.scale < 1e-12:
            what = "output distribution" if opts.loss == "kl" else ctx.metric
            raise CircuitbenchError(
                f"Clean and corrupted prompts give the same {what} on '{model.name}': thresholds relative to that "
                "difference are undefined. Use method_options.acdc.tau_units: raw, or another counterfactual.")
    scores = np.zeros(graph.real_edges.shape)
    kept: list[int] = []
    done = 0
    for k, tau in enumerate(thresholds):
        part, counts = threshold_scores(graph, loss, [tau], opts.abs_value_threshold)
        scores, kept = np.maximum(scores, part), kept + counts
        step = (k + 1) * len(data) // len(thresholds) - done
        ctx.advance(step)
        done += step
    n_batches = _n_batches(n_prompts, ctx.batch_size)
    return MethodOutput(edges=EdgeScores(graph, scores), settings={
        "method": "acdc", "ablation": "counterfactual", "loss": opts.loss, "thresholds": thresholds, "signed": False,
        "units": "the largest threshold τ of the grid at which the edge survives ACDC's pruning (0: never kept)",
        "tau_units": opts.tau_units, "loss_scale": loss.scale, "abs_value_threshold": opts.abs_value_threshold,
        "kept_edges": kept,
        "circuit_forwards": loss.forwards + 1, "edges_tried": loss.calls - len(thresholds),
        "batch_forwards": (loss.forwards + 2) * n_batches, "batch_forwards_bound": cost})
