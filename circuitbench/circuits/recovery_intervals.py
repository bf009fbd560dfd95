"""Bootstrap intervals of recovery: how far a method's precision, recall and AUROC against a known
circuit would move on another draw of the task's prompts.

Each of `n_resamples` resamples draws the task's prompts with replacement (a seeded numpy
generator), runs every method on that prompt set as on a task of its own (`EncodedPrompts.take`,
`run_methods`), builds the rule's head circuit from its scores and scores it against the reference
as `recovery` / `node_recovery` do. An interval is the 2.5th and 97.5th percentile of a quantity
over the resamples where it is defined (precision is undefined for an empty circuit, AUROC when
every component is in the reference). Only for small models: every method runs once per resample
(`wanted`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from circuitbench.circuits.circuit import Circuit
from circuitbench.circuits.recovery import (
    QUANTITIES,
    Interval,
    RecoveryInterval,
    RecoveryScores,
    Reference,
    node_recovery,
    recovery,
)
from circuitbench.models.loaded import LoadedModel
from circuitbench.progress import no_progress
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.registries import METHODS
from circuitbench.specs.task import CircuitRule

N_RESAMPLES = 30
MAX_PARAMS = 2_000_000  # larger models get no recovery intervals by default (a method run per resample)
MAX_PROMPTS = 1024

def wanted(n_params: int, n_prompts: int, world_size: int = 1) -> bool:
    """Whether a run computes recovery intervals by default: a small model and prompt set, one process."""
    return world_size == 1 and n_params <= MAX_PARAMS and 1 < n_prompts <= MAX_PROMPTS


def resample_rows(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] row indices drawn with replacement (numpy's seeded generator)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def percentile_interval(values: Sequence[float | None]) -> Interval | None:
    """(2.5th, 97.5th) percentile of the defined values; None when none is."""
    defined = np.array([v for v in values if v is not None], dtype=float)
    if not len(defined):
        return None
    low, high = np.percentile(defined, [2.5, 97.5])
    return float(low), float(high)


def intervals_of(runs: list[RecoveryScores], n_resamples: int, seed: int) -> RecoveryInterval:
    """The interval of every quantity over the resamples' recovery scores."""
    return RecoveryInterval(**{q: percentile_interval([getattr(r, q) for r in runs]) for q in QUANTITIES},
                            n_resamples=n_resamples, seed=seed)


def recovery_intervals(model: LoadedModel, data: EncodedPrompts, methods: Sequence[str], reference: Reference,
                       rule: CircuitRule, run: MethodRun, *, n_resamples: int = N_RESAMPLES, seed: int = 0,
                       nodes: bool = True) -> tuple[dict[str, RecoveryInterval], dict[str, RecoveryInterval]]:
    """({method: intervals of head recovery}, {method: intervals of node recovery}) over
    `n_resamples` bootstrap resamples of `data`. Head recovery scores the circuit `rule` (at head
    level) picks from each resample's scores; node recovery (with `nodes`, for methods that score
    nodes) the top |reference| nodes."""
    head_rule = rule.model_copy(update={"level": "head"})
    methods = [m for m in methods if METHODS.get(m).produces != "edge_scores"]  # edge scores give no head recovery
    run = replace(run, cache_entry=None, progress=no_progress)  # resamples are sets of their own: nothing to cache
    heads: dict[str, list[RecoveryScores]] = {}
    node_runs: dict[str, list[RecoveryScores]] = {}
    for rows in resample_rows(len(data), n_resamples, seed):
        outputs = run_methods(model, data.take(rows.tolist()), list(methods), run)
        for method, output in outputs.items():
            if output.heads is not None:
                scores = np.asarray(output.heads)
                circuit = Circuit.from_scores(scores, head_rule, method).heads
                heads.setdefault(method, []).append(recovery(scores, circuit, reference))
            if nodes and output.nodes:
                node_runs.setdefault(method, []).append(node_recovery(output.node_scores(), reference))
    return ({m: intervals_of(r, n_resamples, seed) for m, r in heads.items()},
            {m: intervals_of(r, n_resamples, seed) for m, r in node_runs.items()})
