"""Results → leaderboard tables: one Markdown + CSV per task (rows = models), an overview
(models × tasks, main metric) and a static, sortable index.html. Stale results (made with another
version of the task spec) and failed runs are listed apart, never mixed in."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.results.schema import RunResult
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import METRICS


def collect(results_dir: Path, include_paths: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current rows, flagged rows) from every RunResult under results_dir."""
    rows, flagged = [], []
    for path in sorted(results_dir.glob("*/*.json")):
        try:
            r = RunResult.model_validate(json.loads(path.read_text()))
        except (ValueError, OSError) as e:
            flagged.append({"file": str(path), "model": path.parent.name, "task": path.stem,
                            "flag": f"unreadable ({type(e).__name__})"})
            continue
        base = {"file": str(path), "model": r.model.name, "task": r.task.name, "init": r.model.init}
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
            "model_label": r.model.name + (" (random init)" if r.model.init == "random" else ""),
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
            row.update({"circuit_size": size, "faithfulness": c.faithfulness,
                        "cpr": c.cpr, "cmd": c.cmd, "circuit_method": c.method})
            for method, figures in c.by_method.items():  # MIB's CPR / CMD of every method at the circuit's level
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


def task_table(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table: a row per model, value ± stderr per metric, circuit columns."""
    sub = df[df["task"] == task].sort_values("model_label")
    metric_names = [c for c in sub.columns if c in METRICS and sub[c].notna().any()]
    main = sub["main_metric"].iloc[0]
    metric_names = [main] + [m for m in metric_names if m != main]
    out = pd.DataFrame({"model": sub["model_label"].to_list()})
    for m in metric_names:
        se = sub[f"{m}_se"].to_list()
        out[f"{m} {_arrow(m)}"] = [f"{v:.3f} ± {s:.3f}" if pd.notna(s) else f"{v:.3f}" for v, s in zip(sub[m], se)]
    extra = {**{f"main_on_{s}": f"{main} ({s} split)" for s in ("train", "val", "test")},
             "circuit_size": "circuit size", "faithfulness": "faithfulness ↑", "cpr": "CPR ↑", "cmd": "CMD ↓",
             "agreement_spearman": "exact vs attribution ρ ↑", "recovery_recall": "reference recall ↑",
             "recovery_auroc": "reference AUROC ↑"}
    for col in sorted(c for c in sub.columns if c.startswith(("cpr:", "cmd:"))):
        kind, what = col.split(":", 1)
        method, level = what.split("@")
        extra[col] = f"{kind.upper()} {method} ({level}) {'↑' if kind == 'cpr' else '↓'}"
    for col, label in extra.items():
        if col in sub and sub[col].notna().any():
            shown = lambda v, _col=col: f"{int(v)}" if _col == "circuit_size" else f"{v:.3f}"  # noqa: E731
            out[label] = ["" if pd.isna(v) else shown(v) for v in sub[col]]
    out["n"] = [f"{n}" + (f" (−{d})" if d else "") for n, d in zip(sub["n"], sub["dropped"])]
    out["date"] = sub["date"].to_list()
    return out


def overview(df: pd.DataFrame) -> pd.DataFrame:
    """Models × tasks, each cell the task's main metric (with ↑/↓ in the column name)."""
    cells = {}
    for task, sub in df.groupby("task"):
        main = sub["main_metric"].iloc[0]
        cells[f"{task} ({main} {_arrow(main)})"] = dict(zip(sub["model_label"], (f"{v:.3f}" for v in sub[main])))
    return pd.DataFrame(cells).fillna("").sort_index().rename_axis("model").reset_index()


_SORT_JS = """
<script>
document.querySelectorAll('table').forEach(t => t.querySelectorAll('th').forEach((th, i) => th.onclick = () => {
  const rows = Array.from(t.tBodies[0].rows), asc = th.dataset.asc !== 'true'; th.dataset.asc = asc;
  const key = r => { const v = r.cells[i].innerText.split(' ')[0]; const n = parseFloat(v); return isNaN(n) ? v : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1));
  rows.forEach(r => t.tBodies[0].appendChild(r)); }));
</script>"""


def build(results_dir: Path, out_dir: Path, include_paths: tuple[str, ...] = ()) -> dict[str, object]:
    """Write every table; returns what was written and what was flagged."""
    if not results_dir.is_dir():
        raise CircuitbenchError(f"--results {results_dir}: no such directory. Run `circuitbench run` first.")
    df, flagged = collect(results_dir, include_paths)
    if df.empty:
        raise CircuitbenchError(f"No current results under {results_dir} ({len(flagged)} flagged).")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sections = []
    for task in sorted(df["task"].unique()):
        table = task_table(df, task)
        write_atomic(out_dir / f"{task}.csv", table.to_csv(index=False))
        write_atomic(out_dir / f"{task}.md", f"# {task}\n\n" + table.to_markdown(index=False) + "\n")
        written.append(task)
        sections.append(f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>" + table.to_html(index=False, border=0))
    ov = overview(df)
    lines = ["# circuitbench leaderboard", "",
             "Main metric per task (↑ higher is better, ↓ lower); per-task tables with standard errors, circuit size, "
             "faithfulness, CPR/CMD and method agreement are in `<task>.md` / `.csv`. Regenerate with "
             "`circuitbench leaderboard`.", "", ov.to_markdown(index=False), ""]
    if not flagged.empty:
        lines += ["## Not included", "", flagged[["model", "task", "flag"]].to_markdown(index=False), ""]
    write_atomic(out_dir / "README.md", "\n".join(lines))
    page = ("<!doctype html><meta charset='utf-8'><title>circuitbench leaderboard</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
            "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}th{cursor:pointer;background:#f4f4f4}"
            "td:first-child,th:first-child{text-align:left}</style><h1>circuitbench leaderboard</h1>"
            "<p>Click a column to sort.</p><h2>overview</h2>" + ov.to_html(index=False, border=0) + "".join(sections)
            + ("<h2>not included</h2>" + flagged[["model", "task", "flag"]].to_html(index=False, border=0)
               if not flagged.empty else "")
            + _SORT_JS)
    write_atomic(out_dir / "index.html", page)
    return {"tasks": written, "models": sorted(df["model_label"].unique()), "flagged": len(flagged)}


def node_recovery_table(results: list[RunResult]) -> pd.DataFrame:
    """One row per (model, method) of every result with node recovery: the reference's nodes (heads
    and MLPs) against the method's top nodes of that count, AUROC and AP of its node scores."""
    rows = []
    for r in results:
        for method, s in r.node_recovery.items():
            rows.append({"model": r.model.name, "method": method, "reference nodes": s.n_reference,
                         "recall at |reference|": s.recall, "AUROC": s.auroc, "AP": s.average_precision})
    return pd.DataFrame(rows)


def recovery_table(results: list[RunResult]) -> pd.DataFrame:
    """One row per (model, method) of every result with a reference: precision, recall and F1 of the
    method's circuit, AUROC and average precision of its scores, and whether its circuit was kept."""
    rows = []
    for r in results:
        for method, s in r.recovery.items():
            rows.append({"model": r.model.name, "method": method,
                         "reference heads": s.n_reference, "precision": s.precision, "recall": s.recall, "F1": s.f1,
                         "AUROC": s.auroc, "AP": s.average_precision,
                         "kept": "✓" if r.circuit is not None and r.circuit.method == method else ""})
    return pd.DataFrame(rows)
