"""Completeness as Wang et al. (2022, IOI, section 4) define it: a complete circuit and the full
model respond alike when the same part K of the circuit is knocked out of both.

incompleteness(K) = |m(C \\ K) − m(M \\ K)| / |m(M) − m(∅)|, under the rule's ablation, for
subsets K of the circuit: every single component (up to SINGLES of them) and RANDOM_SUBSETS random
halves (each component in with probability 1/2, seeded). A circuit that leaves out a backup of
something it holds is incomplete: knocking out its part changes the circuit alone far more than it
changes the full model, where the backup takes over."""
from __future__ import annotations

import numpy as np

from circuitbench.circuits.circuit import Circuit, Completeness, split_nodes
from circuitbench.circuits.edge_faithfulness import EdgeBaseline
from circuitbench.circuits.faithfulness import Baseline
from circuitbench.scores.visibility import node_names

SINGLES = 8  # each component alone as K, for circuits up to this size
RANDOM_SUBSETS = 8
INCOMPLETE = 0.2  # a larger incompleteness is warned about


def subsets_of(members: list[str], seed: int) -> list[list[str]]:
    """The K tried: each member alone (circuits of up to SINGLES members), then RANDOM_SUBSETS random
    non-empty halves, no K twice, never the whole circuit twice."""
    out: list[list[str]] = [[m] for m in members] if len(members) <= SINGLES else []
    rng = np.random.default_rng([seed, len(members), 7])
    seen = {tuple(k) for k in out}
    for _ in range(4 * RANDOM_SUBSETS):
        if len(out) >= (len(members) if len(members) <= SINGLES else 0) + RANDOM_SUBSETS:
            break
        pick = [m for m in members if rng.random() < 0.5]
        if pick and tuple(pick) not in seen:
            seen.add(tuple(pick))
            out.append(pick)
    return out


def completeness(circuit: Circuit, baseline: Baseline | EdgeBaseline, seed: int) -> Completeness | None:
    """The circuit's incompleteness over subsets of it (see the module docstring), under `baseline`'s
    ablation; None for an empty circuit or where f is undefined (no effect to compare against)."""
    gather = baseline.ctx.gather_shards
    full, empty = gather(baseline.full_values), gather(baseline.empty_values)
    if baseline.undefined_reason is not None or len(full) == 0:
        return None
    scale = abs(float(full.mean() - empty.mean()))
    if isinstance(baseline, EdgeBaseline):
        members = list(circuit.edges)

        edge_baseline = baseline

        def mask(names: list[str], value: bool) -> np.ndarray:
            """The members named (value True), or every edge but them (per span where the circuit is)."""
            chosen = edge_baseline.members_mask(names)
            return chosen if value else np.broadcast_to(edge_baseline.graph.real_edges, chosen.shape) & ~chosen

        # C \ K and M \ K as they are, neither pruned of dangling edges: pruning one and not the other
        # would differ even for C = M
        def kept(names: list[str]) -> np.ndarray:
            return gather(baseline.values(mask(names, True), "m(C \\ K), for completeness"))

        def all_but(names: list[str]) -> np.ndarray:
            return gather(baseline.values(mask(names, False), "m(M \\ K), for completeness"))
    else:
        members = circuit.nodes
        every = node_names(baseline.model, baseline.level == "node" and baseline.model.has_mlp)

        def kept(names: list[str], keep_input: bool = circuit.input) -> np.ndarray:
            heads, mlps = split_nodes(names)  # MLPs count only at node level (Baseline.values)
            return gather(baseline.values(set(heads), set(mlps), "m(C \\ K) or m(M \\ K), for completeness",
                                          keep_input=keep_input))

        def all_but(names: list[str]) -> np.ndarray:
            return kept([n for n in every if n not in set(names)], keep_input=True)
    if not members:
        return None
    values = []
    for subset in subsets_of(members, seed):
        left = [m for m in members if m not in set(subset)]
        values.append((abs(float(kept(left).mean() - all_but(subset).mean())) / scale, subset))
    worst, worst_k = max(values, key=lambda v: v[0])
    return Completeness(ablation=baseline.ablation.name, subsets=len(values), max_incompleteness=worst,
                        mean_incompleteness=float(np.mean([v for v, _ in values])), worst_subset=worst_k)

