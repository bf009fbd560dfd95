"""Model loading (registry names, HF ids, local dirs, toy checkpoints) behind TransformerBridge."""
from circuitbench.models.loading import (
    LoadedModel,
    ModelRef,
    load_model,
    load_vocabulary,
    resolve_device,
    resolve_model,
    tokenizer_vocabulary,
)

__all__ = [
    "LoadedModel", "ModelRef", "load_model", "load_vocabulary", "resolve_device", "resolve_model", "tokenizer_vocabulary",
]
