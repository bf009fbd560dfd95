"""What `circuitbench train` trains, as data: the architecture (`ToyArch`, from a preset of
`ARCH_PRESETS`), the noise (`NoiseConfig`) and the whole run (`TrainConfig`).

No torch here (the models' modules are imported only when a model is built), so the CLI declares
its training options from these fields: a flag's default and help are the field's. Flat options
as the CLI names them become a config through `TrainConfig.from_options`, which owns their checks.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from circuitbench.errors import CircuitbenchError, did_you_mean, options_error
from circuitbench.models.hooks import NativeSite


class ToyArch(BaseModel):
    """A small native transformer."""

    model_config = ConfigDict(extra="forbid")
    n_layers: int = Field(2, ge=1, le=12, description="transformer blocks")
    n_heads: int = Field(4, ge=1, le=16, description="attention heads per block")
    d_model: int = Field(64, ge=8, le=1024, description="residual stream width")
    n_ctx: int = Field(64, ge=8, le=2048, description="longest sequence (positions)")
    attn_only: bool = Field(True, description="attention-only blocks (no MLPs)")
    d_mlp: int | None = Field(None, description="MLP width (None: 4 * d_model; unused when attn_only)")
    positional: Literal["standard", "rotary"] = Field(
        "standard", description="standard | rotary: learned absolute position embeddings, or rotary (relative) "
        "positions")
    smear_keys: bool = Field(False, description="each key a learned per-head mix of its own and the previous key")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ToyArch":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.positional == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"rotary positions need an even head size; d_model/n_heads = {self.d_model // self.n_heads}")
        return self

    def bridge_config(self, d_vocab: int) -> dict[str, object]:
        """The TransformerBridge config dict of this architecture."""
        from circuitbench.models.toy import native_config  # torch: only when a model is built

        return native_config(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                             d_head=self.d_model // self.n_heads, n_ctx=self.n_ctx, d_vocab=d_vocab,
                             attn_only=self.attn_only, d_mlp=self.d_mlp, positional_embedding_type=self.positional)

    def approx_params(self, d_vocab: int = 1000) -> int:
        """About how many parameters the model has (attention 4·d², MLP 2·d·d_mlp per block, embed and
        unembed): enough to choose torch threads by size."""
        d_mlp = 0 if self.attn_only else (self.d_mlp or 4 * self.d_model)
        return self.n_layers * (4 * self.d_model**2 + 2 * self.d_model * d_mlp) + 2 * d_vocab * self.d_model

    def variant(self) -> Any:  # -> models.toy.NativeVariant
        """What the project changes in the native model (smeared keys), as the checkpoint records it."""
        from circuitbench.models.toy import NativeVariant  # torch: only when a model is built

        return NativeVariant(smear_keys=self.smear_keys)


ARCH_PRESETS: dict[str, ToyArch] = {
    "attn-only-1l": ToyArch(n_layers=1),
    "attn-only-2l": ToyArch(n_layers=2),
    "gpt-2l": ToyArch(n_layers=2, attn_only=False, d_model=128),
    "sort-1l1h": ToyArch(n_layers=1, n_heads=1, d_model=128, attn_only=False),
}
DEFAULT_ARCH = "attn-only-2l"


def arch_from(name: str, **overrides: object) -> ToyArch:
    """A preset with some fields overridden (None: keep the preset's), validated as a whole."""
    if name not in ARCH_PRESETS:
        raise CircuitbenchError(
            f"Unknown --arch '{name}'.{did_you_mean(name, ARCH_PRESETS)} Known: {', '.join(ARCH_PRESETS)}.")
    values = {k: v for k, v in overrides.items() if v is not None}
    # model_copy(update=...) would skip validation: a bad override must fail here, not mid-training
    return ToyArch.model_validate({**ARCH_PRESETS[name].model_dump(), **values})


class NoiseConfig(BaseModel):
    """Gaussian noise added at one site of the model while training (training/noise.py)."""

    model_config = ConfigDict(extra="forbid")
    site: NativeSite = Field(description="embed: token embeddings; attn_out: each attention layer's output; "
                                        "resid: the residual stream after each block")
    scale: float = Field(gt=0, le=100, description="standard deviation of the Gaussian noise")


# Field paths whose flag is not simply --field-name (errors name the flag the user typed).
TRAIN_FLAGS = {"n_layers": "--layers", "n_heads": "--heads", "noise.site": "--noise-site",
               "noise.scale": "--noise-scale", "tasks": "--task"}


class TrainConfig(BaseModel):
    """One training run of a toy model on tasks' train splits."""

    model_config = ConfigDict(extra="forbid")
    arch: ToyArch = Field(description="the architecture (a preset of ARCH_PRESETS, fields overridden)")
    tasks: list[str] = Field(min_length=1, description="task(s) whose train split to train on (on the command line "
                                                   "comma-separated), or 'suite'")
    steps: int = Field(1000, ge=1, description="optimiser steps")
    checkpoints: int = Field(8, ge=0, le=200, description="about this many checkpoints, log-spaced and linear")
    batch_size: int = Field(64, ge=1, description="sequences per step")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    seed: int = Field(0, description="seed of the weights, the data draws and the noise")
    n_train: int = Field(4000, ge=1, description="train-split prompts drawn per text task (at most)")
    loss_positions: Literal["all", "answer"] = Field(
        "all", description="all: next-token loss at every position (the seeds' GPT-2-like model); "
                           "answer: only at answer tokens (text) / copied tokens (induction stream)")
    noise: NoiseConfig | None = Field(None, description="Gaussian noise injected while training only")
    threads: int = Field(1, ge=1, le=256, description=(
        "torch threads while training (not given to from_options or the CLI: by model size, 1 for toy-sized models, "
        "which gain nothing from more; on a shared CPU extra threads stall, measured 30x slower with 2 threads on 2 "
        "busy cores)"))
    induction_share: float = Field(0.5, gt=0, le=1,
                                   description="fraction of steps on the induction stream when text tasks are mixed in")

    @classmethod
    def from_options(cls, tasks: list[str], *, arch: str = DEFAULT_ARCH, n_layers: int | None = None,
                     n_heads: int | None = None, d_model: int | None = None, positional: str | None = None,
                     smear_keys: bool = False, noise_site: str | None = None, noise_scale: float | None = None,
                     threads: int | None = None, **fields: Any) -> "TrainConfig":
        """A config from flat options as `circuitbench train` takes them: the `arch` preset with the
        given architecture fields (None, and smear_keys False: the preset's), noise as a site and a
        scale given together, threads by model size when not given, any other field as is. A bad value
        is an error naming its flag (TRAIN_FLAGS)."""
        if (noise_site is None) != (noise_scale is None):
            raise CircuitbenchError(
                "--noise-site and --noise-scale go together, e.g. --noise-site resid --noise-scale 0.1.")
        try:
            toy = arch_from(arch, n_layers=n_layers, n_heads=n_heads, d_model=d_model, positional=positional,
                            smear_keys=smear_keys or None)
            if threads is None:
                from circuitbench.environment import threads_for  # torch: only when training is set up

                threads = threads_for(toy.approx_params())
            noise = {"site": noise_site, "scale": noise_scale} if noise_site is not None else None
            return cls.model_validate({"arch": toy, "tasks": tasks, "noise": noise, "threads": threads, **fields})
        except ValidationError as e:
            raise options_error(e, TRAIN_FLAGS) from None
