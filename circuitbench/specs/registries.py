"""The names a task spec may use — prompt generators, task metrics, scoring methods — as open
registries. Later stages register what they implement; third-party code registers the same way
(`circuitbench.register_generator`, `register_metric`, `register_method`).

An entry declares what a spec is validated against (a generator's params model, a method's
options model, whether a metric needs an answer token); its implementation may be a callable or
a "module:attribute" reference imported on first use, so listing and validating tasks imports no
torch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


MethodFn = "Callable[[LoadedModel, EncodedPrompts, MethodContext], np.ndarray | dict[str, BaseModel]]"


@dataclass(frozen=True)
class Method:
    """A scoring method: `fn(model, prompts, ctx)` returns [n_layers, n_heads] head scores (or
    NodeScores with MLPs too; with produces="traces", named per-(layer, position) maps; with
    produces="edge_scores", EdgeScores over the component graph).

    `aligns_positions`: the method puts clean and corrupted activations together position by
    position (patching), so a task whose counterfactuals may have another token length
    (`aligned_counterfactual: false`) refuses it before any compute.

    Data parallel contract: a shardable method gets one process's shard of the prompts and passes
    every sum over prompts through `ctx.sum_shards` before it normalises; `shardable=False` runs
    on the main process with all prompts."""

    fn: "Implementation[Callable[..., Any]]"
    description: str
    needs_corrupted: bool = False
    needs_answer: bool = False
    options: type[BaseModel] | None = None  # validates `method_options.<name>` in the task YAML
    produces: Literal["head_scores", "traces", "edge_scores"] = "head_scores"
    shardable: bool = True
    aligns_positions: bool = False

    def run(self, model: "LoadedModel", data: "EncodedPrompts", ctx: "MethodContext") -> Any:
        return resolve(self.fn)(model, data, ctx)


# Built-ins register as plugins do: these modules are imported on first lookup.
GENERATORS: Registry[Generator] = Registry("generator", builtins=(
    "circuitbench.prompts.fibonacci", "circuitbench.prompts.file", "circuitbench.prompts.induction",
    "circuitbench.prompts.ioi", "circuitbench.prompts.progression", "circuitbench.prompts.sequence",
    "circuitbench.prompts.sorting",
))
METRICS: Registry[Metric] = Registry("metric", builtins=("circuitbench.scores.builtin",))
METHODS: Registry[Method] = Registry("method", builtins=("circuitbench.scores.builtin",))
