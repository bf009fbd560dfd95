"""Console rendering for the CLI (rich): run summaries, overlap matrices, registry listings, the
activation cache, training dynamics, progress bars from the library's progress callback, and
log records."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from circuitbench.progress import ProgressFn

if TYPE_CHECKING:
    from circuitbench.pipeline.grid import UnitOutcome

console = Console()
err_console = Console(stderr=True)


def plain(text: str, stderr: bool = False) -> None:
    """A line whose text is printed as it is: names, paths and messages may hold [brackets]."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True)


def _row(*cells: object) -> list[Text]:
    """Table cells as literal text (never read as rich markup)."""
    return [Text(str(c)) for c in cells]


def show_logs(level: int = logging.INFO) -> None:
    """Library log records (circuitbench.*) on stderr through rich, at `level` and above."""
    logger = logging.getLogger("circuitbench")
    logger.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False, markup=False)]
    logger.setLevel(level)
    logger.propagate = False


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressFn]:
    """A ProgressFn drawing one transient bar per piece of work, keyed by the label's part before
    " · " (the rest is live detail, e.g. the loss); a key seen again after its bar finished starts
    a new bar."""
    if not enabled:
        yield lambda what, done, total: None
        return
    with Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True) as progress:
        bars: dict[str, TaskID] = {}
        finished: set[str] = set()

        def report(what: str, done: int, total: int) -> None:
            key = what.split(" · ")[0]
            if key not in bars or key in finished:
                if key in bars:
                    progress.remove_task(bars.pop(key))
                finished.discard(key)
                bars[key] = progress.add_task(what, total=total)
            progress.update(bars[key], completed=done, description=what)
            if done >= total:
                finished.add(key)

        yield report


def _top_heads(scores: list[list[float]], k: int = 3) -> str:
    flat = [(v, l, h) for l, row in enumerate(scores) for h, v in enumerate(row)]
    flat.sort(key=lambda t: -abs(t[0]))
    return "  ".join(f"{l}.{h} ({v:.2f})" for v, l, h in flat[:k])


def print_run_summary(outcomes: Sequence["UnitOutcome"]) -> None:
    """Metrics table (clean ± stderr vs corrupted), top heads per method, circuits, files, failures."""
    metrics = Table(title="metrics (★ main)")
    for col in ("model", "task", "n", "metric", "clean", "corrupted"):
        metrics.add_column(col, overflow="fold")
    heads = Table(title="top heads (layer.head)")
    for col in ("model", "task", "method", "heads"):
        heads.add_column(col, overflow="fold")
    done = [o for o in outcomes if not o.failed]
    for o in done:
        r = o.result
        n = f"{r.task.n_prompts}" + (f" (−{r.task.n_dropped})" if r.task.n_dropped else "")
        for i, (name, value) in enumerate(r.metrics.items()):
            err = r.metrics_stderr.get(name)
            corr = r.metrics_corrupted.get(name)
            metrics.add_row(*_row(
                o.model if i == 0 else "", o.task if i == 0 else "", n if i == 0 else "",
                name + (" ★" if name == r.task.main_metric else ""),
                f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else ""),
                "" if corr is None else f"{corr:.3f}",
            ))
        metrics.add_section()
        for method, scores in r.head_scores.items():
            heads.add_row(*_row(o.model, o.task, method, _top_heads(scores)))
    if done:
        console.print(metrics)
    if heads.row_count:
        console.print(heads)
    for o in done:
        _print_unit_figures(o)
    for o in outcomes:
        note = " (finished earlier, kept: --resume)" if o.skipped else " (failed)" if o.failed else ""
        task = o.result.task
        dropped = f"; dropped {task.n_dropped}: {dict(task.dropped_reasons)}" if task.n_dropped else ""
        plain(f"wrote {o.path}{note}{dropped}")
    failed = [o for o in outcomes if o.failed]
    if failed:
        table = Table(title=f"{len(failed)} of {len(outcomes)} units failed (rerun with --resume to retry them)")
        for col in ("model", "task", "error"):
            table.add_column(col, overflow="fold")
        for o in failed:
            assert o.result.error is not None
            table.add_row(*_row(o.model, o.task, f"{o.result.error.type}: {o.result.error.message}"))
        err_console.print(table)


def _print_unit_figures(o: "UnitOutcome") -> None:
    c = o.result.circuit
    say = lambda text: plain(f"{o.model} / {o.task}: {text}")  # noqa: E731
    if c is not None:
        shown = ("level", "top_k", "threshold", "fraction", "by")
        rule = ", ".join(f"{k}={v}" for k, v in c.rule.items() if k in shown)
        figures = "" if c.faithfulness is None else f" · faithfulness {c.faithfulness:.2f}"
        if c.cpr is not None and c.cmd is not None:
            figures += f" · CPR {c.cpr:.2f} · CMD {c.cmd:.2f}"
        figures += "".join(f" · {k}-ablation faithfulness {v:.2f}" for k, v in c.by_ablation.items()
                           if v is not None and k != c.ablation)
        members = " ".join([f"{l}.{h}" for l, h in c.heads] + [f"m{l}" for l in c.mlps])
        if c.level == "edge":
            members = f"{len(c.edges)} edges over {members or 'no node'}"
        say(f"circuit from {c.method} ({rule}): {members}{figures}")
        if len(c.candidates) > 1:
            say("candidates: " + " · ".join(f"{k.method} {k.faithfulness:.2f}" for k in c.candidates))
        for warning in c.warnings:
            say(f"warning: {warning}")
    for method, r in o.result.recovery.items():
        auroc = "n/a" if r.auroc is None else f"{r.auroc:.2f}"
        precision = "n/a" if r.precision is None else f"{r.precision:.2f}"
        say(f"recovery of the reference ({r.n_reference} heads) by {method}: precision {precision} · recall "
            f"{r.recall:.2f} · AUROC {auroc}")
    for method, r in o.result.node_recovery.items():
        auroc = "n/a" if r.auroc is None else f"{r.auroc:.2f}"
        say(f"recovery of the reference nodes ({r.n_reference} heads and MLPs) by {method}: recall at its size "
            f"{r.recall:.2f} · AUROC {auroc}")
    for warning in o.result.warnings:
        say(f"warning: {warning}")
    for pair, rho in o.result.method_agreement.items():
        say(f"{pair} = {rho:.2f}")
    by_split = o.result.metrics_by_split
    if by_split:
        main = o.result.task.main_metric
        say(f"{main} by split: " + " · ".join(f"{split} {m.metrics[main]:.3f} ± {m.metrics_stderr[main]:.3f} "
                                             f"(n={m.n_prompts})" for split, m in sorted(by_split.items())))


def print_overlap(result: dict[str, Any], metrics: list[str]) -> None:
    """One table per overlap metric, then the alignment(s) used."""
    labels = result["labels"]
    models = {label.split("/", 1)[0] for label in labels}
    shared = f" ({models.pop()})" if len(models) == 1 and all("/" in label for label in labels) else ""
    if shared:  # one model's tasks: the columns need only the task names
        labels = [label.split("/", 1)[1] for label in labels]
    for name in metrics:
        table = Table(title=name + shared)
        table.add_column("", overflow="fold")
        for label in labels:
            table.add_column(Text(label), justify="right", overflow="fold")
        for label, row in zip(labels, result[name]):
            table.add_row(*_row(label, *(f"{v:.3g}" for v in row)))
        console.print(table)
    kinds = {a for row in result["alignment"] for a in row}
    plain(f"alignment: {', '.join(sorted(kinds))}")


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*_row(*row))
    console.print(table)


def size_text(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def entries_text(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


# cache file names are <input>.<group>.safetensors; what kinds of data an entry holds
CACHE_GROUP_NAMES = {"metrics": "metrics", "base_runs": "activations"}


def print_cache(root: Any, entries: Sequence[Any]) -> None:
    """The activation cache's entries (scores.activation_cache.EntryInfo)."""
    if not entries:
        plain(f"activation cache {root}: empty")
        return
    table = Table(title=f"activation cache {root}")
    for col in ("key", "model", "init", "dtype·device", "task", "n", "prompt hash", "holds", "size", "created",
                "last used", "hits"):
        table.add_column(col, overflow="fold", justify="right" if col in ("n", "size", "hits") else "left")
    stamp = lambda iso: iso[:16].replace("T", " ")  # noqa: E731
    for e in entries:
        m = e.manifest
        if m is None:
            table.add_row(*_row(e.path.name[:12], "(unreadable: `cache clear` removes it)", *[""] * 6,
                                size_text(e.size_bytes), "", "", ""))
            continue
        k = m.key
        init = k.init + (f" (seed {k.init_seed})" if k.init_seed is not None else "")
        holds = sorted({CACHE_GROUP_NAMES.get(name.split(".")[1], name) for name in m.files})
        table.add_row(*_row(e.path.name[:12], k.model, init, f"{k.dtype}·{k.device}", m.task, m.n_prompts,
                            k.prompt_hash,
                            ", ".join(holds), size_text(e.size_bytes), stamp(m.created_at), stamp(m.last_used_at),
                            m.hits))
    console.print(table)
    plain(f"{entries_text(len(entries))}, {size_text(sum(e.size_bytes for e in entries))} total")
