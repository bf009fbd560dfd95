"""ModelSpec: one entry of models.yaml — where the weights come from and the architecture's numbers."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DType = Literal["float32", "bfloat16", "float16"]
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}
MEMORY_HEADROOM = 1.2  # weights plus ~20 % for activations and the bridge (measured 1.17-1.21× on gpt-neo-2.7B)


def memory_needed_bytes(n_params: int, dtype: str) -> int:
    """Estimated memory to load and run a model: its weights plus MEMORY_HEADROOM."""
    return int(n_params * BYTES_PER_PARAM[dtype] * MEMORY_HEADROOM)


class ModelSpec(BaseModel):
    """A registry model: a HuggingFace id, a shipped toy checkpoint or a shipped TransformerLens-format
    checkpoint (tracr-compiled models), with its size and shape."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: Literal["hf", "toy", "tl"]
    hf_id: str | None = None
    path: str | None = Field(None, description="toy or TL-format checkpoint dir, relative to circuitbench/zoo")
    revision: str = "main"
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
    train_command: str | None = Field(None, description="the command that rebuilds the checkpoint (training "
                                      "or `circuitbench import-tracr ...`)")
    test_metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="measured on each task's default test split: task -> metric -> value")
    notes: str = ""

    @model_validator(mode="after")
    def _source_fields(self) -> "ModelSpec":
        if self.source == "hf" and not (self.hf_id and self.hf_config):
            raise ValueError("source 'hf' needs hf_id and hf_config")
        if self.source in ("toy", "tl") and not self.path:
            raise ValueError(f"source '{self.source}' needs path")
        return self
