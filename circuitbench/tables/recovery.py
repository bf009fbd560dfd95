"""`circuitbench recovery`: how each method recovered known circuits, as tables (per model × method:
precision, recall, F1, AUROC, AP of heads; of nodes where MLPs count), optionally written as Markdown."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from circuitbench.errors import CircuitbenchError
from circuitbench.files import write_atomic
from circuitbench.output_paths import RECOVERY_HEADER, check_output_file, is_recovery_markdown
from circuitbench.results.store import read_result
from circuitbench.tables.leaderboard import node_recovery_table, recovery_table


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: two decimals, n/a for undefined."""
    return table.map(lambda v: "n/a" if v is None or v != v else f"{v:.2f}" if isinstance(v, float) else str(v))


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
