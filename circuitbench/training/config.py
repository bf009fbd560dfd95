"""What `circuitbench train` trains, as data: the architecture (`ToyArch`, from a preset of
`ARCH_PRESETS`), the noise (`NoiseConfig`) and the whole run (`TrainConfig`).

No torch here (the models' modules are imported only when a model is built), so the CLI declares
its training options from these fields: a flag's default and help are the field's. Flat options
as the CLI names them become a config through `TrainConfig.from_options`, which owns their checks.
"""
from __future__ import annotations

import math
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


def parse_task_weights(text: str) -> dict[str, float]:
    """`--task-weights fibonacci=3,x2=2` as {task: weight}; '' is no weights."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, _, value = (x.strip() for x in part.partition("="))
        try:
            weights[task] = float(value)
        except ValueError:
            weights[task] = 0.0
        if not task or not weights[task] > 0:
            raise CircuitbenchError(f"--task-weights {part!r}: expected task=weight with a positive weight, "
                                    "e.g. --task-weights fibonacci=3,x2=2.")
    return weights


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
    weight_decay: float = Field(0.01, ge=0, le=10, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="steps over which the learning rate rises linearly from 0 to lr")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant | cosine: after warmup, lr as is, or cosine-decayed to 0 at the last step")
    number_prior: bool = Field(
        False, description="integer tokens start with sinusoids of their value (periods 2 to 1000) in the "
        "first dimensions of their embedding and unembedding rows, the rest random: a sense of number, as a "
        "pretrained LM's number tokens have, that lets arithmetic tasks generalise to held-out numbers")
    task_weights: dict[str, float] = Field(
        default_factory=dict, description="task -> how often its rows are drawn relative to the other text tasks "
        "(1 for a task not named; on the command line task=weight, comma-separated)")

    @model_validator(mode="after")
    def _weights(self) -> "TrainConfig":
        bad = {t: w for t, w in self.task_weights.items() if not w > 0}
        if bad:
            raise ValueError(f"task weights must be positive: {bad}")
        if self.warmup_steps >= self.steps and self.warmup_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        return self

    def lr_at(self, step: int) -> float:
        """The learning rate of step `step` (1-based) under warmup and the schedule."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "cosine":
            done = (step - 1 - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
            return self.lr * 0.5 * (1 + math.cos(math.pi * done))
        return self.lr

    @classmethod
    def from_options(cls, tasks: list[str], *, arch: str = DEFAULT_ARCH, n_layers: int | None = None,
                     n_heads: int | None = None, d_model: int | None = None, positional: str | None = None,
                     smear_keys: bool = False, noise_site: str | None = None, noise_scale: float | None = None,
                     threads: int | None = None, task_weights: str | dict[str, float] | None = None,
                     **fields: Any) -> "TrainConfig":
        """A config from flat options as `circuitbench train` takes them: the `arch` preset with the
        given architecture fields (None, and smear_keys False: the preset's), noise as a site and a
        scale given together, threads by model size when not given, task weights as `parse_task_weights`
        reads them (or a dict), any other field as is. A bad value is an error naming its flag (TRAIN_FLAGS)."""
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
            if isinstance(task_weights, str):
                task_weights = parse_task_weights(task_weights)
            if task_weights:
                fields["task_weights"] = task_weights
            return cls.model_validate({"arch": toy, "tasks": tasks, "noise": noise, "threads": threads, **fields})
        except ValidationError as e:
            raise options_error(e, TRAIN_FLAGS) from None
