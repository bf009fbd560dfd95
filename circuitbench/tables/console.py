"""Console rendering for the CLI (rich): run summaries, overlap matrices, registry listings, the
activation cache, training dynamics, progress bars from the library's progress callback, and
log records."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich import box
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

from circuitbench.circuits.circuit import RANDOM_INIT, Faithfulness, describe_rule, head_label, heads_text
from circuitbench.progress import ProgressFn

if TYPE_CHECKING:
    from circuitbench.circuits.overlap import OverlapMatrix
    from circuitbench.pipeline.grid import UnitOutcome
    from circuitbench.pipeline.validation import TaskValidation
    from circuitbench.training.dynamics import Dynamics

console = Console()
err_console = Console(stderr=True)


def plain(text: str, stderr: bool = False) -> None:
    """A line whose text is printed as it is: names, paths and messages may hold [brackets]."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True)


def _row(*cells: object) -> list[Text]:
    """Table cells as literal text (never read as rich markup)."""
    return [Text(str(c)) for c in cells]


class _Once(logging.Filter):
    """Passes each distinct message once: a note the library logs per batch or per candidate circuit
    (e.g. how many prompts resample ablation pairs) is said once, not dozens of times."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def show_logs(level: int = logging.INFO) -> None:
    """Library log records (circuitbench.*) on stderr through rich, at `level` and above, each
    distinct message once."""
    logger = logging.getLogger("circuitbench")
    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    handler.addFilter(_Once())
    logger.handlers[:] = [handler]
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
    return "  ".join(f"{head_label(l, h)} {v:+.2f}" for v, l, h in flat[:k])


RANDOM_INIT_LEGEND = f"{RANDOM_INIT}: seeded random weights, a baseline (not a trained model)"


def print_run_summary(outcomes: Sequence["UnitOutcome"], details: bool = False) -> None:
    """What a run did: one table per model (a row per task: main metric, circuit size, verdict,
    faithfulness with its interval), where the results went, then the failed units with their
    messages (printed here only: the grid does not log them as they happen). `details`: the
    per-unit tables and figures too (every metric, top heads, the circuit's panel, recovery ...),
    which the reports (`circuitbench report`) also hold."""
    if details:
        _print_details(outcomes)
    else:
        for label, rows in _by_model(outcomes).items():
            console.print(summary_table(label, rows))
        if any(o.result.status == "complete" for o in outcomes):
            plain(SUMMARY_LEGEND)
    if any(o.result.model.init == "random" for o in outcomes):
        plain(RANDOM_INIT_LEGEND)
    for folder, units in _by_folder(outcomes).items():
        if details or len(units) == 1:
            for o in units:
                plain(f"wrote {o.path}{_unit_note(o)}")
        else:
            kept = sum(o.skipped for o in units)
            failed = sum(o.failed for o in units)
            notes = [f"{kept} kept from earlier (--resume)"] * bool(kept) + [f"{failed} failed"] * bool(failed)
            plain(f"wrote {len(units)} results to {folder}/" + (f" ({', '.join(notes)})" if notes else ""))
    failed = [o for o in outcomes if o.failed]
    if failed:
        table = Table(title=f"{len(failed)} of {len(outcomes)} units failed (rerun with --resume to retry them)",
                      title_justify="left", **COMPACT)
        for col in ("model", "task", "error"):
            table.add_column(col, overflow="fold", no_wrap=col != "error")
        for o in failed:
            assert o.result.error is not None
            table.add_row(*_row(o.result.model.label, o.task, f"{o.result.error.type}: {o.result.error.message}"))
        err_console.print(table)


# A table without vertical rules or edges, one space between columns: on 80 columns the width goes
# to the cells (rich's default box spends 3 columns between each pair).
COMPACT: dict[str, Any] = {"box": box.SIMPLE_HEAD, "padding": 0, "pad_edge": False, "show_edge": False}
SUMMARY_COLUMNS = ("task", "n", "main metric", "value", "circuit", "verdict", "faithfulness")
SUMMARY_LEGEND = ("faithfulness: the circuit alone under its rule's ablation, as a share of the whole model's effect "
                  "(1: all of it) [95 % interval]. Each unit's details: `circuitbench report RESULT.json`, or run "
                  "with --details.")


def _by_model(outcomes: Sequence["UnitOutcome"]) -> dict[str, list["UnitOutcome"]]:
    grouped: dict[str, list[UnitOutcome]] = {}
    for o in outcomes:
        grouped.setdefault(o.result.model.label, []).append(o)
    return grouped


def _by_folder(outcomes: Sequence["UnitOutcome"]) -> dict[Any, list["UnitOutcome"]]:
    grouped: dict[Any, list[UnitOutcome]] = {}
    for o in outcomes:
        grouped.setdefault(o.path.parent, []).append(o)
    return grouped


def _unit_note(o: "UnitOutcome") -> str:
    note = " (finished earlier, kept: --resume)" if o.skipped else " (failed)" if o.failed else ""
    task = o.result.task
    return note + (f"; dropped {task.n_dropped}: {dict(task.dropped_reasons)}" if task.n_dropped else "")


def circuit_size_text(c: Any) -> str:
    """A circuit's size in its own units: '3 heads', '2 heads + 1 MLP', '14 edges'."""
    if c is None:
        return "—"
    plural = lambda n, what: f"{n} {what}{'s' if n != 1 else ''}"  # noqa: E731
    if c.level == "edge":
        return plural(len(c.edges), "edge")
    return " + ".join([plural(len(c.heads), "head")] + [plural(len(c.mlps), "MLP")] * bool(c.mlps))


def faithfulness_cell(c: Any) -> str:
    """f under the rule's ablation with its 95 % interval (from the ablation panel, when it ran);
    'undefined' without a number when there is no measurable effect to be faithful to."""
    f = None if c is None else c.faithfulness
    if f is None:
        return "—"
    if f.value is None:
        return "undefined"
    entry = c.panel.get(f.ablation)
    return f"{f.value:.2f}" + (_interval(entry.ci) if entry is not None else "")


def _interval(ci: tuple[float, float] | None) -> str:
    """' [low, high]' after a figure, or nothing without an interval."""
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def summary_row(o: "UnitOutcome") -> tuple[str, ...]:
    """One task's row of a model's summary table (SUMMARY_COLUMNS)."""
    r = o.result
    task = o.task + (" (kept)" if o.skipped else "")
    if o.failed:
        return (task, "", r.task.main_metric, "failed (below)", "", "", "")
    n = f"{r.task.n_prompts}" + (f" (−{r.task.n_dropped})" if r.task.n_dropped else "")
    main = r.task.main_metric
    value, err = r.metrics.get(main), r.metrics_stderr.get(main)
    shown = "n/a" if value is None else _figure(value) + (f" ± {_figure(err, value)}" if err is not None else "")
    c = r.circuit
    verdict = "—" if c is None else (c.verdict or "not judged").replace("_", " ")
    return (task, n, main, shown, circuit_size_text(c), verdict, faithfulness_cell(c))


def _figure(x: float, like: float | None = None) -> str:
    """A metric in a summary cell: two decimals from 1 up (a logit difference of 9.30), three below
    (a probability of 0.042); `like`: as many decimals as that figure has (a value's stderr)."""
    return f"{x:.2f}" if abs(x if like is None else like) >= 1 else f"{x:.3f}"


def recall_cell(o: "UnitOutcome") -> str:
    """Recall of the reference circuit by the kept circuit's method (heads; nodes for node and edge
    circuits), with the counts behind it; '—' without a reference."""
    c, r = o.result.circuit, o.result
    if c is None or o.failed:
        return "—"
    recovery = (r.recovery if c.level == "head" else r.node_recovery).get(c.method) or r.recovery.get(c.method)
    if recovery is None:
        return "—"
    return f"{recovery.recall:.2f} ({round(recovery.recall * recovery.n_reference)} of {recovery.n_reference})"


def summary_table(label: str, outcomes: Sequence["UnitOutcome"]) -> Table:
    """A model's summary: one row per task (summary_row), and the recall of the reference circuit
    when a unit has one (known answers); names are never cut."""
    columns = SUMMARY_COLUMNS + (("recall",) if any(o.result.recovery or o.result.node_recovery
                                                    for o in outcomes) else ())
    rows = [summary_row(o) + ((recall_cell(o),) if len(columns) > len(SUMMARY_COLUMNS) else ()) for o in outcomes]
    table = Table(title=f"{label} · {len(outcomes)} task{'s' if len(outcomes) != 1 else ''}", title_justify="left",
                  **COMPACT)
    for j, col in enumerate(columns):  # names and figures whole; the rest wraps between words
        words = [len(word) for row in rows for word in row[j].split()] + [len(col)]
        table.add_column(col, no_wrap=col in ("task", "n", "main metric", "value"), overflow="fold",
                         min_width=max(words), justify="right" if col in ("n", "value") else "left")
    for row in rows:
        table.add_row(*_row(*row))
    return table


def _print_details(outcomes: Sequence["UnitOutcome"]) -> None:
    """Metrics table (clean ± stderr vs corrupted), top heads per method, circuits and their figures."""
    metrics = Table(title="metrics (★ main)")
    # a model's name (with its @random-init mark) is never split over two lines
    name_width = max([len(o.result.model.label) for o in outcomes] + [5])
    for col in ("model", "task", "n", "metric", "clean", "corrupted"):
        metrics.add_column(col, overflow="fold", min_width=name_width if col == "model" else None,
                           no_wrap=col == "model")
    heads = Table(title="top heads by |score| (a1.h3 = layer 1, head 3)")
    for col in ("model", "task", "method", "heads"):
        heads.add_column(col, overflow="fold", min_width=name_width if col == "model" else None, no_wrap=col == "model")
    done = [o for o in outcomes if not o.failed]
    for o in done:
        r = o.result
        n = f"{r.task.n_prompts}" + (f" (−{r.task.n_dropped})" if r.task.n_dropped else "")
        for i, (name, value) in enumerate(r.metrics.items()):
            err = r.metrics_stderr.get(name)
            corr = r.metrics_corrupted.get(name)
            metrics.add_row(*_row(
                r.model.label if i == 0 else "", o.task if i == 0 else "", n if i == 0 else "",
                name + (" ★" if name == r.task.main_metric else ""),
                f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else " ± n/a" if name in r.metrics_stderr else ""),
                "" if corr is None else f"{corr:.3f}",
            ))
        metrics.add_section()
        for method, scores in r.head_scores.items():
            heads.add_row(*_row(r.model.label, o.task, method, _top_heads(scores)))
    if done:
        console.print(metrics)
    if heads.row_count:
        console.print(heads)
    for o in done:
        _print_unit_figures(o)


def _ci(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"


def faithfulness_text(f: Faithfulness | None) -> str:
    """A circuit's faithfulness in words: the figure under its ablation (and the others), or
    'undefined' with the reason."""
    if f is None:
        return "faithfulness not measured"
    if f.value is None:
        return f"faithfulness undefined ({f.undefined or 'no measurable effect'})"
    text = f"faithfulness {f.value:.2f} ({f.ablation} ablation"
    text += "".join(f"; {k} ablation {'undefined' if v is None else f'{v:.2f}'}" for k, v in f.by_ablation.items()
                    if k != f.ablation) + ")"
    if f.cpr is not None and f.cmd is not None:
        text += f" · CPR {f.cpr:.2f}{_ci(f.cpr_ci)} · CMD {f.cmd:.2f}{_ci(f.cmd_ci)}"
    return text


VERDICT_WORDS = {
    "robust": "robust: f in [0.8, 1.2] under the rule's ablation, counterfactual patching, mean and resample "
              "ablation, nothing necessary left out",
    "counterfactual_specific": "counterfactual-specific: faithful under counterfactual patching, not under every "
                               "check",
    "unfaithful": "unfaithful",
    "undefined": "undefined: no measurable effect to be faithful to",
}


def verdict_text(c: Any) -> str:
    """The circuit's verdict first, then why it is not robust."""
    if c.verdict is None:
        return "verdict: not judged (circuit: {panel: false})"
    text = f"verdict: {VERDICT_WORDS[c.verdict]}"
    return text + (f" ({'; '.join(c.verdict_reasons)})" if c.verdict_reasons else "")


def outside_text(parts: Sequence[Any]) -> str:
    """Components necessary outside the circuit, one entry per component with each ablation's effect."""
    by_node: dict[str, list[str]] = {}
    for part in parts:
        by_node.setdefault(part.node, []).append(f"{part.ablation} {part.effect:+.3g} ({part.share:.0%})")
    return " · ".join(f"{node}: {', '.join(effects)}" for node, effects in by_node.items())


def panel_text(c: Any) -> str:
    """f under each ablation of the panel, with its 95 % interval."""
    def one(name: str, e: Any) -> str:
        if e.value is None:
            return f"{name} undefined"
        return f"{name} {e.value:.2f}" + _interval(e.ci)
    return " · ".join(one(name, e) for name, e in c.panel.items())


def _print_unit_figures(o: "UnitOutcome") -> None:
    c = o.result.circuit
    say = lambda text: plain(f"{o.result.model.label} / {o.task}: {text}")  # noqa: E731
    if c is not None:
        m = o.result.model
        heads_total = (m.n_layers or 0) * (m.n_heads or 0)
        n_total = (heads_total + (m.n_layers or 0) * bool(m.has_mlp) if c.level == "node" else heads_total
                   if c.level == "head" else 0) or None
        members = heads_text(c.heads) if not c.mlps else " ".join([heads_text(c.heads)] * bool(c.heads)
                                                                   + [f"m{l}" for l in c.mlps])
        if c.level == "edge":
            members = f"{len(c.edges)} edges over {members}"
        combined = o.result.counterfactuals
        over = (f" combined over counterfactuals {', '.join(r.name for r in combined)} (largest |score|)"
                if combined else "")
        say(f"circuit from {c.method} scores{over}, {describe_rule(c.rule, n_total)}: {members}")
        say(verdict_text(c) + f" · {faithfulness_text(c.faithfulness)}")
        if c.panel:
            say("panel: " + panel_text(c))
        if c.stability is not None:
            st = c.stability
            say(f"stability of the chosen set: Jaccard {st.jaccard:.2f} [{st.range[0]:.2f}, {st.range[1]:.2f}] over "
                f"{st.resamples} half-samples of {st.prompts} prompts ({st.with_chosen:.2f} with the circuit kept)")
        if c.completeness is not None:
            k = c.completeness
            say(f"incompleteness (Wang et al., {k.ablation}): max {k.max_incompleteness:.2f} · mean "
                f"{k.mean_incompleteness:.2f} over {k.subsets} subsets K (worst: {' '.join(k.worst_subset[:6])})")
        if c.outside_necessary:
            say("necessary outside the circuit (alone, from the full model): " + outside_text(c.outside_necessary))
        if c.invisible:
            under = "every counterfactual" if o.result.counterfactuals else "the counterfactual"
            say(f"invisible to patching (same output under {under}): {' '.join(c.invisible[:12])}"
                + (" …" if len(c.invisible) > 12 else ""))
        if len(c.candidates) > 1:
            say("candidates (faithfulness): " + " · ".join(
                f"{k.method} {'undefined' if k.faithfulness is None else f'{k.faithfulness:.2f}'}"
                for k in c.candidates))
        for note in c.notes:
            say(f"note: {note}")
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
    for pair, rho in o.result.method_agreement.items():
        say(f"{pair} = {rho:.2f}")
    by_split = o.result.metrics_by_split
    if by_split:
        main = o.result.task.main_metric
        se = {split: m.metrics_stderr.get(main) for split, m in by_split.items()}  # None: one prompt, no spread
        say(f"{main} by split: " + " · ".join(
            f"{split} {m.metrics[main]:.3f} ± {'n/a' if se[split] is None else format(se[split], '.3f')} "
            f"(n={m.n_prompts})" for split, m in sorted(by_split.items())))


def overlap_value(metric: str, value: float | None) -> str:
    """One overlap figure at the metric's fixed precision (p-values in scientific notation)."""
    if value is None or value != value:
        return "n/a"
    if metric == "hypergeometric_p" and value < 0.01:  # 3e-5: one significant digit, exponent without padding
        mantissa, exponent = f"{value:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.2f}"


def _marker(p: float | None) -> str:
    return "" if p is None else "**" if p < 0.01 else "*" if p < 0.05 else ""


def print_overlap(matrix: "OverlapMatrix", as_json: bool = False, hint: str = "", width: int = 100) -> None:
    """An overlap matrix: as JSON (`OverlapMatrix.to_json`) or as tables, then a note on stderr per
    skipped metric (with `hint`: how to give the circuits what it needs). Tables: two circuits, one
    row per metric (value, null mean, p); more, per metric a matrix of values (rows: first circuit;
    * p < 0.05, ** p < 0.01 against the null) and the null's means, numbered columns when the labels
    would not fit in `width` columns; then the alignment(s) used."""
    if as_json:
        print(json.dumps(matrix.to_json(), indent=2))
    else:
        _print_overlap_tables(matrix, width)
    for name, reason in matrix.skipped.items():
        plain(f"note: {name} skipped: {reason}" + (f" ({hint})" if hint else ""), stderr=True)


def _print_overlap_tables(matrix: "OverlapMatrix", width: int) -> None:
    labels = list(matrix.labels)
    models = {label.split("/", 1)[0] for label in labels}
    one_model = len(models) == 1 and "" not in models and all(label.count("/") == 1 for label in labels)
    shared = f" ({models.pop()})" if one_model else ""
    if shared:  # one model's tasks: the columns need only the task names
        labels = [label.split("/", 1)[1] for label in labels]
    null = matrix.null
    if len(labels) == 2:
        table = Table(title=f"{labels[0]} vs {labels[1]}{shared}")
        for col in ("metric", "value", "null mean", "p (vs null)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for name in matrix.metrics:
            p = matrix.p_value[name][0][1]
            table.add_row(*_row(name, overlap_value(name, matrix.values[name][0][1]),
                                overlap_value(name, matrix.null_mean[name][0][1]), "n/a" if p is None else f"{p:.3f}"))
        console.print(table)
    else:
        numbered = len(labels) * 8 + max(map(len, labels)) + 4 > width
        for name in matrix.metrics:
            cells = [[overlap_value(name, v) + _marker(p) for v, p in zip(row, prow)]
                     for row, prow in zip(matrix.values[name], matrix.p_value[name])]
            _print_matrix(f"{name}{shared}", labels, cells, numbered)
            if null:
                _print_matrix(f"{name}: null mean", labels, [[overlap_value(name, v) if v is not None else "—"
                                                              for v in row] for row in matrix.null_mean[name]],
                              numbered)
        if null:
            plain("* p < 0.05, ** p < 0.01: more overlap than the permutation null (one-sided; rows are the first "
                  "circuit)")
    if null:
        plain(f"null: {null}")
    kinds = {a for row in matrix.alignment for a in row}
    plain(f"alignment: {', '.join(sorted(kinds))}")


def _print_matrix(title: str, labels: list[str], cells: list[list[str]], numbered: bool) -> None:
    """A square matrix without borders (one space between columns), so 12 × 12 fits 100 columns;
    on a narrower console its columns are printed in blocks that fit."""
    row_labels = [f"{i + 1} {label}" if numbered else label for i, label in enumerate(labels)]
    headers = [str(i + 1) if numbered else label for i, label in enumerate(labels)]
    cell_width = max([len(c) for row in cells for c in row] + [len(h) for h in headers]) + 1
    per_block = max(1, (console.width - max(map(len, row_labels)) - 2) // cell_width)
    for first in range(0, len(labels), per_block):
        block = range(first, min(first + per_block, len(labels)))
        suffix = f" (columns {first + 1}–{block[-1] + 1})" if per_block < len(labels) else ""
        console.print(Text(title + suffix, style="italic"))
        table = Table(box=None, padding=(0, 0, 0, 1), pad_edge=False, header_style="bold")
        table.add_column("", no_wrap=True)
        for j in block:
            table.add_column(Text(headers[j]), justify="right", no_wrap=True)
        for label, row in zip(row_labels, cells):
            table.add_row(*_row(label, *(row[j] for j in block)))
        console.print(table)


def prompt_rows(prompts: Sequence[Any], metrics: Sequence[str]) -> tuple[tuple[str, ...], list[tuple[str, ...]], str]:
    """(columns, rows, legend) showing prompts as the task really has them: text prompts with their
    answer, distractor and corrupted text; symbol prompts (induction) as symbols, with where the
    scored part starts and the corrupted symbols, and no empty answer columns."""
    if all(p.symbols is not None for p in prompts):
        rows = []
        for p in prompts:
            start = p.symbol_positions.get(p.score_from) if p.score_from else None
            shown = " ".join(("| " if i == start else "") + f"s{v}" for i, v in enumerate(p.symbols))
            corrupted = " ".join(f"s{v}" for v in p.corrupted_symbols or [])
            rows.append((shown, str(len(p.symbols) - (start or 0)), corrupted or "(none)"))
        legend = (f"sN: the N-th token of each model's own symbol pool; no answer or distractor token: "
                  f"{', '.join(metrics)} score the model's next-token predictions from '|' on")
        return ("prompt (symbols; | marks the repeat)", "repeat length", "corrupted (symbols)"), rows, legend
    columns = ["prompt"]
    has = {field: any(getattr(p, field) for p in prompts) for field in ("answer", "distractor")}
    columns += [field for field in ("answer", "distractor") if has[field]]
    has_corrupted = any(p.corrupted_text for p in prompts)
    columns += ["corrupted"] if has_corrupted else []
    rows = [tuple([repr(p.text)] + [repr(getattr(p, f) or "") for f in ("answer", "distractor") if has[f]]
                  + ([repr(p.corrupted_text or "")] if has_corrupted else [])) for p in prompts]
    missing = [f for f in ("answer", "distractor") if not has[f]] + ([] if has_corrupted else ["corrupted"])
    legend = f"this task has no {', no '.join(missing)}" if missing else ""
    return tuple(columns), rows, legend


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None,
                names: Sequence[str] = (), lists: Sequence[str] = ()) -> None:
    """A table of literal cells. Given `names` (columns never cut or wrapped: as wide as their
    longest cell) and `lists` (comma-separated names: wrapped between items, an item folded only
    when it alone is wider than the column), the other columns are text wrapped at spaces, and the
    table drops its vertical rules so that 80 columns go to the cells."""
    if not names and not lists:
        table = Table(*columns, title=title)
    else:
        table = Table(title=title, **COMPACT)
        for j, col in enumerate(columns):
            if col in names:
                table.add_column(col, no_wrap=True, min_width=max([len(str(row[j])) for row in rows] + [len(col)]))
            elif col in lists:  # as wide as its longest item (and its comma): items wrap whole
                items = [item for row in rows for item in str(row[j]).split(", ")]
                table.add_column(col, overflow="fold", min_width=max([len(item) + 1 for item in items] + [len(col)]))
            else:
                table.add_column(col, overflow="fold")
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


def print_validation(check: "TaskValidation", show: int) -> None:
    """`validate`: the spec's identity, up to `show` prompts (long cells cut), then what the
    tokenizer would keep and drop, with examples."""
    from circuitbench.prompts.base import excerpt

    spec, prompts = check.spec, check.prompts.prompts
    if check.shortfall:
        plain(f"note: {check.shortfall}")
    plain(f"{spec.name} v{spec.version} · spec {spec.spec_hash()} · {len(prompts)} {spec.split} prompts")
    if show > 0:
        columns, rows, legend = prompt_rows(prompts[:show], spec.metrics)
        print_table(columns, [tuple(excerpt(cell) for cell in row) for row in rows])  # a 2 MB prompt: its start
        if legend:
            plain(legend)
    if check.drops is None:
        plain("Spec is valid. Pass --model or --tokenizer to check tokenization.")
        return
    plain(f"tokenizer: {check.tokenizer}: kept {check.kept} of {check.drops.n_total}, dropped {check.drops.n_dropped}")
    for reason, count in check.drops.reasons.most_common():
        plain(f"  {count} × {reason}; e.g. {'; '.join(check.drops.examples[reason])}")


def print_dynamics(dyn: "Dynamics") -> None:
    """`dynamics`: the metric and detector scores per checkpoint, and where each changed fastest."""
    rows = [(str(step), f"{dyn.metric_values[i]:.3f}", f"{max(max(row) for row in dyn.prefix_matching[i]):.3f}",
             f"{dyn.icl_score[i]:.3f}") for i, step in enumerate(dyn.steps)]
    on = f"on {dyn.detector_prompts} prompts"
    print_table(("step", f"{dyn.metric} ({dyn.task} prompts)", f"max prefix matching ({on})", f"ICL score ({on})"),
                rows, title=f"training dynamics: {dyn.task}")
    if dyn.detector_prompts != dyn.task:
        plain(f"prefix matching and the ICL score are defined on repeated random tokens: computed {on} (its symbols "
              f"from the model's vocabulary), not on {dyn.task}'s")
    pc, ppc = dyn.phase_change, dyn.prefix_phase_change
    plain(f"fastest change of {pc.series} ({dyn.task} prompts): steps {pc.start_step}–{pc.end_step}, "
          f"change {pc.change:+.3f}")
    plain(f"fastest change of the max prefix-matching score ({on}): steps {ppc.start_step}–{ppc.end_step}, "
          f"change {ppc.change:+.3f}")
