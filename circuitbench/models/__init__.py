"""Stage 3, models: the only package that knows TransformerLens. Loading (registry names, hub
ids, local directories, toy checkpoints), the hook-site grammar (hooks.py), the LoadedModel
facade every later stage runs models through (loaded.py), memory estimates, weight fingerprints."""
