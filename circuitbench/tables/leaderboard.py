"""Results → leaderboard tables: per task a Markdown table, a CSV of numbers (value, stderr and n
in columns of their own) and an HTML page; an overview (models × tasks, main metric ± stderr, n)
as README.md and index.html. Random-init models are baselines: they sit in a section of their
own, labelled as sanity checks, never among the trained models. Stale results (made with another
version of the task spec) and failed runs are listed apart, never mixed in."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from circuitbench.circuits.circuit import RANDOM_INIT, model_label
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.output_paths import HTML_GENERATOR, path_component, staged_output
from circuitbench.results.schema import RunResult
from circuitbench.results.store import UnusableResult, read_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import METRICS

BASELINES = "Random-init baselines"
BASELINE_NOTE = (f"Sanity checks, not findings: `{RANDOM_INIT}` models have seeded random weights (architecture from "
                 "models.yaml) and have learned nothing. Their figures show what chance looks like on each task.")
# Leaderboard columns beyond the metrics: id -> (label in tables, what it means)
COLUMNS: dict[str, tuple[str, str]] = {
    "verdict": ("verdict", "how far the circuit can be trusted: robust (f within [0.8, 1.2], interval included, "
                "under the rule's ablation, counterfactual patching, mean and resample ablation, nothing necessary "
                "left out), "
                "counterfactual_specific, unfaithful, or undefined (no measurable effect)"),
    "circuit_size": ("circuit size", "components in the circuit the task's rule chose (heads; heads and MLPs; "
                     "or edges, by its level)"),
    "faithfulness": ("faithfulness ↑", "f(C) = (m(C) − m(∅)) / (m(M) − m(∅)) of the main metric m with every head "
                     "outside the circuit ablated (1: the circuit alone does what the model does); 'undefined' when "
                     "ablating every head changes m by less than 2 standard errors (no measurable effect)"),
    "stability": ("stability ↑", "mean Jaccard of the circuits the kept method gives on half-samples of the prompts "
                  "(1: the same set on any half), with the smallest and largest pair"),
    "incompleteness": ("incompleteness ↓", "Wang et al.: the largest |m(C \\ K) − m(M \\ K)| / |m(M) − m(∅)| over "
                       "subsets K of the circuit (0: knocking any part out of the circuit or the model does the same)"),
    "cpr": ("CPR ↑", "area under the faithfulness curve over circuit sizes (MIB)"),
    "cmd": ("CMD ↓", "area under |1 − f| over circuit sizes (MIB)"),
    "agreement_spearman": ("exact vs attribution ρ ↑", "Spearman correlation of exact and attribution patching "
                           "head scores"),
    "recovery_recall": ("reference recall ↑", "share of the known circuit's heads the chosen circuit holds"),
    "recovery_auroc": ("reference AUROC ↑", "how well |scores| rank the known circuit's heads above the others"),
}


SIDECAR_SUFFIX = ".edges.json"  # <task>.<method>.edges.json: a result's edge scores, not a result


def _identity(r: RunResult) -> str:
    return f"{r.model.source}|{r.model.fingerprint}|{r.model.init}|{r.model.dtype}"


def _model_folder(r: RunResult) -> str:
    """The folder `run` writes this result's model into (models/resolve.py, ModelRef.folder)."""
    return model_label(r.model.name, r.model.init).replace("/", "__")


def unit_results(results_dir: Path, flagged: list[dict]) -> list[tuple[Path, RunResult]]:
    """Every unit's result under results_dir, once: read from its own path (<model folder>/<task>.json).
    A copy of it elsewhere (`ioi (copy).json`, `ioi-old.json`, a copied folder) is appended to
    `flagged` as not at its own path; a result alone in a folder of another name (two runs' folders
    merged, one renamed) still counts. Unreadable files, other schema versions and NaN/inf are
    flagged with the reason; edge-score sidecars are skipped."""
    found = []
    for path in sorted(results_dir.glob("*/*.json")):
        if path.name.endswith(SIDECAR_SUFFIX):
            continue
        try:
            found.append((path, read_result(path)))
        except UnusableResult as e:
            flag = f"unreadable: {e.reason}" if e.kind == "unreadable" else e.reason
            flagged.append({"file": str(path), "model": path.parent.name, "task": path.stem, "flag": flag})
    own = {(_identity(r), r.task.name): path for path, r in found
           if path.stem == r.task.name and path.parent.name == _model_folder(r)}
    kept = []
    for path, r in found:
        unit = (_identity(r), r.task.name)
        if path.stem == r.task.name:
            own.setdefault(unit, path)  # alone, in a folder of another name: the unit's only result
        if own.get(unit) == path:
            kept.append((path, r))
            continue
        copy_of = f"a copy of {own[unit]}" if unit in own else f"holds {r.model.label} / {r.task.name}"
        flagged.append({"file": str(path), "model": r.model.label, "task": r.task.name, "init": r.model.init,
                        "flag": f"not at its own path ({copy_of}; a unit is read from "
                                f"{_model_folder(r)}/{r.task.name}.json)"})
    return kept


def collect(results_dir: Path, include_paths: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current rows, flagged rows): one row per unit under results_dir (see `unit_results`); copies,
    other schema versions, NaN/inf, failed and stale results flagged apart with the reason."""
    rows: list[dict] = []
    flagged: list[dict] = []
    for path, r in unit_results(results_dir, flagged):
        base = {"file": str(path), "model": r.model.label, "task": r.task.name, "init": r.model.init}
        if r.status != "complete":
            detail = f"{r.error.type}: {r.error.message}" if r.error else "no detail"
            flagged.append({**base, "flag": f"failed: {detail}"})
            continue
        try:
            current = load_task(r.task.name, include_paths).content_hash()
        except CircuitbenchError:
            current = None
        row = {
            **base,
            "model_label": r.model.label,
            "identity": f"{r.model.source}|{r.model.fingerprint}|{r.model.init}|{r.model.dtype}",
            "params": r.model.n_params, "dtype": r.model.dtype, "n": r.task.n_prompts, "dropped": r.task.n_dropped,
            "main_metric": r.task.main_metric, "date": r.run.started_at[:10], "spec_hash": r.task.spec_hash,
        }
        for name, value in r.metrics.items():
            row[name] = value
            row[f"{name}_se"] = r.metrics_stderr.get(name)
        if r.circuit is not None:
            c = r.circuit
            size = len(c.edges) if c.level == "edge" else len(c.heads) + len(c.mlps)
            f = c.faithfulness
            row.update({"circuit_size": size, "circuit_method": c.method, "faithfulness": f and f.value,
                        "faithfulness_undefined": f and f.undefined, "cpr": f and f.cpr, "cmd": f and f.cmd,
                        "cpr_ci": _ci_text(f.cpr_ci) if f else None, "cmd_ci": _ci_text(f.cmd_ci) if f else None,
                        "verdict": c.verdict,
                        "faithfulness_ci": _ci_text(c.panel[f.ablation].ci) if f and f.ablation in c.panel else None,
                        "stability": c.stability.jaccard if c.stability else None,
                        "incompleteness": c.completeness.max_incompleteness if c.completeness else None,
                        "stability_ci": _ci_text(c.stability.range) if c.stability else None})
            # MIB's CPR / CMD of every method at the circuit's level
            for method, figures in (f.by_method if f else {}).items():
                row[f"cpr:{method}@{c.level}"] = figures.get("cpr")
                row[f"cmd:{method}@{c.level}"] = figures.get("cmd")
        for pair, rho in r.method_agreement.items():
            if "activation_patching" in pair and "attribution_patching" in pair:
                row["agreement_spearman"] = rho
        if r.recovery and r.circuit is not None and r.circuit.method in r.recovery:
            found = r.recovery[r.circuit.method]
            row["recovery_recall"] = found.recall
            row["recovery_auroc"] = found.auroc
        for split, sm in r.metrics_by_split.items():
            if split != r.task.split and r.task.main_metric in sm.metrics:
                row[f"main_on_{split}"] = sm.metrics[r.task.main_metric]  # memorisation vs generalisation
                row[f"main_on_{split}_se"] = sm.metrics_stderr.get(r.task.main_metric)
                row[f"n_{split}"] = sm.n_prompts
        if current is not None and current != r.task.content_hash:
            # made with another version of the task (prompts or metrics changed): not comparable
            flagged.append({**base,
                            "flag": f"stale: task spec changed since this run ({r.task.content_hash} ≠ {current})"})
            continue
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        # one label, several models (e.g. two directories named toyX): tell them apart by where they came from
        shared = df.groupby("model_label")["identity"].transform("nunique") > 1
        df.loc[shared, "model_label"] = [f"{label} ({source})" for label, source in
                                         zip(df.loc[shared, "model_label"], df.loc[shared,
                                                                                   "identity"].str.split("|").str[0])]
    return df, pd.DataFrame(flagged)


def _arrow(metric: str) -> str:
    try:
        return "↑" if METRICS.get(metric).higher_is_better else "↓"
    except CircuitbenchError:
        return ""


def _metric_names(sub: pd.DataFrame) -> list[str]:
    """The task's main metric first, then the other metrics its results hold."""
    names = [c for c in sub.columns if c in METRICS and sub[c].notna().any()]
    main = sub["main_metric"].iloc[0]
    return [main] + [m for m in names if m != main]


def _ordered(sub: pd.DataFrame) -> pd.DataFrame:
    """Trained models first, then random-init baselines, each by name."""
    return sub.assign(_baseline=sub["init"] == "random").sort_values(["_baseline", "model_label"])


def _ci_text(interval: tuple[float, float] | None) -> str | None:
    """A 95 % interval as the tables show it: [low, high]."""
    return None if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _faithfulness_text(row: pd.Series) -> str:
    if pd.notna(row.get("faithfulness")):
        ci = row.get("faithfulness_ci")
        return f"{row['faithfulness']:.3f}" + (f" {ci}" if isinstance(ci, str) else "")
    return "undefined" if isinstance(row.get("faithfulness_undefined"), str) else ""


def task_table(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table as shown (Markdown, HTML): a row per model, value ± stderr per metric,
    circuit columns ('undefined' faithfulness where the heads have no measurable effect)."""
    sub = _ordered(df[df["task"] == task])
    metric_names = _metric_names(sub)
    main = metric_names[0]
    out = pd.DataFrame({"model": sub["model_label"].to_list()})
    for m in metric_names:
        se = sub[f"{m}_se"].to_list()
        out[f"{m} {_arrow(m)}"] = ["" if pd.isna(v) else f"{v:.3f} ± {s:.3f}" if pd.notna(s) else f"{v:.3f}"
                                   for v, s in zip(sub[m], se)]
    for split in ("train", "val", "test"):
        col = f"main_on_{split}"
        if col in sub and sub[col].notna().any():
            out[f"{main} ({split} split)"] = ["" if pd.isna(v) else f"{v:.3f} ± {s:.3f}" if pd.notna(s) else f"{v:.3f}"
                                              for v, s in zip(sub[col], sub.get(f"{col}_se", sub[col] * float("nan")))]
    for col, (label, _) in COLUMNS.items():
        if col == "faithfulness" and col in sub and (sub[col].notna().any()
                                                     or sub.get("faithfulness_undefined", pd.Series()).notna().any()):
            out[label] = [_faithfulness_text(row) for _, row in sub.iterrows()]
        elif col == "verdict" and col in sub and sub[col].notna().any():
            out[label] = ["" if pd.isna(v) else str(v) for v in sub[col]]
        elif col in sub and sub[col].notna().any():
            shown = lambda v, _col=col: f"{int(v)}" if _col == "circuit_size" else f"{v:.3f}"  # noqa: E731
            intervals = sub[f"{col}_ci"].to_list() if f"{col}_ci" in sub else [None] * len(sub)  # CPR, CMD, stability
            out[label] = ["" if pd.isna(v) else shown(v) + (f" {ci}" if isinstance(ci, str) else "")
                          for v, ci in zip(sub[col], intervals)]
    for col in _by_method_columns(sub):
        out[by_method_label(col)] = ["" if pd.isna(v) else f"{v:.3f}" for v in sub[col]]
    out["n"] = [f"{n}" + (f" (−{d})" if d else "") for n, d in zip(sub["n"], sub["dropped"])]
    out["date"] = sub["date"].to_list()
    return out


def _by_method_columns(sub: pd.DataFrame) -> list[str]:
    """MIB's CPR / CMD of each method at the circuit's level ('cpr:eap@edge'), where any row has one."""
    return sorted(c for c in sub.columns if c.startswith(("cpr:", "cmd:")) and sub[c].notna().any())


def by_method_label(col: str) -> str:
    """'cpr:eap@edge' -> 'CPR eap (edge) ↑'."""
    kind, what = col.split(":", 1)
    method, level = what.split("@")
    return f"{kind.upper()} {method} ({level}) {'↑' if kind == 'cpr' else '↓'}"


def task_numbers(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table as numbers (the CSV): value, stderr and n in columns of their own."""
    sub = _ordered(df[df["task"] == task])
    metric_names = _metric_names(sub)
    out = pd.DataFrame({"model": sub["model_label"].to_list(), "init": sub["init"].to_list(),
                        "baseline": (sub["init"] == "random").to_list()})
    for m in metric_names:
        out[m] = sub[m].to_list()
        out[f"{m}_stderr"] = sub[f"{m}_se"].to_list()
    out["n"] = sub["n"].astype(int).to_list()
    out["n_dropped"] = sub["dropped"].astype(int).to_list()
    for split in ("train", "val", "test"):
        col = f"main_on_{split}"
        if col in sub and sub[col].notna().any():
            out[f"{metric_names[0]}_{split}"] = sub[col].to_list()
            out[f"{metric_names[0]}_{split}_stderr"] = sub.get(f"{col}_se", sub[col] * float("nan")).to_list()
            out[f"n_{split}"] = sub.get(f"n_{split}", sub[col] * float("nan")).astype("Int64").to_list()
    undefined = "faithfulness_undefined" in sub and sub["faithfulness_undefined"].notna().any()
    first = ("verdict", "circuit_size", "circuit_method", "faithfulness", "faithfulness_ci", "faithfulness_undefined",
             "stability", "stability_ci", "incompleteness", "cpr", "cpr_ci", "cmd", "cmd_ci")
    for col in (*first, *[c for c in COLUMNS if c not in first]):
        # an all-undefined faithfulness column stays, empty, beside the reason
        if col in sub and (sub[col].notna().any() or col == "faithfulness" and undefined) and col not in out:
            out[col] = sub[col].astype("Int64").to_list() if col == "circuit_size" else sub[col].to_list()
    for col in _by_method_columns(sub):
        out[col.replace(":", "_").replace("@", "_")] = sub[col].to_list()  # e.g. cpr_eap_edge
    out["date"] = sub["date"].to_list()
    out["spec_hash"] = sub["spec_hash"].to_list()
    return out


def overview(df: pd.DataFrame) -> pd.DataFrame:
    """Models × tasks, each cell the task's main metric ± stderr (with ↑/↓ in the column name)."""
    cells = {}
    for task, sub in df.groupby("task"):
        main = sub["main_metric"].iloc[0]
        cells[f"{task} ({main} {_arrow(main)})"] = {
            label: f"{v:.3f} ± {s:.3f}" if pd.notna(s) else f"{v:.3f}"
            for label, v, s in zip(sub["model_label"], sub[main], sub[f"{main}_se"])}
    return pd.DataFrame(cells).fillna("").sort_index().rename_axis("model").reset_index()


def _sections(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, note, rows): trained models, then random-init baselines (when there are any of each)."""
    trained, baselines = df[df["init"] != "random"], df[df["init"] == "random"]
    out = []
    if not trained.empty:
        out.append(("Trained models", "", trained))
    if not baselines.empty:
        out.append((BASELINES, BASELINE_NOTE, baselines))
    return out


def metric_legend(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, what it means) for the metrics and circuit columns the tables show."""
    out = []
    for name in sorted({c for c in df.columns if c in METRICS}):
        out.append((f"{name} {_arrow(name)}", METRICS.get(name).description))
    for col, (label, meaning) in COLUMNS.items():
        if col in df and df[col].notna().any():
            out.append((label, meaning))
    if any(str(c).startswith(("cpr:", "cmd:")) for c in df.columns):
        out.append(("CPR / CMD method (level)", "MIB's CPR and CMD of that method's own ranking at the circuit's "
                    "level (heads, nodes or edges); in the CSV: cpr_<method>_<level>, cmd_<method>_<level>"))
    out.append(("± ", "standard error of the mean over prompts; n: prompts evaluated (−k: dropped for the tokenizer)"))
    return out


_SORT_JS = """
<script>
// Click a column to sort; empty cells always go last, whatever the direction.
document.querySelectorAll('table.sortable').forEach(t => t.querySelectorAll('th').forEach((th, i) =>
 th.onclick = () => {
  const rows = Array.from(t.tBodies[0].rows), asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const v = r.cells[i].innerText.trim().split(' ')[0]; const n = parseFloat(v);
                     return v === '' ? null : isNaN(n) ? v : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); });
  rows.forEach(r => t.tBodies[0].appendChild(r)); }));
</script>"""
_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}"
          "table{border-collapse:collapse;margin-bottom:1.5em;font-size:90%}"
          "td,th{padding:3px 6px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
          "th{cursor:pointer;background:#f4f4f4;white-space:normal;vertical-align:bottom}"
          "td:first-child,th:first-child{text-align:left}"  # headers wrap: 12 task columns fit 1280 px
          ".se,.n{color:#777;font-size:85%}.sub{display:block}"
          ".badge{background:#b45309;color:#fff;border-radius:3px;padding:1px 5px;"
          "font-size:75%;margin-left:4px}.baseline{background:#fff7ed;border-left:4px solid #b45309;padding:.5em 1em}"
          "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}dd{margin:0}")


def _model_cell(label: str) -> str:
    if label.endswith(RANDOM_INIT):
        return f"{html.escape(label)}<span class='badge' title='seeded random weights: a baseline'>random init</span>"
    return html.escape(label)


def _value_cell(text: str, n: object = None) -> str:
    """'1.073 ± 0.108' as value, grey stderr (and grey n)."""
    if not text:
        return ""
    value, _, se = text.partition(" ± ")
    if n is None:
        return html.escape(value) + (f" <span class='se'>± {html.escape(se)}</span>" if se else "")
    # overview cells: stderr and n on a line of their own under the value, so 12 tasks fit 1280 px
    below = " ".join(([f"± {html.escape(se)}"] if se else []) + [f"n={n}"])
    return f"{html.escape(value)}<span class='se sub'>{below}</span>"


def _html_table(table: pd.DataFrame, link_columns: bool = False, n_of: dict | None = None) -> str:
    head = "".join(f"<th>{_header(c, link_columns)}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = [f"<td>{_model_cell(str(row.iloc[0]))}</td>"]
        for col in table.columns[1:]:
            n = (n_of or {}).get((str(row.iloc[0]), col))
            cells.append(f"<td>{_value_cell(str(row[col]), n)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _header(column: str, link: bool) -> str:
    if not link or " (" not in column:
        return html.escape(column)
    task, rest = column.split(" (", 1)
    return f"<a href='{html.escape(task)}.html'>{html.escape(task)}</a> <span class='se'>({html.escape(rest)}</span>"


def _legend_html(legend: list[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in legend)
    return (f"<h2>Legend</h2><dl><dt>name{RANDOM_INIT} <span class='badge'>random init</span></dt>"
            f"<dd>{_plain(BASELINE_NOTE)}</dd>{items}<dt>(empty cell)</dt><dd>not run (sorted last)</dd></dl>")


def _plain(markdown: str) -> str:
    """A note written for Markdown, as HTML text (no backticks)."""
    return html.escape(markdown.replace("`", ""))


def _note_html(note: str) -> str:
    return f"<p class='baseline'>{_plain(note)}</p>" if note else ""


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)  # numbers as formatted, fixed precision


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><meta charset='utf-8'>{HTML_GENERATOR.format(what='leaderboard')}"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"{body}{_SORT_JS}")


def _task_description(task: str, include_paths: tuple[str, ...]) -> str:
    try:
        return " ".join(load_task(task, include_paths).description.split())
    except CircuitbenchError:
        return ""


def build(results_dir: Path, out_dir: Path, include_paths: tuple[str, ...] = (),
          title: str = "circuitbench leaderboard") -> dict[str, object]:
    """Write every table; returns what was written and what was flagged."""
    if not results_dir.is_dir():
        raise CircuitbenchError(f"--results {results_dir}: no such directory. Run `circuitbench run` first.")
    df, flagged = collect(results_dir, include_paths)
    if df.empty:
        raise CircuitbenchError(f"No current results under {results_dir} ({len(flagged)} flagged).")
    for task in df["task"].unique():  # task names become file names: never a path out of out_dir
        path_component(task, f"{results_dir}: task name", reserve=len(".html") + 1)
    try:
        with staged_output(out_dir) as staging:  # every file written, or none replaced (a full disk)
            return _write_board(df, flagged, staging, include_paths, title)
    except OSError as e:
        raise CircuitbenchError(f"--out {out_dir}: cannot write the leaderboard ({e.strerror or e}); the folder is "
                                "unchanged. Free space or fix the permissions and run again.") from None


def _write_board(df: pd.DataFrame, flagged: pd.DataFrame, out_dir: Path, include_paths: tuple[str, ...],
                 title: str) -> dict[str, object]:
    legend = metric_legend(df)
    written = []
    for task in sorted(df["task"].unique()):
        write_atomic(out_dir / f"{task}.csv", task_numbers(df, task).to_csv(index=False, float_format="%.6g"))
        description = _task_description(task, include_paths)
        md = [f"# {task}", "", description, ""] if description else [f"# {task}", ""]
        body = [f"<p><a href='index.html'>← overview</a></p><h1>{html.escape(task)}</h1>",
                f"<p>{html.escape(description)}</p>" if description else ""]
        for section, note, rows in _sections(df[df["task"] == task]):
            table = task_table(rows, task)
            md += [f"## {section}", ""] + ([note, ""] if note else []) + [_markdown(table), ""]
            body.append(f"<h2>{section}</h2>" + _note_html(note)
                        + _html_table(table))
        write_atomic(out_dir / f"{task}.md", "\n".join(md))
        write_atomic(out_dir / f"{task}.html", _page(f"{task} · {title}", "".join(body) + _legend_html(legend)))
        written.append(task)
    lines = [f"# {title}", "",
             "Main metric per task (↑ higher is better, ↓ lower), ± its standard error over prompts. Per task "
             "(`<task>.md`, `.csv` with value, stderr and n in columns of their own, `.html`): every metric, the "
             "circuit, its faithfulness, CPR/CMD and method agreement. Regenerate with `circuitbench leaderboard`.", ""]
    body = [f"<h1>{html.escape(title)}</h1><p>Main metric per task (↑ higher is better, ↓ lower) ± standard error, "
            "n prompts. Click a task for its page (every metric, the circuit and its faithfulness), a column to "
            "sort.</p>"]
    for section, note, rows in _sections(df):
        ov = overview(rows)
        n_of = {(label, f"{task} ({main} {_arrow(main)})"): n for label, task, main, n in
                zip(rows["model_label"], rows["task"], rows["main_metric"], rows["n"])}
        lines += [f"## {section}", ""] + ([note, ""] if note else []) + [_markdown(ov), ""]
        body.append(f"<h2>{section}</h2>" + _note_html(note)
                    + _html_table(ov, link_columns=True, n_of=n_of))
    lines += ["## Legend", ""] + ([f"- `name{RANDOM_INIT}`: {BASELINE_NOTE}"] if (df["init"] == "random").any() else [])
    lines += [f"- **{k.strip()}**: {v}" for k, v in legend] + [""]
    body.append(_legend_html(legend))
    if not flagged.empty:
        lines += ["## Not included", "", flagged[["model", "task", "flag"]].to_markdown(index=False), ""]
        body.append("<h2>Not included</h2>" + flagged[["model", "task", "flag"]].to_html(index=False, border=0))
    write_atomic(out_dir / "README.md", "\n".join(lines))
    write_atomic(out_dir / "index.html", _page(title, "".join(body)))
    return {"tasks": written, "models": sorted(df["model_label"].unique()), "flagged": len(flagged)}
