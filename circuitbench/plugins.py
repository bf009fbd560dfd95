"""The public plugin API: register your own prompt generators, task metrics, scoring methods and
overlap metrics, then use them by name in task YAML files and on the command line.

A plugin is a module that calls these functions when imported. Load it with `--plugin MODULE`
(or `--plugin path/to/file.py`) on any verb that reads specs, or declare it once in your
package's metadata under the `circuitbench.plugins` entry-point group:

    [project.entry-points."circuitbench.plugins"]
    my_tasks = "my_package.circuitbench_plugin"

See README.md, "Plugins", for a worked example.

Register with the decorators the built-ins use (`generator`, `metric`, `method`: same
declarations, same defaults), or with the `register_*` calls, which do the same:

    @method("my_scores", description="...", progress="heads", shardable=True)
    def my_scores(model, prompts, ctx) -> MethodOutput: ...

What plugin code returns is checked: a metric must return one finite value per prompt (shape
[batch]); a method a MethodOutput holding what it declares (`produces`: head_scores by default),
or, as before MethodOutput, a bare [n_layers, n_heads] array of head scores (converted) — else
the unit fails naming it. A plugin that
calls sys.exit while loading is an error naming it; inside a unit it fails that unit (the grid
goes on). Report a problem by raising an exception, never by exiting.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from circuitbench.circuits.overlap_metrics import OVERLAP_METRICS, Need, OverlapFn, OverlapMetric, plugin_metric
from circuitbench.registry import load_plugins
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput
from circuitbench.specs.registries import (
    GENERATORS,
    METHODS,
    METRICS,
    Generator,
    GeneratorParams,
    Method,
    Metric,
    Produces,
    Progress,
    generator,
    method,
    metric,
)

__all__ = ["EdgeScores", "GeneratorParams", "MethodOutput", "generator", "load_plugins", "method", "metric",
           "register_generator", "register_method", "register_metric", "register_overlap_metric"]


def register_generator(name: str, params: type[GeneratorParams], generate: Callable[..., Any], *,
                       positions: Iterable[str] = ("END",), has_answer: bool = True, description: str = "",
                       answers_of: Callable[[Any], tuple[bool, bool]] | None = None) -> Generator:
    """`@generator(name, ...)` applied to `generate`: a prompt family usable as `generator: {name:
    <name>, ...}` in a task YAML. `generate(params, n, seed, split)` returns up to n distinct
    `circuitbench.prompts.base.Prompt`s of the split (n None: all of them), e.g. via
    `circuitbench.prompts.base.sample_split`."""
    generator(name, params=params, positions=positions, has_answer=has_answer, description=description,
              answers_of=answers_of)(generate)
    return GENERATORS.get(name)


def register_metric(name: str, fn: Callable[..., Any] | str, *, higher_is_better: bool, needs_answer: bool,
                    needs_distractor: bool = False, description: str = "") -> Metric:
    """`@metric(name, ...)` applied to `fn`: a task metric usable in `metrics:`, `fn(logits [batch,
    pos, vocab], batch) -> [batch]` per-prompt values (a callable, or "module:function" imported on
    first use). `batch` is a `circuitbench.prompts.encoding.Batch` (tokens, answer, distractor,
    positions, score_mask)."""
    metric(name, higher_is_better=higher_is_better, needs_answer=needs_answer, needs_distractor=needs_distractor,
           description=description)(fn)
    return METRICS.get(name)


def register_method(name: str, fn: Callable[..., Any] | str, *, description: str = "",
                    options: type[BaseModel] | None = None, needs_corrupted: bool = False, needs_answer: bool = False,
                    produces: Produces = "head_scores", shardable: bool = False, aligns_positions: bool = False,
                    progress: Progress = "prompts") -> Method:
    """`@method(name, ...)` applied to `fn`: a scoring method usable in `methods:`. `fn(model,
    prompts, ctx)` returns a MethodOutput (or a bare [n_layers, n_heads] array of head scores).
    `model` is a `circuitbench.models.loaded.LoadedModel` (run / run_with_hooks / run_with_cache
    over `circuitbench.models.hooks` sites), `prompts` the task's EncodedPrompts, `ctx` a
    MethodContext (metric, options, batch_size, advance, advance_heads, sum_shards). `options`
    validates `method_options.<name>`. Set shardable=True only if the method sums over prompts
    through ctx.sum_shards (data parallel); otherwise it runs on the main process with every
    prompt. progress="heads": its bar counts head patches (ctx.advance_heads), not prompts. Set
    aligns_positions if it combines clean and corrupted activations position by position: tasks
    whose counterfactuals may differ in length (aligned_counterfactual: false) then refuse it."""
    method(name, description=description, options=options, needs_corrupted=needs_corrupted, needs_answer=needs_answer,
           shardable=shardable, progress=progress, produces=produces, aligns_positions=aligns_positions)(fn)
    return METHODS.get(name)


def register_overlap_metric(name: str, fn: OverlapFn | OverlapMetric, *, description: str | None = None,
                            needs: Iterable[Need] = ("heads",), higher_is_better: bool = True) -> OverlapMetric:
    """An overlap metric usable in `overlap --metric` and `overlap_matrix`, registered as the built-ins are.

    `fn(a: Circuit, b: Circuit) -> float` becomes an OverlapMetric whose every value is checked (one
    finite number, or an error naming the metric); its permutation null is `fn` on each shuffle of b.
    `description` (default: the first line of fn's docstring), `needs` and `higher_is_better` (False:
    a smaller value means more overlap) are what `ls overlap-metrics` and the null's p-value use.
    An `circuitbench.circuits.overlap_metrics.OverlapMetric` (e.g. with a batched `null_values`) is
    registered as it is, under `name`."""
    if isinstance(fn, OverlapMetric):
        return OVERLAP_METRICS.add(name, dataclasses.replace(fn, name=name))
    return OVERLAP_METRICS.add(name, plugin_metric(name, fn, description=description, needs=tuple(needs),
                                                   higher_is_better=higher_is_better))
