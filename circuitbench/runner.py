"""Orchestration of one (model, task) unit and of the task × model grid:
spec -> prompts -> encode -> metrics (clean, corrupted) -> head scores -> circuit -> RunResult.

Under a launcher (`torchrun`, `accelerate launch`) every process runs this same code on its shard
of each unit's prompts (see data_parallel.py); `evaluate` and `score_heads` return the full-set
numbers on every process, and only the main process prints and writes files."""
from __future__ import annotations

import importlib.metadata
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pydantic import ValidationError

from circuitbench.activation_cache import CacheEntry, check_cache_dir, metrics_through_cache, open_run_cache
from circuitbench.catalog import PACKAGE_DIR, expand_task_names, format_validation_error, load_task
from circuitbench.circuits import Circuit, faithfulness, spearman
from circuitbench.data_parallel import ONE_PROCESS, Processes, current_processes, launched_world_size
from circuitbench.encoding import EncodedPrompts, Vocabulary, encode_prompts
from circuitbench.errors import CircuitbenchError
from circuitbench.methods import METHODS, MethodContext
from circuitbench.metrics import METRICS
from circuitbench.models import LoadedModel, load_model, resolve_model
from circuitbench.models.loading import available_memory_bytes
from circuitbench.prompts import GENERATORS, PromptSet
from circuitbench.results import (
    CircuitInfo,
    ModelInfo,
    RunInfo,
    RunResult,
    SplitMetrics,
    TaskInfo,
    is_finished,
    load_result,
    result_path,
    save_result,
)
from circuitbench.spec import RunOptions, TaskSpec

STDERR = Console(stderr=True)


def effective_spec(spec: TaskSpec, options: RunOptions) -> TaskSpec:
    """The task spec with run-time overrides applied (and re-validated); its hash names the unit."""
    update: dict[str, object] = {}
    if options.n is not None:
        # --n is a count for sampled tasks and a limit for tasks that take all of a small split
        update["limit" if spec.n_prompts == "all" else "n_prompts"] = options.n
    if options.seed is not None:
        update["seed"] = options.seed
    if options.split is not None:
        update["split"] = options.split
        if spec.report_splits:  # still side by side: the task's own split joins the reported ones
            update["report_splits"] = [s for s in ("train", "val", "test")
                                       if s != options.split and (s in spec.report_splits or s == spec.split)]
    if options.methods is not None:
        update["methods"] = options.methods
        if spec.circuit and spec.circuit.method and spec.circuit.method not in options.methods:
            update["circuit"] = spec.circuit.model_copy(update={"method": None})
    if not update:
        return spec
    try:
        return TaskSpec.model_validate({**spec.model_dump(), **update})
    except ValidationError as e:
        raise CircuitbenchError(format_validation_error(e, f"task '{spec.name}' with run options")) from None


def generate_prompts(spec: TaskSpec) -> PromptSet:
    gen = GENERATORS.get(spec.generator.name)
    try:
        n = None if spec.n_prompts == "all" else spec.n_prompts
        prompts = gen.generate(spec.generator, n, spec.seed, spec.split)[: spec.limit]
    except CircuitbenchError as e:
        raise CircuitbenchError(f"Task '{spec.name}': {e}") from None
    return PromptSet(task=spec.name, split=spec.split, seed=spec.seed, prompts=prompts)


def encode_task(spec: TaskSpec, vocab: Vocabulary, unk_id: int | None, n_ctx: int) -> EncodedPrompts:
    """Generate the task's prompts and encode them for one tokenizer (drops counted)."""
    return encode_prompts(
        generate_prompts(spec),
        vocab,
        has_answer=GENERATORS.get(spec.generator.name).has_answer,
        n_ctx=n_ctx,
        max_drop_fraction=spec.max_drop_fraction,
        unk_id=unk_id,
    )


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
        if method.options is None:
            continue
        opts = method.options.model_validate(spec.method_options.get(name, {}))
        for field in POSITION_OPTIONS:
            value = getattr(opts, field, None)
            named = [value] if isinstance(value, str) and value != "all" else value if isinstance(value, list) else []
            missing = [p for p in named if p not in data.positions]
            if missing:
                raise CircuitbenchError(
                    f"Method '{name}' option {field}={value!r} names positions {missing} that task '{spec.name}' "
                    f"does not define (it has {sorted(data.positions)}). Fix method_options.{name}.{field}."
                )


def auto_batch_size(model: LoadedModel, data: EncodedPrompts, cap: int = 256) -> int:
    """Largest batch whose estimated activations (logits, attention patterns of every layer as
    cached by the detectors, residual streams) fit in a quarter of the free memory."""
    cfg = model.bridge.cfg
    pos = int(data.lengths.max())
    floats = pos * cfg.d_vocab + cfg.n_layers * (cfg.n_heads * pos * pos + 8 * pos * cfg.d_model)
    per_prompt = 4 * floats * 2  # fp32, with head-room for temporaries
    budget = available_memory_bytes(model.device) // 4
    return int(max(1, min(cap, len(data), budget // max(per_prompt, 1))))


def _forward(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.bridge(tokens.to(model.device))


def evaluate(
    model: LoadedModel, data: EncodedPrompts, metric_names: list[str], batch_size: int, progress: Progress | None = None,
    processes: Processes = ONE_PROCESS,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-prompt metric values [n] on clean and (if defined) corrupted prompts. With several
    processes each evaluates its shard and every process gets all n values, in prompt order."""
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    clean: dict[str, list[torch.Tensor]] = {m: [] for m in metric_names}
    corrupt: dict[str, list[torch.Tensor]] = {m: [] for m in metric_names}
    task_id = progress.add_task("metrics", total=len(shard)) if progress else None
    for batch in shard.batches(batch_size):
        logits = _forward(model, batch.tokens)
        for m in metric_names:
            clean[m].append(METRICS.get(m).fn(logits, batch).cpu())
        if batch.corrupted is not None:
            cb = batch.as_corrupted()
            logits_c = _forward(model, cb.tokens)
            for m in metric_names:
                corrupt[m].append(METRICS.get(m).fn(logits_c, cb).cpu())
        if progress and task_id is not None:
            progress.advance(task_id, len(batch))
    joined = lambda parts: torch.cat(parts) if parts else torch.zeros(0)  # noqa: E731  (a shard may be empty)
    clean_values = processes.concat({m: joined(v) for m, v in clean.items()})
    if data.corrupted is None:
        return clean_values, {}
    return clean_values, processes.concat({m: joined(v) for m, v in corrupt.items()})


def evaluate_report_splits(
    spec: TaskSpec, model: LoadedModel, batch_size: int, progress: Progress | None = None,
    processes: Processes = ONE_PROCESS,
) -> dict[str, SplitMetrics]:
    """The task's metrics on each of its `report_splits` (same prompt count and seed): a model
    that memorised its training progressions scores high on train and low on test."""
    out: dict[str, SplitMetrics] = {}
    for split in spec.report_splits:
        data = encode_task(spec.model_copy(update={"split": split}), model.vocab, model.unk_id, model.n_ctx)
        clean, _ = evaluate(model, data.without_corrupted(), spec.metrics, batch_size, progress, processes)
        stats = {name: _mean_stderr(values) for name, values in clean.items()}
        out[split] = SplitMetrics(n_prompts=len(data), metrics={k: v[0] for k, v in stats.items()},
                                  metrics_stderr={k: v[1] for k, v in stats.items()})
    return out


def score_heads(
    model: LoadedModel, data: EncodedPrompts, methods: list[str], batch_size: int, progress: Progress | None = None,
    metric: str = "logit_diff", method_options: dict[str, dict] | None = None,
    traces: dict[str, dict] | None = None, processes: Processes = ONE_PROCESS, activations: CacheEntry | None = None,
) -> dict[str, np.ndarray]:
    """Head scores per method; trace-producing methods (causal tracing) fill `traces` instead.

    With several processes, shardable methods run on this process's shard and add their sums
    across processes; the others run on all prompts on the main process, which hands the result
    to the rest. Either way every process returns the one-process numbers."""
    scores: dict[str, np.ndarray] = {}
    traces = {} if traces is None else traces
    shard = data.subset(*processes.shard_bounds(len(data), batch_size))
    for name in methods:
        method = METHODS.get(name)
        own = shard if method.shardable else data
        task_id = progress.add_task(name, total=len(own)) if progress else None

        def advance(n: int, _task=task_id) -> None:
            if progress and _task is not None:
                progress.advance(_task, n)

        ctx = MethodContext(batch_size=batch_size, metric=metric, options=(method_options or {}).get(name, {}), advance=advance,
                            activations=activations)
        if method.shardable:
            ctx.sum_shards = processes.sum
            output = method.fn(model, shard, ctx)
        else:
            output = processes.from_main(lambda: method.fn(model, data, ctx))  # noqa: B023  (called at once)
        if method.produces == "traces":
            traces.update({f"{name}/{key}": value.model_dump() for key, value in output.items()})
            continue
        array = np.asarray(output, dtype=float)
        expected = (model.n_layers, model.n_heads)
        if array.shape != expected:
            raise RuntimeError(f"method {name} returned shape {array.shape}, expected {expected}")
        if not np.isfinite(array).all():
            raise CircuitbenchError(
                f"Method '{name}' produced NaN/inf head scores on model '{model.name}' (dtype "
                f"{model.dtype}). Try --dtype float32, or check the task's corrupted prompts."
            )
        scores[name] = array
    return scores


def _mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    mean = float(v.mean())
    stderr = float(v.std(unbiased=True) / len(v) ** 0.5) if len(v) > 1 else 0.0
    return mean, stderr


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("circuitbench", "torch", "transformer-lens", "transformers", "accelerate"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_commit() -> str | None:
    root = PACKAGE_DIR.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def peak_memory_mb(device: torch.device) -> float:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak = rss_kb / 1024
    if device.type == "cuda":
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
    return round(peak, 1)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=STDERR, transient=True,
    ) as progress:
        yield progress


def run_unit(
    spec: TaskSpec, model: LoadedModel, options: RunOptions, *, progress: Progress | None = None, command: str | None = None,
    processes: Processes = ONE_PROCESS,
) -> RunResult:
    """Run one (model, task) unit and return its RunResult (not written). Under a launcher every
    process calls this and gets the same RunResult (timings and memory are its own)."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    data = encode_task(spec, model.vocab, model.unk_id, model.n_ctx)  # every process: cheap, and the drops are global
    check_methods(spec, data)
    if options.batch_size == "auto":
        # shards are cut in whole batches: all processes must agree on the size (free memory differs)
        batch_size = min(processes.gather(auto_batch_size(model, data)))
    else:
        batch_size = int(options.batch_size)

    # The cache holds whole prompt sets; data-parallel processes see shards, so they bypass it.
    cache = open_run_cache(options, model, data, spec.name) if processes.world_size == 1 else None  # None with --no-cache
    clean, corrupted = metrics_through_cache(cache, spec.metrics, data.corrupted is not None,
                                             lambda: evaluate(model, data, spec.metrics, batch_size, progress, processes))
    metrics, stderr = {}, {}
    for name, values in clean.items():
        metrics[name], stderr[name] = _mean_stderr(values)
    metrics_corrupted = {name: _mean_stderr(v)[0] for name, v in corrupted.items()}
    by_split = evaluate_report_splits(spec, model, batch_size, progress, processes)
    if by_split:
        by_split[spec.split] = SplitMetrics(n_prompts=len(data), metrics=metrics, metrics_stderr=stderr)
    traces: dict[str, dict] = {}
    head_scores = score_heads(model, data, spec.methods, batch_size, progress, spec.main_metric or spec.metrics[0],
                              spec.method_options, traces, processes, cache)

    circuit = None
    if spec.circuit and head_scores:
        method = spec.circuit.method or next(iter(head_scores))
        chosen = Circuit.from_scores(head_scores[method], spec.circuit, method)
        ctx = MethodContext(batch_size=batch_size, metric=spec.main_metric or spec.metrics[0], sum_shards=processes.sum,
                            activations=cache)
        shard = data.subset(*processes.shard_bounds(len(data), batch_size))
        faith = faithfulness(model, shard, chosen, head_scores[method], spec.circuit, ctx)
        circuit = CircuitInfo(method=method, rule=chosen.rule, heads=chosen.heads, **faith.model_dump())
    agreement = {}
    if "activation_patching" in head_scores and "attribution_patching" in head_scores:
        agreement["spearman(activation_patching, attribution_patching)"] = spearman(
            head_scores["activation_patching"], head_scores["attribution_patching"])

    report = data.report
    return RunResult(
        status="complete",
        task=TaskInfo(
            name=spec.name, version=spec.version, spec_hash=spec.spec_hash(), content_hash=spec.content_hash(),
            prompt_hash=data.prompt_hash, split=spec.split,
            n_prompts=len(data), n_dropped=report.n_dropped, dropped_reasons=dict(report.reasons),
            dropped_examples=report.examples, main_metric=spec.main_metric or spec.metrics[0],
        ),
        model=ModelInfo(
            name=model.name, source=model.source, revision=model.revision, n_layers=model.n_layers,
            n_heads=model.n_heads, n_params=model.n_params, init=model.init, dtype=model.dtype,
            tokenizer=model.tokenizer_source,
        ),
        run=RunInfo(
            seed=spec.seed, batch_size=batch_size, device=str(model.device), started_at=started.isoformat(),
            duration_s=round(time.perf_counter() - t0, 3), model_load_s=model.load_seconds, peak_memory_mb=peak_memory_mb(model.device),
            versions=_versions(), git=_git_commit(), command=command, world_size=processes.world_size,
            device_map=model.device_map, cache=cache.stats if cache else {},
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


@dataclass
class UnitOutcome:
    model: str
    task: str
    path: Path
    result: RunResult
    skipped: bool  # finished earlier, kept as it was (--resume)


def run(
    tasks: str | list[str],
    models: str | list[str],
    options: RunOptions | None = None,
    *,
    include_paths: tuple[str, ...] = (),
    show_progress: bool = True,
    command: str | None = None,
) -> list[UnitOutcome]:
    """Run every (model, task) unit, writing `out/<model>/<task>.json` for each, in order: models
    as given, then tasks as given.

    Task specs are all validated before any model is loaded; with `resume`, units whose result
    file is complete with the same spec hash, init and dtype are kept untouched. Under a launcher
    (`torchrun`, `accelerate launch`) every process calls this; the prompts are split between
    them, and only the main process shows progress and writes the files.
    """
    options = options or RunOptions()
    task_names = expand_task_names([tasks] if isinstance(tasks, str) else list(tasks), include_paths)
    model_names = [models] if isinstance(models, str) else list(models)
    specs = [effective_spec(load_task(t, include_paths), options) for t in task_names]
    for spec in specs:  # prompt generation is cheap: fail on an impossible spec before any model loads
        generate_prompts(spec)
    if options.device_map is not None and launched_world_size() > 1:
        raise CircuitbenchError(
            f"--device-map {options.device_map} spreads one model over all devices and cannot be combined with "
            f"{launched_world_size()} data-parallel processes. Launch a single process for --device-map, or drop it "
            "to run one copy of the model per process."
        )
    processes = current_processes(options.device)
    if not processes.is_main:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # e.g. "Loading weights": the main process's bar speaks for all
    # Each process takes the launcher's accelerator (cuda:LOCAL_RANK); on CPU they share it.
    device = options.device
    if processes.device is not None and processes.device.type != "cpu" and options.device in ("auto", "cuda"):
        device = str(processes.device)
    check_cache_dir(options)
    out = Path(options.out)
    outcomes: list[UnitOutcome] = []
    with progress_bars(show_progress and processes.is_main) as progress:
        for model_arg in model_names:
            model_name = resolve_model(model_arg).name  # a local dir's results go under its folder name
            units = [(spec, result_path(out, model_name, spec.name)) for spec in specs]

            def finished_results(_units=units) -> list[RunResult | None]:
                return [load_result(path) if options.resume and is_finished(path, spec.spec_hash(), options.init, options.dtype)
                        else None for spec, path in _units]

            # The main process decides what is finished (its view of the files rules) and tells the others.
            kept = processes.from_main(finished_results)
            pending = []
            for (spec, path), existing in zip(units, kept):
                if existing is not None:
                    outcomes.append(UnitOutcome(model_name, spec.name, path, existing, True))
                else:
                    pending.append((spec, path))
            if not pending:
                continue
            if progress:
                progress.console.print(f"[dim]loading model[/] [bold]{model_name}[/] ({options.init})")
            model = load_model(model_arg, init=options.init, dtype=options.dtype, device=device,
                               seed=options.seed or 0, device_map=options.device_map)
            for spec, path in pending:
                if progress:
                    progress.console.print(f"[dim]running[/] [bold]{spec.name}[/] on [bold]{model_name}[/]")
                result = run_unit(spec, model, options, progress=progress, command=command, processes=processes)
                if processes.is_main:
                    save_result(result, path)
                outcomes.append(UnitOutcome(model_name, spec.name, path, result, False))
            del model
    return outcomes


def command_line() -> str:
    return " ".join(["circuitbench", *sys.argv[1:]])
