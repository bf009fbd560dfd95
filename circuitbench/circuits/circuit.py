"""Circuit: a set of heads (and MLPs, or edges) chosen from scores by a recorded rule, with its
faithfulness record, read from any circuit file or straight from a RunResult (`Circuit.from_result`).

One type serves everywhere: a RunResult's `circuit` is a Circuit, and overlap, recovery, export and
reports take Circuits. Inside a RunResult the fields the result already holds elsewhere (scores,
shape, label) are not written twice; the result fills them in when it is read."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from circuitbench.errors import CircuitbenchError
from circuitbench.models.graph import INPUT
from circuitbench.specs.task import CircuitRule

if TYPE_CHECKING:
    from circuitbench.results.schema import RunResult

Head = tuple[int, int]
RANDOM_INIT = "@random-init"  # the mark of a random-init model's name wherever it is shown (and its folder)


def head_label(layer: int, head: int) -> str:
    """A head in text: a1.h3 (layer 1, head 3), its node name in the component graph, so head,
    node and edge circuits name it alike ('1.3' would read like a decimal)."""
    return f"a{layer}.h{head}"


def heads_text(heads: list[Head] | list[tuple[int, int]]) -> str:
    return " ".join(head_label(l, h) for l, h in heads) or "(none)"


def model_label(name: str, init: str | None) -> str:
    """A model's name as shown: random-init weights carry the @random-init mark."""
    return name + RANDOM_INIT if init == "random" and not name.endswith(RANDOM_INIT) else name


def describe_rule(rule: dict[str, object], n_total: int | None = None) -> str:
    """A circuit rule in words: 'the top 10 heads by |score|', 'nodes (heads and MLPs) with score ≥
    0.1', ...; `n_total`: how many components the rule picks from (shown with a fraction)."""
    by = "|score|" if rule.get("by", "abs") == "abs" else "signed score"
    unit = {"node": "nodes (heads and MLPs)", "edge": "edges"}.get(str(rule.get("level", "head")), "heads")
    if rule.get("top_k") is not None:
        text = f"the top {rule['top_k']} {unit} by {by}"
    elif rule.get("fraction") is not None:
        fraction = float(rule["fraction"])  # type: ignore[arg-type]
        count = f" ({fraction_count(fraction, n_total)} of {n_total})" if n_total else ""
        text = f"the top {fraction:.0%} of {unit} by {by}{count}"
    else:
        text = f"every one of the {unit} with {by} ≥ {rule.get('threshold')}"
    return text


def ranked_nodes(scores: dict[str, float], by: str = "abs") -> list[str]:
    """Node names, largest score first (|score| or signed); ties keep the given (forward) order."""
    order = {name: i for i, name in enumerate(scores)}
    return sorted(scores, key=lambda n: (-(abs(scores[n]) if by == "abs" else scores[n]), order[n]))


def fraction_count(fraction: float, n_total: int) -> int:
    """How many of n_total components a `fraction` rule keeps: ⌊fraction · n⌋ as MIB's curve counts
    them (int(), float quirks included), at least 1."""
    return max(1, int(fraction * n_total))


def split_nodes(nodes: list[str]) -> tuple[list[Head], list[int]]:
    """Heads [layer, head] and MLP layers from node names ('a0.h1', 'm2'; 'input'/'logits' ignored)."""
    heads, mlps = [], []
    for name in nodes:
        if name.startswith("a"):
            layer, head = name[1:].split(".h")
            heads.append((int(layer), int(head)))
        elif name.startswith("m"):
            mlps.append(int(name[1:]))
    return sorted(heads), sorted(mlps)


def ranked_heads(scores: np.ndarray, by: str = "abs") -> list[Head]:
    """Every (layer, head), largest score first (|score| or signed); ties: lower layer, then lower
    head first, for determinism."""
    values = np.abs(scores) if by == "abs" else scores
    return [(int(l), int(h)) for l, h in sorted(np.ndindex(*scores.shape), key=lambda lh: (-values[lh], lh))]


CurvePoint = tuple[int, float, float]  # (components kept, fraction, f)


class Faithfulness(BaseModel):
    """How faithful a circuit is, as MIB defines it: f(C) = (m(C) − m(∅)) / (m(M) − m(∅)) under the
    rule's ablation (and the others computed), with the curve over circuit sizes (CPR, CMD)."""

    model_config = ConfigDict(extra="forbid")
    value: float | None = Field(description="f(C) under `ablation`; None when undefined (see `undefined`)")
    undefined: str | None = Field(
        None, description="why f is undefined: |m(M) − m(∅)| is 0 or below 2 standard errors of the paired "
        "per-prompt difference (the components have no measurable effect); None when it is defined")
    gap_stderr: float | None = Field(None, description="standard error of m(M) − m(∅) over prompts (paired)")
    metric: str = Field(description="the metric m; m_circuit, m_full and m_empty are its own values")
    m_circuit: float = Field(description="the metric with only the circuit's components kept")
    m_full: float = Field(description="the metric of the full model, m(M)")
    m_empty: float = Field(description="the metric with every component ablated, m(∅)")
    ablation: str = Field(description="how components outside the circuit were removed")
    by_ablation: dict[str, float | None] = Field(
        default_factory=dict, description="f(C) under each ablation computed: the rule's and zero ablation "
        "(None: undefined under it)")
    integration: str | None = Field(None, description="the curve: mib (MIB's sizes 0.1 %…100 %, CPR on the signed "
                                    "ranking, CMD on |score|, trapezoids between those points) or sizes (every size "
                                    "from 0, the rule's ranking)")
    curve: list[CurvePoint] = Field(default_factory=list, description="(components kept, fraction, f); mib: on the "
                                    "|score| ranking")
    curve_signed: list[CurvePoint] = Field(default_factory=list, description="mib: (components kept, fraction, f) on "
                                           "the signed ranking")
    cpr: float | None = Field(None, description="area under the faithfulness curve (higher better)")
    cmd: float | None = Field(None, description="area under |1 − f| (lower better)")
    cpr_ci: tuple[float, float] | None = Field(None, description="95 % bootstrap interval of CPR (prompts resampled, "
                                               "every point of the curve recomputed)")
    cmd_ci: tuple[float, float] | None = Field(None, description="95 % bootstrap interval of CMD")
    by_method: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="MIB's integration: every candidate method's {faithfulness, cpr, cmd} at "
        "this level, each on its own ranking (the leaderboards' per-method columns)")


class CircuitCandidate(BaseModel):
    """One method's circuit under the task's rule, as `circuit: {method: auto}` weighed it."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="the method whose scores the rule picked from")
    heads: list[Head] = Field(description="[layer, head] pairs")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the circuit (node level)")
    n_edges: int | None = Field(None, description="edges in the circuit (edge level, after pruning)")
    faithfulness: float | None = Field(description="f(C) under the rule's ablation (None: undefined, see the "
                                       "circuit's faithfulness.undefined)")
    worst_case: float | None = Field(None, description="the largest |1 − f| over the rule's ablation, counterfactual "
                                     "patching, mean and resample ablation (auto keeps the smallest; None: f undefined "
                                     "under one of them, or no panel)")
    worst_ablation: str | None = Field(None, description="the ablation where that worst case falls")


Verdict = Literal["robust", "counterfactual_specific", "unfaithful", "undefined"]


class PanelEntry(BaseModel):
    """The circuit's faithfulness under one ablation of everything outside it, with a bootstrap
    interval over prompts (the prompts resampled with replacement; f recomputed from the same
    resample of m(C), m(M) and m(∅))."""

    model_config = ConfigDict(extra="forbid")
    ablation: str = Field(description="how components outside the circuit were removed")
    value: float | None = Field(description="f(C) under it; None: undefined (see `undefined`)")
    ci: tuple[float, float] | None = Field(None, description="95 % bootstrap interval of f (percentiles 2.5, 97.5)")
    undefined: str | None = Field(None, description="why f is undefined under this ablation (None: defined)")
    n: int = Field(description="prompts it was measured on (resample: those with a partner)")


class OutsideComponent(BaseModel):
    """A component outside the circuit whose removal alone, from the full model, changes the metric
    beyond noise and by a share of the full effect: the circuit leaves out something necessary."""

    model_config = ConfigDict(extra="forbid")
    node: str = Field(description="the component: 'a0.h1' (a head) or 'm2' (an MLP)")
    ablation: str = Field(description="how it alone was removed (mean over clean prompts, or zero)")
    effect: float = Field(description="m(M without it) − m(M), in the metric's own units")
    ci: tuple[float, float] = Field(description="95 % interval of the effect (± 1.96 standard errors, paired)")
    share: float = Field(description="|effect| / |m(M) − m(∅)| under the same ablation")


class Completeness(BaseModel):
    """Wang et al.'s completeness: incompleteness(K) = |m(C \\ K) − m(M \\ K)| / |m(M) − m(∅)| over
    subsets K of the circuit (circuits/completeness.py); 0: the circuit and the model respond alike."""

    model_config = ConfigDict(extra="forbid")
    ablation: str = Field(description="how knocked-out components were removed (the rule's ablation)")
    subsets: int = Field(description="subsets K tried: each component alone (small circuits) and random halves")
    max_incompleteness: float = Field(description="the largest incompleteness over the subsets tried")
    mean_incompleteness: float = Field(description="the mean over the subsets tried")
    worst_subset: list[str] = Field(description="the K with the largest incompleteness")


class Stability(BaseModel):
    """How much the chosen set depends on the prompts: the kept method rerun on half-samples of the
    prompts (without replacement; under every counterfactual of the task, combined), the rule applied
    to each, and the circuits compared."""

    model_config = ConfigDict(extra="forbid")
    jaccard: float = Field(description="mean Jaccard of the circuits of every pair of half-samples (1: the same set "
                           "on any half of the prompts)")
    range: tuple[float, float] = Field(description="the smallest and largest Jaccard over those pairs")
    with_chosen: float = Field(description="mean Jaccard of each half-sample's circuit with the circuit kept")
    resamples: int = Field(description="half-samples drawn")
    prompts: int = Field(description="prompts in each half-sample")


# Fields a RunResult holds elsewhere (head_scores, node_scores, its edge sidecar, model, task): not
# written inside its circuit, filled in when the result is read (RunResult._circuit_from_result).
FROM_RESULT = frozenset({"scores", "node_scores", "edge_scores", "n_layers", "n_heads", "label"})


class Circuit(BaseModel):
    """Heads as [layer, head]; `scores` is the [n_layers, n_heads] array they were chosen from. A
    node-level circuit also holds MLPs (`mlps`: layers), an edge-level one its edges (names as the
    component graph gives them, models/graph.py; `heads` and `mlps` are then the nodes they touch).
    A circuit a run chose carries its `faithfulness`, the `candidates` it was chosen among, and
    what is surprising about it (`warnings`) or holds by construction (`notes`)."""

    model_config = ConfigDict(extra="forbid")
    heads: list[Head] = Field(description="[layer, head] pairs (edge level: the heads its edges touch)")
    mlps: list[int] = Field(default_factory=list, description="layers whose MLP is in the circuit (node, edge level)")
    edges: list[str] = Field(default_factory=list, description="edge names ('a0.h1->a2.h3<k>'), after pruning "
                             "dangling nodes (edge level)")
    level: Literal["head", "node", "edge"] = Field("head", description="heads, nodes (heads and MLPs) or edges")
    input: bool = Field(True, exclude_if=lambda kept: kept,
                        description="node level: whether the input embedding (MIB's input node) is in the circuit; "
                        "false only when the method scored it and the rule left it out (unscored, it is always in)")
    method: str | None = Field(None, description="the method whose scores it was chosen from")
    rule: dict[str, object] = Field(default_factory=dict, description="the circuit rule (method, top_k | threshold | "
                                    "fraction, by, ablation)")
    faithfulness: Faithfulness | None = Field(None, description="its faithfulness (a circuit a run chose)")
    candidates: list[CircuitCandidate] = Field(
        default_factory=list, description="every method's circuit and faithfulness (method: auto keeps the most "
        "faithful: the smallest worst case over the panel, then the smaller circuit)")
    verdict: Verdict | None = Field(
        None, description="how far to trust it: robust (f within the band, its interval included, under the "
        "rule's ablation, counterfactual patching, mean and resample ablation; nothing necessary left out; every "
        "component patching cannot see shown irrelevant by zero ablation), counterfactual_specific (counterfactual "
        "patching, or where it is undefined the rule's ablation, gives f in the band), unfaithful, or undefined "
        "(within noise)")
    verdict_reasons: list[str] = Field(default_factory=list, description="why the verdict is not robust, one line "
                                       "each (empty for robust)")
    choice: str | None = Field(None, description="why method: auto kept this candidate, in words")
    panel: dict[str, PanelEntry] = Field(default_factory=dict, description="f under each ablation, with its interval")
    invisible: list[str] = Field(
        default_factory=list, description="components whose output is the same in the clean and counterfactual run "
        "on (almost) every prompt: their importance is unknown to patching (see the panel's zero ablation and "
        "outside_necessary)")
    outside_necessary: list[OutsideComponent] = Field(
        default_factory=list, description="components outside the circuit whose removal alone changes the metric "
        "beyond noise and by at least 10 % of the full effect (mean or zero ablation)")
    completeness: Completeness | None = Field(None, description="Wang et al.'s incompleteness over subsets of the "
                                              "circuit (None: not measured: panel off, or f undefined)")
    stability: Stability | None = Field(None, description="how much the chosen set depends on the prompts (None: not "
                                        "measured: circuit.stability_resamples 0, or fewer than 8 prompts)")
    warnings: list[str] = Field(default_factory=list, description="what the rule made of the circuit, when surprising")
    notes: list[str] = Field(default_factory=list, description="what holds by construction (e.g. a one-head model: "
                             "every non-empty circuit is the whole model)")
    node_scores: dict[str, float] | None = Field(None, description="{node: score} when the method scored nodes (in a "
                                                 "RunResult: its node_scores)")
    edge_scores: dict[str, float] | None = Field(None, description="{edge: score} when the method scored edges (in a "
                                                 "RunResult: its sidecar file)")
    n_layers: int | None = Field(None, description="the model's layers (in a RunResult: model.n_layers)")
    n_heads: int | None = Field(None, description="heads per layer (in a RunResult: model.n_heads)")
    scores: list[list[float]] | None = Field(None, description="the [n_layers][n_heads] head scores it was chosen "
                                             "from (in a RunResult: head_scores[method])")
    label: str | None = Field(None, description="how tables name it (in a RunResult: <model>/<task>)")

    @model_validator(mode="after")
    def _inside_the_model(self) -> "Circuit":
        if self.n_layers is not None and self.n_heads is not None:
            outside = [head_label(l, h) for l, h in self.heads
                       if not (0 <= l < self.n_layers and 0 <= h < self.n_heads)]
            if outside:
                raise ValueError(f"heads {', '.join(outside[:5])} lie outside a model of {self.n_layers} layers × "
                                 f"{self.n_heads} heads")
            if self.scores is not None and (len(self.scores) != self.n_layers
                                            or any(len(row) != self.n_heads for row in self.scores)):
                raise ValueError(f"scores are not a [{self.n_layers}][{self.n_heads}] array")
        elif any(l < 0 or h < 0 for l, h in self.heads):
            raise ValueError("heads hold a negative layer or head index")
        return self

    def with_shape(self, n_layers: int, n_heads: int) -> "Circuit":
        """This circuit as one of a model with that shape (for circuits that carry none)."""
        try:
            return Circuit.model_validate({**self.model_dump(), "n_layers": n_layers, "n_heads": n_heads})
        except ValidationError as e:
            reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise CircuitbenchError(f"Circuit '{self.label}': {reasons}.") from None

    @property
    def shape(self) -> tuple[int, int] | None:
        """(n_layers, n_heads) when known (a RunResult carries it; a bare list of heads does not)."""
        return None if self.n_layers is None or self.n_heads is None else (self.n_layers, self.n_heads)

    @classmethod
    def from_scores(cls, scores: np.ndarray, rule: CircuitRule, method: str) -> "Circuit":
        """Pick heads by top_k / threshold / fraction on |score| or signed score (ties: lower
        layer, then lower head first, for determinism). A head whose score is exactly 0 shows no
        measured effect and is never picked by top_k or fraction (filling a circuit with them
        would make recall depend on head numbering)."""
        values = np.abs(scores) if rule.by == "abs" else scores
        n_layers, n_heads = scores.shape
        order = [lh for lh in ranked_heads(scores, rule.by) if scores[lh] != 0]
        if rule.top_k is not None:
            chosen = order[: rule.top_k]
        elif rule.fraction is not None:
            chosen = order[: fraction_count(rule.fraction, scores.size)]
        else:
            assert rule.threshold is not None
            chosen = [lh for lh in order if values[lh] >= rule.threshold]
        return cls(
            heads=sorted((int(l), int(h)) for l, h in chosen),
            n_layers=n_layers,
            n_heads=n_heads,
            scores=scores.tolist(),
            method=method,
            rule=rule.model_dump(exclude_none=True),
        )

    @property
    def nodes(self) -> list[str]:
        """The circuit's heads and MLPs as node names, in forward order."""
        out = []
        for layer in sorted({l for l, _ in self.heads} | set(self.mlps)):
            out += [f"a{layer}.h{h}" for l, h in self.heads if l == layer]
            out += [f"m{layer}"] if layer in self.mlps else []
        return out

    @classmethod
    def from_node_scores(cls, scores: dict[str, float], rule: CircuitRule, method: str,
                         shape: tuple[int, int]) -> "Circuit":
        """Pick nodes (heads and MLPs, and the input when the method scored it) by the rule, as
        from_scores picks heads (a node scoring exactly 0 is never picked by top_k or fraction). An
        input the method did not score stays in the circuit and out of the count, as MIB does."""
        order = [n for n in ranked_nodes(scores, rule.by) if scores[n] != 0]
        values = {n: abs(v) if rule.by == "abs" else v for n, v in scores.items()}
        if rule.top_k is not None:
            chosen = order[: rule.top_k]
        elif rule.fraction is not None:
            chosen = order[: fraction_count(rule.fraction, len(scores))]
        else:
            assert rule.threshold is not None
            chosen = [n for n in order if values[n] >= rule.threshold]
        heads, mlps = split_nodes(chosen)
        return cls(heads=heads, mlps=mlps, n_layers=shape[0], n_heads=shape[1], method=method, level="node",
                   input=INPUT not in scores or INPUT in chosen, rule=rule.model_dump(exclude_none=True))

    @classmethod
    def from_result(cls, result: RunResult) -> "Circuit":
        """The circuit a run chose, as the result holds it (scores, shape and label filled in from
        the result; edge scores when the result's sidecar was attached or read with it)."""
        if result.circuit is None:
            why = (f"the unit failed ({result.error.message})" if result.error is not None
                   else "its task has no circuit rule (give the task's YAML a `circuit:` rule)")
            raise CircuitbenchError(f"{result.model.name}/{result.task.name}: no circuit in this result: {why}.")
        c = result.circuit
        if c.level == "edge" and c.edge_scores is None and c.method in result.edge_scores:
            c.edge_scores = result.edge_score_arrays()[c.method].as_dict()
        return c

    @classmethod
    def load(cls, path: Path) -> "Circuit":
        """A circuit file: any JSON with "heads": [[layer, head], ...] or "nodes": ["a0.h1", "m2", ...]
        (optionally "n_layers", "n_heads", "scores", "method", "rule", "label"), or an EAP-IG / MIB
        graph file (cfg, nodes, edges: the edges and nodes `in_graph`, with scores). A RunResult is
        read by `circuitbench.load_circuit`, which checks it as a result. Every field is checked: a
        shape beyond any real model, a non-finite score or a file of the wrong form is an error
        naming the file and the field."""
        from circuitbench.circuits.graph_files import check_head_bounds, is_graph_json, read_graph_json

        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CircuitbenchError(f"{path}: cannot read circuit JSON ({e}).") from None
        if not isinstance(raw, dict):
            raise CircuitbenchError(f"{path}: a circuit file is a JSON object with \"heads\": [[layer, head], ...], "
                                    f"not a {type(raw).__name__}.")
        if is_graph_json(raw):
            g = read_graph_json(raw, str(path))
            nodes = g.nodes or sorted({n for e in g.edges for n in (e.split("->")[0],
                                                                    *g.graph.destination_nodes(e.split("->")[1]))})
            heads, mlps = split_nodes(nodes)
            meta = g.meta
            return cls(heads=heads, mlps=mlps, edges=g.edges, level="edge" if g.edges else "node",
                       n_layers=g.graph.n_layers, n_heads=g.graph.n_heads, method=meta.get("method"),
                       node_scores=g.node_scores or None, edge_scores=g.scores or None,
                       label=str(meta.get("label") or path.stem))
        if "schema_version" in raw and "status" in raw:
            raise CircuitbenchError(f"{path}: a RunResult, not a circuit file: read it with circuitbench.load_circuit "
                                    "(or Circuit.from_result of the result).")
        if not ("heads" in raw or "nodes" in raw):
            raise CircuitbenchError(f"{path}: no \"heads\": [[layer, head], ...] field (nor \"nodes\", a "
                                    "RunResult's circuit, or an EAP-IG/MIB graph's cfg, nodes and edges).")
        try:
            heads = [(_index(l), _index(h)) for l, h in raw.get("heads", [])]
            named_heads, named_mlps = split_nodes([str(n) for n in raw.get("nodes", [])])
            heads = sorted(set(heads) | set(named_heads))
            mlps = sorted({_index(m) for m in raw.get("mlps", [])} | set(named_mlps))
        except (TypeError, ValueError):
            raise CircuitbenchError(f"{path}: \"heads\" must be a list of [layer, head] pairs.") from None
        shape = {}
        for field in ("n_layers", "n_heads"):
            value = raw.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise CircuitbenchError(f"{path}: {field}: {value!r} is not a positive whole number. Give the model's "
                                        "shape as integers, or leave it out.")
            shape[field] = value
        if shape["n_layers"] is not None and shape["n_heads"] is not None:
            check_head_bounds(shape["n_layers"], shape["n_heads"], str(path))
        _check_finite(path, "scores", raw.get("scores"))
        level = raw.get("level", "head")
        try:
            return cls(heads=heads, mlps=mlps, edges=[str(e) for e in raw.get("edges", [])], level=level,
                       n_layers=shape["n_layers"], n_heads=shape["n_heads"], scores=raw.get("scores"),
                       method=raw.get("method"), rule=raw.get("rule") or {}, label=raw.get("label", path.stem))
        except ValidationError as e:
            raise CircuitbenchError(f"{path}: not a usable circuit: {validation_reasons(e)}") from None


def validation_reasons(e: ValidationError) -> str:
    """A pydantic error as one line: 'field: reason; …' (at most three)."""
    return "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                     if err["loc"] else err["msg"].removeprefix("Value error, ") for err in e.errors()[:3])


def _index(value: object) -> int:
    """A layer or head index as written in a circuit file: a whole number (not 1.5, not true)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(value)
    return int(value)  # type: ignore[arg-type]


def _check_finite(path: Path, field: str, values: object) -> None:
    """Scores read from a file hold numbers only, every one finite (Python's json reads NaN and Infinity)."""
    flat = list(values.values()) if isinstance(values, dict) else values
    if flat is None:
        return
    cells = [v for row in flat for v in (row if isinstance(row, list) else [row])] if isinstance(flat, list) else [flat]
    for v in cells:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not np.isfinite(v):
            raise CircuitbenchError(f"{path}: {field}: holds {v!r}, not a finite number. Scores must be numbers; "
                                    "rerun the unit, or fix the file.")
