"""The `circuitbench` command: parses options, calls library functions, renders with rich.

Importing this module imports no torch: each verb imports the library it calls, so `--help`,
`ls` and `validate` start fast."""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape

from circuitbench.errors import CircuitbenchError, Interrupted
from circuitbench.registry import load_plugins
from circuitbench.tables.console import err_console, plain, print_table, show_logs

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative benchmark harness for circuit tasks.")
cache_app = typer.Typer(no_args_is_help=True,
                        help="Inspect or clear the activation cache (reused clean/corrupted forwards).")
app.add_typer(cache_app, name="cache")
circuit_app = typer.Typer(no_args_is_help=True, help="Circuit files: export a result's circuit (MIB / EAP-IG graph "
                          "JSON).")
app.add_typer(circuit_app, name="circuit")

IncludePath = typer.Option([], "--include-path", help="Extra directory of task YAML files (repeatable).")
Plugin = typer.Option([], "--plugin",
                      help="Module or .py file registering generators, metrics or methods (repeatable).")
CacheDir = typer.Option(None, "--cache-dir",
                        help="Activation cache directory (default: $CIRCUITBENCH_CACHE or ~/.cache/circuitbench).")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _options_error(err: ValidationError, flags: dict[str, str] | None = None) -> CircuitbenchError:
    """One message naming each bad option; `flags` maps a field path ("noise.site") or name to
    its flag where they differ ("--noise-site"); a model-level check names no field."""
    parts = []
    for e in err.errors():
        names = [str(x) for x in e["loc"] if isinstance(x, str)]
        path = ".".join(names)
        msg = e["msg"].removeprefix("Value error, ")
        if not names:  # a check across fields: its message names them
            parts.append(msg)
            continue
        flag = (flags or {}).get(path) or (flags or {}).get(names[-1]) or f"--{names[-1].replace('_', '-')}"
        parts.append(f"{flag}: {msg}")
    return CircuitbenchError("Invalid option. " + "; ".join(parts))


def _int_option(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CircuitbenchError(f"{flag} {value!r}: expected a positive integer or 'auto'.") from None


def _exit_for_failures(outcomes: list) -> None:
    """Exit non-zero when units failed: 2 when every failure was a user mistake, else 1."""
    errors = [o.result.error for o in outcomes if o.failed]
    if errors:
        raise typer.Exit(2 if all(e.user_error for e in errors) else 1)


@app.command()
def run(
    task: str = typer.Option(..., "--task", "-t",
                             help="Task name(s), comma-separated, a YAML path, or 'suite' (every catalog task)."),
    model: str = typer.Option(..., "--model", "-m", help="Model(s): registry name, HF id, local dir, toy checkpoint."),
    # --n-prompts: torchrun's own parser rejects --n (a prefix of its --nnodes / --nproc-per-node)
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--n",
                                         help="Number of prompts (overrides the task's n_prompts)."),
    seed: int | None = typer.Option(None, "--seed", help="Prompt seed (and random-init seed)."),
    split: str | None = typer.Option(None, "--split", help="train | val | test (default: the task's, test)."),
    batch_size: str = typer.Option("32", "--batch-size", help="Prompts per forward pass, or 'auto'."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    device_map: str | None = typer.Option(None, "--device-map",
                                             help="auto: accelerate spreads a HuggingFace model over the devices."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: the model's)."),
    init: str = typer.Option("pretrained", "--init",
                             help="pretrained | random (random weights, architecture from models.yaml)."),
    methods: str | None = typer.Option(None, "--methods",
                                       help="Scoring methods, comma-separated (overrides the task's)."),
    circuit_level: str | None = typer.Option(None, "--circuit-level",
                                             help="head | node | edge: build the circuit from head, node (heads and "
                                             "MLPs) or edge scores (edge methods: eap, eap_ig, edge_patching)."),
    out: str = typer.Option("results", "--out", help="Results directory: OUT/<model>/<task>.json."),
    resume: bool = typer.Option(False, "--resume",
                                help="Keep units already finished with the same spec; retry failed ones."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Reuse clean/corrupted forwards from the activation cache."),
    cache_dir: str | None = CacheDir,
    reference: str | None = typer.Option(None, "--reference", help="A known circuit (JSON with heads / nodes) to "
                                         "score recovery against (default: the task's, then the model dir's)."),
    include_path: list[str] = IncludePath,
    plugin: list[str] = Plugin,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or progress messages."),
) -> None:
    """Run task(s) on model(s) and write one RunResult JSON per (model, task).

    Data parallel: `torchrun --nproc_per_node N -m circuitbench run ...` (or `accelerate launch`)
    splits the prompts over N processes; the main one writes the results. A unit that fails is
    written with status "failed" and the rest go on; the exit code is then 2 (user mistakes) or 1."""
    load_plugins(plugin)
    from circuitbench.parallel import is_main_process
    from circuitbench.pipeline.grid import run as run_grid
    from circuitbench.specs.options import RunOptions
    from circuitbench.tables.console import print_run_summary, progress_bars

    try:
        options = RunOptions(
            n_prompts=n_prompts, seed=seed, split=split, device=device, device_map=device_map, dtype=dtype, init=init,
            out=out, resume=resume, cache=cache, cache_dir=cache_dir, reference=reference,
            batch_size=batch_size if batch_size == "auto" else _int_option(batch_size, "--batch-size"),
            methods=_split(methods) if methods is not None else None, circuit_level=circuit_level,
        )
    except ValidationError as e:
        raise _options_error(e) from None
    if quiet:
        show_logs(logging.WARNING)
    with progress_bars(not quiet and is_main_process()) as progress:
        outcomes = run_grid(_split(task), _split(model), options, include_paths=tuple(include_path), progress=progress,
                            command=" ".join(["circuitbench", *sys.argv[1:]]))
    if is_main_process():  # other data-parallel processes hold the same results and stay quiet
        print_run_summary(outcomes)
    _exit_for_failures(outcomes)


LS_CHOICES = ("tasks", "models", "methods", "metrics", "generators", "overlap-metrics")


@app.command()
def ls(what: str = typer.Argument(..., help=" | ".join(LS_CHOICES)),
       include_path: list[str] = IncludePath, plugin: list[str] = Plugin) -> None:
    """List registered tasks, models, methods, metrics, generators or overlap metrics."""
    load_plugins(plugin)
    if what == "tasks":
        from circuitbench.specs.catalog import all_tasks

        rows = [(name, spec.generator.name, str(spec.n_prompts), ", ".join(spec.metrics), ", ".join(spec.methods),
                 spec.description.strip().split(". ")[0].rstrip(".") + ".")
                for name, spec in all_tasks(tuple(include_path)).items()]
        print_table(("task", "generator", "n", "metrics", "methods", "description"), rows)
    elif what == "models":
        from circuitbench.specs.catalog import model_registry
        from circuitbench.specs.model import memory_needed_bytes

        rows = [(name, m.hf_id or f"{m.source}: {m.path}", f"{m.n_params / 1e6:,.1f}M", f"{m.n_layers}×{m.n_heads}",
                 str(m.d_model), m.dtype,
                 " / ".join(f"{memory_needed_bytes(m.n_params, d) / 2**30:.1f} GB" for d in ("float32", "bfloat16")),
                 m.notes) for name, m in model_registry().items()]
        print_table(("model", "source", "params", "layers×heads", "d_model", "dtype", "memory fp32 / bf16", "notes"),
                    rows)
    elif what in ("methods", "metrics", "generators"):
        from circuitbench.specs.registries import GENERATORS, METHODS, METRICS

        registry = {"methods": METHODS, "metrics": METRICS, "generators": GENERATORS}[what]
        print_table((what[:-1], "description"), [(name, item.description) for name, item in registry.items()])
    elif what == "overlap-metrics":
        from circuitbench.circuits.overlap import OVERLAP_METRICS

        print_table(("overlap metric", "description"),
                    [(name, (fn.__doc__ or "").strip().split("\n")[0]) for name, fn in OVERLAP_METRICS.items()])
    else:
        raise CircuitbenchError(f"ls {what!r}: choose one of {', '.join(LS_CHOICES)}.")


@app.command()
def validate(
    task: str = typer.Argument(..., help="Task name or YAML path."),
    model: str | None = typer.Option(None, "--model", "-m", help="Check against this model's tokenizer."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Check against a tokenizer directory."),
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--n", help="Number of prompts to render."),
    show: int = typer.Option(5, "--show", help="Prompts to print."),
    include_path: list[str] = IncludePath,
    plugin: list[str] = Plugin,
) -> None:
    """Render a task's prompts and report what a tokenizer would drop (no weights loaded)."""
    load_plugins(plugin)
    from circuitbench.prompts.generate import generate_prompts, shortfall
    from circuitbench.specs.catalog import load_task
    from circuitbench.specs.options import RunOptions, effective_spec

    try:
        options = RunOptions(n_prompts=n_prompts)
    except ValidationError as e:
        raise _options_error(e) from None
    spec = effective_spec(load_task(task, tuple(include_path)), options)
    prompts = generate_prompts(spec)
    if note := shortfall(spec, prompts):
        plain(f"note: {note}")
    plain(f"{spec.name} v{spec.version} · spec {spec.spec_hash()} · {len(prompts.prompts)} {spec.split} prompts")
    if show > 0:
        print_table(("prompt", "answer", "distractor", "corrupted"),
                    [(repr(p.text), repr(p.answer or ""), repr(p.distractor or ""), repr(p.corrupted_text or ""))
                     for p in prompts.prompts[:show]])
    if model is None and tokenizer is None:
        plain("Spec is valid. Pass --model or --tokenizer to check tokenization.")
        return
    from circuitbench.models.loading import load_vocabulary, tokenizer_vocabulary
    from circuitbench.prompts.encoding import encode_task

    if tokenizer is not None:
        vocab, unk, source = tokenizer_vocabulary(tokenizer)
        n_ctx = 10**9
    else:
        assert model is not None
        vocab, unk, n_ctx, source = load_vocabulary(model)
    data = encode_task(spec, vocab, unk, n_ctx, prompts)
    rep = data.report
    plain(f"tokenizer: {source}: kept {len(data)} of {rep.n_total}, dropped {rep.n_dropped}")
    for reason, count in rep.reasons.most_common():
        plain(f"  {count} × {reason}; e.g. {'; '.join(rep.examples[reason])}")


DEFAULT_OVERLAP_METRICS = "jaccard,overlap_coefficient,hypergeometric_p,spearman"


def _shape_option(shape: str | None, model: str | None) -> tuple[int, int] | None:
    """(n_layers, n_heads) from --shape L,H or a registry --model, for circuits that carry none."""
    if shape is not None and model is not None:
        raise CircuitbenchError("--shape and --model both give the shape: pass one.")
    if model is not None:
        from circuitbench.specs.catalog import model_registry

        registry = model_registry()
        if model not in registry:
            from circuitbench.errors import did_you_mean

            raise CircuitbenchError(f"--model {model}: not a registry model.{did_you_mean(model, registry)} Use "
                                    "--shape LAYERS,HEADS for another model.")
        return registry[model].n_layers, registry[model].n_heads
    if shape is None:
        return None
    parts = shape.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise CircuitbenchError(f"--shape {shape!r}: give LAYERS,HEADS as two positive integers, e.g. 12,12.")
    return int(parts[0]), int(parts[1])


@app.command()
def overlap(
    files: list[str] = typer.Argument(
        ..., help="RunResult JSONs, any JSON with \"heads\": [[layer, head], ...] or \"nodes\", or EAP-IG/MIB graph "
        "files (edge circuits); globs too."),
    metric: str | None = typer.Option(None, "--metric", help="Comma-separated overlap metrics (`circuitbench ls "
                                      f"overlap-metrics`; default {DEFAULT_OVERLAP_METRICS}, each skipped with a "
                                      "note where the circuits lack what it needs)."),
    alignment: str = typer.Option("auto", "--alignment", help="auto | head | relative_depth"),
    bins: int = typer.Option(10, "--bins", help="Relative-depth bins for models of different shape."),
    top_n: int = typer.Option(10, "--top-n"),
    rbo_p: float = typer.Option(0.9, "--rbo-p", help="Rank-biased overlap persistence, 0 < p < 1."),
    shape: str | None = typer.Option(None, "--shape", help="LAYERS,HEADS of circuits that carry no model shape."),
    model: str | None = typer.Option(None, "--model", "-m", help="A registry model giving that shape."),
    as_json: bool = typer.Option(False, "--json", help="Print {labels, <metric>: matrix} as JSON."),
    plot_path: str | None = typer.Option(None, "--plot", help="Heatmap PNG of the first metric."),
    plugin: list[str] = Plugin,
) -> None:
    """Overlap matrices between circuits (tasks in one model, or models)."""
    import glob
    import json

    load_plugins(plugin)
    from circuitbench.circuits.circuit import Circuit
    from circuitbench.circuits.overlap import check_settings, overlap_matrix
    from circuitbench.files import check_writable_file
    from circuitbench.tables.console import print_overlap

    check_settings(bins, top_n, rbo_p)
    if alignment not in ("auto", "head", "relative_depth"):
        raise CircuitbenchError(f"--alignment {alignment!r}: choose auto, head or relative_depth.")
    paths: list[str] = []
    for f in files:
        matches = sorted(glob.glob(f)) if any(ch in f for ch in "*?[") else [f]
        if not matches:
            raise CircuitbenchError(f"overlap: no file matches {f!r}.")
        paths.extend(matches)
    if len(paths) < 2:
        raise CircuitbenchError("overlap: give at least two circuit files.")
    if plot_path:
        check_writable_file(Path(plot_path), "--plot")
    circuits = [Circuit.load(Path(p)) for p in paths]
    given_shape = _shape_option(shape, model)
    if given_shape is not None:
        circuits = [c if c.shape else c.with_shape(*given_shape) for c in circuits]
    metrics = _split(metric or DEFAULT_OVERLAP_METRICS)
    if metric is None:  # graph circuits: their node and edge sets too
        from circuitbench.circuits.overlap import GRAPH_METRICS

        if any(c.mlps or c.node_scores for c in circuits):
            metrics += [m for m in GRAPH_METRICS if m.startswith("node")]
        if any(c.level == "edge" for c in circuits):
            metrics += [m for m in GRAPH_METRICS if m.startswith("edge")]
    optional = frozenset(metrics) if metric is None else frozenset()
    result = overlap_matrix(circuits, metrics, alignment, bins, top_n, rbo_p, optional)  # type: ignore[arg-type]
    shown = [m for m in metrics if m in result]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_overlap(result, shown)
    for name, reason in result["skipped"].items():
        plain(f"note: {name} skipped: {reason} (--shape L,H or --model NAME gives circuits a shape)", stderr=True)
    if plot_path and shown:
        from circuitbench.tables.plots import overlap_heatmap

        overlap_heatmap(result["labels"], result[shown[0]], shown[0], Path(plot_path))


@app.command()
def leaderboard(
    results: str = typer.Option("results", "--results", help="Directory of RunResults (<model>/<task>.json)."),
    out: str = typer.Option("leaderboards", "--out", help="Where to write <task>.md/.csv, README.md, index.html."),
    include_path: list[str] = IncludePath,
    plugin: list[str] = Plugin,
) -> None:
    """Aggregate results into leaderboard tables (Markdown, CSV, sortable HTML); failed units apart."""
    load_plugins(plugin)
    from circuitbench.files import check_writable_dir
    from circuitbench.tables.leaderboard import build

    check_writable_dir(Path(out), "--out")
    summary = build(Path(results), Path(out), tuple(include_path))
    plain(f"leaderboard: {len(summary['tasks'])} tasks × {len(summary['models'])} models → {out}/ "
                  f"({summary['flagged']} results flagged, listed apart)")


@app.command()
def recovery(
    files: list[str] = typer.Argument(..., help="RunResult JSONs (globs too) of runs against known circuits."),
    markdown: str | None = typer.Option(None, "--markdown", help="Also write the table as Markdown to this file."),
) -> None:
    """How each method recovered the known circuits: precision, recall, F1, AUROC, AP per model × method."""
    import glob

    from circuitbench.files import check_writable_file, write_atomic
    from circuitbench.results.store import load_result
    from circuitbench.tables.leaderboard import node_recovery_table, recovery_table

    paths = [p for f in files for p in (sorted(glob.glob(f)) if any(ch in f for ch in "*?[") else [f])]
    if markdown:
        check_writable_file(Path(markdown), "--markdown")
    results = []
    for path in paths:
        result = load_result(Path(path))
        if result is None:
            raise CircuitbenchError(f"{path}: not a readable RunResult.")
        results.append(result)
    table = recovery_table(results)
    if table.empty:
        raise CircuitbenchError("No recovery scores in these results: run tasks whose models have a known circuit "
                                "(e.g. `make known-answers`, or --reference FILE).")
    def cells(t):
        return t.map(lambda v: "n/a" if v is None or v != v else f"{v:.2f}" if isinstance(v, float) else str(v))

    shown = cells(table)
    print_table(list(shown.columns), shown.values.tolist(), title="recovery of known circuits")
    nodes = node_recovery_table(results)
    text = shown.to_markdown(index=False) + "\n"
    if not nodes.empty:
        shown_nodes = cells(nodes)
        print_table(list(shown_nodes.columns), shown_nodes.values.tolist(),
                    title="recovery of known circuits' nodes (heads and MLPs)")
        text += "\n" + shown_nodes.to_markdown(index=False) + "\n"
    if markdown:
        write_atomic(Path(markdown), text)


@app.command()
def report(
    result: str = typer.Argument(..., help="A RunResult JSON, or an EAP-IG/MIB graph file."),
    out: str | None = typer.Option(None, "--out", help="Directory (default: next to the result, <task>_report/)."),
) -> None:
    """Heatmaps, MLP scores, the edge circuit as a graph, faithfulness curve, causal-tracing maps and one
    HTML page for a result (a graph file: its circuit drawn as a graph)."""
    import json

    from circuitbench.circuits.graph_files import is_graph_json, read_graph_json
    from circuitbench.files import check_writable_dir
    from circuitbench.results.schema import RunResult
    from circuitbench.tables.report import build_graph_report, build_report

    path = Path(result)
    target = Path(out) if out else path.parent / f"{path.stem}_report"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: not a readable RunResult ({type(e).__name__}).") from None
    if is_graph_json(raw):
        graph_file = read_graph_json(raw, str(path))
        check_writable_dir(target, "--out" if out else "report folder")
        files = build_graph_report(graph_file, path.stem, target)
        plain(f"wrote {len(files)} files to {target}/ (open {target / 'report.html'})")
        return
    try:
        run_result = RunResult.model_validate(raw)
    except ValueError as e:
        raise CircuitbenchError(f"{path}: not a readable RunResult ({type(e).__name__}).") from None
    if run_result.status != "complete":
        assert run_result.error is not None
        raise CircuitbenchError(f"{path}: the unit failed ({run_result.error.type}: {run_result.error.message}); "
                                "there is nothing to report. Rerun it with --resume.")
    check_writable_dir(target, "--out" if out else "report folder")
    files = build_report(run_result, target, path.parent)
    plain(f"wrote {len(files)} files to {target}/ (open {target / 'report.html'})")


@app.command()
def compare(
    model: str | None = typer.Option(None, "--model", "-m", help="One model, several --tasks."),
    tasks: str | None = typer.Option(None, "--tasks", help="Tasks to compare within --model."),
    models: str | None = typer.Option(None, "--models", help="Models to compare on one --task."),
    task: str | None = typer.Option(None, "--task", "-t"),
    metric: str = typer.Option("jaccard,overlap_coefficient,hypergeometric_p,spearman", "--metric"),
    init: str = typer.Option("pretrained", "--init"),
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--n"),
    out: str = typer.Option("results", "--out"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    include_path: list[str] = IncludePath,
    plugin: list[str] = Plugin,
) -> None:
    """Run what is missing (resuming finished units), then print the circuit overlap matrix."""
    load_plugins(plugin)
    from circuitbench.circuits.circuit import Circuit
    from circuitbench.circuits.overlap import overlap_matrix
    from circuitbench.parallel import is_main_process
    from circuitbench.pipeline.grid import run as run_grid
    from circuitbench.specs.options import RunOptions
    from circuitbench.tables.console import print_overlap, print_run_summary, progress_bars

    if bool(model and tasks) == bool(models and task):
        raise CircuitbenchError("compare: give either --model M --tasks T1,T2 or --models M1,M2 --task T.")
    task_list, model_list = (_split(tasks), [model]) if model and tasks else ([task], _split(models))  # type: ignore[list-item,arg-type]
    try:
        options = RunOptions(n_prompts=n_prompts, init=init, out=out, resume=True)
    except ValidationError as e:
        raise _options_error(e) from None
    with progress_bars(not quiet and is_main_process()) as progress:
        outcomes = run_grid(task_list, model_list, options, include_paths=tuple(include_path), progress=progress)
    if not is_main_process():  # under a launcher: the main process writes the files and reports
        return
    if any(o.failed for o in outcomes):
        print_run_summary(outcomes)
        _exit_for_failures(outcomes)
    missing = [f"{o.model}/{o.task}" for o in outcomes if o.result.circuit is None]
    if missing:
        raise CircuitbenchError(f"compare: no circuit in {missing}: give those tasks a circuit rule in their YAML.")
    circuits = [Circuit.load(o.path) for o in outcomes]
    metrics = _split(metric)
    print_overlap(overlap_matrix(circuits, metrics), metrics)


# TrainConfig / ToyArch field paths whose flag is not simply --field-name
TRAIN_FLAGS = {"n_layers": "--layers", "n_heads": "--heads", "noise.site": "--noise-site",
               "noise.scale": "--noise-scale",
               "tasks": "--task"}


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", "-t",
                             help="Task(s) whose train split to train on, comma-separated, or 'suite'."),
    out: str = typer.Option(..., "--out",
                            help="Output directory: the final model, checkpoints/step_N/, training_log.json."),
    arch: str = typer.Option("attn-only-2l", "--arch", help="attn-only-1l | attn-only-2l | gpt-2l | sort-1l1h"),
    layers: int | None = typer.Option(None, "--layers"),
    heads: int | None = typer.Option(None, "--heads"),
    d_model: int | None = typer.Option(None, "--d-model"),
    positional: str | None = typer.Option(None, "--positional", help="standard (learned absolute) | rotary."),
    smear_keys: bool = typer.Option(False, "--smear-keys",
                                    help="Each key a learned per-head mix of its own and the previous key."),
    steps: int = typer.Option(1000, "--steps"),
    checkpoints: int = typer.Option(8, "--checkpoints", help="About this many checkpoints, log-spaced and linear."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    n_train: int = typer.Option(4000, "--n-train", help="Train-split prompts per text task (at most)."),
    loss_positions: str = typer.Option("all", "--loss-positions",
                                       help="all: loss at every position (the seeds' GPT-2-like model) | answer: "
                                            "only answer tokens (text) and copied tokens (induction)."),
    noise_site: str | None = typer.Option(None, "--noise-site",
                                          help="Gaussian noise while training at: embed | attn_out | resid."),
    noise_scale: float | None = typer.Option(None, "--noise-scale", help="Standard deviation of that noise."),
    threads: int = typer.Option(1, "--threads",
                                help="torch threads while training (toy models: 1 is fastest on a shared CPU)."),
    induction_share: float = typer.Option(0.5, "--induction-share",
                                          help="Fraction of steps on the induction stream when mixed with text tasks."),
    plugin: list[str] = Plugin,
) -> None:
    """Train a toy model on tasks' train splits, saving checkpoints `--model` accepts."""
    load_plugins(plugin)
    from circuitbench.files import check_writable_dir
    from circuitbench.tables.console import progress_bars
    from circuitbench.training.trainer import TrainConfig, arch_from, train

    if (noise_site is None) != (noise_scale is None):
        raise CircuitbenchError(
            "--noise-site and --noise-scale go together, e.g. --noise-site resid --noise-scale 0.1.")
    try:
        config = TrainConfig(
            arch=arch_from(arch, n_layers=layers, n_heads=heads, d_model=d_model, positional=positional,
                           smear_keys=smear_keys or None),
            tasks=_split(task), steps=steps, checkpoints=checkpoints, batch_size=batch_size, lr=lr, seed=seed,
            n_train=n_train, loss_positions=loss_positions, threads=threads, induction_share=induction_share,
            noise={"site": noise_site, "scale": noise_scale} if noise_site is not None else None)
    except ValidationError as e:
        raise _options_error(e, TRAIN_FLAGS) from None
    check_writable_dir(Path(out), "--out")
    with progress_bars() as progress:
        summary = train(config, Path(out), lambda step, loss: progress(f"training · loss {loss:.3f}", step, steps))
    plain(f"saved {out} (final loss {summary['final_loss']:.3f}, {summary['train_seconds']} s; "
                  f"checkpoints at steps {summary['checkpoints']})")


@app.command()
def dynamics(
    model: str = typer.Option(..., "--model", "-m", help="A `circuitbench train` output directory with checkpoints/."),
    task: str = typer.Option("induction", "--task", "-t"),
    n_prompts: int = typer.Option(32, "--n-prompts", "--n", help="Evaluation prompts per checkpoint."),
    plot_path: str | None = typer.Option(None, "--plot", help="PNG path (default: MODEL/dynamics_<task>.png)."),
    threads: int = typer.Option(1, "--threads", min=1,
                                help="torch threads (toy checkpoints: 1 is fastest on a shared CPU)."),
    plugin: list[str] = Plugin,
) -> None:
    """Metrics and head scores across checkpoints, with the phase change located and plotted."""
    load_plugins(plugin)
    from circuitbench.environment import torch_threads
    from circuitbench.files import check_writable_dir, check_writable_file, write_atomic
    from circuitbench.training.dynamics import analyse, plot

    run_dir = Path(model)
    if run_dir.is_dir():  # (a missing one is reported by analyse, which needs its checkpoints)
        check_writable_dir(run_dir, "--model (dynamics are written next to the checkpoints)")
    if plot_path:
        check_writable_file(Path(plot_path), "--plot")
    with torch_threads(threads):
        dyn = analyse(run_dir, task, n=n_prompts)
    rows = [(str(step), f"{dyn.metric_values[i]:.3f}", f"{max(max(row) for row in dyn.prefix_matching[i]):.3f}",
             f"{dyn.icl_score[i]:.3f}") for i, step in enumerate(dyn.steps)]
    print_table(("step", dyn.metric, "max prefix-matching", "ICL score"), rows, title=f"training dynamics: {task}")
    pc = dyn.phase_change
    plain(f"phase change ({pc.series}): steps {pc.start_step}–{pc.end_step}, change {pc.change:+.3f}; "
          f"prefix matching: steps {dyn.prefix_phase_change.start_step}–{dyn.prefix_phase_change.end_step}")
    stem = f"dynamics_{dyn.task}"
    write_atomic(run_dir / f"{stem}.json", dyn.model_dump_json(indent=2) + "\n")
    png = Path(plot_path) if plot_path else run_dir / f"{stem}.png"
    plot(dyn, png)
    plain(f"wrote {run_dir / f'{stem}.json'} and {png}")


@app.command("train-zoo")
def train_zoo(
    name: str = typer.Argument(..., help="Zoo model to (re)train, e.g. toy-induction-2l."),
    out: str | None = typer.Option(None, "--out", help="Checkpoint directory (default: the shipped one)."),
    steps: int | None = typer.Option(None, "--steps", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Retrain a shipped toy model from scratch with its recorded recipe."""
    from circuitbench.tables.console import progress_bars
    from circuitbench.training.zoo import RECIPES, train_zoo_model

    if out is not None:
        from circuitbench.files import check_writable_dir

        check_writable_dir(Path(out), "--out")
    total = steps or (RECIPES[name].default_steps if name in RECIPES else 1)
    with progress_bars() as progress:
        path, summary = train_zoo_model(name, Path(out) if out else None, steps, seed,
                                        lambda step, loss: progress(f"training {name} · loss {loss:.3f}", step, total))
    plain(f"saved {path}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))


@app.command("import-tracr")
def import_tracr_cmd(
    program: str = typer.Argument(..., help="A tracr lib program (reverse, hist, sort_unique, length, detect_pattern, "
                                            "...; make_ optional), or module:function / file.py:function returning "
                                            "a RASP SOp (it may take vocab and max_seq_len keyword arguments)."),
    vocab: str = typer.Option(..., "--vocab", help="Input values, comma-separated (integers become ints): a,b,c."),
    max_seq_len: int = typer.Option(..., "--max-seq-len", help="Longest input (BOS not counted)."),
    out: str = typer.Option(..., "--out", help="Checkpoint directory to write (TransformerLens format)."),
    causal: bool = typer.Option(False, "--causal", help="Causal attention (default: bidirectional, as tracr)."),
    bos: str = typer.Option("BOS", "--bos", help="The BOS token's text (tracr's compiler BOS)."),
    n_prompts: int = typer.Option(64, "--n-prompts", min=0,
                                  help="END-position task prompts to write to prompts.jsonl (0: none)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Compile a RASP program with tracr into a checkpoint with a known circuit (circuit.json)."""
    from circuitbench.files import check_writable_dir
    from circuitbench.models.tracr_import import import_tracr, parse_vocab

    values = parse_vocab(vocab)
    check_writable_dir(Path(out).parent if str(Path(out).parent) else Path("."), "--out")
    command = (f"circuitbench import-tracr {program} --vocab {vocab} --max-seq-len {max_seq_len}"
               + (" --causal" if causal else "") + (f" --bos {bos}" if bos != "BOS" else "") + " --out DIR")
    report = import_tracr(program, values, max_seq_len, Path(out), causal=causal, bos=bos, force=force,
                          n_prompts=n_prompts, command=command)
    check = report.verification
    plain(f"wrote {report.path}: {report.n_layers} layers × {report.n_heads} heads, d_model {report.d_model}; "
          f"circuit {', '.join(report.circuit['nodes'])}; matches tracr on {check.n_inputs} inputs "
          f"(max |diff| residual {check.max_abs_diff_residual:.2g}, output {check.max_abs_diff_output:.2g}; "
          f"{check.n_positions_compared} outputs identical); {report.n_prompts} prompts in prompts.jsonl")


@circuit_app.command("export")
def circuit_export(
    result: str = typer.Argument(..., help="A RunResult JSON."),
    fmt: str = typer.Option("mib", "--format", help="mib: the EAP-IG graph JSON MIB's circuit track reads."),
    out: str = typer.Option(..., "--out", help="The file to write."),
    method: str | None = typer.Option(None, "--method", help="An edge method's scores (and its circuit, if the "
                                      "result's came from it); default: the result's circuit."),
) -> None:
    """Write a result's circuit as an EAP-IG / MIB graph file (edges and nodes in_graph, with scores)."""
    import json

    from circuitbench.files import check_writable_file, write_atomic
    from circuitbench.results.export import export_mib
    from circuitbench.results.store import load_result

    if fmt != "mib":
        raise CircuitbenchError(f"--format {fmt!r}: the one format is mib (EAP-IG's graph JSON).")
    path = Path(result)
    run_result = load_result(path)
    if run_result is None or run_result.status != "complete":
        raise CircuitbenchError(f"{path}: not a readable, complete RunResult.")
    check_writable_file(Path(out), "--out")
    graph = export_mib(run_result, path.parent, method)
    write_atomic(Path(out), json.dumps(graph) + "\n")
    in_graph = sum(1 for e in graph["edges"].values() if e["in_graph"])
    plain(f"wrote {out}: {len(graph['edges'])} edges, {in_graph} in the circuit")


@app.command()
def schema(out: str | None = typer.Option(None, "--out", help="Write to this file (default: print).")) -> None:
    """The JSON schema of a RunResult (every field described); docs/result.schema.json is this."""
    import json

    from circuitbench.files import write_atomic
    from circuitbench.results.schema import RunResult

    text = json.dumps(RunResult.model_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        print(text, end="")
    else:
        write_atomic(Path(out), text)
        plain(f"wrote {out}")


@cache_app.command("ls")
def cache_ls(cache_dir: str | None = CacheDir) -> None:
    """List cache entries: key, model, task and prompt hash, size, created, last used, hits."""
    from circuitbench.scores.activation_cache import ActivationCache
    from circuitbench.tables.console import print_cache

    store = ActivationCache(cache_dir)
    print_cache(store.root, store.entries())


@cache_app.command("clear")
def cache_clear(
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="Only entries of this model (name as `cache ls` shows it)."),
    older_than: float | None = typer.Option(None, "--older-than", min=0,
                                            help="Only entries not used for more than DAYS days."),
    cache_dir: str | None = CacheDir,
) -> None:
    """Delete cache entries (all of them unless --model / --older-than narrow it)."""
    from circuitbench.scores.activation_cache import ActivationCache
    from circuitbench.tables.console import entries_text, size_text

    store = ActivationCache(cache_dir)
    removed = store.clear(model=model, older_than_days=older_than)
    freed = size_text(sum(e.size_bytes for e in removed))
    plain(f"removed {entries_text(len(removed))} ({freed}) from {store.root}")
    if model is not None and not removed:
        models = sorted({e.manifest.key.model for e in store.entries() if e.manifest is not None})
        plain(f"no entries of model {model!r}; cached models: {', '.join(models) or 'none'}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the work like Ctrl-C does (finished units kept), with exit code 143."""
    raise Interrupted("SIGTERM", 128 + signal.SIGTERM)


def main() -> None:
    """Entry point: user mistakes print one message and exit 2, without a traceback; Ctrl-C exits
    130 and SIGTERM 143, each saying what finished."""
    show_logs()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except CircuitbenchError as e:
        # Data-parallel processes meet the same mistakes together (see parallel.py): one says it.
        if int(os.environ.get("RANK", "0")) == 0:  # the launcher's main process
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Interrupted as stop:
        plain(f"interrupted ({stop.signal_name})" + (f": {stop.detail}" if stop.detail else "."), stderr=True)
        sys.exit(stop.exit_code)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except (KeyboardInterrupt, typer.Abort, *_abort_types()):
        plain("interrupted (SIGINT).", stderr=True)
        sys.exit(130)
    except Exception as e:  # usage errors (bad option value, unknown option) land here in standalone_mode=False
        if isinstance(e, _usage_error_types()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(2)
        raise
    if code == 130:  # typer turns Ctrl-C outside the grid into a returned 130
        plain("interrupted (SIGINT).", stderr=True)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error_types() -> tuple[type[Exception], ...]:
    """click's ClickException and, for typer versions that vendor click (0.2x), typer's copy of it:
    `--steps abc` raises the latter, which is no click.ClickException."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        kinds.append(VendoredClickException)
    except ImportError:
        pass
    return tuple(kinds)


def _abort_types() -> tuple[type[BaseException], ...]:
    """click's Abort (Ctrl-C inside a command) and typer's vendored copy of it."""
    import click

    kinds: list[type[BaseException]] = [click.exceptions.Abort]
    try:
        from typer._click.exceptions import Abort as VendoredAbort

        kinds.append(VendoredAbort)
    except ImportError:
        pass
    return tuple(kinds)


if __name__ == "__main__":
    main()
