"""One (model, task) unit: spec -> prompts -> encode -> metrics (clean, corrupted) -> head
scores -> circuit -> RunResult.

Under a launcher (`torchrun`, `accelerate launch`) every process runs this same code on its shard
of the unit's prompts (see parallel.py); evaluation and scoring return the full-set numbers on
every process, and only the main process writes files."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.faithfulness import faithfulness
from circuitbench.circuits.overlap import rank_correlation
from circuitbench.environment import git_commit, peak_memory_mb, run_versions
from circuitbench.models.loaded import LoadedModel
from circuitbench.models.memory import auto_batch_size
from circuitbench.parallel import ONE_PROCESS, Processes
from circuitbench.progress import ProgressFn, no_progress
from circuitbench.prompts.encoding import EncodedPrompts, encode_task
from circuitbench.registry import loaded_plugins
from circuitbench.results.schema import CircuitInfo, ModelInfo, RunInfo, RunResult, TaskInfo
from circuitbench.scores.activation_cache import CacheEntry, metrics_through_cache, open_run_cache
from circuitbench.scores.evaluation import SplitMetrics, evaluate, evaluate_report_splits, summarise
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.scoring import check_methods, score_heads
from circuitbench.specs.options import RunOptions
from circuitbench.specs.task import CircuitRule, TaskSpec

log = logging.getLogger(__name__)

AGREEMENT_PAIR = ("activation_patching", "attribution_patching")


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
                     n_heads=model.n_heads, n_params=model.n_params,
                     tokenizer=model.tokenizer_source)


def choose_batch_size(options: RunOptions, model: LoadedModel, data: EncodedPrompts, processes: Processes) -> int:
    if options.batch_size != "auto":
        return int(options.batch_size)
    # shards are cut in whole batches: all processes must agree on the size (free memory differs)
    return min(processes.gather(auto_batch_size(model, int(data.tokens.shape[1]), len(data))))


def run_unit(
    spec: TaskSpec, model: LoadedModel, options: RunOptions, *, progress: ProgressFn = no_progress,
    command: str | None = None, processes: Processes = ONE_PROCESS,
) -> RunResult:
    """Run one (model, task) unit and return its RunResult (not written). Under a launcher every
    process calls this and gets the same RunResult (timings and memory are its own)."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)  # every process: cheap, and the drops are global
    check_methods(spec, data)
    batch_size = choose_batch_size(options, model, data, processes)

    # The cache holds whole prompt sets; data-parallel processes see shards, so they bypass it (as does --no-cache).
    cache_entry = open_run_cache(options, model, data, spec.name) if processes.world_size == 1 else None
    clean, corrupted = metrics_through_cache(cache_entry, spec.metrics, data.corrupted is not None,
                                             lambda: evaluate(model, data, spec.metrics, batch_size, progress,
                                                              processes))
    metrics, stderr = summarise(clean, model, data.tokens[:4], "clean")
    metrics_corrupted = summarise(corrupted, model, data.corrupted[:4], "corrupted")[0] if corrupted else {}
    by_split = evaluate_report_splits(spec, model, batch_size, progress, processes)
    if by_split:
        by_split[spec.split] = SplitMetrics(n_prompts=len(data), metrics=metrics, metrics_stderr=stderr)
    traces: dict[str, dict] = {}
    head_scores = score_heads(model, data, spec.methods, batch_size, progress, spec.metric, spec.method_options,
                              traces, processes, cache_entry)
    circuit = _circuit(spec, model, data, head_scores, batch_size, processes, cache_entry)
    agreement = {}
    if all(m in head_scores for m in AGREEMENT_PAIR):
        exact, attribution = (head_scores[m] for m in AGREEMENT_PAIR)
        agreement[f"spearman({', '.join(AGREEMENT_PAIR)})"] = rank_correlation(exact, attribution)

    return RunResult(
        status="complete",
        task=task_info(spec, data),
        model=model_info(model),
        run=RunInfo(
            seed=spec.seed, batch_size=batch_size, device=str(model.device), started_at=started.isoformat(),
            duration_s=round(time.perf_counter() - t0, 3), model_load_s=model.load_seconds,
            peak_memory_mb=peak_memory_mb(model.device), versions=run_versions(), git=git_commit(), command=command,
            options=options.model_dump(mode="json"), plugins=loaded_plugins(), world_size=processes.world_size,
            device_map=model.device_map, cache=cache_entry.stats if cache_entry else {},
        ),
        metrics=metrics,
        metrics_stderr=stderr,
        metrics_corrupted=metrics_corrupted,
        metrics_by_split=by_split,
        head_scores={k: v.tolist() for k, v in head_scores.items()},
        method_agreement=agreement,
        traces=traces,
        circuit=circuit,
    )


def _circuit(spec: TaskSpec, model: LoadedModel, data: EncodedPrompts, head_scores: dict, batch_size: int,
             processes: Processes, cache_entry: CacheEntry | None) -> CircuitInfo | None:
    """The circuit the task's rule picks from its method's head scores, with its faithfulness."""
    if not (spec.circuit and head_scores):
        return None
    method = spec.circuit.method or next(iter(head_scores))
    chosen = Circuit.from_scores(head_scores[method], spec.circuit, method)
    warnings = rule_warnings(spec.circuit, len(chosen.heads), head_scores[method].size)
    for warning in warnings:
        log.warning("%s on %s: %s", spec.name, model.name, warning)
    ctx = MethodContext(batch_size=batch_size, metric=spec.metric, sum_shards=processes.sum, cache_entry=cache_entry)
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    faith = faithfulness(model, shard, chosen, head_scores[method], spec.circuit, ctx)
    return CircuitInfo(method=method, rule=chosen.rule, heads=chosen.heads, warnings=warnings, **faith.model_dump())


def rule_warnings(rule: CircuitRule, chosen: int, total: int) -> list[str]:
    """What a circuit rule became when it is not what it says: more heads asked than the model
    has, every head, or none."""
    out = []
    if rule.top_k is not None and rule.top_k > total:
        out.append(f"top_k {rule.top_k} exceeds the model's {total} heads: the circuit is all {total} heads")
    elif chosen == total:
        out.append(f"the circuit rule selects every one of the {total} heads: faithfulness is 1 by construction")
    if chosen == 0:
        out.append(f"the circuit rule selects no head (threshold {rule.threshold} is above every score): "
                   "faithfulness is 0 by construction")
    return out
