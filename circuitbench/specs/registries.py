"""The names a task spec may use — prompt generators, task metrics, scoring methods — as open
registries, and the one way to register into them: the decorators `generator`, `metric` and
`method`, used by the built-ins and by plugins alike, with the same defaults
(`circuitbench.plugins.register_*` are thin calls of the same thing).

An entry declares what a spec is validated against (a generator's params model, a method's
options model, whether a metric needs an answer token); its implementation may be a callable or
a "module:attribute" reference imported on first use (the built-ins register those, so listing
and validating tasks imports no torch):

    @method("my_method", description="...", options=MyOptions, progress="heads")
    def my_method(model, prompts, ctx): ...

    method("eap", description="...", produces="edge_scores")("circuitbench.scores.methods.edges:eap")
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.errors import CircuitbenchError
from circuitbench.registry import Implementation, Registry, resolve

if TYPE_CHECKING:
    import torch

    from circuitbench.models.loaded import LoadedModel
    from circuitbench.prompts.base import Prompt, Split
    from circuitbench.prompts.encoding import Batch, EncodedPrompts
    from circuitbench.scores.methods.context import MethodContext


class GeneratorParams(BaseModel):
    """Base of every generator's params model: the YAML `generator:` mapping, `name` included.
    Subclass it, add your fields (with defaults and constraints); unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the registered generator this mapping configures")

    def identity(self) -> dict[str, Any]:
        """What of these params the task's spec and content hashes cover: all of them, unless a
        generator says otherwise (a data file's location does not count, its sha256 does)."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Generator:
    """A prompt family: its params model (validated from YAML) and how to draw prompts.

    `generate(params, n, seed, split)` returns up to n distinct prompts of the split (n None:
    every prompt of it). `positions` lists the named positions its prompts define (END is always
    there); `has_answer` says whether prompts carry a single-token answer and distractor.
    `answers_of(params) -> (answer, distractor)`, when given, says it per task instead (a data
    file's records may carry no answer, or an answer and no distractor)."""

    params: type[GeneratorParams]
    generate: "Callable[[Any, int | None, int, Split], list[Prompt]]"
    positions: frozenset[str]
    has_answer: bool
    description: str
    answers_of: "Callable[[Any], tuple[bool, bool]] | None" = None

    def answers(self, params: GeneratorParams) -> bool:
        """Whether the prompts of these params carry a single-token answer."""
        return self.has_answer if self.answers_of is None else self.answers_of(params)[0]

    def distractors(self, params: GeneratorParams) -> bool:
        """Whether the prompts of these params carry a distractor (the token logit_diff compares against)."""
        return self.has_answer if self.answers_of is None else self.answers_of(params)[1]


@dataclass(frozen=True)
class Metric:
    """A task metric: `fn(logits [batch, pos, vocab], batch) -> [batch]`, one float per prompt.

    A metric that needs no answer scores tokens position by position (a sequence loss)."""

    fn: "Implementation[Callable[[torch.Tensor, Batch], torch.Tensor]]"
    description: str
    higher_is_better: bool
    needs_answer: bool
    needs_distractor: bool = False

    def compute(self, logits: "torch.Tensor", batch: "Batch") -> "torch.Tensor":
        """[batch] per-prompt values (the implementation imported on first use)."""
        return resolve(self.fn)(logits, batch)


# What a method's output holds (scores.methods.outputs.MethodOutput), checked after it runs; each
# lands in the result field of that name.
Produces = Literal["head_scores", "node_scores", "edge_scores", "traces"]
# What a method's progress bar counts: prompts, or (per-head methods, whose prompts are few and
# slow) head patches, batch by batch, through ctx.advance_heads.
Progress = Literal["prompts", "heads"]


@dataclass(frozen=True)
class Method:
    """A scoring method: `fn(model, prompts, ctx)` returns a MethodOutput holding what `produces`
    declares — head_scores: heads [n_layers, n_heads]; node_scores: heads and, on a model with
    MLPs, mlps [n_layers] (nodes=True); edge_scores: edges over the component graph; traces:
    named maps. A plugin's method may return a bare [n_layers, n_heads] array (head scores).

    `aligns_positions`: the method puts clean and corrupted activations together position by
    position (patching), so a task whose counterfactuals may have another token length
    (`aligned_counterfactual: false`) refuses it before any compute.

    Data parallel contract: a shardable method gets one process's shard of the prompts and passes
    every sum over prompts through `ctx.sum_shards` before it normalises; `shardable=False` (the
    default) runs on the main process with all prompts."""

    fn: "Implementation[Callable[..., Any]]"
    description: str
    needs_corrupted: bool = False
    needs_answer: bool = False
    options: type[BaseModel] | None = None  # validates `method_options.<name>` in the task YAML
    produces: Produces = "head_scores"
    shardable: bool = False
    aligns_positions: bool = False
    progress: Progress = "prompts"
    # estimate(model, data, batch_size, metric, options) -> forward-equivalents (scores/estimates.py);
    # None: the run planner shows the method's cost as unknown
    cost: "Implementation[Callable[..., Any]] | None" = None

    def run(self, model: "LoadedModel", data: "EncodedPrompts", ctx: "MethodContext") -> Any:
        """What the implementation (imported on first use) returns: a MethodOutput, or a plugin's bare array."""
        return resolve(self.fn)(model, data, ctx)


F = TypeVar("F")  # a registered implementation: a callable, or a "module:attribute" string


def generator(name: str, *, params: type[GeneratorParams], positions: Iterable[str] = ("END",),
              has_answer: bool = True, description: str = "",
              answers_of: "Callable[[Any], tuple[bool, bool]] | None" = None) -> Callable[[F], F]:
    """Register a prompt family usable as `generator: {name: <name>, ...}` in a task YAML, by
    decorating its `generate(params, n, seed, split)` (or calling the result on a "module:function"
    reference). `params` subclasses GeneratorParams (its fields are the YAML keys besides `name`);
    `positions` names the positions its prompts label (END is always there); `answers_of(params)
    -> (answer, distractor)` says per task whether prompts carry them (default: `has_answer`)."""
    if not (isinstance(params, type) and issubclass(params, GeneratorParams)):
        raise TypeError(f"generator '{name}': params must subclass circuitbench.plugins.GeneratorParams")

    def register(generate: F) -> F:
        GENERATORS.add(name, Generator(params=params, generate=generate,  # type: ignore[arg-type]
                                       positions=frozenset({"END", *positions}), has_answer=has_answer,
                                       description=description, answers_of=answers_of))
        return generate
    return register


def metric(name: str, *, higher_is_better: bool, needs_answer: bool, needs_distractor: bool = False,
           description: str = "") -> Callable[[F], F]:
    """Register a task metric usable in `metrics:`, by decorating `fn(logits [batch, pos, vocab],
    batch) -> [batch]` (or calling the result on a "module:function" reference). Set
    needs_distractor if it reads `batch.distractor` (tasks whose prompts have none refuse it)."""
    def register(fn: F) -> F:
        METRICS.add(name, Metric(fn=fn, description=description, higher_is_better=higher_is_better,  # type: ignore
                                 needs_answer=needs_answer, needs_distractor=needs_distractor))
        return fn
    return register


def method(name: str, *, description: str = "", options: type[BaseModel] | None = None, needs_corrupted: bool = False,
           needs_answer: bool = False, shardable: bool = False, progress: Progress = "prompts",
           produces: Produces = "head_scores", aligns_positions: bool = False,
           cost: "Implementation[Callable[..., Any]] | None" = None) -> Callable[[F], F]:
    """Register a scoring method usable in `methods:`, by decorating `fn(model, prompts, ctx)` (or
    calling the result on a "module:function" reference). See `Method` for what each declaration
    means; `produces` is what its output is checked against after it runs; `cost` (optional, a
    callable or "module:function") estimates its forward-equivalents before it runs, for the run
    planner: `cost(model, data, batch_size, metric, options) -> float` (scores/estimates.py)."""
    for field, value, allowed in (("produces", produces, get_args(Produces)),
                                  ("progress", progress, get_args(Progress))):
        if value not in allowed:
            raise CircuitbenchError(f"Method '{name}' declares {field}={value!r}: not one of {', '.join(allowed)}.")
    if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise CircuitbenchError(f"Method '{name}' declares options={options!r}: give a pydantic model (a BaseModel "
                                "subclass) that validates its method_options.")

    def register(fn: F) -> F:
        METHODS.add(name, Method(fn=fn, description=description, needs_corrupted=needs_corrupted,  # type: ignore
                                 needs_answer=needs_answer, options=options, produces=produces, shardable=shardable,
                                 aligns_positions=aligns_positions, progress=progress, cost=cost))
        return fn
    return register


# Built-ins register as plugins do: these modules are imported on first lookup.
GENERATORS: Registry[Generator] = Registry("generator", builtins=(
    "circuitbench.prompts.fibonacci", "circuitbench.prompts.file", "circuitbench.prompts.induction",
    "circuitbench.prompts.ioi", "circuitbench.prompts.progression", "circuitbench.prompts.records",
    "circuitbench.prompts.sequence",
    "circuitbench.prompts.sorting",
))
METRICS: Registry[Metric] = Registry("metric", builtins=("circuitbench.scores.builtin",))
METHODS: Registry[Method] = Registry("method", builtins=("circuitbench.scores.builtin",))
