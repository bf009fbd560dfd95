"""TaskSpec: one task as declared in YAML, validated against the open registries at load time.

Every model forbids unknown keys, so a typo in YAML is an error naming the field, never ignored.
The generator's params are validated by the generator's own model, looked up by `name`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from circuitbench.errors import CircuitbenchError, did_you_mean, format_validation_error
from circuitbench.registry import Registry
from circuitbench.specs.registries import GENERATORS, METHODS, METRICS, GeneratorParams

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
SNAKE = r"^[a-z][a-z0-9_]*$"
STABILITY_RESAMPLES = 4  # half-samples: the kept method reruns on half the prompts this often (2x its cost)


def registered(registry: Registry) -> AfterValidator:
    """A per-item check against the registry as it is when the spec is validated, so plugins
    count and errors carry the item's path (e.g. metrics.1)."""

    def check(name: str) -> str:
        known = registry.names()
        if name not in known:
            raise ValueError(f"unknown {registry.kind} '{name}'.{did_you_mean(name, known)} Known: {', '.join(known)}")
        return name

    return AfterValidator(check)


MetricName = Annotated[str, registered(METRICS)]
MethodName = Annotated[str, registered(METHODS)]


def nested_errors(err: ValidationError, prefix: tuple[str | int, ...]) -> ValidationError:
    """`err` with every location under `prefix` (so the message names the full field path)."""
    return ValidationError.from_exception_data(err.title, [
        InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in err.errors()
    ])


class CircuitRule(BaseModel):
    """How scores become a circuit: exactly one of top_k, threshold, fraction, at one level (heads,
    nodes = heads and MLPs, or edges between them)."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field("auto", description="which method's scores make the circuit; auto: every method's "
                        "circuit by this rule, the one with the smallest worst case |1 − f| over the ablation panel "
                        "kept (all recorded as candidates)")
    level: Literal["head", "node", "edge"] = Field(
        "head", exclude_if=lambda level: level == "head",
        description="what the circuit is made of: heads (node methods' head scores), nodes (heads and MLPs), or "
        "edges (edge methods' scores: eap, eap_ig, edge_patching)")
    top_k: int | None = Field(None, ge=1, description="the k components with the largest scores")
    threshold: float | None = Field(None, allow_inf_nan=False,
                                    description="every component whose score is at least this")
    fraction: float | None = Field(None, gt=0, le=1, description="this fraction of all components, largest first")
    by: Literal["abs", "signed"] = Field("abs", description="rank by |score| or by the signed score")
    positions: Literal["all", "per_span"] = Field(
        "all", exclude_if=lambda positions: positions == "all",
        description="edge circuits: all = edges over every position; per_span = (edge, span) pairs, each edge kept "
        "or patched at the positions of one span (the task's spans, or each named position and the rest; PEAP), "
        "members named 'u->v@SPAN'; the edge methods then also score per span (circuits/span_circuits.py)")
    selection: Literal["top", "greedy", "optimal"] = Field(
        "top", exclude_if=lambda selection: selection == "top",
        description="edge circuits: top = the best-ranked edges (then pruned); greedy = grown from the logits "
        "backwards, the best edge into the circuit each time (MIB's rule for information flow routes; the curve too); "
        "optimal = the connected set of top_k (or fraction) edges with the largest total score, a mixed-integer "
        "program (circuits/selection.py; the curve stays top)")
    ablation: Literal["mean_counterfactual", "mean_clean", "zero", "counterfactual"] = Field(
        "mean_counterfactual", description="how components outside the circuit are removed for faithfulness: "
        "position-wise means over the counterfactual or clean prompts, zeros, or each prompt's own counterfactual "
        "(MIB's patching; the default for node and edge circuits)")
    curve: bool = Field(True, description="also compute the faithfulness curve over circuit sizes (CPR, CMD)")
    panel: bool = Field(True, description="also measure the circuit under counterfactual patching, mean, zero and "
                        "resample ablation with bootstrap intervals, remove every component outside it alone (mean "
                        "and zero), and give a verdict (circuits/panel.py); false: the rule's ablation and zero only")
    stability_resamples: int = Field(
        STABILITY_RESAMPLES, ge=0, le=100, exclude_if=lambda n: n == STABILITY_RESAMPLES,
        description="half-samples of the prompts the kept method is rerun on to measure how stable the chosen set is "
        "(circuit.stability: mean Jaccard); 0: not measured")
    require_zero: bool = Field(
        False, exclude_if=lambda required: not required,
        description="robust also needs f within [0.8, 1.2] under zero ablation (for tasks where a component that "
        "writes a constant, e.g. reads BOS or position, must be in the circuit)")
    integration: Literal["mib", "sizes"] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="the curve: mib = MIB's sizes (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 % of the components), "
        "CPR on the signed ranking and CMD on the |score| ranking, each the trapezoid area between those points; "
        "sizes = every circuit size from 0 (MIB's grid in large models), one ranking (the rule's) for both. "
        "Default: mib for node and edge circuits, sizes for head circuits (as before)")

    @model_validator(mode="before")
    @classmethod
    def _edge_default_ablation(cls, value: Any) -> Any:
        """Node and edge circuits patch each prompt's own counterfactual (MIB's default) unless told
        otherwise."""
        if isinstance(value, dict) and value.get("level") in ("node", "edge") and "ablation" not in value:
            return {**value, "ablation": "counterfactual"}
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> "CircuitRule":
        given = [k for k in ("top_k", "threshold", "fraction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of top_k, threshold, fraction (got {given or 'none'})")
        if self.selection != "top" and (self.level != "edge" or self.threshold is not None):
            raise ValueError(f"selection: {self.selection} picks edges under a size budget: it needs level: edge and "
                             "top_k or fraction")
        if self.positions == "per_span" and (self.level != "edge" or self.selection != "top"):
            raise ValueError("positions: per_span picks (edge, span) pairs by top_k, fraction or threshold: it needs "
                             "level: edge and selection: top (greedy and optimal are position-blind for now)")
        return self

    @property
    def effective_integration(self) -> str:
        return self.integration or ("sizes" if self.level == "head" else "mib")


class TaskSpec(BaseModel):
    """A task: prompts (generator + count + seed + split), metrics, scoring methods, circuit rule."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SNAKE, description="task id; a catalog task's file is <name>.yaml")
    version: int = Field(1, ge=1, description="bump when prompts or metrics change meaning")
    description: str = ""
    generator: SerializeAsAny[GeneratorParams] = Field(
        description="the prompt generator: `name` plus that generator's own params")
    n_prompts: int | Literal["all"] = Field(
        64, description="prompts to draw from the split (fewer if the split holds fewer), or 'all' of it")
    seed: int = Field(0, ge=0, lt=2**63, description="prompt seed (a local RNG; never global seeding)")
    split: Split = Field("test", description="which disjoint split of the prompt universe to run on")
    report_splits: list[Split] = Field(
        default_factory=list,
        description="also evaluate the metrics on these splits, side by side with `split` "
        "(memorisation vs generalisation for tasks that hold out whole progressions)",
    )
    metrics: list[MetricName] = Field(min_length=1, description="registered task metrics, e.g. logit_diff")
    main_metric: str | None = Field(None, description="the metric methods score and circuits keep (default: the first)")
    methods: list[MethodName] = Field(default_factory=list, description="registered scoring methods")
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method options")
    circuit: CircuitRule | None = Field(None, description="how a circuit is chosen from head scores")
    max_drop_fraction: float = Field(0.1, ge=0, le=1, description="stop if more prompts than this fail tokenization")
    reference_circuits: dict[str, list[tuple[int, int] | str]] = Field(
        default_factory=dict, exclude_if=lambda refs: not refs,
        description="known circuits by model name or path: [layer, head] pairs or node names ('a0.h1', 'm2'); "
        "results then carry recovery scores (left out of hashes when empty)")
    # Left out of the dump (and so of every hash) at its default: tasks written before it hash as they did.
    aligned_counterfactual: bool = Field(
        True, exclude_if=lambda aligned: aligned,
        description="false: keep prompts whose counterfactual has another token length or other named positions "
        "(dropped and counted otherwise); methods that patch position by position then align each counterfactual "
        "with its clean prompt span by span (named segments: IOI's names), and are refused for prompts without spans")

    counterfactuals: list[str] = Field(
        default_factory=list, exclude_if=lambda names: not names,
        description="several counterfactuals: values of the generator's `counterfactual` parameter (file tasks: "
        "columns holding corrupted prompts), the first the primary one. Patching-style methods score under each, the "
        "circuit is built from their combination (per component, the score of largest magnitude), every "
        "counterfactual's patching joins the ablation panel, and disagreement is flagged")

    @classmethod
    def from_prompts(
        cls, name: str, prompts: Sequence[str], answers: Sequence[str] | None = None,
        distractors: Sequence[str] | None = None, counterfactuals: Sequence[str] | None = None, **fields: Any,
    ) -> TaskSpec:
        """A task from prompts held in Python (no data file, no YAML): `answers` the single-token
        answers (leading space included, " Mary"), `distractors` the tokens logit_diff compares
        against, `counterfactuals` the corrupted prompts patching needs. Any other TaskSpec field may
        be given (metrics, methods, circuit, seed, positions through records …). Defaults: every
        prompt (n_prompts), answer metrics matching what is given, a circuit of a quarter of the
        heads by the most faithful method (method auto)."""
        given = {"answers": answers, "distractors": distractors, "counterfactuals": counterfactuals}
        for label, values in given.items():
            if values is not None and len(values) != len(prompts):
                raise CircuitbenchError(f"task '{name}': {len(values)} {label} for {len(prompts)} prompts; give one "
                                        "per prompt.")
        keys = {"answers": "answer", "distractors": "distractor", "counterfactuals": "corrupted"}
        records = [{"prompt": p, **{keys[k]: v[i] for k, v in given.items() if v is not None}}
                   for i, p in enumerate(prompts)]
        metrics = (["logit_diff", "accuracy", "answer_prob"] if distractors is not None else
                   ["answer_prob", "accuracy", "loss"] if answers is not None else ["sequence_loss"])
        spec = {"name": name, "description": f"{len(prompts)} prompts given in Python",
                "generator": {"name": "records", "records": records}, "n_prompts": max(len(prompts), 1),
                "metrics": metrics, "circuit": {"fraction": 0.25}, **fields}
        try:
            return cls.model_validate(spec)
        except ValidationError as e:
            raise CircuitbenchError(format_validation_error(e, f"task '{name}'")) from None

    @field_validator("generator", mode="before")
    @classmethod
    def _generator_params(cls, value: Any, info: ValidationInfo) -> GeneratorParams:
        if isinstance(value, GeneratorParams):
            value = value.model_dump()
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError("give a mapping with the generator's name, e.g. {name: fibonacci, length: 6}")
        name = value["name"]
        known = GENERATORS.names()
        if name not in known:
            raise ValueError(f"unknown generator '{name}'.{did_you_mean(name, known)} Known: {', '.join(known)}")
        try:
            # the context (e.g. the task file's folder, for paths in the params) passes through
            return GENERATORS.get(name).params.model_validate(value, context=info.context)
        except ValidationError as e:
            raise nested_errors(e, (name,)) from None

    @field_validator("n_prompts")
    @classmethod
    def _n_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise ValueError("n_prompts must be between 1 and 100000, or 'all'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TaskSpec":
        generator = GENERATORS.get(self.generator.name)
        if not generator.answers(self.generator):
            needing = [m for m in self.metrics if METRICS.get(m).needs_answer]
            if needing:
                raise ValueError(
                    f"metrics {needing} need an answer token, which generator '{self.generator.name}' does not provide"
                )
        elif not generator.distractors(self.generator):
            needing = [m for m in self.metrics if METRICS.get(m).needs_distractor]
            if needing:
                raise ValueError(f"metrics {needing} compare the answer with a distractor, which these prompts do not "
                                 "have: give every record a distractor, or use accuracy, answer_prob, loss")
        if self.main_metric is None:
            self.main_metric = self.metrics[0]
        elif self.main_metric not in self.metrics:
            raise ValueError(f"main_metric '{self.main_metric}' is not in metrics {self.metrics}")
        for name, opts in self.method_options.items():
            self._check_method_options(name, opts)
        if self.circuit is not None and self.circuit.positions == "per_span":
            self._per_span_options()
        if self.circuit and self.circuit.method != "auto" and self.circuit.method not in self.methods:
            raise ValueError(f"circuit.method '{self.circuit.method}' is not in methods {self.methods} (or use auto)")
        if self.split in self.report_splits:
            raise ValueError(f"report_splits lists '{self.split}', the split the task already runs on")
        if not self.aligned_counterfactual:
            self._check_unaligned()
        if self.counterfactuals:
            self._check_counterfactuals()
        return self

    def _per_span_options(self) -> None:
        """circuit positions: per_span: every edge method that scores per span does so
        (method_options.<method>.positions: per_span, filled in; the result records it)."""
        for name in self.methods:
            method = METHODS.get(name)
            if method.produces != "edge_scores" or method.options is None or \
                    "positions" not in method.options.model_fields:
                continue
            given = self.method_options.get(name, {})
            if given.get("positions", "per_span") != "per_span":
                raise ValueError(f"method_options.{name}.positions is '{given['positions']}' but circuit.positions is "
                                 "per_span, which needs its per-span scores: remove the option")
            self.method_options[name] = {**given, "positions": "per_span"}

    def _check_counterfactuals(self) -> None:
        """Each name is a value the generator's `counterfactual` parameter takes; the generator then
        draws the first (the primary counterfactual: metrics_corrupted, mean_counterfactual ablation)."""
        params = self.generator
        if "counterfactual" not in type(params).model_fields:
            raise ValueError(f"counterfactuals: generator '{params.name}' has no `counterfactual` parameter to choose "
                             "from; remove counterfactuals")
        names = list(dict.fromkeys(self.counterfactuals))
        if len(names) != len(self.counterfactuals):
            raise ValueError(f"counterfactuals lists a name twice: {self.counterfactuals}")
        if "counterfactual" in params.model_fields_set and params.counterfactual != names[0]:  # type: ignore[attr-defined]
            raise ValueError(f"generator.counterfactual is '{params.counterfactual}' but counterfactuals starts with "  # type: ignore[attr-defined]
                             f"'{names[0]}': the first of counterfactuals is the primary one; give it once")
        for name in names:
            self.generator_with(name)
        self.generator = self.generator_with(names[0])

    def generator_with(self, counterfactual: str) -> GeneratorParams:
        """The generator's params drawing `counterfactual` (checked by the generator's own model)."""
        params = self.generator
        try:
            return type(params).model_validate({**params.model_dump(), "counterfactual": counterfactual})
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(f"counterfactuals: '{counterfactual}' is not a counterfactual of generator "
                             f"'{params.name}' ({first['msg']})") from None

    def with_counterfactual(self, counterfactual: str) -> "TaskSpec":
        """This task drawing `counterfactual` as its only one (the clean prompts are the same: a
        generator draws them independently of its counterfactual)."""
        return self.model_copy(update={"generator": self.generator_with(counterfactual), "counterfactuals": []})

    def _check_unaligned(self) -> None:
        """Counterfactuals of another length: no sequence metric compares them with the clean tokens position
        by position. Methods that patch position by position align them span by span (scores/alignment.py);
        whether the prompts have spans and every counterfactual has its clean prompt's spans is known only once
        they are encoded, so those methods are refused then, before any compute (scores/scoring.check_methods)."""
        sequence = [m for m in self.metrics if not METRICS.get(m).needs_answer]
        if sequence:
            raise ValueError(
                f"metrics {sequence} score a corrupted run against the clean tokens position by position; with "
                "aligned_counterfactual: false use answer metrics (logit_diff, accuracy, ...)")

    @staticmethod
    def _check_method_options(name: str, opts: dict[str, Any]) -> None:
        known = METHODS.names()
        if name not in known:
            raise ValueError(f"method_options: unknown method '{name}'.{did_you_mean(name, known)}")
        model = METHODS.get(name).options
        if model is None:
            raise ValueError(f"method_options.{name}: method '{name}' takes no options")
        try:
            model.model_validate(opts)
        except ValidationError as e:
            first = e.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"method_options.{name}.{path}: {first['msg']}") from None

    @property
    def metric(self) -> str:
        """The main metric (defaulted to the first metric at validation)."""
        return self.main_metric or self.metrics[0]

    def options_of(self, method: str) -> dict[str, Any]:
        return self.method_options.get(method, {})

    def _hashed(self, include: set[str] | None = None) -> str:
        """sha256 (16 hex digits) of the spec's fields, the generator's as its `identity()` says."""
        blob = self.model_dump(mode="json", include=include)
        blob["generator"] = self.generator.identity()
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def spec_hash(self) -> str:
        """Hash of everything that determines the prompts and what is computed on them."""
        return self._hashed()

    def content_hash(self) -> str:
        """Hash of what makes two results comparable: the task's version, prompt distribution and
        metrics, not how many prompts or which methods a run used."""
        return self._hashed({"name", "version", "generator", "split", "metrics", "main_metric",
                             "aligned_counterfactual", "counterfactuals"})
