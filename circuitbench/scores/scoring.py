"""Running a task's scoring methods: checking before any compute that the task can feed them,
then each method on this process's shard (or on the main process), with finite scores."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from circuitbench.errors import CircuitbenchError, did_you_mean
from circuitbench.models.loaded import LoadedModel
from circuitbench.parallel import ONE_PROCESS, Processes
from circuitbench.progress import ProgressFn, Steps, no_progress
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.registry import entry_label, exits_as_errors
from circuitbench.scores.activation_cache import CacheEntry
from circuitbench.scores.evaluation import nonfinite_error
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import EdgeScores, NodeScores
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
            raise CircuitbenchError(f"Method '{name}' patches clean and corrupted activations position by position; "
                                    f"the counterfactuals of task '{spec.name}' may have another token length "
                                    "(aligned_counterfactual: false). Use ablation or the attention detectors.")
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
        for field in POSITION_OPTIONS:
            value = getattr(opts, field, None)
            named = [value] if isinstance(value, str) and value != "all" else value if isinstance(value, list) else []
            missing = [p for p in named if p not in data.positions]
            if missing:
                raise CircuitbenchError(
                    f"Method '{name}' option {field}={value!r} names positions {missing} that task '{spec.name}' "
                    f"does not define (it has {sorted(data.positions)}). Fix method_options.{name}.{field}."
                )


def score_heads(
    model: LoadedModel, data: EncodedPrompts, methods: list[str], batch_size: int, progress: ProgressFn = no_progress,
    metric: str = "logit_diff", method_options: dict[str, dict] | None = None,
    traces: dict[str, dict] | None = None, processes: Processes = ONE_PROCESS, cache_entry: CacheEntry | None = None,
    node_scores: dict[str, dict[str, float]] | None = None, edge_scores: dict[str, EdgeScores] | None = None,
) -> dict[str, np.ndarray]:
    """[n_layers, n_heads] head scores per method; trace-producing methods (causal tracing) fill
    `traces` instead, and methods that score MLPs too also fill `node_scores` ({method: {node:
    score}}, heads and MLPs); edge methods fill `edge_scores`.

    With several processes, shardable methods run on this process's shard and add their sums
    across processes; the others run on all prompts on the main process, which hands the result
    to the rest. Either way every process returns the one-process numbers."""
    scores: dict[str, np.ndarray] = {}
    traces = {} if traces is None else traces
    node_scores = {} if node_scores is None else node_scores
    edge_scores = {} if edge_scores is None else edge_scores
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    for name in methods:
        method = METHODS.get(name)
        own = shard if method.shardable else data
        if method.progress == "heads":  # per-head methods: one step per head patched, batch by batch
            batches = -(-len(own) // batch_size)
            steps = Steps(progress, f"{name} · heads × {batches} batch{'es' if batches > 1 else ''}",
                          batches * model.n_layers * model.n_heads)
            advance, advance_heads = (lambda n: None), steps.advance
        else:
            steps = Steps(progress, name, len(own))
            advance, advance_heads = steps.advance, (lambda n: None)
        ctx = MethodContext(batch_size=batch_size, metric=metric, options=(method_options or {}).get(name, {}),
                            advance=advance, advance_heads=advance_heads, cache_entry=cache_entry)
        with exits_as_errors(entry_label("method", name, method.fn)):  # sys.exit: this unit fails, not the grid
            if method.shardable:
                ctx.sum_shards = processes.sum
                output = method.run(model, shard, ctx)
            else:
                output = processes.from_main(_runner(method.run, model, data, ctx))
        if method.produces == "traces":
            traces.update({f"{name}/{key}": value.model_dump() for key, value in output.items()})
            continue
        if method.produces == "edge_scores":
            if not np.isfinite(output.scores).all():
                raise nonfinite_error(f"Method '{name}' edge scores", model, data.tokens[:4])
            edge_scores[name] = output
            continue
        nodes = output if isinstance(output, NodeScores) else None
        expected = (model.n_layers, model.n_heads)
        try:
            array = np.asarray(output.heads if nodes is not None else output, dtype=float)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != expected:
            got = f"shape {list(array.shape)}" if array is not None else f"a {type(output).__name__}"
            raise CircuitbenchError(f"Method '{name}' returned {got}, expected head scores of shape "
                                    f"{list(expected)} ([n_layers, n_heads] of model '{model.name}').")
        if not np.isfinite(array).all():
            bad = [f"{l}.{h}" for l, h in zip(*np.nonzero(~np.isfinite(array)))][:5]
            raise nonfinite_error(f"Method '{name}' head scores (heads {', '.join(bad)})", model, data.tokens[:4])
        scores[name] = array
        if nodes is not None:
            if nodes.mlps is not None and not np.isfinite(nodes.mlps).all():
                raise nonfinite_error(f"Method '{name}' MLP scores", model, data.tokens[:4])
            node_scores[name] = nodes.as_dict()
    return scores


def _runner(fn: Callable, model: LoadedModel, data: EncodedPrompts, ctx: MethodContext) -> Callable[[], object]:
    return lambda: fn(model, data, ctx)
