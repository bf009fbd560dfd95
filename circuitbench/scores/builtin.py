"""The built-in task metrics and scoring methods, declared: names, what a spec may set, and
where each implementation lives (imported on first use, so validating a spec imports no torch).
They register through the same decorators as third-party plugins (specs/registries.py: `metric`,
`method`), with the same defaults: what differs from a default is said here."""
from __future__ import annotations

from circuitbench.scores.methods.options import (
    AblationOptions,
    AcdcOptions,
    AttentionToOptions,
    AttributionOptions,
    EapIgOptions,
    EapOptions,
    EdgePatchingOptions,
    EdgePruningOptions,
    IfrOptions,
    NapIgOptions,
    PatchingOptions,
    TracingOptions,
)
from circuitbench.specs.registries import method, metric

_METRICS = "circuitbench.scores.metrics"
for name, description, higher_is_better, needs_answer in (
    ("logit_diff", "logit diff (answer − distractor)", True, True),
    ("accuracy", "top-1 accuracy", True, True),
    ("answer_prob", "answer probability", True, True),
    ("answer_rank", "answer rank (1 = top)", False, True),
    ("loss", "answer loss (nats)", False, True),
    ("sequence_loss", "sequence loss (nats)", False, False),
    ("induction_loss", "induction loss (nats, repeated half)", False, False),
):
    implementation = "scored_loss" if name == "induction_loss" else name
    metric(name, description=description, higher_is_better=higher_is_better, needs_answer=needs_answer,
           needs_distractor=name == "logit_diff")(f"{_METRICS}:{implementation}")

# Every built-in method but causal tracing sums over prompts through ctx.sum_shards: shardable.
_METHODS = "circuitbench.scores.methods"
_COSTS = "circuitbench.scores.estimates"  # each method's forward-equivalents before it runs (the run planner)
method("activation_patching", cost=f"{_COSTS}:activation_patching_cost",
       description="exact head patching (noising/denoising), normalised",
       options=PatchingOptions, needs_corrupted=True, aligns_positions=True, shardable=True, progress="heads",
       produces="node_scores")(f"{_METHODS}.patching:activation_patching")
method("ablation", cost=f"{_COSTS}:ablation_cost",
       description="metric drop when a head is zero/mean/resample ablated", options=AblationOptions,
       shardable=True, progress="heads", produces="node_scores")(f"{_METHODS}.ablation:ablation")
method("attribution_patching", cost=f"{_COSTS}:attribution_patching_cost",
       description="gradient approximation of noising patching (optional IG)",
       options=AttributionOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="node_scores")(f"{_METHODS}.attribution:attribution_patching")
method("nap", cost=f"{_COSTS}:gradient_cost",
       description="node attribution patching as MIB: attribution_patching with the input embedding scored "
       "as a node", needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="node_scores")(f"{_METHODS}.attribution:nap")
method("nap_ig", cost=f"{_COSTS}:nap_ig_cost",
       description="NAP with integrated gradients along the input embeddings (α = k/m, k = 1…m)",
       options=NapIgOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="node_scores")(f"{_METHODS}.attribution:nap_ig")
method("previous_token", cost=f"{_COSTS}:detector_cost",
       description="attention to the previous token",
       shardable=True)(f"{_METHODS}.detectors:previous_token")
method("duplicate_token", cost=f"{_COSTS}:detector_cost",
       description="attention to earlier copies of the token",
       shardable=True)(f"{_METHODS}.detectors:duplicate_token")
method("induction", cost=f"{_COSTS}:detector_cost",
       description="prefix matching: attention to the token after an earlier copy",
       shardable=True)(f"{_METHODS}.detectors:induction")
method("attention_to", cost=f"{_COSTS}:detector_cost",
       description="attention from one named position to another (e.g. END -> IO)",
       options=AttentionToOptions, shardable=True)(f"{_METHODS}.detectors:attention_to")
# Noise on the clean prompt's own embeddings, no counterfactual prompt: it aligns nothing with one.
# Not split across data-parallel processes (the default): the noise comes from one generator drawn
# batch after batch, the position columns follow the shortest prompt of the whole set, and the maps
# carry a std over prompts; the main process runs it on all prompts.
method("causal_tracing", cost=f"{_COSTS}:causal_tracing_cost",
       description="ROME-style noise + restore map per (layer, position)", options=TracingOptions,
       produces="traces")(f"{_METHODS}.causal_tracing:causal_tracing")
# Edge methods: scores of every edge of the component graph, written to a sidecar file (edge_scores).
method("eap", cost=f"{_COSTS}:gradient_cost",
       description="edge attribution patching: −Δa_u · ∂m/∂x_v for every edge u -> v",
       options=EapOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="edge_scores")(f"{_METHODS}.edges:eap")
method("eap_ig", cost=f"{_COSTS}:eap_ig_cost",
       description="EAP with integrated gradients (inputs or activations, k/m step points)",
       options=EapIgOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="edge_scores")(f"{_METHODS}.edges:eap_ig")
method("edge_patching", cost=f"{_COSTS}:edge_patching_cost",
       description="exact: each edge's counterfactual output patched into its destination alone",
       options=EdgePatchingOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="edge_scores")(f"{_METHODS}.edges:edge_patching")
# One clean forward, no counterfactual and no metric: each edge's share of its destination's input.
method("ifr", cost=f"{_COSTS}:detector_cost",
       description="information flow routes: proximity of each source's output to its destination's input",
       options=IfrOptions, shardable=True, produces="edge_scores")(f"{_METHODS}.ifr:ifr")
# Every decision reads the loss over all prompts: each shard's sum goes through ctx.sum_shards per circuit tried.
method("acdc", cost=f"{_COSTS}:acdc_cost",
       description="ACDC: edges pruned from the logits backwards while KL (or the task metric) moves < τ",
       options=AcdcOptions, needs_corrupted=True, aligns_positions=True, shardable=True,
       produces="edge_scores")(f"{_METHODS}.acdc:acdc")
# Trained on all prompts in the main process: every step's gradient would need every shard's.
method("edge_pruning", cost=f"{_COSTS}:edge_pruning_cost",
       description="learned hard-concrete edge masks (Edge Pruning): P(mask > 0) per edge",
       options=EdgePruningOptions, produces="edge_scores")(f"{_METHODS}.edge_pruning:edge_pruning")
