"""The built-in task metrics and scoring methods, declared: names, what a spec may set, and
where each implementation lives (imported on first use, so validating a spec imports no torch).
Third-party metrics and methods register the same way (circuitbench.register_metric / _method)."""
from __future__ import annotations

from circuitbench.scores.methods.options import (
    AblationOptions,
    AttentionToOptions,
    AttributionOptions,
    EapIgOptions,
    EdgePatchingOptions,
    PatchingOptions,
    TracingOptions,
)
from circuitbench.specs.registries import METHODS, METRICS, Method, Metric

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
    METRICS.add(name, Metric(f"{_METRICS}:{implementation}", description, higher_is_better, needs_answer,
                             needs_distractor=name == "logit_diff"))

_METHODS = "circuitbench.scores.methods"
METHODS.add("activation_patching", Method(
    f"{_METHODS}.patching:activation_patching", "exact head patching (noising/denoising), normalised",
    needs_corrupted=True, options=PatchingOptions, aligns_positions=True))
METHODS.add("ablation", Method(
    f"{_METHODS}.ablation:ablation", "metric drop when a head is zero/mean/resample ablated", options=AblationOptions))
METHODS.add("attribution_patching", Method(
    f"{_METHODS}.attribution:attribution_patching", "gradient approximation of noising patching (optional IG)",
    needs_corrupted=True, options=AttributionOptions, aligns_positions=True))
METHODS.add("previous_token", Method(f"{_METHODS}.detectors:previous_token", "attention to the previous token"))
METHODS.add("duplicate_token", Method(
    f"{_METHODS}.detectors:duplicate_token", "attention to earlier copies of the token"))
METHODS.add("induction", Method(
    f"{_METHODS}.detectors:induction", "prefix matching: attention to the token after an earlier copy"))
METHODS.add("attention_to", Method(
    f"{_METHODS}.detectors:attention_to", "attention from one named position to another (e.g. END -> IO)",
    options=AttentionToOptions))
# Noise on the clean prompt's own embeddings, no counterfactual prompt: it aligns nothing with one.
# Not split across data-parallel processes: the noise comes from one generator drawn batch after
# batch, the position columns follow the shortest prompt of the whole set, and the maps carry a
# std over prompts; the main process runs it on all prompts.
METHODS.add("causal_tracing", Method(
    f"{_METHODS}.causal_tracing:causal_tracing", "ROME-style noise + restore map per (layer, position)",
    options=TracingOptions, produces="traces", shardable=False))
# Edge methods: scores of every edge of the component graph, written to a sidecar file (edge_scores).
METHODS.add("eap", Method(
    f"{_METHODS}.edges:eap", "edge attribution patching: −Δa_u · ∂m/∂x_v for every edge u -> v",
    needs_corrupted=True, aligns_positions=True, produces="edge_scores"))
METHODS.add("eap_ig", Method(
    f"{_METHODS}.edges:eap_ig", "EAP with integrated gradients (inputs or activations, k/m step points)",
    needs_corrupted=True, aligns_positions=True, options=EapIgOptions, produces="edge_scores"))
METHODS.add("edge_patching", Method(
    f"{_METHODS}.edges:edge_patching", "exact: each edge's counterfactual output patched into its destination alone",
    needs_corrupted=True, aligns_positions=True, options=EdgePatchingOptions, produces="edge_scores"))
