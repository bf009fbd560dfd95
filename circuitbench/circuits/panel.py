"""How far a circuit can be trusted: its faithfulness under several ablations with bootstrap
intervals (the panel), the components outside it that are necessary on their own, and a verdict.

One ablation can hide a missing component: counterfactual patching never sees a component whose
clean and counterfactual outputs agree (BOS and position readers, a head computing the length on
prompts of one length), and mean ablation keeps what every prompt shares. So the circuit is
measured under counterfactual patching, mean ablation over the clean prompts, zero ablation and
resample ablation (and the rule's own), each f with a 95 % bootstrap interval over prompts; and
every component outside it is removed alone from the full model (mean and zero ablation), those
that change the metric beyond noise and by at least NECESSARY_SHARE of the full effect are listed.

Verdicts:
- robust: f within BAND, the whole interval included, under the rule's ablation, counterfactual
  patching (every counterfactual of the task), mean and resample ablation (and zero ablation where the
  rule says `require_zero`); nothing necessary outside the circuit (zero ablation included, so every
  component patching cannot see has been checked by an ablation that changes it);
- counterfactual_specific: f within BAND under counterfactual patching (where f is undefined under it,
  under the rule's ablation), but not every check holds;
- unfaithful: f outside BAND there;
- undefined: f is undefined under the rule's ablation (its effect is within noise)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from circuitbench.circuits.circuit import Circuit, CircuitCandidate, OutsideComponent, PanelEntry, Verdict
from circuitbench.circuits.completeness import INCOMPLETE, completeness
from circuitbench.circuits.edge_faithfulness import EdgeBaseline
from circuitbench.circuits.faithfulness import Baseline
from circuitbench.errors import CircuitbenchError
from circuitbench.models.loaded import LoadedModel
from circuitbench.prompts.encoding import EncodedPrompts
from circuitbench.scores.ablations import Ablation, Counterfactual, Mean, Resample, Zero, parse_ablation
from circuitbench.scores.interventions import ablated_nodes_values, single_node_ablations
from circuitbench.scores.methods.context import MethodContext
from circuitbench.scores.visibility import invisible_nodes, node_names
from circuitbench.specs.registries import METRICS
from circuitbench.specs.task import CircuitRule

PANEL_ABLATIONS: tuple[Ablation, ...] = (Counterfactual(), Mean(over="clean"), Zero(), Resample(seed=0))
REQUIRED = ("counterfactual", "mean_clean", "resample")  # robust needs f in BAND under each (when it applies)
BAND = (0.8, 1.2)
NECESSARY_SHARE = 0.1  # an outside component whose removal alone moves the metric by this share of m(M) − m(∅)
NOISE_Z = 2.0
N_BOOTSTRAP = 1000
OUTSIDE_ABLATIONS: tuple[Ablation, ...] = (Mean(over="clean"), Zero())


@dataclass(frozen=True)
class PanelValues:
    """Per-prompt (higher-is-better) metric values of every prompt under one ablation: the full
    model, everything ablated, the circuit kept. `undefined`: why f is undefined (None: defined)."""

    full: np.ndarray  # [prompts]
    empty: np.ndarray  # [prompts]
    circuit: np.ndarray  # [prompts]
    undefined: str | None


def f_of(full: np.ndarray, empty: np.ndarray, circuit: np.ndarray) -> float:
    """f = (mean m(C) − mean m(∅)) / (mean m(M) − mean m(∅)) over the given prompts."""
    return float((circuit.mean() - empty.mean()) / (full.mean() - empty.mean()))


def bootstrap_interval(values: PanelValues, seed: int, n_resamples: int = N_BOOTSTRAP) -> tuple[float, float] | None:
    """The 95 % percentile interval of f over `n_resamples` resamples of the prompts (the same
    prompts for m(C), m(M) and m(∅): paired). None with fewer than 2 prompts, or when more than 5 %
    of the resamples have no effect to divide by."""
    n = len(values.full)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(n_resamples, n))
    full, empty, circuit = (values.full[rows].mean(axis=1), values.empty[rows].mean(axis=1),
                            values.circuit[rows].mean(axis=1))
    gap = full - empty
    usable = np.abs(gap) > 1e-12
    if usable.mean() < 0.95:
        return None
    f = (circuit[usable] - empty[usable]) / gap[usable]
    low, high = np.percentile(f, [2.5, 97.5])
    return float(low), float(high)


def panel_entry(name: str, values: PanelValues, seed: int) -> PanelEntry:
    if values.undefined is not None:
        return PanelEntry(ablation=name, value=None, undefined=values.undefined, n=len(values.full))
    return PanelEntry(ablation=name, value=f_of(values.full, values.empty, values.circuit),
                      ci=bootstrap_interval(values, seed), n=len(values.full))


def ablation_panel(values_under: Callable[[Ablation], PanelValues], rule_ablation: Ablation,
                   seed: int, ablations: Sequence[Ablation] = PANEL_ABLATIONS) -> dict[str, PanelEntry]:
    """f under the rule's ablation and each of `ablations`, each with its interval. An ablation
    the task cannot have (counterfactual patching without counterfactual prompts) is left out."""
    panel: dict[str, PanelEntry] = {}
    for ablation in (rule_ablation, *ablations):
        if ablation.name in panel:
            continue
        try:
            values = values_under(ablation)
        except CircuitbenchError:  # e.g. counterfactual ablations on a task without counterfactuals
            continue
        panel[ablation.name] = panel_entry(ablation.name, values, seed)
    return panel


def outside_necessary(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, inside: set[str], level: str,
                      ablations: Sequence[Ablation] = OUTSIDE_ABLATIONS) -> list[OutsideComponent]:
    """Every component outside the circuit (heads; at node and edge level MLPs too) removed alone
    from the full model under each ablation: those whose effect on the metric exceeds NOISE_Z
    standard errors of the paired per-prompt change and NECESSARY_SHARE of |m(M) − m(∅)|. One
    copy per component in stacked forwards that resume at its layer (scores/interventions.py
    single_node_ablations), as exact patching runs."""
    with_mlps = level != "head" and model.has_mlp
    outside = [node for node in node_names(model, with_mlps) if node not in inside]
    sign = 1.0 if METRICS.get(ctx.metric).higher_is_better else -1.0
    found: list[OutsideComponent] = []
    for ablation in ablations:
        try:
            empty = ctx.gather_shards(ablated_nodes_values(model, data, set(), set() if with_mlps else None, ablation,
                                                           ctx, keep_input=level == "head").numpy())
            full_shard, alone = single_node_ablations(model, data, ablation, ctx, outside)
        except CircuitbenchError:
            continue
        full = ctx.gather_shards(full_shard.numpy())
        total = abs(full.mean() - empty.mean()) if len(full) else 0.0
        if len(full) < 2 or total < 1e-12:
            continue
        for node in outside:
            diff = ctx.gather_shards(alone[node].numpy()) - full
            effect, stderr = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
            if abs(effect) > NOISE_Z * stderr and abs(effect) >= NECESSARY_SHARE * total:
                found.append(OutsideComponent(node=node, ablation=ablation.name, effect=sign * effect,
                                              ci=tuple(sorted((sign * (effect - 1.96 * stderr),
                                                               sign * (effect + 1.96 * stderr)))),
                                              share=abs(effect) / total))
    return found


def in_band(entry: PanelEntry | None) -> bool:
    return (entry is not None and entry.value is not None and entry.ci is not None
            and BAND[0] <= entry.ci[0] and entry.ci[1] <= BAND[1])


def judge(panel: dict[str, PanelEntry], rule_ablation: str, outside: list[OutsideComponent],
          invisible_outside: list[str], require_zero: bool = False) -> tuple[Verdict, list[str]]:
    """The verdict and, unless robust, why (one line per failed check)."""
    rule = panel.get(rule_ablation)
    if rule is None or rule.value is None:
        return "undefined", [f"faithfulness is undefined under {rule_ablation} ablation"
                             + (f" ({rule.undefined})" if rule is not None and rule.undefined else "")]
    reasons = []
    for name in required(panel, rule_ablation, require_zero):
        entry = panel.get(name)
        if entry is None:
            continue  # e.g. no counterfactual prompts
        if not in_band(entry):
            shown = ("undefined" if entry.value is None else f"{entry.value:.2f}"
                     + (f" [{entry.ci[0]:.2f}, {entry.ci[1]:.2f}]" if entry.ci else " (no interval)"))
            reasons.append(f"f under {name} ablation is {shown}, not within [{BAND[0]}, {BAND[1]}]")
    if outside:
        named = ", ".join(sorted({o.node for o in outside}))
        reasons.append(f"components outside the circuit are necessary on their own: {named}")
    unchecked = [n for n in invisible_outside if n not in {o.node for o in outside}]
    if unchecked and "zero" not in panel:
        reasons.append(f"{len(unchecked)} components patching cannot see were not checked by zero ablation")
    if not reasons:
        return "robust", []
    # faithful where patching measures it: counterfactual patching, or, where ablating everything changes
    # nothing under it (components invisible to the counterfactual), the rule's own ablation
    counterfactual = panel.get("counterfactual")
    primary = counterfactual if counterfactual is not None and counterfactual.value is not None else rule
    return ("counterfactual_specific" if in_band(primary) else "unfaithful"), reasons


class PanelBaselines:
    """One baseline per ablation (m(M), m(∅) and their per-prompt values), built when first asked and
    shared by every circuit measured on the panel: the candidates `auto` weighs and the one it keeps."""

    def __init__(self, model: LoadedModel, data: EncodedPrompts, ctx: MethodContext,
                 rule_baseline: Baseline | EdgeBaseline | None, level: str | None = None,
                 edge_baseline: Callable[[Ablation], EdgeBaseline] | None = None) -> None:
        self.model, self.data, self.ctx = model, data, ctx
        # how an edge baseline is built (per-span circuits: circuits/span_circuits.py SpanEdgeBaseline)
        self.edge_baseline = edge_baseline or (lambda ablation: EdgeBaseline(model, data, ablation, ctx))
        self.level = level or ("edge" if isinstance(rule_baseline, EdgeBaseline) else rule_baseline.level)  # type: ignore[union-attr]
        self.edges = self.level == "edge"
        self.kept: dict[str, Baseline | EdgeBaseline] = {} if rule_baseline is None else {
            rule_baseline.ablation.name: rule_baseline}
        # other counterfactuals of the task (TaskSpec.counterfactuals): their patching joins the panel
        self.others: dict[str, PanelBaselines] = {}

    def add_counterfactual(self, name: str, data: EncodedPrompts, ctx: MethodContext) -> None:
        """Measure circuits under patching with another counterfactual too (panel entry 'counterfactual:NAME')."""
        self.others[name] = PanelBaselines(self.model, data, ctx, None, self.level)

    def panel(self, circuit: Circuit, rule_ablation: Ablation, seed: int,
              ablations: Sequence[Ablation] = PANEL_ABLATIONS) -> dict[str, PanelEntry]:
        """`circuit`'s panel: the rule's ablation and `ablations`, then patching with each other
        counterfactual."""
        panel = ablation_panel(self.values_under(circuit), rule_ablation, seed, ablations)
        for name, other in self.others.items():
            key = f"counterfactual:{name}"
            panel[key] = panel_entry(key, other.values_under(circuit)(Counterfactual()), seed)
        return panel

    def baseline(self, ablation: Ablation) -> Baseline | EdgeBaseline:
        if ablation.name not in self.kept:
            self.kept[ablation.name] = (self.edge_baseline(ablation) if self.edges
                                        else Baseline(self.model, self.data, ablation, self.ctx, self.level))
        return self.kept[ablation.name]

    def values_under(self, circuit: Circuit) -> Callable[[Ablation], PanelValues]:
        """The panel's values of `circuit` (its heads and MLPs, or its edges) under any ablation."""
        def values(ablation: Ablation) -> PanelValues:
            baseline = self.baseline(ablation)
            if isinstance(baseline, EdgeBaseline):
                kept = baseline.values(baseline.keep_of(circuit.edges), "m(C), the circuit's metric")
            else:
                kept = baseline.values(set(map(tuple, circuit.heads)), set(circuit.mlps), "m(C), the circuit's metric",
                                       keep_input=circuit.input)
            gather = self.ctx.gather_shards
            return PanelValues(gather(baseline.full_values), gather(baseline.empty_values), gather(kept),
                               baseline.undefined_reason)
        return values


def required(panel: dict[str, PanelEntry], rule_ablation: str, require_zero: bool = False) -> list[str]:
    """The panel entries `robust` needs in the band: the rule's ablation first, REQUIRED, patching
    with every other counterfactual of the task, and zero ablation where the task requires it."""
    others = [name for name in panel if name.startswith("counterfactual:")]
    return list(dict.fromkeys((rule_ablation, *REQUIRED, *others, *(["zero"] if require_zero else []))))


def worst_case(panel: dict[str, PanelEntry], rule_ablation: str, require_zero: bool = False) -> tuple[float, str]:
    """(the largest |1 − f| over the rule's ablation and the ones `robust` needs, where it falls);
    an undefined f counts as infinitely far."""
    worst, where = 0.0, rule_ablation
    for name in required(panel, rule_ablation, require_zero):
        entry = panel.get(name)
        if entry is None:
            continue
        distance = float("inf") if entry.value is None else abs(1 - entry.value)
        if distance > worst:
            worst, where = distance, name
    return worst, where


def choose_by_panel(circuits: dict[str, Circuit], candidates: list[CircuitCandidate], baselines: PanelBaselines,
                    rule_ablation: Ablation, seed: int,
                    require_zero: bool = False) -> tuple[str, list[CircuitCandidate], str]:
    """`auto` by the panel: each candidate's worst case |1 − f| over the rule's ablation,
    counterfactual patching, mean and resample ablation (point values, no intervals), the smallest
    kept (ties: the smaller circuit, then the method listed first). Returns the method kept, the
    candidates with their worst case, and why, in words."""
    order = list(circuits)
    scored = []
    for candidate in candidates:
        panel = baselines.panel(circuits[candidate.method], rule_ablation, seed,
                                [a for a in PANEL_ABLATIONS if a.name in REQUIRED or require_zero and a.name == "zero"])
        worst, where = worst_case(panel, rule_ablation.name, require_zero)
        scored.append(candidate.model_copy(update={"worst_case": None if worst == float("inf") else worst,
                                                   "worst_ablation": where}))
    size = {m: len(c.edges) if c.level == "edge" else len(c.heads) + len(c.mlps) for m, c in circuits.items()}
    best = min(scored, key=lambda c: (float("inf") if c.worst_case is None else c.worst_case, size[c.method],
                                      order.index(c.method)))
    shown = " · ".join(f"{c.method} {'undefined' if c.worst_case is None else f'{c.worst_case:.2f}'} "
                       f"({c.worst_ablation})" for c in scored)
    others = "".join(f", patching with {name}" for name in baselines.others)
    zero = ", zero" if require_zero else ""
    why = (f"auto kept {best.method}: the smallest worst case |1 − f| over the rule's ablation, counterfactual "
           f"patching{others}, mean{zero} and resample ablation ({shown})")
    return best.method, scored, why


def assess(model: LoadedModel, data: EncodedPrompts, ctx: MethodContext, circuit: Circuit, rule: CircuitRule,
           baselines: PanelBaselines, shares: dict[str, float], seed: int) -> dict[str, object]:
    """The circuit's trust fields (Circuit.panel, outside_necessary, invisible, verdict,
    verdict_reasons) as an update: `shares` is each component's visibility (scores/visibility.py)."""
    inside = set(circuit.nodes)
    invisible = invisible_nodes(shares)
    if not rule.panel:
        return {"invisible": invisible}
    f = circuit.faithfulness
    if f is not None and f.value is None:  # within noise: nothing to be faithful to, nothing to weigh against
        return {"invisible": invisible, "verdict": "undefined",
                "verdict_reasons": [f"faithfulness is undefined under {rule.ablation} ablation ({f.undefined})"]}
    panel = baselines.panel(circuit, parse_ablation(rule.ablation), seed)
    outside = outside_necessary(model, data, ctx, inside, rule.level)
    invisible_outside = [n for n in invisible if n not in inside]
    verdict, reasons = judge(panel, rule.ablation, outside, invisible_outside, rule.require_zero)
    complete = completeness(circuit, baselines.baseline(parse_ablation(rule.ablation)), seed)
    warnings = list(circuit.warnings)
    if complete is not None and complete.max_incompleteness > INCOMPLETE:
        warnings.append(f"incomplete (Wang et al.): knocking {', '.join(complete.worst_subset[:6])} out of the circuit "
                        f"and out of the full model differs by {complete.max_incompleteness:.2f} of the full effect: "
                        "the model has something the circuit lacks (e.g. a backup) that compensates")
    return {"panel": panel, "outside_necessary": outside, "invisible": invisible, "verdict": verdict,
            "verdict_reasons": reasons, "completeness": complete, "warnings": warnings}
