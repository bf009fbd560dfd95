"""A task with several counterfactuals (TaskSpec.counterfactuals): the methods that use the
counterfactual run under each, their scores are combined (scores/combination.py) and the
circuits each counterfactual alone would give are compared.

The primary counterfactual (the first) is the task's own: metrics_corrupted, mean-counterfactual
ablation and the MIB curve use it. Every other is encoded as a prompt set of its own (same clean
prompts, its own drops counted), scored, measured for visibility, and joins the ablation panel as
`counterfactual:<name>`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from circuitbench.circuits.stability import circuit_members
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts, encode_task
from circuitbench.results.schema import CounterfactualRun
from circuitbench.scores.combination import combine_outputs, combine_visibility, jaccard
from circuitbench.scores.evaluation import evaluate, summarise
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import MethodOutput
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.scores.visibility import invisible_nodes, visibility
from circuitbench.specs.registries import METHODS
from circuitbench.specs.task import CircuitRule, TaskSpec

DISAGREE_JACCARD = 0.5  # circuits of two counterfactuals sharing less than this are flagged


@dataclass(frozen=True, eq=False)
class CounterfactualScores:
    """One counterfactual's prompt set (the whole set and this process's shard), the outputs of the
    methods that use it, its visibility and mean corrupted metrics."""

    name: str
    data: EncodedPrompts
    shard: EncodedPrompts
    outputs: dict[str, MethodOutput]
    shares: dict[str, float]
    metrics_corrupted: dict[str, float]

    def record(self) -> CounterfactualRun:
        heads = {m: o.heads.tolist() for m, o in self.outputs.items() if o.heads is not None}
        nodes = {m: o.node_scores() for m, o in self.outputs.items() if o.nodes}
        return CounterfactualRun(name=self.name, n_prompts=len(self.data), n_dropped=self.data.report.n_dropped,
                                 metrics_corrupted=self.metrics_corrupted, head_scores=heads, node_scores=nodes,
                                 visibility=self.shares, invisible=invisible_nodes(self.shares))


def counterfactual_methods(spec: TaskSpec) -> list[str]:
    """The task's methods whose scores depend on the counterfactual (the rest score the same under any)."""
    return [m for m in spec.methods if METHODS.get(m).needs_corrupted]


def score_other_counterfactuals(spec: TaskSpec, model: LoadedModel, run: MethodRun, ctx: MethodContext,
                                shard_of: Callable[[EncodedPrompts], EncodedPrompts]) -> list[CounterfactualScores]:
    """Every counterfactual after the primary: encoded, its corrupted metrics, the methods that use it
    and its visibility (nothing cached: the activation cache holds the primary prompt set)."""
    out = []
    methods = counterfactual_methods(spec)
    other_run = replace(run, cache_entry=None)
    other_ctx = replace(ctx, cache_entry=None)
    for name in spec.counterfactuals[1:]:
        data = encode_task(spec.with_counterfactual(name), model.vocab, model.unk_id, model.n_ctx)
        _, corrupted = evaluate(model, data, [spec.metric], run.batch_size, run.progress, run.processes,
                                clean=False)  # the clean prompts are the primary's
        means = summarise(corrupted, model, data.corrupted[:4], f"'{name}' counterfactual")[0] if corrupted else {}
        shard = shard_of(data)
        outputs = run_methods(model, data, methods, other_run)
        out.append(CounterfactualScores(name, data, shard, outputs, visibility(model, shard, other_ctx), means))
    return out


def combined(outputs: dict[str, MethodOutput], others: list[CounterfactualScores]) -> dict[str, MethodOutput]:
    """Every method's output (`outputs`: under the primary counterfactual): combined over the
    counterfactuals for those that use one, as they are for the rest."""
    return {m: combine_outputs([o, *(other.outputs[m] for other in others if m in other.outputs)])
            for m, o in outputs.items()}


def combined_visibility(primary: CounterfactualScores, others: list[CounterfactualScores]) -> dict[str, float]:
    return combine_visibility([primary.shares, *(o.shares for o in others)])


def agreement(runs: list[CounterfactualScores], rule: CircuitRule | None,
              shape: tuple[int, int]) -> tuple[dict[str, float | None], list[str]]:
    """For every method that uses the counterfactual, the Jaccard of the circuits the rule picks
    under the primary and under each other counterfactual alone, and a warning where they share
    less than DISAGREE_JACCARD."""
    rule = rule or CircuitRule(fraction=0.25)
    primary, values, warnings = runs[0], {}, []
    for other in runs[1:]:
        for method, output in other.outputs.items():
            a, b = circuit_members(primary.outputs[method], rule, method, shape), circuit_members(output, rule, method,
                                                                                                 shape)
            if a is None or b is None:
                continue
            key = f"{method}: jaccard({primary.name}, {other.name})"
            values[key] = score = jaccard(a, b)
            if score is not None and score < DISAGREE_JACCARD:
                only = sorted(b - a)
                more = " …" if len(only) > 6 else ""
                shown = f" only {other.name} shows {', '.join(only[:6])}{more};" if only else ""
                warnings.append(
                    f"counterfactuals disagree: {method}'s circuit under {primary.name} and under {other.name} share "
                    f"{len(a & b)} of {len(a | b)} components (Jaccard {score:.2f});{shown} the circuit is built from "
                    "both")
    return values, warnings


def primary_scores(spec: TaskSpec, data: EncodedPrompts, shard: EncodedPrompts, outputs: dict[str, MethodOutput],
                   shares: dict[str, float], metrics_corrupted: dict[str, float]) -> CounterfactualScores:
    """The primary counterfactual's entry: the task's own prompts and the outputs of the methods that use it."""
    name = spec.counterfactuals[0] if spec.counterfactuals else "primary"
    used = {m: outputs[m] for m in counterfactual_methods(spec) if m in outputs}
    return CounterfactualScores(name, data, shard, used, shares, {spec.metric: metrics_corrupted[spec.metric]}
                                if spec.metric in metrics_corrupted else {})

