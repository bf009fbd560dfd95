"""Running a task's scoring methods: checking before any compute that the task can feed them,
then each method on this process's shard (or on the main process), its MethodOutput checked
against what it declares."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.models.loaded import LoadedModel
from circuitbench.parallel import ONE_PROCESS, Processes
from circuitbench.progress import ProgressFn, Steps, no_progress
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.registry import entry_label, exits_as_errors
from circuitbench.scores.activation_cache import CacheEntry
from circuitbench.scores.alignment import check_alignment
from circuitbench.scores.cost import method_cost
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import MethodOutput, NonFiniteScores, as_output
from circuitbench.specs.registries import METHODS, METRICS
from circuitbench.specs.task import TaskSpec

# Method option fields that name task positions (checked against the task before any compute).
POSITION_OPTIONS = ("positions", "corrupt", "source", "target")


def check_methods(spec: TaskSpec, data: EncodedPrompts) -> None:
    """Refuse, before any compute, methods the task cannot feed."""
    for name in spec.methods:
        method = METHODS.get(name)
        if method.needs_corrupted and data.corrupted is None:
            raise CircuitbenchError(f"Method '{name}' needs corrupted prompts; task '{spec.name}' defines none.")
        if method.needs_answer and not data.has_answer:
            raise CircuitbenchError(f"Method '{name}' needs an answer token; task '{spec.name}' has none.")
        if method.aligns_positions and not data.aligned:
            if data.spans is None:
                raise CircuitbenchError(f"Method '{name}' patches clean and corrupted activations position by "
                                        f"position; the counterfactuals of task '{spec.name}' may have another token "
                                        "length (aligned_counterfactual: false) and its prompts have no named spans to "
                                        "align them by. Use ablation or the attention detectors.")
            try:  # span to span (scores/alignment.py): every prompt's counterfactual must have its spans
                check_alignment(data)
            except CircuitbenchError as e:
                raise CircuitbenchError(f"Method '{name}' on task '{spec.name}': {e}") from None
        if method.options is None:
            continue
        opts = method.options.model_validate(spec.options_of(name))
        metric = getattr(opts, "metric", None)  # a method scoring its own metric (causal_tracing)
        if isinstance(metric, str):
            known = METRICS.names()
            if metric not in known:
                raise CircuitbenchError(f"Method '{name}' option metric={metric!r}: unknown metric."
                                        f"{did_you_mean(metric, known)} Known: {', '.join(known)}.")
            if METRICS.get(metric).needs_answer and not data.has_answer:
                raise CircuitbenchError(f"Method '{name}' option metric={metric!r} needs an answer token; task "
                                        f"'{spec.name}' has none. Use a sequence metric such as {spec.metric}.")
            if METRICS.get(metric).needs_distractor and bool((data.distractor < 0).any()):
                raise CircuitbenchError(f"Method '{name}' option metric={metric!r} needs a distractor; the prompts of "
                                        f"task '{spec.name}' have none. Use answer_prob, accuracy or loss.")
        for option in POSITION_OPTIONS:
            value = getattr(opts, option, None)
            named = [value] if isinstance(value, str) and value not in ("all", "per_span") else \
                value if isinstance(value, list) else []  # per_span: edge methods' spans (scores/span_edges.py)
            missing = [p for p in named if p not in data.positions]
            if missing:
                raise CircuitbenchError(
                    f"Method '{name}' option {option}={value!r} names positions {missing} that task '{spec.name}' "
                    f"does not define (it has {sorted(data.positions)}). Fix method_options.{name}.{option}."
                )


@dataclass(frozen=True)
class MethodRun:
    """How a task's methods run: batching, the task's main metric (patching methods score changes
    of it), each method's options (`method_options`), data-parallel processes, the activation
    cache entry and progress."""

    batch_size: int
    metric: str = "logit_diff"
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    processes: Processes = ONE_PROCESS
    cache_entry: CacheEntry | None = None
    progress: ProgressFn = no_progress
    memory_budget: int | None = None  # bytes (--max-memory): edge methods chunk under it (scores/memory_plan.py)


def run_methods(model: LoadedModel, data: EncodedPrompts, methods: list[str],
                run: MethodRun) -> dict[str, MethodOutput]:
    """Each method's output, in the order given, checked against what the method declares
    (`produces`) and against the model: shapes, every score finite; with what it cost (`cost`:
    seconds and forward-equivalents on the prompts it ran on, scores/cost.py).

    With several processes, shardable methods run on this process's shard and add their sums
    across processes; the others run on all prompts on the main process, which hands the result
    to the rest. Either way every process returns the one-process numbers."""
    outputs: dict[str, MethodOutput] = {}
    processes, batch_size = run.processes, run.batch_size
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    for name in methods:
        method = METHODS.get(name)
        own = shard if method.shardable else data
        if method.progress == "heads":  # per-head methods: one step per head patched, batch by batch
            batches = -(-len(own) // batch_size)
            steps = Steps(run.progress, f"{name} · heads × {batches} batch{'es' if batches > 1 else ''}",
                          batches * model.n_layers * model.n_heads)
            advance, advance_heads = (lambda n: None), steps.advance
        else:
            steps = Steps(run.progress, name, len(own))
            advance, advance_heads = steps.advance, (lambda n: None)
        ctx = MethodContext(batch_size=batch_size, metric=run.metric, options=dict(run.method_options.get(name, {})),
                            advance=advance, advance_heads=advance_heads, cache_entry=run.cache_entry,
                            memory_budget=run.memory_budget)
        started = time.perf_counter()
        # sys.exit in a method: this unit fails, not the grid; the meter counts the method's forwards
        with exits_as_errors(entry_label("method", name, method.fn)), model.metered() as meter:
            if method.shardable:
                ctx.sum_shards = processes.sum
                returned = method.run(model, shard, ctx)
            else:
                returned = processes.from_main(_runner(method.run, model, data, ctx))
        cost = method_cost(meter, own, batch_size, time.perf_counter() - started, run.cache_entry is not None)
        output = as_output(name, returned)  # a plugin's bare [n_layers, n_heads] array: head scores
        try:
            output.check(name, method.produces, model)
        except NonFiniteScores as e:
            raise nonfinite_error(e.quantity, model, data.tokens[:4]) from None
        outputs[name] = replace(output, cost=cost)
    return outputs


def _runner(fn: Callable, model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> Callable[[], object]:
    return lambda: fn(model, data, ctx)
