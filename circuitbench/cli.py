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


def _flags_without_metavar() -> None:
    """typer 0.2x shows a type beside every option, <bool> beside flags (--quiet, --help) too,
    which take no value: show nothing there."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_hidden", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_metavar()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            plain(f"circuitbench {version('circuitbench')}")
        except PackageNotFoundError:
            plain("circuitbench (not installed: a source checkout)")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Declarative benchmark harness for circuit tasks: run tasks on models, compare their circuits,
    build leaderboards and reports. Every verb has --help."""
cache_app = typer.Typer(no_args_is_help=True,
                        help="Inspect or clear the activation cache (reused clean/corrupted forwards).")
app.add_typer(cache_app, name="cache")
circuit_app = typer.Typer(no_args_is_help=True, help="Circuit files: export a result's circuit (MIB / EAP-IG graph "
                          "JSON).")
app.add_typer(circuit_app, name="circuit")

IncludePath = typer.Option([], "--include-path", metavar="DIR", help="Extra directory of task YAML files (repeatable).")
Plugin = typer.Option([], "--plugin", metavar="MODULE|FILE.py",
                      help="Module or .py file registering generators, metrics or methods (repeatable).")
Threads = typer.Option(None, "--threads", min=1, help="torch threads (default by model size: 1 under 20M "
                       "parameters, then one per 150M, up to every core); recorded as run.threads.")
Permutations = typer.Option(200, "--permutations", min=0, help="Shuffles in the permutation null beside every "
                            "overlap figure (0: no null).")
NullOption = typer.Option("within_layer", "--null", help="within_layer: shuffle the second circuit's head scores "
                          "within each layer (keeps how much of it sits in each layer) | all: across all heads.")
Force = typer.Option(False, "--force", help="Replace the output even where it is not this command's own earlier "
                     "output (a committed file, a shipped checkpoint, a file written by something else).")
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
    threads: int | None = Threads,
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
            out=out, resume=resume, cache=cache, cache_dir=cache_dir, reference=reference, threads=threads,
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


@app.command()
def ls(what: str = typer.Argument(..., help="tasks | models | methods | metrics | generators | overlap-metrics"),
       include_path: list[str] = IncludePath, plugin: list[str] = Plugin) -> None:
    """List registered tasks, models, methods, metrics, generators or overlap metrics."""
    load_plugins(plugin)
    from circuitbench.tables.listings import listing

    table = listing(what, tuple(include_path))
    print_table(list(table.columns), table.values.tolist())


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
    from circuitbench.pipeline.validation import validate_task
    from circuitbench.tables.console import print_validation

    if n_prompts is not None and n_prompts < 1:
        raise CircuitbenchError(f"--n-prompts {n_prompts}: give at least 1.")
    print_validation(validate_task(task, model=model, tokenizer=tokenizer, n_prompts=n_prompts,
                                   include_paths=tuple(include_path)), show)


OverlapMetricOption = typer.Option(
    None, "--metric", help="Comma-separated overlap metrics (`circuitbench ls overlap-metrics`; default: jaccard, "
    "overlap_coefficient, hypergeometric_p, spearman, plus the node and edge metrics for graph circuits, each skipped "
    "with a note where the circuits lack what it needs).")


def _overlap_settings(**options: object):  # -> OverlapSettings (imported by the verbs that need it)
    """The overlap options, checked once: a bad value is an error naming its flag."""
    from circuitbench.circuits.overlap_metrics import OverlapSettings

    try:
        return OverlapSettings(**options)  # type: ignore[arg-type]
    except ValidationError as e:
        raise _options_error(e) from None


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
    from circuitbench.circuits.graph_files import check_head_bounds

    check_head_bounds(int(parts[0]), int(parts[1]), f"--shape {shape}", "--shape")
    return int(parts[0]), int(parts[1])


def _expand(pattern: str) -> list[str]:
    """A file argument: the path itself when it exists as given (`run[1].json` is a file, not a glob),
    else the files its glob matches (none: an empty list)."""
    import glob

    if Path(pattern).exists() or not any(ch in pattern for ch in "*?["):
        return [pattern]
    return sorted(glob.glob(pattern))


def _load_circuit(path: Path):  # -> Circuit (imported by the verbs that need it)
    """A circuit file; a RunResult is first checked as `report` checks it (its schema version, NaN/inf)."""
    import json

    from circuitbench.circuits.circuit import Circuit
    from circuitbench.results.store import parse_result

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None  # Circuit.load names what is wrong
    if isinstance(raw, dict) and "schema_version" in raw and "status" in raw:
        parse_result(raw, path)
    return Circuit.load(path)


def _circuit_files(files: list[str], force: bool, plot_path: str | None) -> list[str]:
    """`overlap`'s file arguments, globs expanded (at least two files), and its --plot checked against them."""
    paths: list[str] = []
    for f in files:
        matches = _expand(f)
        if not matches:
            raise CircuitbenchError(f"overlap: no file matches {f!r}.")
        paths.extend(matches)
    if len(paths) < 2:
        raise CircuitbenchError("overlap: give at least two circuit files.")
    if plot_path:
        from circuitbench.output_paths import FIGURE_SUFFIXES, check_output_file, figure_written_by_us

        check_output_file(Path(plot_path), "--plot", force=force, ours=figure_written_by_us,
                          inputs=[Path(p) for p in paths], what="a figure circuitbench drew", suffixes=FIGURE_SUFFIXES)
    return paths


@app.command()
def overlap(
    files: list[str] = typer.Argument(
        ..., help="RunResult JSONs, any JSON with \"heads\": [[layer, head], ...] or \"nodes\", or EAP-IG/MIB graph "
        "files (edge circuits); globs too."),
    metric: str | None = OverlapMetricOption,
    alignment: str = typer.Option("auto", "--alignment", help="auto | head | relative_depth"),
    bins: int = typer.Option(10, "--bins", help="Relative-depth bins for models of different shape."),
    top_n: int = typer.Option(10, "--top-n", help="Heads compared by top_n_overlap (the top N by |score|)."),
    rbo_p: float = typer.Option(0.9, "--rbo-p", help="Rank-biased overlap persistence, 0 < p < 1."),
    shape: str | None = typer.Option(None, "--shape", help="LAYERS,HEADS of circuits that carry no model shape."),
    model: str | None = typer.Option(None, "--model", "-m", help="A registry model giving that shape."),
    as_json: bool = typer.Option(False, "--json", help="Print {labels, <metric>: matrix, null_mean, p_value} as JSON."),
    plot_path: str | None = typer.Option(None, "--plot", help="Heatmap PNG of the first metric."),
    permutations: int = Permutations,
    null: str = NullOption,
    force: bool = Force,
    plugin: list[str] = Plugin,
) -> None:
    """Overlap between circuits (tasks in one model, or models), each figure beside its permutation null."""
    load_plugins(plugin)
    from circuitbench.circuits.overlap import overlap_matrix
    from circuitbench.tables.console import print_overlap

    settings = _overlap_settings(alignment=alignment, bins=bins, top_n=top_n, rbo_p=rbo_p, permutations=permutations,
                                 null=null)
    paths = _circuit_files(files, force, plot_path)
    given = _shape_option(shape, model)
    circuits = [c if c.shape or given is None else c.with_shape(*given) for c in map(_load_circuit, map(Path, paths))]
    matrix = overlap_matrix(circuits, _split(metric) if metric else None, settings, sources=paths)
    print_overlap(matrix, as_json=as_json, hint="--shape L,H or --model NAME gives circuits a shape")
    if plot_path and matrix.metrics:
        from circuitbench.tables.plots import overlap_heatmap

        overlap_heatmap(matrix, matrix.metrics[0], Path(plot_path))


@app.command()
def leaderboard(
    results: str = typer.Option("results", "--results", help="Directory of RunResults (<model>/<task>.json)."),
    out: str = typer.Option("results/leaderboard", "--out",
                            help="Where to write <task>.md/.csv/.html, README.md, index.html (a folder of committed "
                                 "files only with --force)."),
    title: str = typer.Option("circuitbench leaderboard", "--title", help="Heading of README.md and index.html."),
    force: bool = typer.Option(False, "--force", help="Write into --out even where it is not a leaderboard "
                               "circuitbench wrote (committed tables: regenerating them)."),
    include_path: list[str] = IncludePath,
    plugin: list[str] = Plugin,
) -> None:
    """Aggregate results into leaderboard tables (Markdown, CSV, HTML pages); failed units apart."""
    load_plugins(plugin)
    from circuitbench.output_paths import check_output_dir, is_leaderboard_dir
    from circuitbench.tables.leaderboard import build

    check_output_dir(Path(out), "--out", force=force, ours=is_leaderboard_dir, what="a leaderboard circuitbench wrote")
    summary = build(Path(results), Path(out), tuple(include_path), title=title)
    plain(f"leaderboard: {len(summary['tasks'])} tasks × {len(summary['models'])} models → {out}/ "
                  f"({summary['flagged']} results flagged, listed apart)")


@app.command()
def recovery(
    files: list[str] = typer.Argument(..., help="RunResult JSONs (globs too) of runs against known circuits."),
    markdown: str | None = typer.Option(None, "--markdown", help="Also write the table as Markdown to this file."),
    force: bool = Force,
) -> None:
    """How each method recovered the known circuits: precision, recall, F1, AUROC, AP per model × method."""
    from circuitbench.tables.recovery import recovery_tables, shown

    heads, nodes = recovery_tables([Path(p) for f in files for p in _expand(f)], Path(markdown) if markdown else None,
                                   force)
    print_table(list(heads.columns), shown(heads).values.tolist(), title="recovery of known circuits")
    if not nodes.empty:
        print_table(list(nodes.columns), shown(nodes).values.tolist(),
                    title="recovery of known circuits' nodes (heads and MLPs)")


@app.command()
def report(
    result: str = typer.Argument(..., help="A RunResult JSON, or an EAP-IG/MIB graph file."),
    out: str | None = typer.Option(None, "--out", help="Directory (default: next to the result, <task>_report/)."),
    force: bool = Force,
) -> None:
    """Heatmaps, MLP scores, the edge circuit as a graph, faithfulness curve, causal-tracing maps and one
    HTML page for a result (a graph file: its circuit drawn as a graph)."""
    from circuitbench.tables.report import write_report

    target, files = write_report(Path(result), Path(out) if out else None, force)
    plain(f"wrote {len(files)} files to {target}/ (open {target / 'report.html'})")


@app.command()
def compare(
    model: str | None = typer.Option(None, "--model", "-m", help="One model, several --tasks."),
    tasks: str | None = typer.Option(None, "--tasks", help="Tasks to compare within --model, comma-separated."),
    models: str | None = typer.Option(None, "--models", help="Models to compare on one --task, comma-separated."),
    task: str | None = typer.Option(None, "--task", "-t", help="The one task --models are compared on."),
    metric: str | None = OverlapMetricOption,
    init: str = typer.Option("pretrained", "--init", help="pretrained | random (random-init baselines)."),
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--n",
                                         help="Up to this many prompts per task (overrides the tasks' n_prompts)."),
    out: str = typer.Option("results", "--out", help="Results directory: units already there are kept (--resume)."),
    permutations: int = Permutations,
    null: str = NullOption,
    threads: int | None = Threads,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or progress messages."),
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

    settings = _overlap_settings(permutations=permutations, null=null)
    if bool(model and tasks) == bool(models and task):
        raise CircuitbenchError("compare: give either --model M --tasks T1,T2 or --models M1,M2 --task T.")
    task_list, model_list = (_split(tasks), [model]) if model and tasks else ([task], _split(models))  # type: ignore[list-item,arg-type]
    try:
        options = RunOptions(n_prompts=n_prompts, init=init, out=out, resume=True, threads=threads)
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
    print_overlap(overlap_matrix(circuits, _split(metric) if metric else None, settings,
                                 sources=[o.path for o in outcomes]))


CHECKPOINT = "a checkpoint folder `circuitbench train` wrote"


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
    layers: int | None = typer.Option(None, "--layers", help="Transformer blocks (default: the --arch preset's)."),
    heads: int | None = typer.Option(None, "--heads", help="Attention heads per block (default: the preset's)."),
    d_model: int | None = typer.Option(None, "--d-model", help="Residual width (default: the preset's)."),
    positional: str | None = typer.Option(None, "--positional", help="standard (learned absolute) | rotary."),
    smear_keys: bool = typer.Option(False, "--smear-keys",
                                    help="Each key a learned per-head mix of its own and the previous key."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps."),
    checkpoints: int = typer.Option(8, "--checkpoints", help="About this many checkpoints, log-spaced and linear."),
    batch_size: int = typer.Option(64, "--batch-size", help="Sequences per step."),
    lr: float = typer.Option(2e-3, "--lr", help="AdamW learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, the data draws and the noise."),
    n_train: int = typer.Option(4000, "--n-train", help="Train-split prompts per text task (at most)."),
    loss_positions: str = typer.Option("all", "--loss-positions",
                                       help="all: loss at every position (as a GPT-2-like model) | answer: "
                                            "only answer tokens (text) and copied tokens (induction)."),
    noise_site: str | None = typer.Option(None, "--noise-site",
                                          help="Gaussian noise while training at: embed | attn_out | resid."),
    noise_scale: float | None = typer.Option(None, "--noise-scale", help="Standard deviation of that noise."),
    threads: int | None = Threads,
    induction_share: float = typer.Option(0.5, "--induction-share",
                                          help="Fraction of steps on the induction stream when mixed with text tasks."),
    force: bool = Force,
    plugin: list[str] = Plugin,
) -> None:
    """Train a toy model on tasks' train splits, saving checkpoints `--model` accepts."""
    load_plugins(plugin)
    from circuitbench.output_paths import check_output_dir, is_checkpoint_dir
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
            n_train=n_train, loss_positions=loss_positions, threads=threads or 1, induction_share=induction_share,
            noise={"site": noise_site, "scale": noise_scale} if noise_site is not None else None)
    except ValidationError as e:
        raise _options_error(e, TRAIN_FLAGS) from None
    if threads is None:  # by size: 1 for toy-sized models
        from circuitbench.environment import threads_for

        config = config.model_copy(update={"threads": threads_for(config.arch.approx_params())})
    check_output_dir(Path(out), "--out", force=force, ours=is_checkpoint_dir, what=CHECKPOINT)
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
    threads: int | None = Threads,
    force: bool = Force,
    plugin: list[str] = Plugin,
) -> None:
    """Metrics and head scores across checkpoints, with the phase change located and plotted."""
    load_plugins(plugin)
    from circuitbench.tables.console import print_dynamics
    from circuitbench.training.dynamics import write_dynamics

    dyn, record, png = write_dynamics(Path(model), task, n_prompts, Path(plot_path) if plot_path else None, threads,
                                      force)
    print_dynamics(dyn)
    plain(f"wrote {record} and {png}")


@app.command("train-zoo")
def train_zoo(
    name: str = typer.Argument(..., help="Zoo model to (re)train, e.g. toy-induction-2l."),
    out: str | None = typer.Option(None, "--out", help="Checkpoint directory (default: results/zoo/NAME; the "
                                   "shipped checkpoint only with --force)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps (default: the recipe's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and the data."),
    threads: int | None = Threads,
    force: bool = typer.Option(False, "--force", help="Allow --out to be the shipped checkpoint or another folder "
                               "that holds files (replacing what it writes)."),
) -> None:
    """Retrain a shipped toy model from scratch with its recorded recipe."""
    from circuitbench.environment import threads_for, torch_threads
    from circuitbench.output_paths import check_output_dir, is_checkpoint_dir
    from circuitbench.tables.console import progress_bars
    from circuitbench.training.zoo import recipe_of, train_zoo_model

    recipe = recipe_of(name)  # an unknown name fails here
    target = Path(out) if out else Path("results") / "zoo" / name
    check_output_dir(target, "--out", force=force, ours=is_checkpoint_dir, what=CHECKPOINT)
    total = steps or recipe.default_steps
    with progress_bars() as progress, torch_threads(threads_for(recipe.n_params, threads)):
        path, summary = train_zoo_model(name, target, steps, seed,
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
    force: bool = typer.Option(False, "--force", help="Replace --out if it is an earlier import-tracr checkpoint "
                                                      "(never another folder, the working directory or home)."),
    allow_large: bool = typer.Option(False, "--allow-large",
                                     help="Compile even when estimated to take over 5 min or 4 GB (never more "
                                          "memory than is free)."),
) -> None:
    """Compile a RASP program with tracr into a checkpoint with a known circuit (circuit.json)."""
    from circuitbench.models.tracr_import import import_tracr, parse_vocab

    values = parse_vocab(vocab)
    command = (f"circuitbench import-tracr {program} --vocab {vocab} --max-seq-len {max_seq_len}"
               + (" --causal" if causal else "") + (f" --bos {bos}" if bos != "BOS" else "")
               + (f" --n-prompts {n_prompts}" if n_prompts != 64 else "") + " --out DIR")
    report = import_tracr(program, values, max_seq_len, Path(out), causal=causal, bos=bos, force=force,
                          n_prompts=n_prompts, command=command, allow_large=allow_large)
    plain(report.summary(n_prompts, max_seq_len))


@circuit_app.command("export")
def circuit_export(
    result: str = typer.Argument(..., help="A RunResult JSON."),
    fmt: str = typer.Option("mib", "--format", help="mib: the EAP-IG graph JSON MIB's circuit track reads."),
    out: str = typer.Option(..., "--out", help="The file to write."),
    method: str | None = typer.Option(None, "--method", help="An edge method's scores (and its circuit, if the "
                                      "result's came from it); default: the result's circuit."),
    force: bool = Force,
) -> None:
    """Write a result's circuit as an EAP-IG / MIB graph file (edges and nodes in_graph, with scores)."""
    from circuitbench.results.export import write_export

    if fmt != "mib":
        raise CircuitbenchError(f"--format {fmt!r}: the one format is mib (EAP-IG's graph JSON).")
    graph = write_export(Path(result), Path(out), method, force)
    in_graph = sum(1 for e in graph["edges"].values() if e["in_graph"])
    plain(f"wrote {out}: {len(graph['edges'])} edges, {in_graph} in the circuit")


@app.command()
def schema(out: str | None = typer.Option(None, "--out", help="Write to this file (default: print)."),
           force: bool = Force) -> None:
    """The JSON schema of a RunResult (every field described); docs/result.schema.json is this."""
    from circuitbench.files import write_atomic
    from circuitbench.output_paths import check_output_file, is_result_schema
    from circuitbench.results.schema import schema_json

    if out is None:
        print(schema_json(), end="")
        return
    check_output_file(Path(out), "--out", force=force, ours=is_result_schema,
                      what="a RunResult schema `circuitbench schema` wrote")
    write_atomic(Path(out), schema_json())
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
