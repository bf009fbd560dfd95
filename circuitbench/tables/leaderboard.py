"""Results → leaderboards people read. The overview (README.md, index.html) has one row per
(model, task) unit: its main metric, the circuit (size and components), verdict, faithfulness with
its interval, recall of the reference circuit where the task has one, and a link to the unit's
report (reports/<model>/<task>/report.html, written alongside). Per task: a Markdown page, an HTML
page (scores apart from diagnostics) and a CSV of numbers (value, stderr and n in columns of their
own). Known-answer tasks (a reference circuit) and random-init baselines sit in sections of their
own. A metric in units of a model's vocabulary (logit_diff, losses) is compared across models only
when they share a tokenizer (tables/comparability.py) unless asked (`compare_logits`). Stale
results (made with another version of the task spec) and failed runs are listed apart."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from circuitbench.circuits.circuit import RANDOM_INIT, Circuit, describe_rule, model_label
from circuitbench.circuits.graph_files import EDGE_SCORES_SUFFIX
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.models.graph import head_node, mlp_node
from circuitbench.output_paths import path_component, staged_output
from circuitbench.results.schema import RunResult
from circuitbench.results.store import UnusableResult, read_result
from circuitbench.specs.catalog import load_task
from circuitbench.specs.registries import METRICS
from circuitbench.tables.comparability import COMPARABLE, comparable_across_vocabularies, vocabulary_key
from circuitbench.tables.pages import SORT_SCRIPT, Cell, definition_list, esc, indent, page, table_html, table_markdown

TRAINED = "Trained models"
KNOWN = "Known answers"
BASELINES = "Random-init baselines"
SECTION_NOTES = {
    KNOWN: "Tasks with a reference circuit (compiled by tracr, or planted by training): the circuit found is "
           "scored against the known one (recall: the share of the reference's components it holds).",
    BASELINES: f"Sanity checks, not findings: `{RANDOM_INIT}` models have seeded random weights (architecture from "
               "models.yaml) and have learned nothing. Their figures show what chance looks like on each task.",
}
BASELINE_NOTE = SECTION_NOTES[BASELINES]
FAITHFULNESS = "faithfulness (closest to 1 is best)"
# Columns beyond the metrics: label in tables -> what it means (the legend lists the ones a page shows)
LEGEND: dict[str, str] = {
    "main metric": "the metric the task's methods score and its circuit keeps (↑ higher is better, ↓ lower)",
    "value": "the main metric on the clean prompts, ± its standard error over prompts",
    "n": "prompts evaluated (−k: dropped for the tokenizer)",
    "circuit": "the components the task's rule chose: attention heads aL.hH (layer L, head H), MLPs mL, or edges "
               "u->v; long lists are cut (the task page lists every component)",
    "size": "components in the circuit (heads; heads and MLPs; or edges, by the rule's level)",
    "verdict": "how far the circuit can be trusted: robust (f within [0.8, 1.2], interval included, under the "
               "rule's ablation, counterfactual patching, mean and resample ablation, nothing necessary left out), "
               "counterfactual_specific, unfaithful, or undefined (no measurable effect)",
    FAITHFULNESS: "f(C) = (m(C) − m(∅)) / (m(M) − m(∅)) of the main metric m with every component outside the "
                  "circuit ablated, with its 95 % bootstrap interval. 1: the circuit alone does what the model does; "
                  "above 1 overshoots, below 1 misses part of it, so the best value is 1, not the highest. "
                  "'undefined' when ablating every component changes m by less than 2 standard errors",
    "recall ↑": "share of the reference circuit's components the chosen circuit holds (found of known)",
    "AUROC ↑": "how well |scores| rank the reference circuit's components above the others (0.5: chance)",
    "incompleteness ↓": "Wang et al.: the largest |m(C \\ K) − m(M \\ K)| / |m(M) − m(∅)| over subsets K of the "
                        "circuit (0: knocking any part out of the circuit or the model does the same)",
    "CPR ↑": "area under the faithfulness curve over circuit sizes (MIB), with its 95 % interval",
    "CMD ↓": "area under |1 − f| over circuit sizes (MIB), with its 95 % interval",
    "CPR / CMD method (level)": "MIB's CPR and CMD of that method's own ranking at the circuit's level (heads, nodes "
                                "or edges); in the CSV: cpr_<method>_<level>, cmd_<method>_<level>",
    "report": "the unit's report: every metric, score maps, the circuit and its faithfulness curve",
    "stability": "diagnostic: mean Jaccard of the circuits the kept method gives on half-samples of the prompts "
                 "(1: the same set on any half), with the smallest and largest pair",
    "ρ": "diagnostic, not a score: Spearman correlation of two methods' head scores on this unit (how much the "
         "estimates agree; the ablations and patching directions in brackets)",
    "circuit method": "the method whose scores the circuit was chosen from (the most faithful candidate)",
    "rule": "how the circuit was chosen from the scores",
    "date": "when the unit ran",
}
SHOWN_COMPONENTS = 6  # components named in an overview cell before "… +k"
REPORTS = "reports"  # the units' reports, under the leaderboard folder: reports/<model folder>/<task>/


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
        if path.name.endswith(EDGE_SCORES_SUFFIX):
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


def circuit_components(c: Circuit) -> list[str]:
    """The circuit's components by their graph names: a1.h3 … m0; an edge circuit its edges."""
    if c.level == "edge":
        return list(c.edges)
    return [head_node(int(layer), int(head)) for layer, head in c.heads] + [mlp_node(int(m)) for m in c.mlps]


def _agreement_label(pair: str) -> str:
    """'spearman(activation_patching[noising], attribution_patching[noising])' -> 'ρ activation_patching
    [noising] vs attribution_patching[noising]'."""
    inner = pair.split("(", 1)[1].rstrip(")") if pair.startswith("spearman(") else pair
    return "ρ " + inner.replace(", ", " vs ")


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
            "model_label": r.model.label, "model_folder": path.parent.name,
            "identity": f"{r.model.source}|{r.model.fingerprint}|{r.model.init}|{r.model.dtype}",
            "vocabulary": vocabulary_key(r.model), "known_answer": r.reference is not None,
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
            row.update({"circuit_size": size, "circuit_method": c.method, "circuit_level": c.level,
                        "circuit_components": " ".join(circuit_components(c)), "circuit_rule": describe_rule(c.rule),
                        "faithfulness": f and f.value,
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
            row[f"agreement:{pair}"] = rho
            if "activation_patching" in pair and "attribution_patching" in pair:
                row["agreement_spearman"] = rho
        if r.recovery and r.circuit is not None and r.circuit.method in r.recovery:
            found = r.recovery[r.circuit.method]
            row["recovery_recall"] = found.recall
            row["recovery_auroc"] = found.auroc
            row["recovery_n_reference"] = found.n_reference
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


# ---- what a table shows ---------------------------------------------------------------------------

def _arrow(metric: str) -> str:
    try:
        return "↑" if METRICS.get(metric).higher_is_better else "↓"
    except CircuitbenchError:
        return ""


def _metric_label(metric: str) -> str:
    return f"{metric} {_arrow(metric)}".strip()


def _metric_meaning(metric: str) -> str:
    try:
        meaning = METRICS.get(metric).description
    except CircuitbenchError:
        meaning = "a plugin metric"
    if not comparable_across_vocabularies(metric):
        meaning += " — in units of the model's own vocabulary: compared across models only when they share a tokenizer"
    return meaning


def _ci_text(interval: tuple[float, float] | None) -> str | None:
    """A 95 % interval as the tables show it: [low, high]."""
    return None if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _has(sub: pd.DataFrame, col: str) -> bool:
    return col in sub and sub[col].notna().any()


def _value(v: object, se: object = None) -> Cell:
    if v is None or pd.isna(v):
        return Cell(cls="num")
    return Cell(f"{v:.3f}", sub=f"± {se:.3f}" if se is not None and pd.notna(se) else "", cls="num")


def _interval_value(v: object, ci: object, digits: int = 3) -> Cell:
    if v is None or pd.isna(v):
        return Cell(cls="num")
    return Cell(f"{v:.{digits}f}", sub=ci if isinstance(ci, str) else "", cls="num")


def _faithfulness_cell(row: pd.Series) -> Cell:
    if pd.notna(row.get("faithfulness")):
        return _interval_value(row["faithfulness"], row.get("faithfulness_ci"))
    if isinstance(row.get("faithfulness_undefined"), str):
        return Cell("undefined", title=row["faithfulness_undefined"], cls="num")
    return Cell(cls="num")


def _verdict_cell(row: pd.Series) -> Cell:
    v = row.get("verdict")
    return Cell(str(v), cls=f"verdict-{v}") if isinstance(v, str) else Cell()


def _components_cell(row: pd.Series, cut: bool = True) -> Cell:
    """'3: a1.h3 a0.h1 m0' (an edge circuit: its edges); cut after SHOWN_COMPONENTS with the full list
    as the hover text."""
    names = str(row.get("circuit_components") or "").split()
    if pd.isna(row.get("circuit_size")):
        return Cell()
    if not names:
        return Cell("(empty)", cls="components")
    shown = names[:SHOWN_COMPONENTS] if cut else names
    text = ", ".join(shown) + (f", … +{len(names) - len(shown)}" if len(shown) < len(names) else "")
    return Cell(text, title=", ".join(names) if len(shown) < len(names) else None, cls="components")


def _recall_cell(row: pd.Series) -> Cell:
    recall = row.get("recovery_recall")
    if recall is None or pd.isna(recall):
        return Cell(cls="num")
    known = row.get("recovery_n_reference")
    found = f"({round(recall * known)} of {int(known)})" if known is not None and pd.notna(known) else ""
    return Cell(f"{recall:.3f}", sub=found, cls="num")


def _model_cell(row: pd.Series) -> Cell:
    label = str(row["model_label"])
    badge = ("<span class=\"badge\" title=\"seeded random weights: a baseline\">random init</span>"
             if row["init"] == "random" else "")
    return Cell(label, raw_html=esc(label) + (" " + badge if badge else ""), cls="name")


def _report_href(row: pd.Series, prefix: str = "") -> str:
    return f"{prefix}{REPORTS}/{row['model_folder']}/{row['task']}/report.html"


def _ordered(sub: pd.DataFrame) -> pd.DataFrame:
    """Trained models first, then random-init baselines, each by name."""
    return sub.assign(_baseline=sub["init"] == "random").sort_values(["_baseline", "model_label"])


def _sections(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows): trained models on tasks without a reference, known-answer tasks, random-init
    baselines (each when there are any)."""
    known_tasks = set(df.loc[df["known_answer"].astype(bool), "task"])
    trained = df[df["init"] != "random"]
    known = trained["task"].isin(known_tasks)
    parts = ((TRAINED, trained[~known]), (KNOWN, trained[known]), (BASELINES, df[df["init"] == "random"]))
    return [(title, rows) for title, rows in parts if not rows.empty]


def shown_metric(rows: pd.DataFrame, metric: str, compare_logits: bool) -> bool:
    """Whether `metric` may be one column over these rows: it is comparable across vocabularies,
    or every row has the same vocabulary, or the reader asked (--compare-logits)."""
    return compare_logits or comparable_across_vocabularies(metric) or rows["vocabulary"].nunique() <= 1


def _overview_metric(rows: pd.DataFrame, compare_logits: bool) -> tuple[str, bool]:
    """(the metric a task's overview rows show, whether it stands in for the main metric): the main
    metric where it is comparable over the rows, else the first of COMPARABLE every row has ('' none)."""
    main = rows["main_metric"].iloc[0]
    if shown_metric(rows, main, compare_logits):
        return main, False
    for metric in COMPARABLE:
        if metric in rows and rows[metric].notna().all():
            return metric, True
    return "", True


# ---- the overview ---------------------------------------------------------------------------------

def overview_rows(rows: pd.DataFrame, with_recall: bool, compare_logits: bool = False,
                  prefix: str = "") -> tuple[list[str], list[list[Cell]], set[str], set[str]]:
    """(columns, cells, main metrics not compared, metrics shown): one row per unit, grouped by task."""
    columns = ["task", "model", "main metric", "value", "n", "size", "circuit", "verdict", FAITHFULNESS]
    columns += ["recall ↑"] * with_recall + ["report"]
    out: list[list[Cell]] = []
    withheld: set[str] = set()
    shown: set[str] = set()
    for task, sub in rows.groupby("task", sort=True):
        sub = sub.sort_values("model_label")
        metric, stand_in = _overview_metric(sub, compare_logits)
        shown |= {metric} - {""}
        if stand_in:
            withheld.add(sub["main_metric"].iloc[0])
        for _, row in sub.iterrows():
            size = row.get("circuit_size")
            cells = [Cell(str(task), href=f"{prefix}{task}.html", cls="name"), _model_cell(row),
                     Cell(_metric_label(metric) if metric else "—", cls="name",
                          sub=f"instead of {row['main_metric']} †" if stand_in else ""),
                     _value(row.get(metric), row.get(f"{metric}_se")) if metric else Cell("—", cls="num"),
                     Cell(f"{int(row['n'])}" + (f" (−{int(row['dropped'])})" if row["dropped"] else ""), cls="num"),
                     Cell("" if size is None or pd.isna(size) else f"{int(size)}", cls="num"),
                     _components_cell(row), _verdict_cell(row), _faithfulness_cell(row)]
            cells += [_recall_cell(row)] * with_recall
            cells.append(Cell("report", href=_report_href(row, prefix)))
            out.append(cells)
    return columns, out, withheld, shown


def _withheld_note(withheld: set[str]) -> str:
    names = ", ".join(sorted(withheld))
    return (f"† {names}: in units of each model's own vocabulary, and the models of such a task do not share a "
            "tokenizer, so the row shows the first of accuracy, answer_prob and answer_rank the results all have "
            "instead (— if none); each unit's report has every metric. `circuitbench leaderboard --compare-logits` "
            "compares them anyway.")


# ---- a task's page --------------------------------------------------------------------------------

def _metric_names(sub: pd.DataFrame) -> list[str]:
    """The task's main metric first, then the other metrics its results hold."""
    names = [c for c in sub.columns if c in METRICS and sub[c].notna().any()]
    main = sub["main_metric"].iloc[0]
    return [main] * (main in names) + [m for m in names if m != main]


def _by_method_columns(sub: pd.DataFrame) -> list[str]:
    """MIB's CPR / CMD of each method at the circuit's level ('cpr:eap@edge'), where any row has one."""
    return sorted(c for c in sub.columns if c.startswith(("cpr:", "cmd:")) and sub[c].notna().any())


def by_method_label(col: str) -> str:
    """'cpr:eap@edge' -> 'CPR eap (edge) ↑'."""
    kind, what = col.split(":", 1)
    method, level = what.split("@")
    return f"{kind.upper()} {method} ({level}) {'↑' if kind == 'cpr' else '↓'}"


def score_table(rows: pd.DataFrame, compare_logits: bool = False,
                prefix: str = "") -> tuple[list[str], list[list[Cell]], list[str]]:
    """(columns, cells, metrics left out): a task's scores per model: the metrics comparable over
    these rows, the circuit (size, every component, verdict, faithfulness, CPR/CMD, recall)."""
    sub = _ordered(rows)
    metrics = _metric_names(sub)
    kept = [m for m in metrics if shown_metric(sub, m, compare_logits)]
    main = metrics[0] if metrics else ""
    columns = ["model"] + [_metric_label(m) for m in kept]
    getters = [lambda r, m=m: _value(r.get(m), r.get(f"{m}_se")) for m in kept]
    if main in kept:
        for split in ("train", "val", "test"):
            if _has(sub, f"main_on_{split}"):
                columns.append(f"{_metric_label(main)} ({split} split)")
                getters.append(lambda r, c=f"main_on_{split}": _value(r.get(c), r.get(f"{c}_se")))
    circuit = [("verdict", "verdict", _verdict_cell),
               (FAITHFULNESS, "verdict", _faithfulness_cell),
               ("recall ↑", "recovery_recall", _recall_cell),
               ("size", "circuit_size", lambda r: Cell(f"{int(r['circuit_size'])}", cls="num")
                if pd.notna(r.get("circuit_size")) else Cell()),
               ("circuit", "circuit_components", lambda r: _components_cell(r, cut=False)),
               ("incompleteness ↓", "incompleteness", lambda r: _interval_value(r.get("incompleteness"), None)),
               ("CPR ↑", "cpr", lambda r: _interval_value(r.get("cpr"), r.get("cpr_ci"))),
               ("CMD ↓", "cmd", lambda r: _interval_value(r.get("cmd"), r.get("cmd_ci"))),
               ("AUROC ↑", "recovery_auroc", lambda r: _interval_value(r.get("recovery_auroc"), None))]
    for label, col, getter in circuit:
        if _has(sub, col) or (label == FAITHFULNESS and _has(sub, "faithfulness_undefined")):
            columns.append(label)
            getters.append(getter)
    for col in _by_method_columns(sub):
        columns.append(by_method_label(col))
        getters.append(lambda r, c=col: _interval_value(r.get(c), None))
    columns.append("report")
    getters.append(lambda r: Cell("report", href=_report_href(r, prefix)))
    cells = [[_model_cell(row)] + [g(row) for g in getters] for _, row in sub.iterrows()]
    return columns, cells, [m for m in metrics if m not in kept]


def diagnostics_table(rows: pd.DataFrame) -> tuple[list[str], list[list[Cell]]]:
    """A task's diagnostics per model (not scores: how repeatable and how corroborated the circuit
    is, and what ran): stability, method agreement ρ, circuit method and rule, n, date."""
    sub = _ordered(rows)
    columns = ["model"]
    getters = []
    if _has(sub, "stability"):
        columns.append("stability")
        getters.append(lambda r: _interval_value(r.get("stability"), r.get("stability_ci")))
    for col in sorted(c for c in sub.columns if c.startswith("agreement:") and sub[c].notna().any()):
        columns.append(_agreement_label(col.split(":", 1)[1]))
        getters.append(lambda r, c=col: _interval_value(r.get(c), None))
    if _has(sub, "circuit_method"):
        columns += ["circuit method", "rule"]
        getters += [lambda r: Cell(str(r.get("circuit_method") or "")),
                    lambda r: Cell(str(r.get("circuit_rule") or "") if pd.notna(r.get("circuit_rule")) else "",
                                   cls="name")]
    columns += ["n", "date"]
    getters += [lambda r: Cell(f"{int(r['n'])}" + (f" (−{int(r['dropped'])})" if r["dropped"] else ""), cls="num"),
                lambda r: Cell(str(r["date"]))]
    return columns, [[_model_cell(row)] + [g(row) for g in getters] for _, row in sub.iterrows()]


def task_numbers(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table as numbers (the CSV): value, stderr and n in columns of their own, every
    metric (a `vocabulary` column says which rows share a tokenizer: logit-unit metrics compare
    only within one)."""
    sub = _ordered(df[df["task"] == task])
    metric_names = _metric_names(sub)
    out = pd.DataFrame({"model": sub["model_label"].to_list(), "init": sub["init"].to_list(),
                        "baseline": (sub["init"] == "random").to_list(),
                        "vocabulary": sub["vocabulary"].to_list()})
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
    first = ("verdict", "circuit_size", "circuit_components", "circuit_method", "faithfulness", "faithfulness_ci",
             "faithfulness_undefined", "stability", "stability_ci", "incompleteness", "cpr", "cpr_ci", "cmd", "cmd_ci",
             "agreement_spearman", "recovery_recall", "recovery_auroc")
    for col in first:
        # an all-undefined faithfulness column stays, empty, beside the reason
        if col in sub and (sub[col].notna().any() or col == "faithfulness" and undefined) and col not in out:
            out[col] = sub[col].astype("Int64").to_list() if col == "circuit_size" else sub[col].to_list()
    for col in _by_method_columns(sub):
        out[col.replace(":", "_").replace("@", "_")] = sub[col].to_list()  # e.g. cpr_eap_edge
    out["date"] = sub["date"].to_list()
    out["spec_hash"] = sub["spec_hash"].to_list()
    return out


# ---- pages ----------------------------------------------------------------------------------------

class _Page:
    """A page being written as Markdown and HTML at once, remembering the legend entries its
    tables use (the legend lists only those) and the notes it printed (each once)."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.used: list[str] = []
        self.notes: set[str] = set()

    def heading(self, level: int, text: str, href: str | None = None) -> None:
        self.md += [f"{'#' * level} {text}", ""]
        inner = f'<a href="{esc(href)}">{esc(text)}</a>' if href else esc(text)
        self.html.append(f"<h{level}>{inner}</h{level}>")

    def paragraph(self, text: str, cls: str | None = None) -> None:
        """A note written once however often asked (the random-init paragraph, the † note)."""
        if text in self.notes:
            return
        self.notes.add(text)
        self.md += [text, ""]
        self.html.append(f'<p class="{cls}">' if cls else "<p>")
        self.html += indent([esc(text.replace("`", ""))])
        self.html.append("</p>")

    def table(self, columns: list[str], rows: list[list[Cell]], legend_keys: dict[str, str] | None = None) -> None:
        self.md += table_markdown(columns, rows) + [""]
        self.html += table_html(columns, rows)
        for col in columns:
            key = (legend_keys or {}).get(col, col)
            if col.startswith(("CPR ", "CMD ")) and "(" in col:
                key = "CPR / CMD method (level)"
            elif col.endswith(" split)"):
                key = col.split(" (", 1)[0]  # the main metric on another split: the metric's own entry
            if key not in self.used:
                self.used.append(key)

    def legend(self, metrics: Sequence[str]) -> None:
        """Only the metrics and columns shown on this page."""
        items = [(_metric_label(m), _metric_meaning(m)) for m in metrics if _metric_label(m) in self.used]
        items += [(k, LEGEND[k]) for k in LEGEND if k in self.used]
        self.md += ["## Legend", ""] + [f"- **{k}**: {v}" for k, v in items] + [""]
        self.html += ["<h2>Legend</h2>", *definition_list(items)]


def _flagged_section(pg: _Page, flagged: pd.DataFrame) -> None:
    if flagged.empty:
        return
    columns = ["model", "task", "flag"]
    rows = [[Cell(str(r[c])) for c in columns] for _, r in flagged.iterrows()]
    pg.heading(2, "Not included")
    pg.md += table_markdown(columns, rows) + [""]
    pg.html += table_html(columns, rows, sortable=False)


def _task_description(task: str, include_paths: tuple[str, ...]) -> str:
    try:
        return " ".join(load_task(task, include_paths).description.split())
    except CircuitbenchError:
        return ""


def build(results_dir: Path, out_dir: Path, include_paths: tuple[str, ...] = (),
          title: str = "circuitbench leaderboard", compare_logits: bool = False,
          reports: bool = True) -> dict[str, object]:
    """Write every table (and, with `reports`, each unit's report under reports/); returns what was
    written and what was flagged. `compare_logits`: put logit-unit metrics of models with different
    vocabularies in one column anyway."""
    if not results_dir.is_dir():
        raise CircuitbenchError(f"--results {results_dir}: no such directory. Run `circuitbench run` first.")
    df, flagged = collect(results_dir, include_paths)
    if df.empty:
        raise CircuitbenchError(f"No current results under {results_dir} ({len(flagged)} flagged).")
    for task in df["task"].unique():  # task names become file names: never a path out of out_dir
        path_component(task, f"{results_dir}: task name", reserve=len(".html") + 1)
    try:
        with staged_output(out_dir) as staging:  # every file written, or none replaced (a full disk)
            return _write_board(df, flagged, staging, include_paths, title, compare_logits, reports)
    except OSError as e:
        raise CircuitbenchError(f"--out {out_dir}: cannot write the leaderboard ({e.strerror or e}); the folder is "
                                "unchanged. Free space or fix the permissions and run again.") from None


def _write_reports(df: pd.DataFrame, out_dir: Path) -> None:
    """Each unit's report, linked from the tables: reports/<model folder>/<task>/report.html with its
    pictures beside it (not embedded, so the committed pages stay small and diff as files)."""
    from circuitbench.tables.report import build_report

    for _, row in df.iterrows():
        source = Path(row["file"])
        target = out_dir / REPORTS / str(row["model_folder"]) / str(row["task"])
        build_report(read_result(source), target, source.parent, embed=False,
                     back=(("../../../index.html", "overview"), (f"../../../{row['task']}.html", str(row["task"]))))


def _write_board(df: pd.DataFrame, flagged: pd.DataFrame, out_dir: Path, include_paths: tuple[str, ...],
                 title: str, compare_logits: bool, reports: bool) -> dict[str, object]:
    for task in df["model_folder"].unique():
        path_component(str(task), "model folder")
    if reports:
        _write_reports(df, out_dir)
    written = []
    for task in sorted(df["task"].unique()):
        rows = df[df["task"] == task]
        write_atomic(out_dir / f"{task}.csv", task_numbers(df, task).to_csv(index=False, float_format="%.6g"))
        pg = _Page()
        pg.html.append('<nav><a href="index.html">← overview</a></nav>')
        pg.heading(1, task)
        description = _task_description(task, include_paths)
        if description:
            pg.paragraph(description)
        sections = _sections(rows)
        tables = [(section, score_table(sub, compare_logits), diagnostics_table(sub)) for section, sub in sections]
        left_out = sorted({m for _, (_, _, out), _ in tables for m in out})
        if left_out:
            pg.paragraph(f"Not compared here: {', '.join(left_out)} (in units of each model's own vocabulary; the "
                         "models below do not share a tokenizer). Each unit's report has them; `circuitbench "
                         "leaderboard --compare-logits` puts them in one column anyway.", cls="info")
        for section, (columns, cells, _), (d_columns, d_cells) in tables:
            pg.heading(2, section)
            if section in SECTION_NOTES:
                pg.paragraph(SECTION_NOTES[section], cls="note" if section == BASELINES else "info")
            pg.heading(3, "Scores")
            pg.table(columns, cells)
            pg.heading(3, "Diagnostics")
            pg.table(d_columns, d_cells, legend_keys={c: "ρ" for c in d_columns if c.startswith("ρ ")})
        pg.legend(_metric_names(rows))
        write_atomic(out_dir / f"{task}.md", "\n".join(pg.md).rstrip() + "\n")
        write_atomic(out_dir / f"{task}.html", page(f"{task} · {title}", pg.html, "leaderboard", SORT_SCRIPT))
        written.append(task)
    pg = _Page()
    pg.heading(1, title)
    counts = {section: len(sub) for section, sub in _sections(df)}
    pg.paragraph("One row per model and task: the task's main metric, the circuit its rule chose (size and "
                 "components), the circuit's verdict and faithfulness with its 95 % interval, recall of the "
                 "reference circuit where the task has one, and the unit's report. Each task's page has every metric, "
                 "diagnostics apart. " + "; ".join(f"{k}: {v} units" for k, v in counts.items())
                 + ". Regenerate with `make leaderboards` (`circuitbench leaderboard`).")
    withheld_all: set[str] = set()
    for section, sub in _sections(df):
        columns, cells, withheld, shown = overview_rows(sub, with_recall=section == KNOWN,
                                                        compare_logits=compare_logits)
        pg.used += [_metric_label(m) for m in sorted(shown)]
        pg.heading(2, section)
        if section in SECTION_NOTES:
            pg.paragraph(SECTION_NOTES[section], cls="note" if section == BASELINES else "info")
        pg.table(columns, cells)
        if withheld - withheld_all:  # under the first table that needs it, once
            pg.paragraph(_withheld_note(withheld), cls="info")
        withheld_all |= withheld
    pg.legend(sorted(c for c in df.columns if c in METRICS))
    _flagged_section(pg, flagged)
    write_atomic(out_dir / "README.md", "\n".join(pg.md).rstrip() + "\n")
    write_atomic(out_dir / "index.html", page(title, pg.html, "leaderboard", SORT_SCRIPT))
    return {"tasks": written, "models": sorted(df["model_label"].unique()), "flagged": len(flagged)}
