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
    seed: int = Field(0, ge=0, description="resample: seed of the partner pairing (a derangement over the prompts)")


class AttributionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ig_steps: int = Field(0, ge=0, le=256, description="0: plain attribution patching; >0: integrated gradients")


class EapIgOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["inputs", "activations"] = Field(
        "inputs", description="inputs: integrate along the input embeddings from corrupted to clean (EAP-IG); "
        "activations: interpolate one layer's outputs at a time (EAP-IG's ig_activations)")
    steps: int = Field(5, ge=1, le=256, description="integration steps m")
    points: Literal["published", "midpoint"] = Field(
        "published", description="published: α = k/m, k = 0…m−1 (inputs; activations: k = 1…m) as EAP-IG computes "
        "them; midpoint: α = (k + ½)/m")


class EdgePatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_forwards: int = Field(
        5000, ge=1, description="refuse a run estimated above this many batch forwards (edges × the share of the "
        "model each patched forward runs × batches); exact patching is one forward per edge")


class AttentionToOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field("END", description="named position attending (query)")
    target: str = Field("IO", description="named position attended to (key)")


TraceKind = Literal["resid", "attn", "mlp"]


class TracingOptions(BaseModel):
    """Causal tracing settings. `preset: rome` applies ROME's (Meng et al. 2022): Gaussian noise of
    3 × the std of the corrupted (subject) tokens' embeddings, 10 noise samples per prompt, attention
    and MLP outputs restored over a window of 10 layers; `corrupt` must then name the subject's
    positions. Options given explicitly win over the preset; the result records what ran."""

    model_config = ConfigDict(extra="forbid")
    preset: Literal["none", "rome"] = "none"
    noise: Literal["gaussian", "random_embeddings", "shuffled"] = "gaussian"
    noise_scale: float | None = Field(None, gt=0, description="Gaussian std as a multiple of the reference embedding "
                                      "std (default 3)")
    noise_std_from: Literal["vocabulary", "corrupted_tokens"] | None = Field(
        None, description="the reference std: of every token embedding, or of the corrupted tokens' embeddings (ROME: "
        "the subject's). Default vocabulary; rome: corrupted_tokens")
    samples: int | None = Field(None, ge=1, le=100, description="noise draws per prompt, effects averaged (default 1; "
                                "rome: 10)")
    window: int | None = Field(None, ge=1, description="attention/MLP outputs restored over this many layers around "
                               "each layer (default 1; rome: 10); the residual stream always one layer")
    corrupt: Literal["all"] | list[str] = Field(
        "all", description="'all' tokens after BOS, or named positions (the subject)")
    kinds: list[TraceKind] = Field(default_factory=lambda: ["resid", "attn", "mlp"], min_length=1)
    directions: list[Literal["restore", "noise"]] = Field(default_factory=lambda: ["restore"], min_length=1)
    metric: str | None = Field(None, description="default: answer_prob if the task has answers, else the main metric")
    seed: int = 0

    def resolved(self) -> "TracingOptions":
        """The options with the preset's (or the plain defaults') values filled in."""
        rome = self.preset == "rome"
        defaults = {"noise_scale": 3.0, "noise_std_from": "corrupted_tokens" if rome else "vocabulary",
                    "samples": 10 if rome else 1, "window": 10 if rome else 1}
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})
