"""The method leaderboard (`circuitbench leaderboard --by method`): per task and model, every method
side by side, as the field's papers print it by hand: recall and AUROC of the known circuit (models
with a reference), MIB's CPR and CMD, the circuit's faithfulness and verdict, and the cost in
forward-equivalents and seconds, each with its 95 % interval where the result holds one.

Rows come from RunResults (any folder depth: `make method-leaderboard` runs one unit per method,
so that a method refused by its own guard leaves the others standing). Within a (task, model) the
methods are ranked per level (node and edge recall count different things) by RANK_KEY."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from circuitbench.circuits.graph_files import EDGE_SCORES_SUFFIX
from circuitbench.circuits.recovery import RecoveryInterval, RecoveryScores
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.output_paths import staged_output
from circuitbench.results.schema import RunResult
from circuitbench.results.store import UnusableResult, read_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import METHODS
from circuitbench.tables.pages import SORT_SCRIPT, definition_list, esc, frame_cells, page, table_html

# The order methods are ranked in within a (task, model, level): each figure compared in turn, a
# missing figure after every present one; equal keys share a rank (1, 1, 3).
RANK_KEY: tuple[tuple[str, bool], ...] = (("recall", True), ("auroc", True), ("cpr", True), ("cmd", False),
                                          ("forwards", False))  # (column, higher is better)
RANK_KEY_TEXT = ("recall of the known circuit (higher first), then its AUROC, then CPR (higher first), then CMD "
                 "(lower first), then forward-equivalents (fewer first); a missing figure sorts after any present "
                 "one, equal keys share a rank")
LEVELS = ("edge", "node", "head")  # the order a (task, model)'s levels are shown in
LEVEL_WORDS = {"edge": "edges", "node": "nodes (heads and MLPs)", "head": "heads"}
MISSING = "—"  # a figure the result does not have (never 0)

# Shown columns: label -> what it means (the legend).
LEGEND: dict[str, str] = {
    "rank": f"within the (task, model) and level: {RANK_KEY_TEXT}",
    "level": "what the method scores and recall counts: edges (edge methods), nodes (heads and MLPs: node methods) or "
             "heads",
    "recall ↑": "share of the known circuit's components among the method's top |reference| components by |score| "
                "(node and edge level; head level: the rule's circuit), with its 95 % bootstrap interval over prompts "
                "where the result has one",
    "AUROC ↑": "how well |score| ranks the known circuit's components above the others (0.5: chance), with its "
               "interval where the result has one",
    "CPR ↑": "MIB's area under the faithfulness curve over circuit sizes, on the method's own signed ranking (at the "
             "level shown in brackets when it is not the row's), with its bootstrap interval for the circuit kept",
    "CMD ↓": "MIB's area under |1 − f| over circuit sizes, on the |score| ranking, with its interval for the circuit "
             "kept",
    "faithfulness": "f(C) of the method's circuit under the task's rule (with its interval and verdict when it is the "
                    "circuit the run kept; other candidates: their f alone)",
    "verdict": "the kept circuit's verdict: robust, counterfactual_specific, unfaithful or undefined (see the task "
               "leaderboard's legend); other candidates have none",
    "forwards ↓": "model work of the method's run in forward-equivalents: 1 = one forward of every prompt; a backward "
                  "counts 2, a forward resumed at block L of n counts (n − L)/n, stacked copies one each "
                  "(results made with an activation cache: marked *, the cached forwards cost nothing)",
    "seconds ↓": "wall time of the method's run (its circuit's faithfulness and checks not included)",
    "note": "why a figure is missing: the method was refused (its own max_forwards guard) or failed",
}


def compared_methods() -> list[str]:
    """Every registered method that scores nodes or edges (effect methods: what the board compares;
    attention detectors and causal tracing are not among them), in registry order."""
    return [name for name in METHODS.names() if METHODS.get(name).produces in ("node_scores", "edge_scores")]


def _level_of(result: RunResult, method: str) -> str:
    if method in result.edge_scores:
        return "edge"
    if method in result.node_scores:
        return "node"
    if method in result.head_scores:
        return "head"
    try:  # a failed run has no scores: what the method declares
        return {"edge_scores": "edge", "node_scores": "node"}.get(METHODS.get(method).produces, "head")
    except CircuitbenchError:
        return "head"


def _methods_of(result: RunResult) -> list[str]:
    if result.status != "complete":
        methods = result.task.spec.get("methods") or []
        return [str(m) for m in methods]
    seen = [*result.edge_scores, *result.node_scores, *result.head_scores]
    return list(dict.fromkeys(seen))


def _recovery(result: RunResult, method: str, level: str) -> tuple[RecoveryScores | None, RecoveryInterval | None]:
    """The method's recovery at its own level (edge or node, ranked at |reference|), else of heads."""
    if level == "edge" and method in result.edge_recovery:
        return result.edge_recovery[method], None
    if level in ("node", "edge") and method in result.node_recovery:
        return result.node_recovery[method], result.node_recovery_ci.get(method)
    if method in result.recovery:
        return result.recovery[method], result.recovery_ci.get(method)
    return None, None


def _recovery_level(result: RunResult, method: str, level: str) -> str | None:
    if level == "edge" and method in result.edge_recovery:
        return "edge"
    if level in ("node", "edge") and method in result.node_recovery:
        return "node"
    return "head" if method in result.recovery else None


def method_row(result: RunResult, method: str, file: str = "") -> dict:
    """One (task, model, method) row of numbers (None where the result has no such figure)."""
    level = _level_of(result, method)
    row: dict = {"task": result.task.name, "model": result.model.label, "init": result.model.init, "level": level,
                 "method": method, "file": file, "started_at": result.run.started_at}
    if result.status != "complete":
        detail = result.error.message if result.error else "no detail"
        row["note"] = ("refused: " if "max_forwards" in detail else "failed: ") + " ".join(detail.split())
        return row
    scores, interval = _recovery(result, method, level)
    if scores is not None:
        row.update({"recall": scores.recall, "auroc": scores.auroc, "n_reference": scores.n_reference,
                    "recovery_level": _recovery_level(result, method, level),
                    "recall_ci": interval.recall if interval else None,
                    "auroc_ci": interval.auroc if interval else None})
    circuit = result.circuit
    faith = circuit.faithfulness if circuit is not None else None
    if circuit is not None and faith is not None:
        kept = circuit.method == method
        figures = faith.by_method.get(method, {})
        row.update({"cpr": figures.get("cpr"), "cmd": figures.get("cmd"), "circuit_level": circuit.level,
                    "kept": kept, "rule": rule_text(circuit.rule)})
        if kept:
            entry = circuit.panel.get(faith.ablation)
            row.update({"faithfulness": faith.value, "faithfulness_undefined": faith.undefined,
                        "faithfulness_ci": entry.ci if entry else None, "verdict": circuit.verdict,
                        "cpr_ci": faith.cpr_ci if figures.get("cpr") is not None else None,
                        "cmd_ci": faith.cmd_ci if figures.get("cmd") is not None else None})
            if row["cpr"] is None and not faith.by_method:  # a rule without MIB's curve: its own CPR / CMD
                row.update({"cpr": faith.cpr, "cmd": faith.cmd, "cpr_ci": faith.cpr_ci, "cmd_ci": faith.cmd_ci})
        else:
            candidate = next((c for c in circuit.candidates if c.method == method), None)
            row["faithfulness"] = candidate.faithfulness if candidate else None
    cost = result.method_costs.get(method)
    if cost is not None:
        row.update({"forwards": cost.forwards, "seconds": cost.seconds, "cached": cost.activation_cache})
    return row


def rule_text(rule: dict) -> str:
    """A circuit rule in a few words: 'edge top_k 13, counterfactual ablation'."""
    size = next((f"{k} {rule[k]}" for k in ("top_k", "fraction", "threshold") if rule.get(k) is not None), "")
    return f"{rule.get('level', 'head')} {size}, {rule.get('ablation', '?')} ablation".replace("  ", " ")


def _stale(result: RunResult, include_paths: tuple[str, ...]) -> str | None:
    try:
        current = load_task(result.task.name, include_paths).content_hash()
    except CircuitbenchError:
        return None
    if current != result.task.content_hash:
        return f"stale: task spec changed since this run ({result.task.content_hash} ≠ {current})"
    return None


def read_results(results_dir: Path, include_paths: tuple[str, ...] = ()) -> tuple[list[tuple[str, RunResult]],
                                                                                   list[dict]]:
    """Every result under results_dir, at any depth ((file, result) pairs), and the files flagged:
    unreadable, another schema version, NaN/inf, stale (made with another version of the task)."""
    found, flagged = [], []
    for path in sorted(results_dir.rglob("*.json")):
        hidden = any(p.startswith(".") for p in path.relative_to(results_dir).parts)
        if path.name.endswith(EDGE_SCORES_SUFFIX) or hidden:
            continue
        try:
            result = read_result(path)
        except UnusableResult as e:
            flagged.append({"file": str(path), "flag": f"unreadable: {e.reason}" if e.kind == "unreadable"
                            else e.reason})
            continue
        reason = _stale(result, include_paths)
        if reason:
            flagged.append({"file": str(path), "flag": reason})
            continue
        found.append((str(path), result))
    return found, flagged


def _key(row: pd.Series) -> tuple:
    out = []
    for column, higher in RANK_KEY:
        value = row.get(column)
        present = value is not None and not pd.isna(value)
        out += [0 if present else 1, (-value if higher else value) if present else 0.0]
    return tuple(out)


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with a `rank` column: within each (task, model, level), by RANK_KEY (competition
    ranking); rows with a note (refused, failed) get none and come last."""
    if rows.empty:
        return rows.assign(rank=pd.Series(dtype="Int64"))
    rows = rows.copy()
    rows["rank"] = pd.Series([pd.NA] * len(rows), dtype="Int64", index=rows.index)
    note = rows["note"] if "note" in rows else pd.Series([None] * len(rows), index=rows.index)
    for _, group in rows.groupby(["task", "model", "level"], sort=False):
        live = group[note.loc[group.index].isna()]
        keys = {i: _key(row) for i, row in live.iterrows()}
        ordered = sorted(keys, key=lambda i: keys[i])
        for i in ordered:
            rows.loc[i, "rank"] = 1 + sum(keys[j] < keys[i] for j in ordered)
    level_order = {level: k for k, level in enumerate(LEVELS)}
    rows["_level"] = rows["level"].map(level_order).fillna(len(LEVELS))
    rows["_rank"] = rows["rank"].astype("Float64").fillna(np.inf)
    return rows.sort_values(["task", "model", "_level", "_rank", "method"]).drop(columns=["_level", "_rank"])


def method_table(results: Iterable[tuple[str, RunResult]]) -> tuple[pd.DataFrame, list[dict]]:
    """(rows, superseded): one ranked row per (task, model, method) of numbers, intervals as
    (low, high) tuples, None where the results have no figure. A method found in several results of
    one (task, model) is taken from a complete one, the latest; the others are returned as superseded."""
    candidates: dict[tuple[str, str, str], list[dict]] = {}
    for file, result in results:
        for method in _methods_of(result):
            row = method_row(result, method, file)
            candidates.setdefault((row["task"], row["model"], method), []).append(row)
    rows, superseded = [], []
    for options in candidates.values():
        best = max(options, key=lambda r: (r.get("note") is None, r["started_at"]))
        rows.append(best)
        superseded += [{"file": r["file"], "flag": f"{r['method']} on {r['model']} / {r['task']}: superseded by "
                        f"{best['file']}"} for r in options if r is not best]
    table = pd.DataFrame(rows)
    for column in ("recall", "auroc", "cpr", "cmd", "faithfulness", "forwards", "seconds", "note", "verdict"):
        if column not in table:
            table[column] = None
    return ranked(table), superseded


# --- shown as text ------------------------------------------------------------------------------
def _figure(value: object, interval: object = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    text = f"{value:.{digits}f}"
    if isinstance(interval, (tuple, list)) and len(interval) == 2:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _get(row: pd.Series, column: str) -> object:
    value = row.get(column)
    if value is None or (not isinstance(value, (tuple, list)) and pd.isna(value)):
        return None
    return value


def _faithfulness_text(row: pd.Series, intervals: bool = True, digits: int = 3) -> str:
    if _get(row, "faithfulness") is not None:
        return _figure(row["faithfulness"], _get(row, "faithfulness_ci") if intervals else None, digits)
    return "undefined" if _get(row, "faithfulness_undefined") is not None else MISSING


def _curve_text(row: pd.Series, column: str, intervals: bool = True, digits: int = 3) -> str:
    text = _figure(_get(row, column), _get(row, f"{column}_ci") if intervals else None, digits)
    level = _get(row, "circuit_level")
    return text + (f" ({level})" if text != MISSING and level is not None and level != row["level"] else "")


def _cost_text(row: pd.Series) -> str:
    forwards = _get(row, "forwards")
    if forwards is None:
        return MISSING
    text = f"{forwards:.1f}" if forwards < 100 else f"{forwards:,.0f}"
    return text + ("*" if _get(row, "cached") else "")


def shown(rows: pd.DataFrame, intervals: bool = True, digits: int = 3) -> pd.DataFrame:
    """One (task, model)'s rows as the tables show them: rank, method, level, figures (with their
    intervals unless `intervals` is False), '—' for a figure the result does not have."""
    def figure(row: pd.Series, column: str) -> str:
        return _figure(_get(row, column), _get(row, f"{column}_ci") if intervals else None, digits)

    out = pd.DataFrame({
        "rank": ["" if pd.isna(r) else str(int(r)) for r in rows["rank"]],
        "method": rows["method"].tolist(),
        "level": rows["level"].tolist(),
        "recall ↑": [figure(r, "recall") for _, r in rows.iterrows()],
        "AUROC ↑": [figure(r, "auroc") for _, r in rows.iterrows()],
        "CPR ↑": [_curve_text(r, "cpr", intervals, digits) for _, r in rows.iterrows()],
        "CMD ↓": [_curve_text(r, "cmd", intervals, digits) for _, r in rows.iterrows()],
        "faithfulness": [_faithfulness_text(r, intervals, digits) for _, r in rows.iterrows()],
        "verdict": [str(v) if isinstance(v, str) else "" for v in rows["verdict"]],
        "forwards ↓": [_cost_text(r) for _, r in rows.iterrows()],
        "seconds ↓": [_figure(_get(r, "seconds"), digits=2) for _, r in rows.iterrows()],
    })
    notes = ["" if not isinstance(n, str) else n if len(n) <= 160 else n[:157] + "…" for n in rows["note"]]
    if any(notes):
        out["note"] = notes
    return out


def overview(rows: pd.DataFrame, level: str) -> pd.DataFrame:
    """Methods × (task · model) at one level: each cell the method's rank and recall there; the
    mean rank over the units it was ranked in, with their count."""
    sub = rows[rows["level"] == level]
    units = list(dict.fromkeys(zip(sub["task"], sub["model"])))
    table = []
    for method in dict.fromkeys(sub.sort_values("method")["method"]):
        mine = sub[sub["method"] == method]
        line: dict[str, str] = {"method": method}
        ranks = [int(r) for r in mine["rank"] if not pd.isna(r)]
        line["mean rank ↓"] = f"{np.mean(ranks):.1f} ({len(ranks)})" if ranks else MISSING
        for task, model in units:
            cell = mine[(mine["task"] == task) & (mine["model"] == model)]
            if cell.empty:
                line[f"{task} · {model}"] = MISSING
                continue
            r = cell.iloc[0]
            line[f"{task} · {model}"] = (f"#{int(r['rank'])} · {_figure(_get(r, 'recall'), digits=2)}"
                                         if not pd.isna(r["rank"]) else "refused" if str(r["note"]).startswith(
                                             "refused") else "failed")
        table.append(line)
    out = pd.DataFrame(table)
    if not out.empty:
        out = out.assign(_mean=[float(v.split()[0]) if v != MISSING else np.inf for v in out["mean rank ↓"]])
        out = out.sort_values(["_mean", "method"]).drop(columns="_mean")
    return out


# --- the board ----------------------------------------------------------------------------------
TITLE = "circuitbench method leaderboard"


def _intro(title: str) -> str:
    return (f"Every method side by side on each task and model: recall and AUROC of the known circuit, MIB's CPR and "
            f"CMD, the circuit's faithfulness and verdict, and what the method cost. Ranked within each task, model "
            f"and level by {RANK_KEY_TEXT}. Intervals are 95 % bootstrap intervals over prompts; {MISSING} marks a "
            f"figure the results do not have (never 0). Regenerate with `make method-leaderboard` "
            f"(`circuitbench leaderboard --by method`).")


def build_methods(results_dir: Path, out_dir: Path, include_paths: tuple[str, ...] = (),
          title: str = TITLE) -> dict[str, object]:
    """Write methods.md and methods.html into out_dir; returns the rows (`method_table`: the figures
    as numbers, intervals as (low, high)), the (task, model) units and what was flagged."""
    if not results_dir.is_dir():
        raise CircuitbenchError(f"--results {results_dir}: no such directory. Run `circuitbench run` (or `make "
                                "method-leaderboard`) first.")
    results, flagged = read_results(results_dir, include_paths)
    rows, superseded = method_table(results)
    if rows.empty:
        raise CircuitbenchError(f"No results with node or edge methods under {results_dir} ({len(flagged)} flagged).")
    flagged += superseded
    try:
        with staged_output(out_dir) as staging:  # every file written, or none replaced
            _write(rows, flagged, staging, title)
    except OSError as e:
        raise CircuitbenchError(f"--out {out_dir}: cannot write the method leaderboard ({e.strerror or e}); the "
                                "folder is unchanged. Free space or fix the permissions and run again.") from None
    return {"rows": rows, "flagged": flagged, "units": sorted(set(zip(rows["task"], rows["model"])))}


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)  # numbers as formatted, fixed precision


def _write(rows: pd.DataFrame, flagged: list[dict], out_dir: Path, title: str) -> None:
    md = [f"# {title}", "", _intro(title), ""]
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(_intro(title).replace('`', ''))}</p>"]
    levels = [level for level in LEVELS if (rows["level"] == level).any()]
    for level in levels:
        table = overview(rows, level)
        heading = f"Overview: {LEVEL_WORDS[level]}"
        note = "Each cell: the method's rank there · its recall of the known circuit."
        md += [f"## {heading}", "", note, "", _markdown(table), ""]
        body += [f"<h2>{esc(heading)}</h2>", f"<p>{esc(note)}</p>", *table_html(*frame_cells(table))]
    for (task, model), unit in rows.groupby(["task", "model"], sort=False):
        table = shown(unit)
        rules = sorted({r for r in unit.get("rule", pd.Series(dtype=object)) if isinstance(r, str)})
        note = f"Circuits: {'; '.join(rules)}." if rules else ""
        md += [f"## {task} · {model}", ""] + ([note, ""] if note else []) + [_markdown(table), ""]
        body += [f"<h2>{esc(task)} · {esc(model)}</h2>", *([f"<p>{esc(note)}</p>"] if note else []),
                 *table_html(*frame_cells(table))]
    legend = [(label, meaning) for label, meaning in LEGEND.items()] + [(MISSING, "not in the results")]
    md += ["## Legend", ""] + [f"- **{k}**: {v}" for k, v in legend] + [""]
    body += ["<h2>Legend</h2>", *definition_list(legend)]
    if flagged:
        listed = pd.DataFrame(flagged)[["file", "flag"]]
        md += ["## Not included", "", _markdown(listed), ""]
        body += ["<h2>Not included</h2>", *table_html(*frame_cells(listed), sortable=False)]
    write_atomic(out_dir / "methods.md", "\n".join(md))
    write_atomic(out_dir / "methods.html", page(title, body, "leaderboard", SORT_SCRIPT))


def console_tables(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) for the terminal: the overview of each level, then each (task, model)'s rows
    (two decimals, no intervals: methods.md has them)."""
    out = [(f"methods: {LEVEL_WORDS[level]} (rank · recall)", overview(rows, level)) for level in LEVELS
           if (rows["level"] == level).any()]
    units = rows.groupby(["task", "model"], sort=False)
    return out + [(f"{task} · {model}", shown(unit, intervals=False, digits=2)) for (task, model), unit in units]
