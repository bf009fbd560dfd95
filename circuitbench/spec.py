"""Typed specs: TaskSpec (tasks/*.yaml), ModelSpec (models.yaml), RunOptions (CLI / library).

Every model forbids unknown keys, so a typo in YAML is an error naming the field, never ignored.
Generator params are validated by the generator's own model (a union discriminated on `name`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from circuitbench.errors import did_you_mean
from circuitbench.methods import METHODS
from circuitbench.metrics import METRICS
from circuitbench.prompts import GENERATORS
from circuitbench.prompts.base import Split

_params = tuple(gen.params for _, gen in GENERATORS.items())
GeneratorParams = Annotated[Union[_params], Field(discriminator="name")]  # type: ignore[valid-type]

DType = Literal["float32", "bfloat16", "float16"]
SNAKE = r"^[a-z][a-z0-9_]*$"


class CircuitRule(BaseModel):
    """How head scores become a circuit: exactly one of top_k, threshold, fraction."""

    model_config = ConfigDict(extra="forbid")
    method: str | None = Field(None, description="which head_scores to use (default: first method)")
    top_k: int | None = Field(None, ge=1)
    threshold: float | None = None
    fraction: float | None = Field(None, gt=0, le=1)
    by: Literal["abs", "signed"] = "abs"
    ablation: Literal["mean_counterfactual", "mean_clean", "zero"] = Field(
        "mean_counterfactual", description="how heads outside the circuit are removed for faithfulness")
    curve: bool = Field(True, description="also compute the faithfulness curve over circuit sizes (CPR, CMD)")

    @model_validator(mode="after")
    def _one_rule(self) -> "CircuitRule":
        given = [k for k in ("top_k", "threshold", "fraction") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of top_k, threshold, fraction (got {given or 'none'})")
        return self


def _known(kind: str, names: list[str]) -> AfterValidator:
    """Per-item check so errors carry the item's path (e.g. metrics.1)."""

    def check(name: str) -> str:
        if name not in names:
            raise ValueError(f"unknown {kind} '{name}'.{did_you_mean(name, names)} Known: {', '.join(names)}")
        return name

    return AfterValidator(check)


MetricName = Annotated[str, _known("metric", list(METRICS))]
MethodName = Annotated[str, _known("method", list(METHODS))]


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SNAKE)
    version: int = Field(1, ge=1)
    description: str = ""
    generator: GeneratorParams
    n_prompts: int | Literal["all"] = Field(64, description="prompts to draw, or 'all' of the split")
    limit: int | None = Field(None, ge=1, description="keep at most this many of the drawn prompts (--n on an 'all' task)")
    seed: int = 0
    split: Split = "test"
    report_splits: list[Split] = Field(
        default_factory=list,
        description="also evaluate the metrics on these splits, side by side with `split` "
        "(memorisation vs generalisation for tasks that hold out whole progressions)",
    )
    metrics: list[MetricName] = Field(min_length=1)
    main_metric: str | None = None
    methods: list[MethodName] = Field(default_factory=list)
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method options")
    circuit: CircuitRule | None = None
    max_drop_fraction: float = Field(0.1, ge=0, le=1)
    reference_circuits: dict[str, list[tuple[int, int]]] = Field(default_factory=dict)

    @field_validator("n_prompts")
    @classmethod
    def _n_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise ValueError("n_prompts must be between 1 and 100000, or 'all'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TaskSpec":
        gen = GENERATORS.get(self.generator.name)
        if not gen.has_answer:
            needing = [m for m in self.metrics if METRICS.get(m).needs_answer]
            if needing:
                raise ValueError(
                    f"metrics {needing} need an answer token, which generator "
                    f"'{self.generator.name}' does not provide"
                )
        if self.main_metric is None:
            self.main_metric = self.metrics[0]
        elif self.main_metric not in self.metrics:
            raise ValueError(f"main_metric '{self.main_metric}' is not in metrics {self.metrics}")
        for name, opts in self.method_options.items():
            if name not in METHODS:
                raise ValueError(f"method_options: unknown method '{name}'.{did_you_mean(name, list(METHODS))}")
            model = METHODS.get(name).options
            if model is None:
                raise ValueError(f"method_options.{name}: method '{name}' takes no options")
            try:
                model.model_validate(opts)
            except ValidationError as e:
                first = e.errors()[0]
                path = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"method_options.{name}.{path}: {first['msg']}") from None
        if self.circuit and self.circuit.method and self.circuit.method not in self.methods:
            raise ValueError(f"circuit.method '{self.circuit.method}' is not in methods {self.methods}")
        if self.split in self.report_splits:
            raise ValueError(f"report_splits lists '{self.split}', the split the task already runs on")
        return self

    def spec_hash(self) -> str:
        """Hash of everything that determines the prompts and what is computed on them."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def content_hash(self) -> str:
        """Hash of what makes two results comparable: the task's version, prompt distribution and
        metrics, not how many prompts or which methods a run used."""
        keep = self.model_dump(mode="json", include={"name", "version", "generator", "split", "metrics", "main_metric"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class ModelSpec(BaseModel):
    """One entry of models.yaml: where the weights come from and the architecture's numbers."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: Literal["hf", "toy"]
    hf_id: str | None = None
    path: str | None = Field(None, description="toy checkpoint dir, relative to circuitbench/zoo")
    revision: str = "main"
    family: str
    tokenizer: str | None = Field(None, description="'gpt2-bpe': offline GPT-2 BPE fallback")
    n_params: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_model: int = Field(ge=1)
    d_head: int = Field(ge=1)
    n_ctx: int = Field(ge=1)
    d_vocab: int = Field(ge=1)
    dtype: DType = "float32"
    hf_config: dict[str, object] | None = Field(None, description="HF config for --init random")
    train_command: str | None = None
    test_metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="measured on each task's default test split: task -> metric -> value")
    notes: str = ""

    @model_validator(mode="after")
    def _source_fields(self) -> "ModelSpec":
        if self.source == "hf" and not (self.hf_id and self.hf_config):
            raise ValueError("source 'hf' needs hf_id and hf_config")
        if self.source == "toy" and not self.path:
            raise ValueError("source 'toy' needs path")
        return self


class RunOptions(BaseModel):
    """Options of one `run`, shared by the CLI and the library."""

    model_config = ConfigDict(extra="forbid")
    n: int | None = Field(None, ge=1, description="override the task's n_prompts")
    seed: int | None = None
    split: Split | None = None
    batch_size: int | Literal["auto"] = 32
    device: str = "auto"
    device_map: Literal["auto"] | None = Field(
        None, description="'auto': accelerate spreads a HuggingFace model over the devices (model parallel)")
    dtype: DType | None = None
    init: Literal["pretrained", "random"] = "pretrained"
    methods: list[MethodName] | None = None
    out: str = "results"
    resume: bool = False
    cache: bool = True  # reuse unpatched forwards from the activation cache (activation_cache.py)
    cache_dir: str | None = None  # default: $CIRCUITBENCH_CACHE or ~/.cache/circuitbench

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("batch_size must be a positive integer or 'auto'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
            raise ValueError(f"device '{v}' is not one of auto, cpu, cuda, cuda:N, mps")
        return v
