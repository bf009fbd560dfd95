"""The public plugin API: register your own prompt generators, task metrics, scoring methods and
overlap metrics, then use them by name in task YAML files and on the command line.

A plugin is a module that calls these functions when imported. Load it with `--plugin MODULE`
(or `--plugin path/to/file.py`) on any verb that reads specs, or declare it once in your
package's metadata under the `circuitbench.plugins` entry-point group:

    [project.entry-points."circuitbench.plugins"]
    my_tasks = "my_package.circuitbench_plugin"

See README.md, "Plugins", for a worked example.

What plugin code returns is checked: a metric must return one finite value per prompt (shape
[batch]) and a method [n_layers, n_heads] scores, or the unit fails naming them. A plugin that
calls sys.exit while loading is an error naming it; inside a unit it fails that unit (the grid
goes on). Report a problem by raising an exception, never by exiting.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel

from circuitbench.circuits.overlap import OVERLAP_METRICS, OverlapFn
from circuitbench.registry import load_plugins
from circuitbench.specs.registries import GENERATORS, METHODS, METRICS, Generator, GeneratorParams, Method, Metric

__all__ = ["GeneratorParams", "load_plugins", "register_generator", "register_method", "register_metric",
           "register_overlap_metric"]


def register_generator(name: str, params: type[GeneratorParams], generate: Callable[..., Any], *,
                       positions: Iterable[str] = ("END",), has_answer: bool = True,
                       description: str = "") -> Generator:
    """A prompt family usable as `generator: {name: <name>, ...}` in a task YAML.

    `params` subclasses GeneratorParams (its fields are the YAML keys besides `name`);
    `generate(params, n, seed, split)` returns up to n distinct `circuitbench.prompts.base.Prompt`s
    of the split (n None: all of them), e.g. via `circuitbench.prompts.base.sample_split`.
    `positions` names the positions its prompts label (END is always there)."""
    if not (isinstance(params, type) and issubclass(params, GeneratorParams)):
        raise TypeError(f"register_generator('{name}'): params must subclass circuitbench.plugins.GeneratorParams")
    return GENERATORS.add(name, Generator(params=params, generate=generate, positions=frozenset({"END", *positions}),
                                          has_answer=has_answer, description=description))


def register_metric(name: str, fn: Callable[..., Any] | str, *, higher_is_better: bool, needs_answer: bool,
                    needs_distractor: bool = False, description: str = "") -> Metric:
    """A task metric usable in `metrics:`: `fn(logits [batch, pos, vocab], batch) -> [batch]` per-prompt
    values (a callable, or "module:function" imported on first use). `batch` is a
    `circuitbench.prompts.encoding.Batch` (tokens, answer, distractor, positions, score_mask).
    Set needs_distractor if it reads `batch.distractor` (tasks whose prompts have none refuse it)."""
    return METRICS.add(name, Metric(fn=fn, description=description, higher_is_better=higher_is_better,
                                    needs_answer=needs_answer, needs_distractor=needs_distractor))


def register_method(name: str, fn: Callable[..., Any] | str, *, description: str = "",
                    options: type[BaseModel] | None = None, needs_corrupted: bool = False, needs_answer: bool = False,
                    produces: Literal["head_scores", "traces"] = "head_scores", shardable: bool = False,
                    aligns_positions: bool = False) -> Method:
    """A scoring method usable in `methods:`: `fn(model, prompts, ctx)` returns [n_layers, n_heads]
    scores. `model` is a `circuitbench.models.loaded.LoadedModel` (run / run_with_hooks /
    run_with_cache over `circuitbench.models.hooks` sites), `prompts` the task's EncodedPrompts,
    `ctx` a MethodContext (metric, options, batch_size, advance). `options` validates
    `method_options.<name>`. Set shardable=True only if the method sums over prompts through
    ctx.sum_shards (data parallel); otherwise it runs on the main process with every prompt. Set
    aligns_positions if it combines clean and corrupted activations position by position: tasks
    whose counterfactuals may differ in length (aligned_counterfactual: false) then refuse it."""
    return METHODS.add(name, Method(fn=fn, description=description, options=options, needs_corrupted=needs_corrupted,
                                    needs_answer=needs_answer, produces=produces, shardable=shardable,
                                    aligns_positions=aligns_positions))


def register_overlap_metric(name: str, fn: OverlapFn) -> OverlapFn:
    """An overlap metric usable in `overlap --metric`: `fn(a: Circuit, b: Circuit) -> float`."""
    return OVERLAP_METRICS.add(name, fn)
