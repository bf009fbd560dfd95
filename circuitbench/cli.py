"""The `circuitbench` command: each verb parses its options, calls the library function a notebook
would call, and renders what it returns (rich lives here and in tables/console.py).

Options whose default and meaning the library owns are declared from its pydantic models
(`cli_options.option`): RunOptions, OverlapSettings, TrainConfig, ToyArch, NoiseConfig. Importing
this module imports no torch: each verb imports the library it calls, so `--help`, `ls` and
`validate` start fast. How a command ends (exit codes, messages) is circuitbench/entry.py."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from circuitbench import output_paths as outputs
from circuitbench.circuits.overlap_settings import OverlapSettings
from circuitbench.cli_options import App, byte_size, int_or_auto, option
from circuitbench.entry import exit_for_failures, run_app
from circuitbench.errors import CircuitbenchError, validate_options
from circuitbench.files import expand_glob, write_atomic
from circuitbench.registry import load_plugins
from circuitbench.specs.options import RunOptions
from circuitbench.tables import console
from circuitbench.tables.console import plain, print_table, progress_bars
from circuitbench.training.config import ARCH_PRESETS, DEFAULT_ARCH, NoiseConfig, ToyArch, TrainConfig

app = App(add_completion=False, no_args_is_help=True, help="Declarative benchmark harness for circuit tasks.")


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
cache_app = App(no_args_is_help=True, help="Inspect or clear the activation cache (reused clean/corrupted forwards).")
app.add_typer(cache_app, name="cache")
circuit_app = App(no_args_is_help=True, help="Circuit files: export a result's circuit (MIB / EAP-IG graph JSON).")
app.add_typer(circuit_app, name="circuit")

IncludePath = typer.Option([], "--include-path", metavar="DIR", help="Extra directory of task YAML files (repeatable).")
Plugin = typer.Option([], "--plugin", metavar="MODULE|FILE.py",
                      help="Module or .py file registering generators, metrics or methods (repeatable).")
Threads = option(RunOptions, "threads", "--threads", min=1)
CacheDir = option(RunOptions, "cache_dir", "--cache-dir")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars or progress messages.")
Force = typer.Option(False, "--force", help="Replace the output even where it is not this command's own earlier "
                     "output (a committed file, a shipped checkpoint, a file written by something else).")
Permutations = option(OverlapSettings, "permutations", "--permutations", min=0)
NullOption = option(OverlapSettings, "null", "--null")
OverlapMetricOption = typer.Option(
    None, "--metric", help="Comma-separated overlap metrics (`circuitbench ls overlap-metrics`; default: jaccard, "
    "overlap_coefficient, hypergeometric_p, spearman, plus the node and edge metrics for graph circuits, each skipped "
    "with a note where the circuits lack what it needs).")


def _names(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None: not given)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def run(
    task: str = typer.Option(..., "--task", "-t",
                             help="Task name(s), comma-separated, a YAML path, or 'suite' (every catalog task)."),
    model: str = typer.Option(..., "--model", "-m", help="Model(s): registry name, HF id, local dir, toy checkpoint."),
    # --n-prompts: torchrun's own parser rejects --n (a prefix of its --nnodes / --nproc-per-node)
    n_prompts: int | None = option(RunOptions, "n_prompts", "--n-prompts", "--n"),
    seed: int | None = option(RunOptions, "seed", "--seed"),
    split: str | None = option(RunOptions, "split", "--split"),
    batch_size: str = option(RunOptions, "batch_size", "--batch-size", parser=int_or_auto("--batch-size")),
    device: str = option(RunOptions, "device", "--device"),
    device_map: str | None = option(RunOptions, "device_map", "--device-map"),
    kv_graph: str = option(RunOptions, "kv_graph", "--kv-graph"),
    dtype: str | None = option(RunOptions, "dtype", "--dtype"),
    init: str = option(RunOptions, "init", "--init"),
    methods: str | None = option(RunOptions, "methods", "--methods"),
    circuit_level: str | None = option(RunOptions, "circuit_level", "--circuit-level"),
    out: str = option(RunOptions, "out", "--out"),
    resume: bool = option(RunOptions, "resume", "--resume"),
    cache: bool = option(RunOptions, "cache", "--cache/--no-cache"),
    cache_dir: str | None = CacheDir,
    reference: str | None = option(RunOptions, "reference", "--reference"),
    include_path: list[str] = IncludePath, plugin: list[str] = Plugin,
    threads: int | None = Threads,
    max_memory: int | None = option(RunOptions, "max_memory", "--max-memory", parser=byte_size("--max-memory"),
                                    metavar="SIZE"),
    quiet: bool = Quiet,
    details: bool = typer.Option(False, "--details", "-v", help="Also print every unit's metrics, top heads and "
                                 "circuit figures (default: one summary table per model; the reports hold the rest)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only: per (model, task) and method the "
                                 "estimated forwards and time (one forward measured on the loaded model); nothing is "
                                 "computed or written."),
    executor: str = typer.Option(
        "local", "--executor", help="Where the units run: local (this process) | ray (each (model, task) unit a task "
        "on a Ray cluster with its GPU and memory; this process writes every result, --resume reuses results across "
        "executors; needs the ray extra) | a plugin's. Data parallel inside a unit stays on torchrun / accelerate "
        "launch."),
    address: str | None = typer.Option(
        None, "--address", help="--executor ray: the cluster ('auto', HOST:PORT or ray://HOST:10001); default: a "
        "local cluster on this machine. Its workers need circuitbench installed and the model paths this run names."),
) -> None:
    """Run task(s) on model(s) and write one RunResult JSON per (model, task).

    Data parallel: `torchrun --nproc_per_node N -m circuitbench run ...` (or `accelerate launch`)
    splits the prompts over N processes; the main one writes the results. A unit that fails is
    written with status "failed" and the rest go on; the exit code is then 2 (user mistakes) or 1."""
    load_plugins(plugin)
    options = validate_options(
        RunOptions, n_prompts=n_prompts, seed=seed, split=split, batch_size=batch_size, device=device,
        device_map=device_map, dtype=dtype, init=init, methods=_names(methods), circuit_level=circuit_level, out=out,
        kv_graph=kv_graph, resume=resume, cache=cache, cache_dir=cache_dir, reference=reference, threads=threads,
        max_memory=max_memory)
    console.show_logs(logging.WARNING if quiet else logging.INFO)
    if executor == "local":  # a hub model neither cached nor reachable fails now, before the heavy imports below
        from circuitbench.pipeline.preflight import preflight

        preflight(_names(task) or [], _names(model) or [], options.init, tuple(include_path))
    if dry_run:
        from circuitbench.pipeline.plan import plan_run
        from circuitbench.tables.plan_view import print_plan

        print_plan(plan_run(_names(task), _names(model), options, include_paths=tuple(include_path)))
        return
    from circuitbench.parallel import is_main_process
    from circuitbench.pipeline.executors import executor_named
    from circuitbench.pipeline.grid import run as run_grid

    runs_on = executor_named(executor, address)  # a missing extra is said before any work
    with progress_bars(not quiet and is_main_process()) as progress:
        outcomes = run_grid(_names(task), _names(model), options, include_paths=tuple(include_path), progress=progress,
                            command=" ".join(["circuitbench", *sys.argv[1:]]), executor=runs_on)
    if is_main_process():  # other data-parallel processes hold the same results and stay quiet
        console.print_run_summary(outcomes, details)
    exit_for_failures(outcomes)


@app.command()
def ls(what: str = typer.Argument(..., help="tasks | models | methods | metrics | generators | overlap-metrics"),
       include_path: list[str] = IncludePath, plugin: list[str] = Plugin) -> None:
    """List registered tasks, models, methods, metrics, generators or overlap metrics."""
    load_plugins(plugin)
    from circuitbench.tables.listings import LIST_COLUMNS, NAME_COLUMNS, listing

    table = listing(what, tuple(include_path))
    if what == "models":
        print_table(list(table.columns), table.values.tolist())
    elif what == "tasks":  # metrics and methods under the description: one column of text wraps in 80
        rows = [[task, generator, n, f"{description}\nmetrics: {metrics}\nmethods: {methods}"]
                for task, generator, n, metrics, methods, description in table.values.tolist()]
        print_table(["task", "generator", "n", "description"], rows, names=NAME_COLUMNS)
    else:
        print_table(list(table.columns), table.values.tolist(), names=NAME_COLUMNS, lists=LIST_COLUMNS)


@app.command()
def validate(
    task: str = typer.Argument(..., help="Task name or YAML path."),
    model: str | None = typer.Option(None, "--model", "-m", help="Check against this model's tokenizer."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Check against a tokenizer directory."),
    n_prompts: int | None = typer.Option(None, "--n-prompts", "--n", help="Number of prompts to render."),
    show: int = typer.Option(5, "--show", help="Prompts to print."),
    include_path: list[str] = IncludePath, plugin: list[str] = Plugin,
) -> None:
    """Render a task's prompts and report what a tokenizer would drop (no weights loaded)."""
    load_plugins(plugin)
    from circuitbench.pipeline.validation import validate_task

    validation = validate_task(task, model=model, tokenizer=tokenizer, n_prompts=n_prompts,
                               include_paths=tuple(include_path))
    console.print_validation(validation, show)


@app.command()
def overlap(
    files: list[str] = typer.Argument(
        ..., help="RunResult JSONs, any JSON with \"heads\": [[layer, head], ...] or \"nodes\", or EAP-IG/MIB graph "
        "files (edge circuits); globs too."),
    metric: str | None = OverlapMetricOption,
    alignment: str = option(OverlapSettings, "alignment", "--alignment"),
    bins: int = option(OverlapSettings, "bins", "--bins"),
    top_n: int = option(OverlapSettings, "top_n", "--top-n"),
    rbo_p: float = option(OverlapSettings, "rbo_p", "--rbo-p"),
    shape: str | None = typer.Option(None, "--shape", help="LAYERS,HEADS of circuits that carry no model shape."),
    model: str | None = typer.Option(None, "--model", "-m", help="A registry model giving that shape."),
    as_json: bool = typer.Option(False, "--json", help="Print {labels, <metric>: matrix, null_mean, p_value} as JSON."),
    plot_path: str | None = typer.Option(None, "--plot", help="Heatmap PNG of the first metric."),
    permutations: int = Permutations,
    null: str = NullOption,
    force: bool = Force, plugin: list[str] = Plugin,
) -> None:
    """Overlap between circuits (tasks in one model, or models), each figure beside its permutation null."""
    load_plugins(plugin)
    from circuitbench.circuits.overlap import overlap_matrix
    from circuitbench.results.circuit_files import circuit_paths, load_circuits

    settings = validate_options(OverlapSettings, alignment=alignment, bins=bins, top_n=top_n, rbo_p=rbo_p,
                                permutations=permutations, null=null)
    paths = circuit_paths(files)
    if plot_path:
        outputs.check_figure_file(Path(plot_path), "--plot", force=force, inputs=[Path(p) for p in paths])
    matrix = overlap_matrix(load_circuits(paths, shape, model), _names(metric) or None, settings, sources=paths)
    console.print_overlap(matrix, as_json=as_json, hint="--shape L,H or --model NAME gives circuits a shape")
    if plot_path and matrix.metrics:
        from circuitbench.tables.plots import overlap_heatmap

        overlap_heatmap(matrix, matrix.metrics[0], Path(plot_path))


@app.command()
def leaderboard(
    results: str = typer.Option("results", "--results", help="Directory of RunResults (<model>/<task>.json)."),
    out: str = typer.Option("results/leaderboard", "--out",
                            help="Where to write <task>.md/.csv/.html, README.md, index.html (--by method: "
                                 "methods.md, methods.html; a folder of committed files only with --force)."),
    title: str | None = typer.Option(None, "--title", help="Heading of the pages (default: circuitbench leaderboard, "
                                     "or circuitbench method leaderboard with --by method)."),
    by: str = typer.Option("task", "--by", help="task: models × tasks, a page per task (README.md, index.html, "
                           "<task>.*); method: every node and edge method per task and model, ranked (methods.md, "
                           ".html: recall and AUROC of known circuits, CPR, CMD, faithfulness, cost)."),
    force: bool = Force,
    compare_logits: bool = typer.Option(False, "--compare-logits", help="Compare logit-unit metrics (logit_diff, "
                                        "losses) across models with different tokenizers too (default: only "
                                        "probability, accuracy and rank are compared across vocabularies)."),
    include_path: list[str] = IncludePath, plugin: list[str] = Plugin,
) -> None:
    """Aggregate results into leaderboard tables (Markdown, CSV, HTML pages); failed units apart."""
    if by not in ("task", "method"):
        raise CircuitbenchError(f"--by {by!r}: give task (the leaderboard) or method (the method leaderboard).")
    load_plugins(plugin)
    outputs.check_output_dir(Path(out), "--out", force=force, ours=outputs.is_leaderboard_dir,
                             what="a leaderboard circuitbench wrote")
    if by == "method":
        from circuitbench.tables.method_leaderboard import TITLE, build_methods, console_tables

        board = build_methods(Path(results), Path(out), tuple(include_path), title=title or TITLE)
        for heading, table in console_tables(board["rows"]):
            print_table(list(table.columns), table.values.tolist(), title=heading)
        plain(f"method leaderboard: {board['rows']['method'].nunique()} methods × {len(board['units'])} task/model "
              f"pairs → {out}/methods.md, .html ({len(board['flagged'])} results flagged, listed apart)")
        return
    from circuitbench.tables.leaderboard import build

    summary = build(Path(results), Path(out), tuple(include_path), title=title or "circuitbench leaderboard",
                    compare_logits=compare_logits)
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

    paths = [Path(p) for pattern in files for p in expand_glob(pattern)]
    heads, nodes = recovery_tables(paths, Path(markdown) if markdown else None, force)
    heads, nodes = shown(heads), shown(nodes)  # intervals folded in beside their figures
    print_table(list(heads.columns), heads.values.tolist(), title="recovery of known circuits")
    if not nodes.empty:
        print_table(list(nodes.columns), nodes.values.tolist(),
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
    init: str = option(RunOptions, "init", "--init"),
    n_prompts: int | None = option(RunOptions, "n_prompts", "--n-prompts", "--n"),
    out: str = option(RunOptions, "out", "--out"),
    permutations: int = Permutations,
    null: str = NullOption,
    threads: int | None = Threads,
    quiet: bool = Quiet,
    include_path: list[str] = IncludePath, plugin: list[str] = Plugin,
) -> None:
    """Run what is missing (finished units in --out are kept), then print the circuit overlap matrix."""
    load_plugins(plugin)
    from circuitbench.parallel import is_main_process
    from circuitbench.pipeline.compare import compare as compare_circuits

    settings = validate_options(OverlapSettings, permutations=permutations, null=null)
    options = validate_options(RunOptions, n_prompts=n_prompts, init=init, out=out, threads=threads)
    with progress_bars(not quiet and is_main_process()) as progress:
        outcomes, matrix = compare_circuits(model, _names(tasks), models=_names(models), task=task, options=options,
                                            settings=settings, metrics=_names(metric) or None,
                                            include_paths=tuple(include_path), progress=progress)
    if matrix is not None:
        console.print_overlap(matrix)
    elif is_main_process():  # a unit failed: what ran, and why not
        console.print_run_summary(outcomes)
        exit_for_failures(outcomes)


@app.command("train")
def train_cmd(
    task: str = option(TrainConfig, "tasks", "--task", "-t"),
    out: str = typer.Option(..., "--out",
                            help="Output directory: the final model, checkpoints/step_N/, training_log.json."),
    arch: str = typer.Option(DEFAULT_ARCH, "--arch", help=f"{' | '.join(ARCH_PRESETS)}: a preset, its fields "
                             "replaced by --layers, --heads, --d-model, --positional, --smear-keys where given."),
    layers: int | None = option(ToyArch, "n_layers", "--layers", default=None),
    heads: int | None = option(ToyArch, "n_heads", "--heads", default=None),
    d_model: int | None = option(ToyArch, "d_model", "--d-model", default=None),
    positional: str | None = option(ToyArch, "positional", "--positional", default=None),
    smear_keys: bool = option(ToyArch, "smear_keys", "--smear-keys"),
    steps: int = option(TrainConfig, "steps", "--steps"),
    checkpoints: int = option(TrainConfig, "checkpoints", "--checkpoints"),
    batch_size: int = option(TrainConfig, "batch_size", "--batch-size"),
    lr: float = option(TrainConfig, "lr", "--lr"),
    seed: int = option(TrainConfig, "seed", "--seed"),
    n_train: int = option(TrainConfig, "n_train", "--n-train"),
    loss_positions: str = option(TrainConfig, "loss_positions", "--loss-positions"),
    noise_site: str | None = option(NoiseConfig, "site", "--noise-site", default=None),
    noise_scale: float | None = option(NoiseConfig, "scale", "--noise-scale", default=None),
    threads: int | None = option(TrainConfig, "threads", "--threads", default=None, min=1),
    induction_share: float = option(TrainConfig, "induction_share", "--induction-share"),
    weight_decay: float = option(TrainConfig, "weight_decay", "--weight-decay"),
    warmup_steps: int = option(TrainConfig, "warmup_steps", "--warmup-steps"),
    lr_schedule: str = option(TrainConfig, "lr_schedule", "--lr-schedule"),
    task_weights: str = option(TrainConfig, "task_weights", "--task-weights", default=""),
    number_prior: bool = option(TrainConfig, "number_prior", "--number-prior"),
    force: bool = Force, plugin: list[str] = Plugin,
) -> None:
    """Train a toy model on tasks' train splits, saving checkpoints `--model` accepts."""
    load_plugins(plugin)
    from circuitbench.training.trainer import train

    config = TrainConfig.from_options(
        _names(task), arch=arch, n_layers=layers, n_heads=heads, d_model=d_model, positional=positional,
        smear_keys=smear_keys, noise_site=noise_site, noise_scale=noise_scale, threads=threads, steps=steps,
        checkpoints=checkpoints, batch_size=batch_size, lr=lr, seed=seed, n_train=n_train,
        loss_positions=loss_positions, induction_share=induction_share, weight_decay=weight_decay,
        warmup_steps=warmup_steps, lr_schedule=lr_schedule, task_weights=task_weights, number_prior=number_prior)
    outputs.check_checkpoint_dir(Path(out), "--out", force=force)
    with progress_bars() as progress:
        summary = train(config, Path(out), lambda step, loss: progress(f"training · loss {loss:.3f}", step, steps))
    plain(f"saved {out} (final loss {summary['final_loss']:.3f}, {summary['train_seconds']} s; "
          f"checkpoints at steps {summary['checkpoints']})")


@app.command()
def dynamics(
    model: str = typer.Option(..., "--model", "-m", help="A `circuitbench train` output directory with checkpoints/."),
    task: str = typer.Option("induction", "--task", "-t", help="The task whose metrics and head scores to follow."),
    n_prompts: int = typer.Option(32, "--n-prompts", "--n", help="Evaluation prompts per checkpoint."),
    plot_path: str | None = typer.Option(None, "--plot", help="PNG path (default: MODEL/dynamics_<task>.png)."),
    threads: int | None = Threads,
    force: bool = Force, plugin: list[str] = Plugin,
) -> None:
    """Metrics and head scores across checkpoints, with the phase change located and plotted."""
    load_plugins(plugin)
    from circuitbench.training.dynamics import write_dynamics

    dyn, record, png = write_dynamics(Path(model), task, n_prompts, Path(plot_path) if plot_path else None, threads,
                                      force)
    console.print_dynamics(dyn)
    plain(f"wrote {record} and {png}")


@app.command("train-zoo")
def train_zoo(
    name: str = typer.Argument(..., help="Zoo model to (re)train, e.g. toy-induction-2l."),
    out: str | None = typer.Option(None, "--out", help="Checkpoint directory (default: results/zoo/NAME; the "
                                   "shipped checkpoint only with --force)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps (default: the recipe's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and the data."),
    threads: int | None = Threads,
    force: bool = Force,
) -> None:
    """Retrain a shipped toy model from scratch with its recorded recipe."""
    from circuitbench.training.zoo import recipe_of, train_zoo_model, zoo_output_dir

    total = recipe_of(name).total_steps(steps)  # an unknown name fails here
    target = zoo_output_dir(name, Path(out) if out else None)
    outputs.check_checkpoint_dir(target, "--out", force=force)
    with progress_bars() as progress:
        path, summary = train_zoo_model(name, target, steps, seed, threads=threads, report=lambda step, loss: progress(
            f"training {name} · loss {loss:.3f}", step, total))
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
    # defaults as tracr_import's DEFAULT_BOS and DEFAULT_N_PROMPTS (that module imports torch)
    bos: str = typer.Option("BOS", "--bos", help="The BOS token's text (tracr's compiler BOS)."),
    n_prompts: int = typer.Option(64, "--n-prompts", min=0,
                                  help="END-position task prompts to write to prompts.jsonl (0: none)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is an earlier import-tracr checkpoint "
                                                      "(never another folder, the working directory or home)."),
    allow_large: bool = typer.Option(False, "--allow-large", help="Compile even when estimated to take over 5 min or "
                                     "4 GB (never more memory than is free)."),
) -> None:
    """Compile a RASP program with tracr into a checkpoint with a known circuit (circuit.json)."""
    from circuitbench.models.tracr_import import import_tracr, parse_vocab, reproduce_command

    values = parse_vocab(vocab)
    command = reproduce_command(program, vocab, max_seq_len, causal=causal, bos=bos, n_prompts=n_prompts)
    report = import_tracr(program, values, max_seq_len, Path(out), causal=causal, bos=bos, force=force,
                          n_prompts=n_prompts, command=command, allow_large=allow_large)
    plain(report.summary(n_prompts, max_seq_len))


@circuit_app.command("export")
def circuit_export(
    result: str = typer.Argument(..., help="A RunResult JSON."),
    fmt: str = typer.Option("mib", "--format", help="mib: the EAP-IG graph JSON MIB's circuit track reads; "
                            "auto-circuit: an edge method's scores as auto-circuit prune scores (.pt); edge-pruning: "
                            "the edge circuit as Edge Pruning's edges list (.json). The last two say what they hold "
                            "in a sidecar <file>.circuitbench.json."),
    out: str = typer.Option(..., "--out", help="The file to write."),
    method: str | None = typer.Option(None, "--method", help="An edge method's scores (and its circuit, if the "
                                      "result's came from it); default: the result's circuit."),
    force: bool = Force,
) -> None:
    """Write a result's circuit as an EAP-IG / MIB graph file (edges and nodes in_graph, with scores)."""
    from circuitbench.results.export import write_export

    if fmt != "mib":
        from circuitbench.results.export_formats import write_foreign_export

        plain(write_foreign_export(Path(result), Path(out), fmt, method, force))
        return
    graph = write_export(Path(result), Path(out), method, force)
    in_graph = sum(1 for e in graph["edges"].values() if e["in_graph"])
    plain(f"wrote {out}: {len(graph['edges'])} edges, {in_graph} in the circuit")


@app.command("export-mib")
def export_mib(
    results: list[str] = typer.Argument(..., help="RunResult JSONs with edge scores (globs too)."),
    out: str = typer.Option(..., "--out", help="The submission folder: <method>_<ablation>_edge/<task>_<model>/"
                            "importances.json inside (new, empty, or an earlier export-mib folder)."),
    method: str | None = typer.Option(None, "--method", help="Comma-separated edge methods (default: every edge "
                                      "method in the results)."),
    name: list[str] = typer.Option([], "--name", metavar="OURS=MIB", help="A task or model name as MIB spells it, "
                                   "e.g. --name my-gpt2=gpt2 (repeatable; MIB's models are named already)."),
    force: bool = Force,
) -> None:
    """Package results as a MIB circuit-localization submission (one importance-score file per task and
    model, one folder per method), then check it as `validate-mib` does."""
    from circuitbench.results.mib_submission import package_mib

    rename: dict[str, str] = {}
    for given in name:
        ours, _, theirs = (x.strip() for x in given.partition("="))
        if not ours or not theirs:
            raise CircuitbenchError(f"--name {given!r}: give OURS=MIB, e.g. --name my-gpt2=gpt2.")
        rename[ours] = theirs
    paths = [p for pattern in results for p in expand_glob(pattern)]
    package = package_mib(paths, Path(out), _names(method), rename, force)
    sizes = (("method", package.methods), ("task", package.tasks), ("model", package.models))
    counts = [f"{len(v)} {k}{'s' if len(v) != 1 else ''}" for k, v in sizes]
    plain(f"wrote {len(package.files)} importance files to {out}/: {' × '.join(counts)} ({', '.join(package.methods)})")
    if package.skipped:
        plain(f"skipped {len(package.skipped)} edge-score files among the results (read through their results)")
    for problem in package.problems:
        plain(f"problem: {problem}", stderr=True)
    if package.problems:
        raise typer.Exit(1)


@app.command("validate-mib")
def validate_mib(
    folder: str = typer.Argument(..., help="A MIB submission folder (<task>_<model> folders) or a folder of them."),
    leaderboard: bool = typer.Option(False, "--leaderboard", help="Also require MIB's own tasks and models (ioi_gpt2, "
                                     "mcqa_llama3, …) and their models' shapes."),
) -> None:
    """Check a folder as MIB's submission checker would: folder names, one importance file or 9 sized
    circuits each, files MIB's loaders read, at least 2 models and 2 tasks. Exit 1 on any problem."""
    from circuitbench.results.mib_submission import validate_mib as check

    problems = check(Path(folder), leaderboard=leaderboard)
    for problem in problems:
        plain(f"problem: {problem}")
    plain(f"{folder}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
          + ("" if problems else "; a valid MIB submission"))
    if problems:
        raise typer.Exit(1)


@app.command()
def schema(out: str | None = typer.Option(None, "--out", help="Write to this file (default: print)."),
           force: bool = Force) -> None:
    """The JSON schema of a RunResult (every field described); docs/result.schema.json is this."""
    from circuitbench.results.schema import schema_json

    if out is None:
        print(schema_json(), end="")
        return
    outputs.check_output_file(Path(out), "--out", force=force, ours=outputs.is_result_schema,
                      what="a RunResult schema `circuitbench schema` wrote")
    write_atomic(Path(out), schema_json())
    plain(f"wrote {out}")


@cache_app.command("ls")
def cache_ls(cache_dir: str | None = CacheDir) -> None:
    """List cache entries: key, model, task and prompt hash, size, created, last used, hits."""
    from circuitbench.scores.activation_cache import ActivationCache

    store = ActivationCache(cache_dir)
    console.print_cache(store.root, store.entries())


@cache_app.command("clear")
def cache_clear(
    model: str | None = typer.Option(None, "--model", "-m", help="Only entries of this model (see `cache ls`)."),
    older_than: float | None = typer.Option(None, "--older-than", min=0, help="Only entries idle for over DAYS days."),
    cache_dir: str | None = CacheDir,
) -> None:
    """Delete cache entries (all of them unless --model / --older-than narrow it)."""
    from circuitbench.scores.activation_cache import ActivationCache

    store = ActivationCache(cache_dir)
    removed = store.clear(model=model, older_than_days=older_than)
    freed = console.size_text(sum(e.size_bytes for e in removed))
    plain(f"removed {console.entries_text(len(removed))} ({freed}) from {store.root}")
    if model is not None and not removed:
        models = sorted({e.manifest.key.model for e in store.entries() if e.manifest is not None})
        plain(f"no entries of model {model!r}; cached models: {', '.join(models) or 'none'}")


def main() -> None:
    """The console script (`circuitbench`, `python -m circuitbench`): see circuitbench/entry.py."""
    run_app(app)


if __name__ == "__main__":
    main()
