"""The `circuitbench` command: parses options, calls library functions, renders with rich."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from circuitbench.errors import CircuitbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative benchmark harness for circuit tasks.")
console = Console()
err_console = Console(stderr=True)

IncludePath = typer.Option([], "--include-path", help="Extra directory of task YAML files (repeatable).")
CacheDir = typer.Option(None, "--cache-dir", help="Activation cache directory (default: $CIRCUITBENCH_CACHE or ~/.cache/circuitbench).")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the activation cache (reused clean/corrupted forwards).")
app.add_typer(cache_app, name="cache")


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


@app.command()
def run(
    task: str = typer.Option(..., "--task", "-t", help="Task name(s), comma-separated, a YAML path, or 'suite' (every catalog task)."),
    model: str = typer.Option(..., "--model", "-m", help="Model(s): registry name, HF id, local dir, toy checkpoint."),
    # --n-prompts: torchrun's own parser rejects --n (a prefix of its --nnodes / --nproc-per-node)
    n: Optional[int] = typer.Option(None, "--n", "--n-prompts", help="Number of prompts (overrides the task's n_prompts)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Prompt seed (and random-init seed)."),
    split: Optional[str] = typer.Option(None, "--split", help="train | val | test (default: the task's, test)."),
    batch_size: str = typer.Option("32", "--batch-size", help="Prompts per forward pass, or 'auto'."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    device_map: Optional[str] = typer.Option(None, "--device-map",
                                             help="auto: accelerate spreads a HuggingFace model over the devices."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: the model's)."),
    init: str = typer.Option("pretrained", "--init", help="pretrained | random (random weights, architecture from models.yaml)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Head-scoring methods, comma-separated (overrides the task's)."),
    out: str = typer.Option("results", "--out", help="Results directory: OUT/<model>/<task>.json."),
    resume: bool = typer.Option(False, "--resume", help="Skip units already finished with the same spec."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse clean/corrupted forwards from the activation cache."),
    cache_dir: Optional[str] = CacheDir,
    include_path: list[str] = IncludePath,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run task(s) on model(s) and write one RunResult JSON per (model, task).

    Data parallel: `torchrun --nproc_per_node N -m circuitbench run ...` (or `accelerate launch`)
    splits the prompts over N processes; the main one writes the results."""
    from circuitbench.data_parallel import is_main_process
    from circuitbench.runner import command_line
    from circuitbench.runner import run as run_units
    from circuitbench.spec import RunOptions

    try:
        options = RunOptions(
            n=n, seed=seed, split=split, device=device, device_map=device_map, dtype=dtype, init=init, out=out, resume=resume,
            cache=cache, cache_dir=cache_dir,
            batch_size=batch_size if batch_size == "auto" else _int_option(batch_size, "--batch-size"),
            methods=_split(methods) if methods is not None else None,
        )
    except ValidationError as e:
        raise _options_error(e) from None
    outcomes = run_units(_split(task), _split(model), options, include_paths=tuple(include_path),
                         show_progress=not quiet, command=command_line())
    if is_main_process():  # other data-parallel processes hold the same results and stay quiet
        _render_summary(outcomes)


def _int_option(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CircuitbenchError(f"{flag} {value!r}: expected a positive integer or 'auto'.") from None


def _top_heads(scores: list[list[float]], k: int = 3) -> str:
    flat = [(v, l, h) for l, row in enumerate(scores) for h, v in enumerate(row)]
    flat.sort(key=lambda t: -abs(t[0]))
    return "  ".join(f"{l}.{h} ({v:.2f})" for v, l, h in flat[:k])


def _render_summary(outcomes: list) -> None:
    """Metrics table (clean ± stderr vs corrupted), then top heads per method, then files."""
    metrics = Table(title="metrics (★ main)")
    for col in ("model", "task", "n", "metric", "clean", "corrupted"):
        metrics.add_column(col, overflow="fold")
    heads = Table(title="top heads (layer.head)")
    for col in ("model", "task", "method", "heads"):
        heads.add_column(col, overflow="fold")
    for o in outcomes:
        r = o.result
        n = f"{r.task.n_prompts}" + (f" (−{r.task.n_dropped})" if r.task.n_dropped else "")
        for i, (name, value) in enumerate(r.metrics.items()):
            err = r.metrics_stderr.get(name)
            corr = r.metrics_corrupted.get(name)
            metrics.add_row(
                o.model if i == 0 else "", o.task if i == 0 else "", n if i == 0 else "",
                name + (" ★" if name == r.task.main_metric else ""),
                f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else ""),
                "" if corr is None else f"{corr:.3f}",
            )
        metrics.add_section()
        for method, scores in r.head_scores.items():
            heads.add_row(o.model, o.task, method, _top_heads(scores))
    console.print(metrics)
    if heads.row_count:
        console.print(heads)
    for o in outcomes:
        c = o.result.circuit
        if c is not None:
            rule = ", ".join(f"{k}={v}" for k, v in c.rule.items() if k in ("top_k", "threshold", "fraction", "by"))
            figures = "" if c.faithfulness is None else f" · faithfulness {c.faithfulness:.2f}"
            if c.cpr is not None and c.cmd is not None:
                figures += f" · CPR {c.cpr:.2f} · CMD {c.cmd:.2f}"
            heads = " ".join(f"{l}.{h}" for l, h in c.heads)
            console.print(f"{o.model} / {o.task}: circuit from {c.method} ({rule}): {heads}{figures}", highlight=False, soft_wrap=True)
        for pair, rho in o.result.method_agreement.items():
            console.print(f"{o.model} / {o.task}: {pair} = {rho:.2f}", highlight=False, soft_wrap=True)
        by_split = o.result.metrics_by_split
        if by_split:
            main = o.result.task.main_metric
            side = " · ".join(f"{split} {m.metrics[main]:.3f} ± {m.metrics_stderr[main]:.3f} (n={m.n_prompts})"
                              for split, m in sorted(by_split.items()))
            console.print(f"{o.model} / {o.task}: {main} by split: {side}", highlight=False, soft_wrap=True)
    for o in outcomes:
        note = " (finished earlier, kept: --resume)" if o.skipped else ""
        dropped = f"; dropped {o.result.task.n_dropped}: {dict(o.result.task.dropped_reasons)}" if o.result.task.n_dropped else ""
        console.print(f"wrote {o.path}{note}{dropped}", highlight=False, soft_wrap=True)


@app.command()
def ls(what: str = typer.Argument(..., help="tasks | models | methods | metrics | generators"),
       include_path: list[str] = IncludePath) -> None:
    """List registered tasks, models, methods, metrics or generators."""
    from circuitbench.catalog import all_tasks, model_registry
    from circuitbench.methods import METHODS
    from circuitbench.metrics import METRICS
    from circuitbench.prompts import GENERATORS

    table = Table()
    if what == "tasks":
        for col in ("task", "generator", "n", "metrics", "methods", "description"):
            table.add_column(col, overflow="fold")
        for name, spec in all_tasks(tuple(include_path)).items():
            table.add_row(name, spec.generator.name, str(spec.n_prompts), ", ".join(spec.metrics),
                          ", ".join(spec.methods), spec.description.strip().split(". ")[0].rstrip(".") + ".")
    elif what == "models":
        from circuitbench.models.loading import memory_needed_bytes

        for col in ("model", "source", "params", "layers×heads", "d_model", "dtype", "memory fp32 / bf16", "notes"):
            table.add_column(col, overflow="fold")
        for name, m in model_registry().items():
            memory = " / ".join(f"{memory_needed_bytes(m.n_params, d) / 2**30:.1f} GB" for d in ("float32", "bfloat16"))
            table.add_row(name, m.hf_id or f"toy: {m.path}", f"{m.n_params / 1e6:,.1f}M",
                          f"{m.n_layers}×{m.n_heads}", str(m.d_model), m.dtype, memory, m.notes)
    elif what in ("methods", "metrics", "generators"):
        registry = {"methods": METHODS, "metrics": METRICS, "generators": GENERATORS}[what]
        table.add_column(what[:-1])
        table.add_column("description")
        for name, item in registry.items():
            table.add_row(name, getattr(item, "description", None) or getattr(item, "display", ""))
    else:
        raise CircuitbenchError(f"ls {what!r}: choose one of tasks, models, methods, metrics, generators.")
    console.print(table)


@app.command()
def validate(
    task: str = typer.Argument(..., help="Task name or YAML path."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Check against this model's tokenizer."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Check against a tokenizer directory."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of prompts to render."),
    show: int = typer.Option(5, "--show", help="Prompts to print."),
    include_path: list[str] = IncludePath,
) -> None:
    """Render a task's prompts and report what a tokenizer would drop (no weights loaded)."""
    from circuitbench.catalog import load_task
    from circuitbench.models import load_vocabulary, tokenizer_vocabulary
    from circuitbench.runner import effective_spec, encode_task, generate_prompts
    from circuitbench.spec import RunOptions

    spec = effective_spec(load_task(task, tuple(include_path)), RunOptions(n=n))
    prompts = generate_prompts(spec)
    console.print(f"[bold]{spec.name}[/] v{spec.version} · spec {spec.spec_hash()} · {len(prompts.prompts)} "
                  f"{spec.split} prompts")
    sample = Table("prompt", "answer", "distractor", "corrupted")  # first --show prompts
    for p in prompts.prompts[:show]:
        sample.add_row(repr(p.text), repr(p.answer or ""), repr(p.distractor or ""), repr(p.corrupted_text or ""))
    if show > 0:
        console.print(sample)
    if model is None and tokenizer is None:
        console.print("Spec is valid. Pass --model or --tokenizer to check tokenization.")
        return
    if tokenizer is not None:
        vocab, unk, source = tokenizer_vocabulary(tokenizer)
        n_ctx = 10**9
    else:
        assert model is not None
        vocab, unk, n_ctx, source = load_vocabulary(model)
    data = encode_task(spec, vocab, unk, n_ctx)
    rep = data.report
    console.print(f"tokenizer: {source}: kept {len(data)} of {rep.n_total}, dropped {rep.n_dropped}", soft_wrap=True)
    for reason, count in rep.reasons.most_common():
        console.print(f"  {count} × {reason}; e.g. {'; '.join(rep.examples[reason])}", soft_wrap=True)


def _render_matrices(result: dict, metrics: list[str]) -> None:
    """One rich table per overlap metric, then the alignment(s) used."""
    labels = result["labels"]
    models = {label.split("/", 1)[0] for label in labels}
    shared = f" ({models.pop()})" if len(models) == 1 and all("/" in label for label in labels) else ""
    if shared:  # one model's tasks: the columns need only the task names
        labels = [label.split("/", 1)[1] for label in labels]
    for name in metrics:
        table = Table(title=name + shared)
        table.add_column("", overflow="fold")
        for label in labels:
            table.add_column(label, justify="right", overflow="fold")
        for label, row in zip(labels, result[name]):
            table.add_row(label, *(f"{v:.3g}" for v in row))
        console.print(table)
    kinds = {a for row in result["alignment"] for a in row}
    console.print(f"alignment: {', '.join(sorted(kinds))}", soft_wrap=True)


@app.command()
def overlap(
    files: list[str] = typer.Argument(..., help="RunResult JSONs or any JSON with \"heads\": [[layer, head], ...]; globs too."),
    metric: str = typer.Option("jaccard,overlap_coefficient,hypergeometric_p,spearman", "--metric",
                               help="Comma-separated: jaccard, overlap_coefficient, directional, hypergeometric_p, "
                                    "weighted_jaccard, spearman, kendall, top_n_overlap, rbo."),
    alignment: str = typer.Option("auto", "--alignment", help="auto | head | relative_depth"),
    bins: int = typer.Option(10, "--bins", help="Relative-depth bins for models of different shape."),
    top_n: int = typer.Option(10, "--top-n"),
    rbo_p: float = typer.Option(0.9, "--rbo-p"),
    as_json: bool = typer.Option(False, "--json", help="Print {labels, <metric>: matrix} as JSON."),
    plot_path: Optional[str] = typer.Option(None, "--plot", help="Heatmap PNG of the first metric."),
) -> None:
    """Overlap matrices between circuits (tasks in one model, or models)."""
    import glob
    import json
    from pathlib import Path

    from circuitbench.circuits import Circuit
    from circuitbench.overlap import overlap_matrix

    paths: list[str] = []
    for f in files:
        matches = sorted(glob.glob(f)) if any(ch in f for ch in "*?[") else [f]
        if not matches:
            raise CircuitbenchError(f"overlap: no file matches {f!r}.")
        paths.extend(matches)
    if len(paths) < 2:
        raise CircuitbenchError("overlap: give at least two circuit files.")
    if alignment not in ("auto", "head", "relative_depth"):
        raise CircuitbenchError(f"--alignment {alignment!r}: choose auto, head or relative_depth.")
    circuits = [Circuit.load(Path(p)) for p in paths]
    metrics = _split(metric)
    result = overlap_matrix(circuits, metrics, alignment, bins, top_n, rbo_p)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _render_matrices(result, metrics)
    if plot_path:
        from circuitbench.plots import overlap_heatmap

        overlap_heatmap(result["labels"], result[metrics[0]], metrics[0], Path(plot_path))


@app.command()
def leaderboard(
    results: str = typer.Option("results", "--results", help="Directory of RunResults (<model>/<task>.json)."),
    out: str = typer.Option("leaderboards", "--out", help="Where to write <task>.md/.csv, README.md, index.html."),
    include_path: list[str] = IncludePath,
) -> None:
    """Aggregate results into leaderboard tables (Markdown, CSV, sortable HTML)."""
    from pathlib import Path

    from circuitbench.leaderboard import build

    summary = build(Path(results), Path(out), tuple(include_path))
    console.print(f"leaderboard: {len(summary['tasks'])} tasks × {len(summary['models'])} models → {out}/ "
                  f"({summary['flagged']} results flagged, listed apart)", soft_wrap=True)


@app.command()
def report(
    result: str = typer.Argument(..., help="A RunResult JSON."),
    out: Optional[str] = typer.Option(None, "--out", help="Directory (default: next to the result, <task>_report/)."),
) -> None:
    """Heatmaps, faithfulness curve, causal-tracing maps and one HTML page for a result."""
    import json
    from pathlib import Path

    from circuitbench.report import build_report
    from circuitbench.results import RunResult

    path = Path(result)
    try:
        run_result = RunResult.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise CircuitbenchError(f"{path}: not a readable RunResult ({type(e).__name__}).") from None
    target = Path(out) if out else path.parent / f"{path.stem}_report"
    files = build_report(run_result, target)
    console.print(f"wrote {len(files)} files to {target}/ (open {target / 'report.html'})", soft_wrap=True)


@app.command()
def compare(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="One model, several --tasks."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Tasks to compare within --model."),
    models: Optional[str] = typer.Option(None, "--models", help="Models to compare on one --task."),
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    metric: str = typer.Option("jaccard,overlap_coefficient,hypergeometric_p,spearman", "--metric"),
    init: str = typer.Option("pretrained", "--init"),
    n: Optional[int] = typer.Option(None, "--n"),
    out: str = typer.Option("results", "--out"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    include_path: list[str] = IncludePath,
) -> None:
    """Run what is missing (resuming finished units), then print the circuit overlap matrix."""
    from circuitbench.circuits import Circuit
    from circuitbench.runner import run as run_units
    from circuitbench.spec import RunOptions

    if bool(model and tasks) == bool(models and task):
        raise CircuitbenchError("compare: give either --model M --tasks T1,T2 or --models M1,M2 --task T.")
    task_list, model_list = (_split(tasks), [model]) if model and tasks else ([task], _split(models))  # type: ignore[list-item]
    try:
        options = RunOptions(n=n, init=init, out=out, resume=True)
    except ValidationError as e:
        raise _options_error(e) from None
    outcomes = run_units(task_list, model_list, options, include_paths=tuple(include_path), show_progress=not quiet)
    from circuitbench.data_parallel import is_main_process

    if not is_main_process():  # under a launcher: the main process writes the files and reports
        return
    missing = [f"{o.model}/{o.task}" for o in outcomes if o.result.circuit is None]
    if missing:
        raise CircuitbenchError(f"compare: no circuit in {missing}: give those tasks a circuit rule in their YAML.")
    from circuitbench.overlap import overlap_matrix

    circuits = [Circuit.load(o.path) for o in outcomes]
    metrics = _split(metric)
    result = overlap_matrix(circuits, metrics)
    _render_matrices(result, metrics)


# TrainConfig / ToyArch field paths whose flag is not simply --field-name
TRAIN_FLAGS = {"n_layers": "--layers", "n_heads": "--heads", "noise.site": "--noise-site", "noise.scale": "--noise-scale",
               "tasks": "--task"}


@app.command("train")
def train_cmd(
    task: str = typer.Option(..., "--task", "-t", help="Task(s) whose train split to train on, comma-separated, or 'suite'."),
    out: str = typer.Option(..., "--out", help="Output directory: the final model, checkpoints/step_N/, training_log.json."),
    arch: str = typer.Option("attn-only-2l", "--arch", help="attn-only-1l | attn-only-2l | gpt-2l | sort-1l1h"),
    layers: Optional[int] = typer.Option(None, "--layers"),
    heads: Optional[int] = typer.Option(None, "--heads"),
    d_model: Optional[int] = typer.Option(None, "--d-model"),
    positional: Optional[str] = typer.Option(None, "--positional", help="standard (learned absolute) | rotary."),
    smear_keys: bool = typer.Option(False, "--smear-keys", help="Each key a learned per-head mix of its own and the previous key."),
    steps: int = typer.Option(1000, "--steps"),
    checkpoints: int = typer.Option(8, "--checkpoints", help="About this many checkpoints, log-spaced and linear."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    n_train: int = typer.Option(4000, "--n-train", help="Train-split prompts per text task (at most)."),
    loss_positions: str = typer.Option("all", "--loss-positions",
                                       help="all: loss at every position (the seeds' GPT-2-like model) | answer: "
                                            "only answer tokens (text) and copied tokens (induction)."),
    noise_site: Optional[str] = typer.Option(None, "--noise-site", help="Gaussian noise while training at: embed | attn_out | resid."),
    noise_scale: Optional[float] = typer.Option(None, "--noise-scale", help="Standard deviation of that noise."),
    threads: int = typer.Option(1, "--threads", help="torch threads while training (toy models: 1 is fastest on a shared CPU)."),
    induction_share: float = typer.Option(0.5, "--induction-share", help="Fraction of steps on the induction stream when mixed with text tasks."),
) -> None:
    """Train a toy model on tasks' train splits, saving checkpoints `--model` accepts."""
    from pathlib import Path

    from rich.progress import Progress

    from circuitbench.models.training import TrainConfig, arch_from, train

    if (noise_site is None) != (noise_scale is None):
        raise CircuitbenchError("--noise-site and --noise-scale go together, e.g. --noise-site resid --noise-scale 0.1.")
    try:
        config = TrainConfig(
            arch=arch_from(arch, n_layers=layers, n_heads=heads, d_model=d_model, positional=positional,
                           smear_keys=smear_keys or None),
            tasks=_split(task), steps=steps, checkpoints=checkpoints, batch_size=batch_size, lr=lr, seed=seed,
            n_train=n_train, loss_positions=loss_positions, threads=threads, induction_share=induction_share,
            noise={"site": noise_site, "scale": noise_scale} if noise_site is not None else None)
    except ValidationError as e:
        raise _options_error(e, TRAIN_FLAGS) from None
    with Progress(console=err_console, transient=True) as progress:
        bar = progress.add_task("training", total=steps)

        def report(step: int, loss: float) -> None:
            progress.update(bar, completed=step, description=f"training loss {loss:.3f}")

        summary = train(config, Path(out), report)
    console.print(f"saved {out} (final loss {summary['final_loss']:.3f}, {summary['train_seconds']} s; "
                  f"checkpoints at steps {summary['checkpoints']})", soft_wrap=True)


@app.command()
def dynamics(
    model: str = typer.Option(..., "--model", "-m", help="A `circuitbench train` output directory with checkpoints/."),
    task: str = typer.Option("induction", "--task", "-t"),
    n: int = typer.Option(32, "--n", help="Evaluation prompts per checkpoint."),
    plot_path: Optional[str] = typer.Option(None, "--plot", help="PNG path (default: MODEL/dynamics_<task>.png)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads (toy checkpoints: 1 is fastest on a shared CPU)."),
) -> None:
    """Metrics and head scores across checkpoints, with the phase change located and plotted."""
    from pathlib import Path

    from circuitbench.dynamics import analyse, plot
    from circuitbench.models.training import torch_threads
    from circuitbench.results import write_atomic

    run_dir = Path(model)
    with torch_threads(threads):
        dyn = analyse(run_dir, task, n=n)
    table = Table("step", dyn.metric, "max prefix-matching", "ICL score", title=f"training dynamics: {task}")
    for i, step in enumerate(dyn.steps):
        best = max(max(row) for row in dyn.prefix_matching[i])
        table.add_row(str(step), f"{dyn.metric_values[i]:.3f}", f"{best:.3f}", f"{dyn.icl_score[i]:.3f}")
    console.print(table)
    pc = dyn.phase_change
    console.print(f"phase change ({pc.series}): steps {pc.start_step}–{pc.end_step}, change {pc.change:+.3f}; "
                  f"prefix matching: steps {dyn.prefix_phase_change.start_step}–{dyn.prefix_phase_change.end_step}",
                  soft_wrap=True)
    stem = f"dynamics_{dyn.task}"
    write_atomic(run_dir / f"{stem}.json", dyn.model_dump_json(indent=2) + "\n")
    png = Path(plot_path) if plot_path else run_dir / f"{stem}.png"
    plot(dyn, png)
    console.print(f"wrote {run_dir / f'{stem}.json'} and {png}", soft_wrap=True)


@app.command("train-zoo")
def train_zoo(
    name: str = typer.Argument(..., help="Zoo model to (re)train, e.g. toy-induction-2l."),
    out: Optional[str] = typer.Option(None, "--out", help="Checkpoint directory (default: the shipped one)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Retrain a shipped toy model from scratch with its recorded recipe."""
    from pathlib import Path

    from rich.progress import Progress

    from circuitbench.models.zoo import RECIPES, train_zoo_model

    total = steps or (RECIPES[name].default_steps if name in RECIPES else 1)
    with Progress(console=err_console, transient=True) as progress:
        bar = progress.add_task(f"training {name}", total=total)

        def report(step: int, loss: float) -> None:
            progress.update(bar, completed=step, description=f"training {name} loss {loss:.3f}")

        path, summary = train_zoo_model(name, Path(out) if out else None, steps, seed, report)
    console.print(f"saved {path}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


CACHE_GROUP_NAMES = {"metrics": "metrics", "base_runs": "activations"}


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[str] = CacheDir) -> None:
    """List cache entries: key, model, task and prompt hash, size, created, last used, hits."""
    from circuitbench.activation_cache import ActivationCache

    store = ActivationCache(cache_dir)
    entries = store.entries()
    if not entries:
        console.print(f"activation cache {store.root}: empty", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"activation cache {store.root}")
    for col in ("key", "model", "init", "dtype·device", "task", "n", "prompt hash", "holds", "size", "created",
                "last used", "hits"):
        table.add_column(col, overflow="fold", justify="right" if col in ("n", "size", "hits") else "left")
    stamp = lambda iso: iso[:16].replace("T", " ")
    for e in entries:
        m = e.manifest
        if m is None:
            table.add_row(e.path.name[:12], "(unreadable: `cache clear` removes it)", *[""] * 6, _size(e.size_bytes), "", "", "")
            continue
        k = m.key
        init = k.init + (f" (seed {k.init_seed})" if k.init_seed is not None else "")
        # file names are <input>.<group>.safetensors; show what kinds of data the entry holds
        holds = sorted({CACHE_GROUP_NAMES.get(name.split(".")[1], name) for name in m.files})
        table.add_row(e.path.name[:12], k.model, init, f"{k.dtype}·{k.device}", m.task, str(m.n_prompts), k.prompt_hash,
                      ", ".join(holds), _size(e.size_bytes), stamp(m.created_at), stamp(m.last_used_at), str(m.hits))
    console.print(table)
    console.print(f"{_entries(len(entries))}, {_size(sum(e.size_bytes for e in entries))} total", highlight=False)


@cache_app.command("clear")
def cache_clear(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only entries of this model (name as `cache ls` shows it)."),
    older_than: Optional[float] = typer.Option(None, "--older-than", min=0, help="Only entries not used for more than DAYS days."),
    cache_dir: Optional[str] = CacheDir,
) -> None:
    """Delete cache entries (all of them unless --model / --older-than narrow it)."""
    from circuitbench.activation_cache import ActivationCache

    store = ActivationCache(cache_dir)
    removed = store.clear(model=model, older_than_days=older_than)
    freed = _size(sum(e.size_bytes for e in removed))
    console.print(f"removed {_entries(len(removed))} ({freed}) from {store.root}", highlight=False, soft_wrap=True)
    if model is not None and not removed:
        models = sorted({e.manifest.key.model for e in store.entries() if e.manifest is not None})
        console.print(f"no entries of model {model!r}; cached models: {', '.join(models) or 'none'}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: user mistakes print one message and exit 2, without a traceback."""
    try:
        app(standalone_mode=False)
    except CircuitbenchError as e:
        # Data-parallel processes meet the same mistakes together (see data_parallel.py): one says it.
        from circuitbench.data_parallel import is_main_process

        if is_main_process():
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as e:  # usage errors (bad option value, unknown option) land here in standalone_mode=False
        if isinstance(e, _usage_error_types()):
            e.show()
            sys.exit(2)
        raise


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


if __name__ == "__main__":
    main()
