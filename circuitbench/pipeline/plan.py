"""How long a run will take, said before it starts: per (model, task) unit and per scoring method,
forward-equivalents (each method's registered estimator, scores/estimates.py: 1 = one forward of
every prompt at the run's batch size) times the seconds of one forward of those prompts, measured
once on the loaded model (the first batch, after a warm-up forward).

`run --dry-run` prints only the plan (plan_run: loads each model, measures, writes nothing); a
normal run logs one line per unit at its start (announce), and when a unit's estimate is long,
names the methods that give a first answer in a few forwards (attribution_patching, eap)."""
from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from circuitbench.environment import threads_for, torch_threads
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.loading import load_model
from circuitbench.models.memory import auto_batch_size
from circuitbench.prompts.encoding import EncodedPrompts, encode_task
from circuitbench.registry import resolve
from circuitbench.scores.cost import prompt_positions
from circuitbench.scores.estimates import CostEstimate
from circuitbench.specs.catalog import expand_task_names, load_task
from circuitbench.specs.options import ExecutionOptions, RunOptions, effective_spec
from circuitbench.specs.registries import METHODS
from circuitbench.specs.task import TaskSpec

log = logging.getLogger(__name__)

# Methods that answer in about four forwards of the prompts (a corrupted run, a clean run and its
# backward), suggested when a unit's estimate is long: node scores and edge scores.
FIRST_ANSWER = ("attribution_patching", "eap")
LONG_SECONDS = 180.0  # above this a unit's estimate comes with the first-answer advice
# Circuit building (faithfulness curve, panel, stability) in forward-equivalents per candidate
# method: a rough figure (its work depends on the scores), not checked against the meter.
CIRCUIT_FORWARDS_PER_CANDIDATE = 20.0


class MethodEstimate(BaseModel):
    """One method's predicted cost in a unit (pipeline/plan.py)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="the registered method")
    forwards: float | None = Field(description="forward-equivalents (1 = one forward of every prompt at the run's "
                                   "batch size, a backward 2); None: the method declares no estimator (unknown)")
    upper_bound: bool = Field(False, description="the figure is an upper bound (work that depends on what the "
                              "method finds, as ACDC's pruning)")
    seconds: float | None = Field(None, description="forwards × the measured seconds of one forward of the prompts")
    error: str | None = Field(None, description="why the estimator failed (the method may refuse to run, too)")


class UnitPlan(BaseModel):
    """The plan of one (model, task) unit: every method's estimate and the unit's total."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="model name")
    task: str = Field(description="task name")
    n_prompts: int = Field(description="prompts after encoding (drops excluded)")
    batch_size: int = Field(description="the batch size the run uses")
    forward_seconds: float = Field(description="measured seconds of one forward of every prompt at that batch size")
    evaluation_forwards: float = Field(description="forward-equivalents of the task metrics (clean, corrupted, splits)")
    circuit_forwards: float = Field(description="forward-equivalents of circuit building (faithfulness, panel): rough")
    methods: list[MethodEstimate] = Field(description="per method, in the task's order")
    first_answer: list[MethodEstimate] = Field(
        default_factory=list, description="cheaper methods that give a first answer, when the estimate is long")

    @property
    def known_forwards(self) -> float:
        return self.evaluation_forwards + self.circuit_forwards + sum(m.forwards or 0.0 for m in self.methods)

    @property
    def seconds(self) -> float:
        return self.known_forwards * self.forward_seconds

    @property
    def unknown(self) -> list[str]:
        return [m.method for m in self.methods if m.forwards is None]

    @property
    def slowest(self) -> MethodEstimate | None:
        known = [m for m in self.methods if m.forwards is not None]
        return max(known, key=lambda m: m.forwards or 0.0) if known else None


class RunPlan(BaseModel):
    """The plan of a grid: one UnitPlan per (model, task)."""

    model_config = ConfigDict(extra="forbid")
    units: list[UnitPlan] = Field(description="models outer, tasks inner, as the run goes")


def estimate_method(name: str, model: LoadedModel, data: EncodedPrompts, batch_size: int, metric: str,
                    options: dict[str, Any]) -> MethodEstimate:
    """A method's forward-equivalents from its registered estimator (`method(..., cost=...)`)."""
    entry = METHODS.get(name)
    if entry.cost is None:
        return MethodEstimate(method=name, forwards=None)
    try:
        value = resolve(entry.cost)(model, data, batch_size, metric, dict(options))
    except Exception as e:  # noqa: BLE001  (a plan never stops a run: the method reports its own refusal)
        return MethodEstimate(method=name, forwards=None, error=f"{type(e).__name__}: {e}")
    estimate = value if isinstance(value, CostEstimate) else CostEstimate(float(value))
    return MethodEstimate(method=name, forwards=round(estimate.forwards, 3), upper_bound=estimate.upper_bound)


def measure_forward(model: LoadedModel, data: EncodedPrompts, batch_size: int) -> float:
    """Seconds of one forward of every prompt at `batch_size`: the first batch timed after a warm-up
    forward, scaled by the prompts' token-positions over that batch's."""
    import torch

    batch = data.batch(0, min(len(data), max(batch_size, 1)))
    with torch.no_grad():
        model.run(batch.tokens)
        started = time.perf_counter()
        model.run(batch.tokens)
        seconds = time.perf_counter() - started
    return seconds * prompt_positions(data, batch_size) / max(int(batch.tokens.numel()), 1)


def _batch_size(options: ExecutionOptions, model: LoadedModel, data: EncodedPrompts) -> int:
    if options.batch_size != "auto":
        return int(options.batch_size)
    return int(auto_batch_size(model, int(data.tokens.shape[1]), len(data)))


def _per_counterfactual(spec: TaskSpec, estimate: MethodEstimate) -> MethodEstimate:
    """A method that patches the counterfactual runs once per counterfactual of the task
    (pipeline/counterfactuals.py): its estimate times their number."""
    runs = len(spec.counterfactuals) if METHODS.get(estimate.method).needs_corrupted else 1
    if runs <= 1 or estimate.forwards is None:
        return estimate
    return estimate.model_copy(update={"forwards": estimate.forwards * runs})


def _with_seconds(estimate: MethodEstimate, forward_seconds: float) -> MethodEstimate:
    seconds = None if estimate.forwards is None else round(estimate.forwards * forward_seconds, 3)
    return estimate.model_copy(update={"seconds": seconds})


def plan_unit(spec: TaskSpec, model: LoadedModel, options: ExecutionOptions | None = None, *,
              forward_seconds: float | None = None, long_seconds: float = LONG_SECONDS) -> UnitPlan:
    """The plan of running `spec` (overrides applied) on `model`; `forward_seconds` measured here
    unless given."""
    options = options or ExecutionOptions()
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    batch_size = _batch_size(options, model, data)
    if forward_seconds is None:
        forward_seconds = measure_forward(model, data, batch_size)
    methods = [_with_seconds(_per_counterfactual(spec, estimate_method(m, model, data, batch_size, spec.metric,
                                                                       spec.options_of(m))), forward_seconds)
               for m in spec.methods]
    corrupted = data.corrupted is not None
    evaluation = (1.0 + corrupted) * (1 + len(spec.report_splits))
    candidates = sum(1 for m in spec.methods if METHODS.get(m).produces != "traces") if spec.circuit else 0
    plan = UnitPlan(model=model.name, task=spec.name, n_prompts=len(data), batch_size=batch_size,
                    forward_seconds=round(forward_seconds, 5), evaluation_forwards=evaluation,
                    circuit_forwards=CIRCUIT_FORWARDS_PER_CANDIDATE * candidates, methods=methods)
    if plan.seconds > long_seconds:
        cheaper = [_with_seconds(_per_counterfactual(spec, estimate_method(m, model, data, batch_size, spec.metric,
                                                                           spec.options_of(m))), forward_seconds)
                   for m in FIRST_ANSWER if _can_run(m, corrupted)]
        plan = plan.model_copy(update={"first_answer": [c for c in cheaper if c.forwards is not None]})
    return plan


def _can_run(method: str, corrupted: bool) -> bool:
    return corrupted or not METHODS.get(method).needs_corrupted


def plan_run(tasks: str | TaskSpec | list[str | TaskSpec], models: str | list[str], options: RunOptions | None = None,
             *, include_paths: tuple[str, ...] = ()) -> RunPlan:
    """The plan of `circuitbench.run` / `circuitbench run` with these arguments: each model loaded
    once and one forward timed per unit; nothing is written."""
    options = options or RunOptions()
    given = [tasks] if isinstance(tasks, (str, TaskSpec)) else list(tasks)
    specs = [effective_spec(spec, options.overrides()) for task in given
             for spec in ([task] if isinstance(task, TaskSpec) else
                          [load_task(name, include_paths) for name in expand_task_names([task], include_paths)])]
    execution = options.execution().model_copy(update={"cache_dir": None})
    units = []
    for name in [models] if isinstance(models, str) else list(models):
        model = load_model(name, init=options.init, dtype=options.dtype, device=options.device,
                           seed=options.seed or 0, device_map=options.device_map, kv_graph=options.kv_graph)
        with torch_threads(threads_for(model.n_params, options.threads)):
            units += [plan_unit(spec, model, execution) for spec in specs]
    return RunPlan(units=units)


def duration_text(seconds: float | None) -> str:
    """'≈ 40 s', '≈ 12 min', '≈ 2.5 h'."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"≈ {seconds:.0f} s" if seconds >= 1 else f"≈ {seconds:.1g} s"
    if seconds < 5400:
        return f"≈ {seconds / 60:.0f} min"
    return f"≈ {seconds / 3600:.1f} h"


def forwards_text(m: MethodEstimate) -> str:
    if m.forwards is None:
        return "unknown"
    return f"{'≤ ' if m.upper_bound else ''}{m.forwards:,.1f}"


def unit_line(plan: UnitPlan) -> str:
    """One line: the unit's total and its slowest method (and what is unknown)."""
    slowest = plan.slowest
    line = (f"estimate {plan.task} on {plan.model}: {duration_text(plan.seconds)} "
            f"({plan.known_forwards:,.0f} forwards × {plan.forward_seconds:.3g} s)")
    if slowest is not None:
        line += f"; slowest {slowest.method} {duration_text(slowest.seconds)}"
    if plan.unknown:
        line += f"; unknown: {', '.join(plan.unknown)}"
    return line


def advice_line(plan: UnitPlan) -> str | None:
    """The cheaper methods that give a first answer, when the unit's estimate is long."""
    if not plan.first_answer:
        return None
    named = ", ".join(f"{m.method} ({forwards_text(m)} forwards, {duration_text(m.seconds)})"
                      for m in plan.first_answer)
    return f"for a first answer in minutes run --methods {','.join(m.method for m in plan.first_answer)}: {named}"


def announce(spec: TaskSpec, model: LoadedModel, options: ExecutionOptions) -> UnitPlan | None:
    """Log the unit's estimate at its start (INFO, as progress messages are); never fails the unit."""
    if not log.isEnabledFor(logging.INFO):
        return None
    try:
        plan = plan_unit(spec, model, options.model_copy(update={"cache_dir": None}))
    except Exception as e:  # noqa: BLE001  (the unit reports its own errors when it runs)
        log.debug("no estimate for %s on %s: %s", spec.name, model.name, e)
        return None
    log.info(unit_line(plan))
    if (advice := advice_line(plan)) is not None:
        log.info(advice)
    for line in memory_lines(spec, model, options, plan.batch_size):
        log.info(line)
    return plan


def memory_lines(spec: TaskSpec, model: LoadedModel, options: ExecutionOptions, batch_size: int) -> list[str]:
    """One line per edge method of the unit: its memory plan under --max-memory (or the default from the
    free memory), as scores/memory_plan.py picks it; a method the budget cannot hold says so (it will refuse)."""
    from circuitbench.errors import CircuitbenchError
    from circuitbench.scores.chunking import plan_for
    from circuitbench.scores.memory_plan import PLANNED
    from circuitbench.scores.methods.context import MethodContext

    planned = [m for m in spec.methods if m in PLANNED]
    if not planned:
        return []
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)
    ctx = MethodContext(batch_size=batch_size, metric=spec.metric, memory_budget=options.max_memory)
    lines = []
    for method in planned:
        try:
            lines.append("memory " + plan_for(method, model, data, ctx).line(min(batch_size, len(data))))
        except CircuitbenchError as e:
            lines.append(f"memory {method}: {e}")
    return lines
