"""The run planner's plan as the console shows it (`circuitbench run --dry-run`): per unit a table
of every method's forward-equivalents and estimated time, the unit's total, and the cheaper
methods that give a first answer when the total is long (pipeline/plan.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from circuitbench.tables.console import console

if TYPE_CHECKING:
    from circuitbench.pipeline.plan import RunPlan


def print_plan(plan: RunPlan) -> None:
    from circuitbench.pipeline.plan import advice_line, duration_text, forwards_text, unit_line

    for unit in plan.units:
        table = Table("method", "forwards", "estimated time",
                      title=f"{unit.task} on {unit.model}: {unit.n_prompts} prompts, batch size {unit.batch_size}, "
                      f"one forward of them {unit.forward_seconds:.3g} s")
        for m in unit.methods:
            table.add_row(m.method, forwards_text(m), duration_text(m.seconds) + (f" ({m.error})" if m.error else ""))
        table.add_row("evaluation", f"{unit.evaluation_forwards:,.1f}",
                      duration_text(unit.evaluation_forwards * unit.forward_seconds))
        if unit.circuit_forwards:
            table.add_row("circuit (rough)", f"{unit.circuit_forwards:,.1f}",
                          duration_text(unit.circuit_forwards * unit.forward_seconds))
        console.print(table)
        console.print(unit_line(unit), markup=False, highlight=False)
        if (advice := advice_line(unit)) is not None:
            console.print(advice, markup=False, highlight=False)
    console.print("dry run: nothing was computed or written.", markup=False, highlight=False)
