"""`circuitbench recovery`: how each method recovered known circuits, as tables (per model × method:
precision, recall, F1, AUROC, AP of heads; of nodes where MLPs count), each figure with its 95 %
bootstrap interval over prompts where the result holds one (`recovery_ci`, `node_recovery_ci`:
"0.50 [0.25, 0.75]"), optionally written as Markdown."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from circuitbench.circuits.recovery import RecoveryInterval
from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.output_paths import RECOVERY_HEADER, check_output_file, is_recovery_markdown
from circuitbench.results.schema import RunResult
from circuitbench.results.store import read_result

CI = " CI"  # suffix of a column holding the (low, high) interval of the column it follows
# table column -> RecoveryScores / RecoveryInterval field
FIELDS = {"precision": "precision", "recall": "recall", "F1": "f1", "AUROC": "auroc", "AP": "average_precision",
          "recall at |reference|": "recall"}


def _with_intervals(row: dict, interval: RecoveryInterval | None, columns: Sequence[str]) -> dict:
    for column in columns:
        row[column + CI] = getattr(interval, FIELDS[column]) if interval is not None else None
    return row


def recovery_table(results: list[RunResult]) -> pd.DataFrame:
    """One row per (model, method) of every result with a reference: precision, recall and F1 of the
    method's circuit, AUROC and average precision of its scores (each followed by its interval
    column, `<name> CI`: (low, high) or None), and whether its circuit was kept."""
    rows = []
    for r in results:
        for method, s in r.recovery.items():
            row = {"model": r.model.label, "method": method, "reference heads": s.n_reference,
                   "precision": s.precision, "recall": s.recall, "F1": s.f1, "AUROC": s.auroc,
                   "AP": s.average_precision}
            _with_intervals(row, r.recovery_ci.get(method), ["precision", "recall", "F1", "AUROC", "AP"])
            row["kept"] = "✓" if r.circuit is not None and r.circuit.method == method else ""
            rows.append(row)
    return pd.DataFrame(rows)


def node_recovery_table(results: list[RunResult]) -> pd.DataFrame:
    """One row per (model, method) of every result with node recovery: the reference's nodes (heads
    and MLPs) against the method's top nodes of that count, AUROC and AP of its node scores (with
    interval columns as recovery_table's)."""
    rows = []
    for r in results:
        for method, s in r.node_recovery.items():
            row = {"model": r.model.label, "method": method, "reference nodes": s.n_reference,
                   "recall at |reference|": s.recall, "AUROC": s.auroc, "AP": s.average_precision}
            rows.append(_with_intervals(row, r.node_recovery_ci.get(method), ["recall at |reference|", "AUROC", "AP"]))
    return pd.DataFrame(rows)


def _number(v: object) -> str:
    return "n/a" if v is None or v != v else f"{v:.2f}" if isinstance(v, float) else str(v)


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: two decimals, n/a for undefined, an interval beside its figure ("0.50 [0.25,
    0.75]"); the interval columns themselves are folded in."""
    out = pd.DataFrame(index=table.index)
    for column in table.columns:
        if column.endswith(CI):
            continue
        values = table[column].map(_number)
        if column + CI in table.columns:
            values = [v if not isinstance(ci, (tuple, list)) else f"{v} [{ci[0]:.2f}, {ci[1]:.2f}]"
                      for v, ci in zip(values, table[column + CI])]
        out[column] = values
    return out


def recovery_tables(paths: Sequence[Path], markdown: Path | None = None,
                    force: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(heads, nodes) recovery tables of these results (nodes empty when no result scored MLPs);
    with `markdown`, both written there (a file `recovery` wrote before, else --force)."""
    if markdown is not None:
        check_output_file(markdown, "--markdown", force=force, ours=is_recovery_markdown, inputs=list(paths),
                          what="a table `circuitbench recovery` wrote")
    results = [read_result(path) for path in paths]  # another schema version, NaN …: refused, named
    heads, nodes = recovery_table(results), node_recovery_table(results)
    if heads.empty:
        raise CircuitbenchError("No recovery scores in these results: run tasks whose models have a known circuit "
                                "(e.g. `make known-answers`, or --reference FILE).")
    if markdown is not None:
        text = RECOVERY_HEADER + "\n\n" + shown(heads).to_markdown(index=False) + "\n"
        if not nodes.empty:
            text += "\n" + shown(nodes).to_markdown(index=False) + "\n"
        write_atomic(markdown, text)
    return heads, nodes
