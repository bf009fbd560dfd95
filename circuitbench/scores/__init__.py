"""Stage 4, scores: task metrics, evaluation, the shared intervention engine, scoring methods
(methods/), and the on-disk activation cache of the unpatched forwards they start from."""
