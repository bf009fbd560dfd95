"""What the edge scores of a result's method mean (circuits/score_meaning.py's ScoreMeaning), for
every file circuitbench writes for another tool: MIB submissions, auto-circuit prune scores, Edge
Pruning edges (and any graph JSON export that wants to say it under its `circuitbench` key)."""
from __future__ import annotations

from typing import Literal

from circuitbench.circuits.graph_files import UNITS
from circuitbench.circuits.score_meaning import ScoreMeaning
from circuitbench.errors import CircuitbenchError
from circuitbench.results.schema import RunResult


def score_meaning(result: RunResult, method: str, kind: Literal["scores", "membership"] = "scores") -> ScoreMeaning:
    """What the edge scores of `method` in `result` mean. Built-in edge methods (eap, eap_ig,
    edge_patching) score the signed effect of removing each edge on the task's main metric,
    normalised like noising patching (UNITS): higher is more important, |score| is the effect's size. A
    method whose scores are magnitudes says so with `signed: false` in its settings, one in other
    units with `units` (acdc, ifr, edge_pruning)."""
    info = result.edge_scores.get(method)
    if info is None:
        raise CircuitbenchError(f"--method {method}: the result holds no edge scores of it (edge methods in it: "
                                f"{', '.join(result.edge_scores) or 'none'}).")
    c = result.circuit
    rule = dict(c.rule) if kind == "membership" and c is not None and c.method == method else None
    return ScoreMeaning(
        method=method, kind=kind, signed=bool(info.settings.get("signed", True)), higher_is_more_important=True,
        ablation=str(info.settings.get("ablation", "counterfactual")), metric=result.task.main_metric,
        units=str(info.settings.get("units", UNITS)),
        combined=result.score_combination if len(result.counterfactuals) > 1 else None, task=result.task.name,
        model=result.model.name, rule=rule)
