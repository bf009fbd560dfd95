"""The options each built-in method takes (`method_options.<method>` in a task YAML), validated
when the spec is loaded. Plain pydantic models: validating a spec imports no torch."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Positions = Literal["all"] | list[str]
EdgePositions = Literal["all", "per_span"]
EDGE_POSITIONS = ("all: each edge scored over every position (position-blind); per_span: also per span of "
                  "positions, the task's spans or each named position and the rest (PEAP; scores/span_edges.py)")


class PatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    direction: Literal["noising", "denoising"] = Field(
        "noising", description="noising: corrupted head output into the clean run; denoising: clean into corrupted")
    positions: Positions = Field("all", description="'all' or named positions, e.g. [END, S2]")
    mlps: bool = Field(True, exclude_if=lambda mlps: mlps,
                       description="also patch each block's MLP output (node scores); false: heads only, head "
                       "scores (≈ 8 % less work on GPT-2 small)")


class AblationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["zero", "mean", "resample"] = Field("mean", description="what replaces the head's output")
    positions: Positions = Field("all", description="'all' or named positions")
    seed: int = Field(0, ge=0, description="resample: seed of the partner pairing (a derangement over the prompts)")


class AttributionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ig_steps: int = Field(0, ge=0, le=256, description="0: plain attribution patching; >0: integrated gradients")
    points: Literal["published", "midpoint"] = Field(
        "published", exclude_if=lambda points: points == "published",
        description="integration points: published = α = k/m, k = 1…m (EAP-IG's node rule); midpoint = (k + ½)/m")


class NapIgOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(5, ge=1, le=256, description="integration steps m (MIB: 5)")
    points: Literal["published", "midpoint"] = Field(
        "published", description="published: α = k/m, k = 1…m, as EAP-IG's attribute_node computes them; "
        "midpoint: α = (k + ½)/m")


class EapOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positions: EdgePositions = Field("all", description=EDGE_POSITIONS)


class EapIgOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positions: EdgePositions = Field("all", description=EDGE_POSITIONS)
    variant: Literal["inputs", "activations"] = Field(
        "inputs", description="inputs: integrate along the input embeddings from corrupted to clean (EAP-IG); "
        "activations: interpolate one layer's outputs at a time (EAP-IG's ig_activations)")
    steps: int = Field(5, ge=1, le=256, description="integration steps m")
    points: Literal["published", "midpoint"] = Field(
        "published", description="published: α = k/m, k = 0…m−1 (inputs; activations: k = 1…m) as EAP-IG computes "
        "them; midpoint: α = (k + ½)/m")


class EdgePatchingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positions: EdgePositions = Field("all", description=EDGE_POSITIONS + "; one forward per (edge, span) more")
    max_forwards: int = Field(
        5000, ge=1, description="refuse a run estimated above this many batch forwards (edges × the share of the "
        "model each patched forward runs × batches); exact patching is one forward per edge")


class IfrOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: Literal["same_position", "attention"] = Field(
        "same_position", description="same_position: an edge into a head's query, key or value input is scored at "
        "the head's own position like every other edge (MIB's information-flow-routes); attention: its key and value "
        "edges are weighted over the positions the head reads by each one's share of the head's output (the paper's "
        "decomposition of attention through its pattern)")


class AcdcOptions(BaseModel):
    """ACDC (Conmy et al. 2023): edges pruned from the logits backwards while the loss rises by less
    than τ; run for every τ of `thresholds`, an edge scores the largest τ at which it is kept."""

    model_config = ConfigDict(extra="forbid")
    loss: Literal["kl", "task"] = Field(
        "kl", description="ACDC's metric. kl: KL(full model ‖ circuit) at END (every position for sequence "
        "metrics), ACDC's default; task: minus the task's main metric")
    tau: float | None = Field(None, gt=0, allow_inf_nan=False, description="one threshold: the scores are τ on "
                              "ACDC's circuit at τ and 0 elsewhere (overrides thresholds)")
    thresholds: list[float] = Field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0], min_length=1, max_length=100,
        description="the τ grid (each > 0) ACDC runs at; an edge's score is the largest τ at which it is kept")
    abs_value_threshold: bool = Field(
        False, description="remove an edge when |Δloss| < τ (ACDC's abs_value_threshold); default Δloss < τ, signed")
    tau_units: Literal["relative", "raw"] = Field(
        "relative", description="relative: τ as a fraction of the empty circuit's loss (KL(full ‖ counterfactual) for "
        "kl, |m_clean − m_corrupted| for task); raw: in the loss's own units (nats, metric units), as ACDC")
    max_forwards: int = Field(
        20000, ge=1, description="refuse a run estimated above this many batch forwards (thresholds × (edges + 1) "
        "circuit forwards × batches, an upper bound)")

    @field_validator("thresholds")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not all(0 < t < float("inf") for t in v):
            raise ValueError("every threshold must be a finite number > 0")
        return v


class EdgePruningOptions(BaseModel):
    """Learned edge masks (Bhaskar et al. 2024, Edge Pruning): hard-concrete masks trained with Adam to
    keep the model's output at a price per expected edge (UGS-style), or with Edge Pruning's Lagrangian
    towards a target sparsity."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(300, ge=1, le=100_000, description="optimisation steps, each one forward and backward of one "
                       "batch (batches taken in turn)")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate of the masks' log alpha")
    l0_lambda: float = Field(1.0, ge=0, description="price of the edges: loss = D + l0_lambda · E[#edges] / #edges, "
                             "D the faithfulness loss as a share of its value with every edge ablated; an edge stays "
                             "when removing it costs more than l0_lambda / #edges of that")
    target_sparsity: float | None = Field(
        None, ge=0, le=2, description="instead of the price: Edge Pruning's Lagrangian towards this share of edges "
        "removed (above 1 keeps pushing, as its tracr runs do)")
    warmup: float = Field(0.5, ge=0, le=1, description="target_sparsity: share of the steps over which the target "
                          "rises linearly from 0 (Edge Pruning's sparsity warmup)")
    lambda_lr: float = Field(0.1, gt=0, le=10, description="target_sparsity: Adam learning rate of the two Lagrange "
                             "multipliers (gradient ascent)")
    init: float = Field(3.0, ge=-10, le=20, description="initial log alpha of every edge (± 0.01 noise; Edge "
                        "Pruning: 10)")
    objective: Literal["kl", "task"] = Field(
        "kl", description="kl: KL(full model ‖ masked model) at the positions the task metric reads (Edge Pruning); "
        "task: |m(full) − m(masked)| of the task metric, as a share of |m(full) − m(every edge ablated)|")
    ablation: Literal["counterfactual", "mean_counterfactual", "mean_clean", "zero"] = Field(
        "counterfactual", description="what a masked-off edge carries: its source's counterfactual output (MIB's "
        "patching), its position-wise mean, or zero")
    seed: int = Field(0, ge=0, description="seed of the mask noise and the initial log alpha (a local generator)")


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
