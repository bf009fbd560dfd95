"""Scoring methods: exact activation patching, ablation, attribution patching, attention-pattern
detectors and causal tracing. Each is declared in scores/builtin.py and runs through the
LoadedModel facade and the shared intervention engine (scores/interventions.py)."""
