"""The stability of a chosen set: would other prompts give the same circuit?

The kept method is rerun on half-samples of the prompts (drawn without replacement, seeded by the
task's seed; under every counterfactual of the task, combined as the run combines them), the rule
applied to each, and the circuits compared by Jaccard. Half-samples rather than bootstrap
resamples: a method averages over prompts, so duplicates would only reweigh them, and half the
prompts costs half a run (STABILITY_RESAMPLES half-samples: twice the kept method's cost)."""
from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import numpy as np

from circuitbench.circuits.circuit import Circuit, Stability
from circuitbench.circuits.edge_faithfulness import edge_circuit
from circuitbench.models.loaded import LoadedModel
from circuitbench.progress import no_progress
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.combination import combine_outputs, jaccard
from circuitbench.scores.methods.outputs import MethodOutput
from circuitbench.scores.scoring import MethodRun, run_methods
from circuitbench.specs.task import CircuitRule

MIN_PROMPTS = 8  # below this a half-sample is too small to say anything


def circuit_members(output: MethodOutput, rule: CircuitRule, method: str, shape: tuple[int, int]) -> set[str] | None:
    """The components (node or edge names) the rule picks from one method output at the rule's level;
    None when the output has no scores at that level."""
    if rule.level == "edge":
        return None if output.edges is None else set(edge_circuit(output.edges, rule, method).edges)
    if rule.level == "node":
        return None if not output.nodes else set(Circuit.from_node_scores(output.node_scores(), rule, method,
                                                                          shape).nodes)
    return None if output.heads is None else set(Circuit.from_scores(output.heads, rule, method).nodes)


def half_samples(n: int, resamples: int, seed: int) -> list[np.ndarray]:
    """`resamples` sorted index sets of n // 2 prompts of n, without replacement (seeded)."""
    rng = np.random.default_rng([seed, n, 23])
    return [np.sort(rng.choice(n, size=n // 2, replace=False)) for _ in range(resamples)]


def chosen_set_stability(model: LoadedModel, datasets: list[EncodedPrompts], method: str, rule: CircuitRule,
                         chosen: set[str], run: MethodRun, seed: int) -> Stability | None:
    """Rerun `method` on `rule.stability_resamples` half-samples of the prompts (`datasets`: one
    prompt set per counterfactual, the primary first; each halved on its own) and compare the
    circuits the rule picks. None when not asked for, with too few prompts, or when the method has
    no scores at the rule's level."""
    n_resamples = rule.stability_resamples
    if n_resamples < 2 or min(len(d) for d in datasets) < MIN_PROMPTS:
        return None
    rows = [half_samples(len(d), n_resamples, seed + i) for i, d in enumerate(datasets)]
    quiet = replace(run, cache_entry=None, progress=no_progress)
    shape = (model.n_layers, model.n_heads)
    circuits = []
    for r in range(n_resamples):
        outputs = [run_methods(model, d.take(rows[i][r]), [method], quiet)[method] for i, d in enumerate(datasets)]
        members = circuit_members(combine_outputs(outputs), rule, method, shape)
        if members is None:
            return None
        circuits.append(members)
    pairs = [jaccard(a, b) for a, b in combinations(circuits, 2)]
    pairs_known = [p for p in pairs if p is not None]
    if not pairs_known:
        return None
    with_chosen = [j for j in (jaccard(c, chosen) for c in circuits) if j is not None]
    return Stability(jaccard=float(np.mean(pairs_known)), range=(min(pairs_known), max(pairs_known)),
                     with_chosen=float(np.mean(with_chosen)) if with_chosen else 0.0, resamples=n_resamples,
                     prompts=len(datasets[0]) // 2)
