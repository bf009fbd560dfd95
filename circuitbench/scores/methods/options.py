"""The options each built-in method takes (`method_options.<method>` in a task YAML), validated
when the spec is loaded. Plain pydantic models: validating a spec imports no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Positions = Literal["all"] | list[str]


class PatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    direction: Literal["noising", "denoising"] = Field(
        "noising", description="noising: corrupted head output into the clean run; denoising: clean into corrupted")
    positions: Positions = Field("all", description="'all' or named positions, e.g. [END, S2]")


class AblationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["zero", "mean", "resample"] = Field("mean", description="what replaces the head's output")
    positions: Positions = Field("all", description="'all' or named positions")


class AttributionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ig_steps: int = Field(0, ge=0, le=256, description="0: plain attribution patching; >0: integrated gradients")


class AttentionToOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field("END", description="named position attending (query)")
    target: str = Field("IO", description="named position attended to (key)")


TraceKind = Literal["resid", "attn", "mlp"]


class TracingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    noise: Literal["gaussian", "random_embeddings", "shuffled"] = "gaussian"
    noise_scale: float = Field(3.0, gt=0, description="Gaussian std as a multiple of the token-embedding std")
    corrupt: Literal["all"] | list[str] = Field("all",
                                                description="'all' tokens after BOS, or named positions (the subject)")
    kinds: list[TraceKind] = Field(default_factory=lambda: ["resid", "attn", "mlp"], min_length=1)
    directions: list[Literal["restore", "noise"]] = Field(default_factory=lambda: ["restore"], min_length=1)
    metric: str | None = Field(None, description="default: answer_prob if the task has answers, else the main metric")
    seed: int = 0
