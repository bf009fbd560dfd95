"""One (model, task) unit: spec -> prompts -> encode -> metrics (clean, corrupted) -> head
scores -> circuit -> RunResult.

Under a launcher (`torchrun`, `accelerate launch`) every process runs this same code on its shard
of the unit's prompts (see parallel.py); evaluation and scoring return the full-set numbers on
every process, and only the main process writes files."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from circuitbench.circuits.circuit import Circuit, CircuitCandidate, Faithfulness, head_label
from circuitbench.circuits.edge_faithfulness import (
    EdgeBaseline,
    edge_circuit,
    edge_faithfulness,
    edge_order,
    most_faithful_edges,
)
from circuitbench.circuits.faithfulness import (
    Baseline,
    curves,
    faithfulness,
    input_scored,
    missing_from_ablations,
    most_faithful,
    ranked_names,
)
from circuitbench.circuits.graph_files import edge_scores_name
from circuitbench.circuits.overlap_metrics import rank_correlation
from circuitbench.circuits.panel import PanelBaselines, assess, choose_by_panel
from circuitbench.circuits.recovery import (
    Reference,
    check_reference,
    find_reference,
    node_recovery,
    ranked_recovery,
    recovery,
)
from circuitbench.circuits.recovery_intervals import recovery_intervals
from circuitbench.circuits.recovery_intervals import wanted as intervals_wanted
from circuitbench.circuits.span_circuits import per_span_circuit, span_scores_info
from circuitbench.circuits.stability import chosen_set_stability
from circuitbench.environment import current_threads, git_commit, peak_memory_mb, run_versions, torch_threads
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.memory import auto_batch_size
from circuitbench.parallel import ONE_PROCESS, Processes
from circuitbench.pipeline.counterfactuals import (
    CounterfactualScores,
    combined,
    combined_visibility,
    primary_scores,
    score_other_counterfactuals,
)
from circuitbench.pipeline.counterfactuals import agreement as counterfactual_agreement
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.prompts.encoding import EncodedPrompts, encode_task
from circuitbench.registry import exits_as_errors, loaded_plugins
from circuitbench.results.schema import (
    EdgeScoresInfo,
    ModelInfo,
    ReferenceInfo,
    RunInfo,
    RunResult,
    TaskInfo,
)
from circuitbench.scores.ablations import parse_ablation
from circuitbench.scores.activation_cache import metrics_through_cache, open_run_cache
from circuitbench.scores.combination import COMBINATION
from circuitbench.scores.edges import check_edges
from circuitbench.scores.evaluation import SplitMetrics, evaluate, evaluate_report_splits, summarise
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.methods.outputs import EdgeScores, MethodOutput, SpanEdgeScores
from circuitbench.scores.scoring import MethodRun, check_methods, run_methods
from circuitbench.scores.visibility import invisible_nodes, visibility
from circuitbench.specs.options import ExecutionOptions
from circuitbench.specs.registries import METHODS
from circuitbench.specs.task import CircuitRule, TaskSpec

log = logging.getLogger(__name__)

DEFAULT_RULE = CircuitRule(top_k=10)  # recovery's circuits when the task has no rule


def task_info(spec: TaskSpec, data: EncodedPrompts | None = None) -> TaskInfo:
    """The task part of a result; prompt figures only once the prompts are encoded."""
    info = TaskInfo(name=spec.name, version=spec.version, spec_hash=spec.spec_hash(), content_hash=spec.content_hash(),
                    spec=spec.model_dump(mode="json"), split=spec.split, main_metric=spec.metric)
    if data is not None:
        report = data.report
        info = info.model_copy(update=dict(
            prompt_hash=data.prompt_hash, n_prompts=len(data), n_dropped=report.n_dropped,
            dropped_reasons=dict(report.reasons), dropped_examples=report.examples))
    return info


def model_info(model: LoadedModel) -> ModelInfo:
    return ModelInfo(name=model.name, source=model.source, revision=model.revision, fingerprint=model.fingerprint,
                     init=model.init, init_seed=model.init_seed, dtype=model.dtype, n_layers=model.n_layers,
                     n_heads=model.n_heads, n_params=model.n_params, d_model=model.d_model, has_mlp=model.has_mlp,
                     parallel_attn_mlp=model.parallel_attn_mlp, tokenizer=model.tokenizer_source,
                     n_key_value_heads=model.component_graph().n_kv_heads, kv_graph=model.kv_graph)


def choose_batch_size(options: ExecutionOptions, model: LoadedModel, data: EncodedPrompts,
                      processes: Processes) -> int:
    if options.batch_size != "auto":
        return int(options.batch_size)
    # shards are cut in whole batches: all processes must agree on the size (free memory differs)
    return min(processes.gather(auto_batch_size(model, int(data.tokens.shape[1]), len(data))))


def run_unit(
    spec: TaskSpec, model: LoadedModel, options: ExecutionOptions | None = None, *,
    reference: Reference | None = None, progress: ProgressFn = no_progress, command: str | None = None,
    processes: Processes = ONE_PROCESS,
) -> RunResult:
    """Run one (model, task) unit in memory and return its RunResult (nothing written; the
    activation cache only when `options.cache_dir` names one).

    The spec is run as given: task overrides (n_prompts, seed, split, methods, circuit level) are
    applied to it before (`effective_spec`), so the result's spec is what ran; `options` holds all
    this honours and is recorded as `run.options`. `reference` is the known circuit to score
    recovery against (default: the task's reference_circuits for this model, else the model
    directory's circuit.json). Under a launcher every process calls this and gets the same
    RunResult (timings and memory are its own). Plugin code calling sys.exit in it raises
    PluginExit (the unit fails, a grid goes on)."""
    options = ExecutionOptions() if options is None else options
    if not isinstance(options, ExecutionOptions):
        raise TypeError(f"run_unit takes ExecutionOptions (batch_size, cache_dir, threads), not "
                        f"{type(options).__name__}: apply task overrides to the spec first (effective_spec), or call "
                        "circuitbench.run, which does both")
    threads = torch_threads(options.threads) if options.threads is not None else nullcontext()
    with exits_as_errors(f"code run by task '{spec.name}' on model '{model.name}'"), threads:
        return _run_unit(spec, model, options, reference, progress=progress, command=command, processes=processes)


def _run_unit(
    spec: TaskSpec, model: LoadedModel, options: ExecutionOptions, reference: Reference | None, *,
    progress: ProgressFn, command: str | None, processes: Processes,
) -> RunResult:
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    reference = model_reference(spec, model, reference)  # checked against the model before anything runs
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)  # every process: cheap, and the drops are global
    check_methods(spec, data)
    if spec.circuit is not None and spec.circuit.level == "edge":
        if not any(METHODS.get(m).produces == "edge_scores" for m in spec.methods):
            raise CircuitbenchError(f"Task '{spec.name}': circuit level edge needs an edge method among its methods "
                                    f"({', '.join(spec.methods) or 'none'}): add eap, eap_ig or edge_patching.")
        check_edges(model, "An edge circuit")
    batch_size = choose_batch_size(options, model, data, processes)

    # The cache holds whole prompt sets; data-parallel processes see shards, so they bypass it (as does --no-cache).
    cache_entry = open_run_cache(options.cache_dir, model, data, spec.name) if processes.world_size == 1 else None
    clean, corrupted = metrics_through_cache(cache_entry, spec.metrics, data.corrupted is not None,
                                             lambda: evaluate(model, data, spec.metrics, batch_size, progress,
                                                              processes))
    metrics, stderr = summarise(clean, model, data.tokens[:4], "clean")
    metrics_corrupted = summarise(corrupted, model, data.corrupted[:4], "corrupted")[0] if corrupted else {}
    by_split = evaluate_report_splits(spec, model, batch_size, progress, processes)
    if by_split:
        by_split[spec.split] = SplitMetrics(n_prompts=len(data), metrics=metrics, metrics_stderr=stderr)
    method_run = MethodRun(batch_size, metric=spec.metric, method_options=spec.method_options, processes=processes,
                           cache_entry=cache_entry, progress=progress, memory_budget=options.max_memory)
    outputs = run_methods(model, data, spec.methods, method_run)
    span_scores = {m: o.span_edges for m, o in outputs.items() if o.span_edges is not None}  # the primary's
    method_costs = {m: o.cost for m, o in outputs.items() if o.cost is not None}  # before any combination
    ctx = MethodContext(batch_size=batch_size, metric=spec.metric, sum_shards=processes.sum, cache_entry=cache_entry,
                        gather_shards=lambda values: np.concatenate(processes.gather(values)))
    shard_of = lambda prompts: prompts.subset(*processes.shard_bounds(len(prompts), batch_size))  # noqa: E731
    shard = shard_of(data)
    shares = visibility(model, shard, ctx)
    runs: list[CounterfactualScores] = []
    if len(spec.counterfactuals) > 1:  # score under each, build from the combination (pipeline/counterfactuals.py)
        others = score_other_counterfactuals(spec, model, method_run, ctx, shard_of)
        runs = [primary_scores(spec, data, shard, outputs, shares, metrics_corrupted), *others]
        outputs, shares = combined(outputs, others), combined_visibility(runs[0], others)
    head_scores = {m: o.heads for m, o in outputs.items() if o.heads is not None}
    node_scores = {m: o.node_scores() for m, o in outputs.items() if o.nodes}
    edge_scores = {m: o.edges for m, o in outputs.items() if o.edges is not None}
    traces = {f"{m}/{key}": trace.model_dump() for m, o in outputs.items() for key, trace in (o.traces or {}).items()}
    circuit = per_span_circuit(model, shard, span_scores, spec.circuit, ctx, shares, spec.seed) \
        if spec.circuit is not None and spec.circuit.positions == "per_span" else \
        _circuit(spec, model, shard, head_scores, node_scores, edge_scores, ctx, reference, shares, runs[1:])
    if circuit is not None and circuit.method is not None and spec.circuit is not None and \
            spec.circuit.positions == "all":  # per-span circuits: stability not measured yet
        circuit = with_stability(circuit, model, [data, *(run.data for run in runs[1:])], spec.circuit, method_run,
                                 spec.seed)
    agreement, warnings = method_agreement(spec, head_scores)
    cf_agreement, cf_warnings = counterfactual_agreement(runs, spec.circuit, (model.n_layers, model.n_heads)) \
        if runs else ({}, [])
    warnings += cf_warnings + visibility_warnings(data, shares, len(runs)) + competence_warnings(metrics)
    reference_info, recovered, recovered_nodes, recovered_edges = None, {}, {}, {}
    recovered_ci, recovered_nodes_ci = {}, {}
    if reference is not None:
        # identical clean and counterfactual outputs on every prompt (under every counterfactual)
        invisible = [(l, h) for l, h in reference.heads if shares and shares[f"a{l}.h{h}"] == 0.0]
        reference_info = ReferenceInfo(source=reference.source, heads=reference.heads, mlps=reference.mlps,
                                       edges=reference.edges, invisible=invisible)
        if invisible:
            warnings.append(f"reference heads {', '.join(head_label(l, h) for l, h in invisible)} have identical "
                            "clean and counterfactual outputs on every prompt: invisible to patching with this "
                            "counterfactual (use ablation, or a counterfactual that changes what they read)")
        head_rule = (spec.circuit or DEFAULT_RULE).model_copy(update={"level": "head"})
        recovered = {m: recovery(scores, Circuit.from_scores(scores, head_rule, m).heads, reference)
                     for m, scores in head_scores.items()}
        if model.has_mlp or reference.mlps:
            recovered_nodes = {m: node_recovery(scores, reference) for m, scores in node_scores.items()}
        if reference.edges:
            recovered_edges = {m: ranked_recovery(e.as_dict(), reference.edges, "edges", reference.source)
                               for m, e in edge_scores.items()}
        if not runs and intervals_wanted(model.n_params, len(data), processes.world_size):  # reruns per resample
            recovered_ci, recovered_nodes_ci = recovery_intervals(
                model, data, spec.methods, reference, head_rule, method_run, seed=spec.seed,
                nodes=bool(recovered_nodes))
    for warning in warnings:
        log.warning("%s on %s: %s", spec.name, model.name, warning)
    edge_infos = _edge_infos(spec, outputs, span_scores)

    result = RunResult(
        status="complete",
        task=task_info(spec, data),
        model=model_info(model),
        run=RunInfo(
            seed=spec.seed, batch_size=batch_size, device=str(model.device), started_at=started.isoformat(),
            duration_s=round(time.perf_counter() - t0, 3), model_load_s=model.load_seconds,
            peak_memory_mb=peak_memory_mb(model.device), versions=run_versions(), git=git_commit(), command=command,
            options=options.model_dump(mode="json"), plugins=loaded_plugins(), world_size=processes.world_size,
            device_map=model.device_map, cache=cache_entry.stats if cache_entry else {}, threads=current_threads(),
        ),
        metrics=metrics,
        metrics_stderr=stderr,
        metrics_corrupted=metrics_corrupted,
        metric_values={m: [float(x) for x in v] for m, v in clean.items()},
        metric_values_corrupted={m: [float(x) for x in v] for m, v in corrupted.items()},
        metrics_by_split=by_split,
        head_scores={k: v.tolist() for k, v in head_scores.items()},
        node_scores=node_scores,
        method_agreement=agreement,
        traces=traces,
        method_costs=method_costs,
        circuit=circuit,
        reference=reference_info,
        edge_scores=edge_infos,
        recovery=recovered,
        node_recovery=recovered_nodes,
        edge_recovery=recovered_edges,
        recovery_ci=recovered_ci,
        node_recovery_ci=recovered_nodes_ci,
        warnings=warnings,
        visibility=shares,
        unknown_scores=unknown_scores(spec, shares),
        counterfactuals=[run.record() for run in runs],
        score_combination=COMBINATION if runs else None,
        counterfactual_agreement=cf_agreement,
    )
    result.attach_edge_scores(edge_scores)  # written next to the result by the store (RunResult.edge_files)
    return result


CAPABLE = 0.5  # below this top-1 accuracy the model mostly fails the task: its circuit is mostly one of failures


def competence_warnings(metrics: dict[str, float]) -> list[str]:
    """A model that cannot do the task has a circuit of noise: say so when its accuracy is low."""
    accuracy = metrics.get("accuracy")
    if accuracy is None or accuracy >= CAPABLE:
        return []
    return [f"the model answers {accuracy:.0%} of these prompts right (accuracy below {CAPABLE:.0%}): it mostly "
            "cannot do this task, so its circuit is mostly a circuit of failures; check the task on a model that does "
            "it"]


def visibility_warnings(data: EncodedPrompts, shares: dict[str, float], n_counterfactuals: int = 1) -> list[str]:
    """What patching cannot see on these prompts: components whose output never changes under the
    counterfactual (under any of several), and a prompt set of one token length (length and position
    readers are constant)."""
    out = []
    if len(data) > 1 and int(data.lengths.min()) == int(data.lengths.max()):
        out.append(f"every prompt has {int(data.lengths[0])} tokens: a component that reads the sequence length or "
                   "an absolute position sees the same input on every prompt, and patching cannot tell its role (mix "
                   "prompt lengths where the task allows)")
    invisible = invisible_nodes(shares)
    if invisible:
        heads, mlps = sum(not n.startswith("m") for n in invisible), sum(n.startswith("m") for n in invisible)
        what = " and ".join(f"{k} {word}{'s' if k != 1 else ''}" for k, word in ((heads, "head"), (mlps, "MLP")) if k)
        shown = ", ".join(invisible[:8]) + (" …" if len(invisible) > 8 else "")
        verb = "changes" if len(invisible) == 1 else "change"
        under = f"any of the {n_counterfactuals} counterfactuals" if n_counterfactuals > 1 else "this counterfactual"
        out.append(f"{what} never {verb} under {under} ({shown}): their importance is unknown to "
                   "patching; see the ablation panel and circuit.outside_necessary")
    return out


def unknown_scores(spec: TaskSpec, shares: dict[str, float]) -> dict[str, list[str]]:
    """Patching-style methods (they score the clean − counterfactual difference) -> the components
    their scores cannot see: an exact 0 there means unknown, not unimportant."""
    invisible = invisible_nodes(shares)
    return {m: invisible for m in spec.methods if METHODS.get(m).aligns_positions and invisible}


def _edge_infos(spec: TaskSpec, outputs: dict[str, MethodOutput],
                span_scores: dict[str, SpanEdgeScores]) -> dict[str, EdgeScoresInfo]:
    """Each edge method's entry in the result: its sidecar file's name (the store writes the file,
    RunResult.edge_files), what ran and its top edges."""
    infos = {}
    for method, output in outputs.items():
        if output.edges is None:
            continue
        values = output.edges.as_dict()
        top = sorted(values, key=lambda e: -abs(values[e]))[:20]
        infos[method] = EdgeScoresInfo(file=edge_scores_name(spec.name, method), n_edges=len(values),
                                       settings=dict(output.settings), top=[(e, values[e]) for e in top],
                                       **span_scores_info(span_scores.get(method)))
    return infos


def _circuit(spec: TaskSpec, model: LoadedModel, data: EncodedPrompts, head_scores: dict[str, np.ndarray],
             node_scores: dict[str, dict[str, float]], edge_scores: dict[str, EdgeScores], ctx: MethodContext,
             reference: Reference | None, shares: dict[str, float],
             others: list[CounterfactualScores]) -> Circuit | None:
    """The circuit the task's rule picks (method auto: every method's; the one with the smallest worst
    case over the ablation panel kept, or without the panel the one closest to f = 1 under the rule's
    ablation), with its faithfulness, its panel and verdict, and what is surprising about it."""
    rule = spec.circuit
    if rule is None:
        return None
    if rule.level == "edge":
        return _edge_circuit(spec, model, data, edge_scores, ctx, reference, shares, others)
    if rule.level == "node":
        pool: dict = node_scores
        if rule.method not in (None, "auto") and rule.method not in node_scores:
            raise CircuitbenchError(f"circuit: {{level: node, method: {rule.method}}}: '{rule.method}' gave no node "
                                    f"scores (methods that score MLPs too: {', '.join(node_scores) or 'none ran'}).")
    else:
        pool = head_scores
    if not pool:
        return None
    chosen, candidates, baseline = most_faithful(model, data, pool, rule, ctx)
    baselines = panel_baselines(model, data, ctx, baseline, others)
    shape = (model.n_layers, model.n_heads)
    chosen, candidates, choice = _by_panel(spec, chosen, candidates, baselines, lambda m: Circuit.from_scores(
        pool[m], rule, m) if isinstance(pool[m], np.ndarray) else Circuit.from_node_scores(pool[m], rule, m, shape))
    assert chosen.method is not None
    scores = pool[chosen.method]
    faith = faithfulness(model, data, chosen, scores, rule, ctx, baseline)
    values = np.array(list(scores.values())) if isinstance(scores, dict) else scores
    warnings = rule_warnings(rule, len(chosen.heads) + len(chosen.mlps), values.size, int(np.count_nonzero(values)),
                             "nodes" if rule.level == "node" else "heads")
    notes = []
    if values.size == 1:  # not a warning: no rule can do better on a one-head model
        notes.append("the model has a single attention head: any non-empty circuit is the whole model, so its "
                     "faithfulness is 1 by construction")
    if reference is not None:
        missing = sorted(set(reference.heads) - set(map(tuple, chosen.heads)))
        missing_mlps = sorted(set(reference.mlps) - set(chosen.mlps)) if rule.level == "node" else []
        warnings += missing_from_ablations(faith, missing, missing_mlps)
    for warning in warnings:
        log.warning("%s on %s: %s", spec.name, model.name, warning)
    by_method = _by_method(rule, chosen.method, candidates, faith, lambda s: curves(
        ranked_names(s, "abs"), ranked_names(s, "signed"), "mib", baseline.curve_values(input_scored(s)), rule.by),
        pool)
    chosen = chosen.model_copy(update={"faithfulness": faith.model_copy(update={"by_method": by_method}),
                                       "candidates": candidates, "warnings": warnings, "notes": notes})
    if reference is not None:
        chosen.warnings += unseen_reference(candidates, pool, reference, rule.level)
    return chosen.model_copy(update={"choice": choice,
                                     **assess(model, data, ctx, chosen, rule, baselines, shares, spec.seed)})


def _edge_circuit(spec: TaskSpec, model: LoadedModel, data: EncodedPrompts, edge_scores: dict[str, EdgeScores],
                  ctx: MethodContext, reference: Reference | None, shares: dict[str, float],
                  others: list[CounterfactualScores]) -> Circuit:
    rule = spec.circuit
    assert rule is not None
    chosen, candidates, baseline = most_faithful_edges(model, data, edge_scores, rule, ctx)
    baselines = panel_baselines(model, data, ctx, baseline, others)
    chosen, candidates, choice = _by_panel(spec, chosen, candidates, baselines,
                                           lambda m: edge_circuit(edge_scores[m], rule, m))
    assert chosen.method is not None
    scores = edge_scores[chosen.method]
    faith = edge_faithfulness(model, data, chosen, scores, rule, ctx, baseline)
    values = scores.scores[scores.graph.real_edges]
    warnings = rule_warnings(rule, len(chosen.edges), values.size, int(np.count_nonzero(values)), "edges")
    if reference is not None and reference.edges:
        missing = sorted(set(reference.edges) - set(chosen.edges))
        if missing:
            warnings.append(f"the circuit misses {len(missing)} of the reference's {len(reference.edges)} edges "
                            f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})")
    for warning in warnings:
        log.warning("%s on %s: %s", spec.name, model.name, warning)
    by_method = _by_method(rule, chosen.method, candidates, faith, lambda s: curves(
        edge_order(s, "abs", rule.selection), edge_order(s, "signed", rule.selection), "mib", baseline.curve_values(),
        rule.by), edge_scores)
    chosen = chosen.model_copy(update={"faithfulness": faith.model_copy(update={"by_method": by_method}),
                                       "candidates": candidates, "warnings": warnings})
    return chosen.model_copy(update={"choice": choice,
                                     **assess(model, data, ctx, chosen, rule, baselines, shares, spec.seed)})


UNSTABLE = 0.5  # a chosen set whose half-sample circuits share less than this (mean Jaccard) is flagged


def with_stability(circuit: Circuit, model: LoadedModel, datasets: list[EncodedPrompts], rule: CircuitRule,
                   run: MethodRun, seed: int) -> Circuit:
    """`circuit` with its stability over half-samples of the prompts (circuits/stability.py), and a
    warning when it is low."""
    assert circuit.method is not None
    members = set(circuit.edges) if circuit.level == "edge" else set(circuit.nodes)
    stability = chosen_set_stability(model, datasets, circuit.method, rule, members, run, seed)
    warnings = list(circuit.warnings)
    if stability is not None and stability.jaccard < UNSTABLE:
        warnings.append(f"the chosen set depends on the prompts: circuits of {circuit.method} on half the prompts "
                        f"share {stability.jaccard:.2f} of their components on average (Jaccard over "
                        f"{stability.resamples} half-samples); use more prompts before reading single components")
    return circuit.model_copy(update={"stability": stability, "warnings": warnings})


def panel_baselines(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, baseline: Baseline | EdgeBaseline,
                    others: list[CounterfactualScores]) -> PanelBaselines:
    """The panel's baselines on the task's prompts, with patching under every other counterfactual."""
    baselines = PanelBaselines(model, data, ctx, baseline)
    for other in others:
        baselines.add_counterfactual(other.name, other.shard, replace(ctx, cache_entry=None))
    return baselines


def _by_panel(spec: TaskSpec, chosen: Circuit, candidates: list[CircuitCandidate], baselines: PanelBaselines,
              circuit_of: Callable[[str], Circuit]) -> tuple[Circuit, list[CircuitCandidate], str | None]:
    """method: auto with the panel on and several candidates: keep the one whose worst case over the
    panel is smallest (circuits/panel.py choose_by_panel), and say why; otherwise what the rule's
    ablation chose."""
    rule = spec.circuit
    assert rule is not None
    if not rule.panel or rule.method not in (None, "auto") or len(candidates) < 2 \
            or all(c.faithfulness is None for c in candidates):
        return chosen, candidates, None
    circuits = {c.method: circuit_of(c.method) for c in candidates}
    method, candidates, why = choose_by_panel(circuits, candidates, baselines, parse_ablation(rule.ablation),
                                              spec.seed, rule.require_zero)
    return circuits[method], candidates, why


def unseen_reference(candidates: list[CircuitCandidate], pool: dict, reference: Reference, level: str) -> list[str]:
    """A warning per candidate method that scored reference components exactly 0 (unknown to it, not
    unimportant), or all of them."""
    wanted = [f"a{l}.h{h}" for l, h in reference.heads] + ([f"m{l}" for l in reference.mlps] if level == "node"
                                                           else [])
    out = []
    for c in candidates:
        scores = pool[c.method]
        values = ({f"a{l}.h{h}": float(scores[l, h]) for l in range(scores.shape[0]) for h in range(scores.shape[1])}
                  if isinstance(scores, np.ndarray) else scores)
        zero = [n for n in wanted if values.get(n, 0.0) == 0.0]
        if zero and len(zero) == len(wanted):
            out.append(f"candidate {c.method} scored every reference component exactly 0: it saw none of them")
        elif zero:
            out.append(f"candidate {c.method} scored reference {', '.join(zero)} exactly 0: unknown to it, not "
                       "unimportant")
    return out


def _by_method(rule: CircuitRule, chosen: str, candidates: list[CircuitCandidate], faith: Faithfulness,
               mib_curve: Callable[[Any], dict], pool: dict) -> dict[str, dict[str, float | None]]:
    """Every candidate method's faithfulness with MIB's CPR and CMD of its own ranking (leaderboards
    compare methods at one level); empty unless the rule draws MIB's curve and f is defined."""
    if not (rule.curve and rule.effective_integration == "mib" and faith.value is not None):
        return {}
    by_method: dict[str, dict[str, float | None]] = {}
    for c in candidates:
        own = c.method == chosen
        fields = {**faith.model_dump(), "faithfulness": faith.value} if own else \
            {**mib_curve(pool[c.method]), "faithfulness": c.faithfulness}
        by_method[c.method] = {k: fields[k] for k in ("faithfulness", "cpr", "cmd")}
    return by_method


# Methods that measure a head's effect on the metric (detectors measure attention, not effect).
EFFECT_METHODS = ("activation_patching", "attribution_patching", "ablation")
DISAGREEMENT = 0.5  # Spearman below this between two effect methods is flagged


def _effect_label(spec: TaskSpec, method: str) -> str:
    """The method with what it measured: patching direction, ablation kind."""
    options = spec.options_of(method)
    if method == "activation_patching":
        return f"activation_patching[{options.get('direction', 'noising')}]"
    if method == "attribution_patching":
        return "attribution_patching[noising]"  # a gradient approximation of noising patching
    return f"ablation[{options.get('kind', 'mean')}]"


def method_agreement(spec: TaskSpec, head_scores: dict[str, np.ndarray]) -> tuple[dict[str, float], list[str]]:
    """Spearman correlation of every pair of effect methods that ran, labelled with what each
    measured, and a warning for each pair that disagrees strongly."""
    ran = [m for m in EFFECT_METHODS if m in head_scores]
    agreement, warnings = {}, []
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            pair = f"spearman({_effect_label(spec, a)}, {_effect_label(spec, b)})"
            rho = rank_correlation(head_scores[a], head_scores[b])
            if not np.isfinite(rho):  # a constant score map (e.g. one head) has no ranking to compare
                continue
            agreement[pair] = rho
            if rho < DISAGREEMENT:
                warnings.append(f"methods disagree: {pair} = {rho:.2f} < {DISAGREEMENT}; their circuits may differ "
                                "(see circuit.candidates)")
    return agreement, warnings


def model_reference(spec: TaskSpec, model: LoadedModel, given: Reference | None) -> Reference | None:
    """The known circuit of this model: `given`, else circuits.recovery.find_reference's; checked
    against the model's components (a head outside it fails here, before any compute)."""
    reference = given or find_reference(None, spec.reference_circuits, spec.name, (model.name, model.source),
                                        model.source)
    if reference is not None:
        check_reference(reference, model.name, model.n_layers, model.n_heads, model.has_mlp, model.parallel_attn_mlp)
    return reference


def rule_warnings(rule: CircuitRule, chosen: int, total: int, nonzero: int, what: str = "heads") -> list[str]:
    """What a circuit rule became when it is not what it says: more components asked than the
    model has (or than have any measured effect), every one, or none."""
    out: list[str] = []
    if total == 1:  # a one-head model: said once as a note, see _circuit
        return out
    one = what[:-1]
    if rule.top_k is not None and rule.top_k > total:
        out.append(f"top_k {rule.top_k} exceeds the model's {total} {what}: the circuit is all {total} {what}")
    elif rule.top_k is not None and rule.top_k > nonzero:
        out.append(f"top_k {rule.top_k}: only {nonzero} {what} score other than exactly 0, the circuit is those "
                   f"{chosen}")
    elif chosen == total:
        out.append(f"the circuit rule selects every one of the {total} {what}: faithfulness is 1 by construction")
    if chosen == 0 and rule.threshold is not None:
        out.append(f"the circuit rule selects no {one} (threshold {rule.threshold} is above every score): "
                   "faithfulness is 0 by construction")
    elif chosen == 0 and what == "edges":
        out.append("the edges the rule picks form no path from the input to the logits, so pruning dangling nodes "
                   "leaves an empty circuit: faithfulness is 0 by construction (pick more edges, or circuit.selection: "
                   "greedy, which grows a circuit from the logits)")
    elif chosen == 0 and not out:
        out.append(f"the circuit rule selects no {one} (every score is exactly 0): faithfulness is 0 by construction")
    return out
